"""`control-service`: serve the control plane, call it, or run a self-contained demo.

Configuration flags (serve's, and call's connection flags) can also be set from the environment
as CONTROL_SERVICE_<FLAG> (e.g. --max-open-slots -> CONTROL_SERVICE_MAX_OPEN_SLOTS); a flag on the
command line wins over its variable, which wins over the built-in default. Per-call arguments
(request id, engine names, pause mode, ...) are never read from the environment: a stale variable
must not silently reuse a request id or narrow a call.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

import grpc

from control_service import log
from control_service.cli.aio import loop_choice
from control_service.cli.aio import run as run_loop
from control_service.cli.render import (
    EventPrinter,
    format_error,
    format_state,
    format_status,
    to_json,
)
from control_service.client import (
    ClientConfig,
    ControlClient,
    Outcome,
    ServiceStatus,
    StepTimeouts,
    TlsConfig,
)
from control_service.client._utils import checked_request_id
from control_service.errors import ControlError
from control_service.log import LEVELS as LOG_LEVELS
from control_service.protocol.names import PAUSE_MODES
from control_service.server.config import (
    EngineConfig,
    LinkConfig,
    SecurityConfig,
    ServiceConfig,
    load_engines,
)

ENV_PREFIX = "CONTROL_SERVICE_"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_GRPC_BASE = 100  # call failed with gRPC status code c: exit 100 + c

EXIT_CODES_HELP = f"""\
exit codes:
  0          success
  1          unexpected failure (e.g. the demo's own checks, an engine that did not start)
  2          bad usage or configuration (one line on stderr says why)
  100+CODE   the call failed with gRPC status CODE, e.g. {
    EXIT_GRPC_BASE + grpc.StatusCode.INVALID_ARGUMENT.value[0]
} INVALID_ARGUMENT, {
    EXIT_GRPC_BASE + grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
} DEADLINE_EXCEEDED, {
    EXIT_GRPC_BASE + grpc.StatusCode.FAILED_PRECONDITION.value[0]
} FAILED_PRECONDITION, {EXIT_GRPC_BASE + grpc.StatusCode.UNAVAILABLE.value[0]} UNAVAILABLE
  130        interrupted (Ctrl-C)
"""


def exit_code(code: grpc.StatusCode) -> int:
    """The stable exit code of a call that failed with `code` (see EXIT_CODES_HELP)."""
    return EXIT_GRPC_BASE + code.value[0]


# ------------------------------------------------------------------------------------ parsing


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`prog: error: reason`) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _checked(convert: Callable[[str], Any], test: Callable[[Any], bool], what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what
    return parse


positive_float = _checked(float, lambda v: v > 0, "a number > 0")
non_negative_float = _checked(float, lambda v: v >= 0, "a number >= 0")
positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")


def boolean(value: str) -> bool:
    """true/false, yes/no, 1/0 (for flags that env vars must be able to set)."""
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r}: expected true or false")


boolean.metavar = "BOOL"  # type: ignore[attr-defined]


non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0")


def choice(*allowed: str) -> Callable[[str], str]:
    """A type that checks membership itself, so env values are checked like flags."""
    parse = _checked(str, lambda v: v in allowed, "one of " + ", ".join(allowed))
    parse.metavar = "{" + ",".join(allowed) + "}"
    return parse


def text(value: str) -> str:
    return value


def listen_address(value: str) -> str:
    """HOST:PORT (port 0: any), [IPv6]:PORT, or unix:PATH: caught here rather than at bind."""
    if value.startswith("unix:"):
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return value


def words(value: str) -> list[str]:
    """A shell-quoted argument string as a list (for arguments passed through to engines)."""
    try:
        return shlex.split(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{value!r}: {error}") from None


def comma_list(value: str) -> list[str]:
    """'a,b c' -> ['a', 'b', 'c']: how a repeatable flag is written in one env var."""
    return value.replace(",", " ").split()


@dataclass(frozen=True, slots=True)
class Option:
    """One flag: its type, default, help, and whether CONTROL_SERVICE_<FLAG> may set it."""

    flag: str
    type: Callable[[str], Any]
    default: Any
    help: str
    env: bool = True
    repeat: bool = False
    metavar: str | None = None
    # The value of the bare flag (`--auth-exempt-health` means true); None: a value is required.
    const: Any = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    def help_text(self) -> str:
        default = "none" if self.default in (None, [], ()) else self.default
        if isinstance(default, list | tuple):
            default = " ".join(map(str, default))
        env = f"; env {self.env_name}" if self.env else ""
        return f"{self.help} (default: {default}{env})"


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add the flags with default None, so that "not given" can fall back to env, then default."""
    for option in options:
        bare = {} if option.const is None else {"nargs": "?", "const": option.const}
        parser.add_argument(
            option.flag,
            dest=option.dest,
            type=option.type,
            default=None,
            action="append" if option.repeat else "store",
            metavar=option.metavar or getattr(option.type, "metavar", None),
            help=option.help_text(),
            **bare,
        )
    parser.set_defaults(_options=[*(parser.get_default("_options") or ()), *options])


def resolve_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> None:
    """Fill each flag not given: from its env var if set (checked like the flag), else default."""
    for option in args._options:
        if getattr(args, option.dest) is not None:
            continue
        value = option.default
        raw = environ.get(option.env_name) if option.env else None
        if raw is not None:
            value = _from_env(parser, option, raw)
        setattr(args, option.dest, value)


def _from_env(parser: argparse.ArgumentParser, option: Option, raw: str) -> Any:
    try:
        if option.repeat:
            return [option.type(item) for item in comma_list(raw)]
        return option.type(raw)
    except argparse.ArgumentTypeError as error:
        parser.error(f"{option.env_name}: {error}")


# --------------------------------------------------------------------------------- serve flags


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


# (flag, config class, field, type, help): every ServiceConfig/LinkConfig field but engines/link.
SERVICE_FLAGS: tuple[tuple[str, type, str, Callable[[str], Any], str], ...] = (
    ("--listen", ServiceConfig, "listen", listen_address, "gRPC address HOST:PORT (port 0: any)"),
    ("--default-timeout", ServiceConfig, "default_timeout_s", positive_float,
     "seconds a call may take when it names no timeout"),
    ("--max-timeout", ServiceConfig, "max_timeout_s", positive_float,
     "largest timeout a call may ask for, seconds"),
    ("--default-pause-mode", ServiceConfig, "default_pause_mode", choice(*PAUSE_MODES),
     "pause mode when a Pause names none"),
    ("--status-timeout", ServiceConfig, "status_timeout_s", positive_float,
     "seconds GetStatus waits for each engine"),
    ("--max-open-slots", ServiceConfig, "max_open_slots", positive_int,
     "open engine replies across all calls; past it RESOURCE_EXHAUSTED"),
    ("--slot-queue-events", ServiceConfig, "slot_queue_events", positive_int,
     "events buffered per caller before old progress is dropped"),
    ("--max-callers-per-call", ServiceConfig, "max_callers_per_operation", positive_int,
     "callers attached to one request_id at most; past it RESOURCE_EXHAUSTED"),
    ("--max-streams-per-connection", ServiceConfig, "max_concurrent_streams", positive_int,
     "HTTP/2 streams (calls) one client connection may have open at once"),
    ("--max-message-bytes", ServiceConfig, "max_message_bytes", positive_int,
     "largest gRPC message accepted, bytes"),
    ("--retry-window", ServiceConfig, "retry_window_s", non_negative_float,
     "seconds a finished call is remembered for same-request-id retries"),
    ("--retry-max-records", ServiceConfig, "retry_max_records", positive_int,
     "finished calls remembered for retries, at most"),
    ("--detach-grace", ServiceConfig, "detach_grace_s", non_negative_float,
     "seconds an operation whose callers all left keeps running for a retry to attach"),
    ("--shutdown-grace", ServiceConfig, "shutdown_grace_s", non_negative_float,
     "seconds running calls get to finish on SIGTERM"),
    ("--metrics-port", ServiceConfig, "metrics_port", non_negative_int,
     "serve Prometheus /metrics on this HTTP port, on the --listen host (0: off)"),
    ("--metrics-listen", ServiceConfig, "metrics_listen", listen_address,
     "serve Prometheus /metrics on HOST:PORT instead (e.g. 0.0.0.0:9090 for a scraper)"),
    ("--tls-cert", SecurityConfig, "tls_cert", Path, "PEM server certificate chain: serve TLS"),
    ("--tls-key", SecurityConfig, "tls_key", Path, "PEM server private key"),
    ("--tls-client-ca", SecurityConfig, "tls_client_ca", Path,
     "PEM CA that client certificates must chain to (mutual TLS)"),
    ("--auth-token", SecurityConfig, "auth_token", text,
     "require 'authorization: Bearer TOKEN' (prefer the env var or --auth-token-file)"),
    ("--auth-token-file", SecurityConfig, "auth_token_file", Path,
     "file holding the bearer token callers must send"),
    ("--auth-exempt-health", SecurityConfig, "auth_exempt_health", boolean,
     "grpc.health.v1 needs no token (for probes); bare flag or true/false"),
    ("--engine-curve-server-key", LinkConfig, "curve_server_key", Path,
     "CURVE: the engines' public key file; encrypts the engine link"),
    ("--engine-curve-client-key", LinkConfig, "curve_client_key", Path,
     "CURVE: this service's key pair file (.key_secret)"),
    ("--heartbeat-interval", LinkConfig, "heartbeat_ivl_s", positive_float,
     "seconds between engine heartbeats"),
    ("--heartbeat-timeout", LinkConfig, "heartbeat_timeout_s", positive_float,
     "seconds without a heartbeat before an engine is unreachable"),
    ("--reconnect-interval", LinkConfig, "reconnect_ivl_s", positive_float,
     "first ZMQ reconnect delay, seconds"),
    ("--reconnect-interval-max", LinkConfig, "reconnect_ivl_max_s", positive_float,
     "largest ZMQ reconnect delay, seconds"),
    ("--max-frame-bytes", LinkConfig, "max_frame_bytes", positive_int,
     "largest engine frame accepted, bytes"),
    ("--send-hwm", LinkConfig, "send_hwm", positive_int,
     "requests queued per engine socket; past it UNAVAILABLE"),
    ("--recv-hwm", LinkConfig, "recv_hwm", positive_int,
     "engine replies queued by ZMQ per engine socket before it stops reading"),
    ("--max-status-probes", LinkConfig, "max_status_probes", positive_int,
     "status probes in flight per engine (apart from the calls' slots)"),
)  # fmt: skip

ENGINE_OPTIONS = (
    Option("--engine", text, [], "an engine as [NAME=]ENDPOINT, repeatable (env: comma-separated)",
           repeat=True, metavar="[NAME=]ENDPOINT"),
    Option("--engines-file", Path, None,
           "a file of engines, one [NAME=]ENDPOINT per line (# comments), for large N",
           metavar="PATH"),
    Option("--embedded-engines", positive_int, 0,
           "start N engine_stub processes and serve them", metavar="N"),
    Option("--embedded-transport", choice("ipc", "tcp"), "ipc",
           "how embedded engines bind: ipc (private temp dir) or tcp (127.0.0.1, any port)"),
    Option("--engine-args", words, [], "extra engine_stub arguments, one shell-quoted string",
           metavar="ARGS"),
)  # fmt: skip


def log_options(level: str, env: bool) -> tuple[Option, ...]:
    """--log-level/--log-format for the commands that run the service (see control_service.log)."""
    return (
        Option("--log-level", choice(*LOG_LEVELS), level, "service log level", env=env),
        Option("--log-format", choice("auto", "json", "console"), "auto",
               "service log lines on stderr: json, console, or auto (console on a terminal)",
               env=env),
    )  # fmt: skip


def configure_logging(args: argparse.Namespace) -> None:
    """structlog set-up from --log-level/--log-format."""
    json_lines = {"auto": None, "json": True, "console": False}[args.log_format]
    log.configure(args.log_level, json=json_lines)


def serve_options() -> list[Option]:
    options = [*ENGINE_OPTIONS, *log_options("info", env=True)]
    for flag, cls, name, convert, help_ in SERVICE_FLAGS:
        const = True if convert is boolean else None  # a bare boolean flag means true
        options.append(Option(flag, convert, _default(cls, name), help_, const=const))
    return options


def engine_configs(specs: Sequence[str]) -> list[EngineConfig]:
    """--engine values as EngineConfigs; bare endpoints are named engine (or engine-I)."""
    if len(specs) == 1:
        return [EngineConfig.parse(specs[0])]
    return [EngineConfig.parse(spec, default_name=f"engine-{i}") for i, spec in enumerate(specs)]


def embedded_placeholders(count: int) -> list[EngineConfig]:
    """Stand-ins with the embedded engines' future names, to validate before spawning anything."""
    return [EngineConfig(f"embedded-{i}", f"ipc://embedded-{i}") for i in range(count)]


def service_config(args: argparse.Namespace) -> ServiceConfig:
    """The ServiceConfig the flags describe (embedded engines as placeholders until started).

    Raises ControlError for a configuration the config classes reject.
    """
    from_file = load_engines(args.engines_file) if args.engines_file else []
    engines = engine_configs(args.engine) + from_file + embedded_placeholders(args.embedded_engines)
    if not engines:
        raise ControlError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "at least one engine is required (--engine or --embedded-engines)",
        )
    fields: dict[type, dict[str, Any]] = {ServiceConfig: {}, LinkConfig: {}, SecurityConfig: {}}
    for flag, cls, name, _convert, _help in SERVICE_FLAGS:
        fields[cls][name] = getattr(args, flag.removeprefix("--").replace("-", "_"))
    link = LinkConfig(**fields[LinkConfig])
    security = SecurityConfig(**fields[SecurityConfig])
    security.token()  # a bad token file fails at start, with the rest of the configuration
    return ServiceConfig(
        engines=tuple(engines), link=link, security=security, **fields[ServiceConfig]
    )


# ---------------------------------------------------------------------------------- call flags

CONNECTION_OPTIONS = (
    Option("--target", text, "127.0.0.1:50051", "the service's HOST:PORT"),
    Option("--timeout", positive_float, None,
           "operation timeout in seconds (none: the server's default)"),
    Option("--retries", non_negative_int, 0,
           "retries of an UNAVAILABLE call, with the same request id"),
    Option("--token", text, None, "bearer token sent as 'authorization: Bearer TOKEN'"),
    Option("--tls-ca", Path, None, "PEM root certificate(s); enables TLS", metavar="PATH"),
    Option("--tls-cert", Path, None, "PEM client certificate chain (mTLS); enables TLS",
           metavar="PATH"),
    Option("--tls-key", Path, None, "PEM client private key (mTLS)", metavar="PATH"),
    Option("--tls-server-name", text, None, "expected server name in its certificate"),
    Option("--keepalive", non_negative_float, 30.0,
           "seconds between HTTP/2 pings during a call (0: off)"),
)  # fmt: skip

CALL_OPTIONS = (
    Option("--request-id", text, None, "request id (none: a new one, printed first)", env=False),
    Option("--engine", text, [], "target this engine, repeatable (none: all)", env=False,
           repeat=True, metavar="NAME"),
)  # fmt: skip


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The ClientConfig the connection flags describe; ControlError if they do not fit."""
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        tls = TlsConfig(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    return ClientConfig(
        target=args.target,
        timeout_s=args.timeout,
        retries=args.retries,
        tls=tls,
        bearer_token=args.token,
        keepalive_time_s=args.keepalive or None,
    )


# ---------------------------------------------------------------------------------- demo flags

DEMO_OPTIONS = (
    Option("--embedded-engines", positive_int, 1, "embedded engines to start", env=False,
           metavar="N"),
    Option("--engine-args", words, [], "extra engine_stub arguments, one shell-quoted string",
           env=False, metavar="ARGS"),
    Option("--embedded-transport", choice("ipc", "tcp"), "ipc", "how the engines bind",
           env=False),
    Option("--timeout", positive_float, 60.0, "timeout of each call, seconds", env=False),
)  # fmt: skip


# ------------------------------------------------------------------------------------- parser


def build_parser() -> Parser:
    """The whole command line; each subcommand stores its runner in args.run."""
    parser = Parser(
        prog="control-service",
        description="gRPC control plane between RL trainers and LLM inference engines.",
        epilog=f"Configuration flags also read {ENV_PREFIX}<FLAG> (flags win).\n\n"
        + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(commands)
    _add_call(commands)
    _add_demo(commands)
    return parser


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the service",
        description="Run the control service until SIGTERM/SIGINT, then stop gracefully.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--embedded-engine",
        dest="embedded_engines",
        action="store_const",
        const=1,
        help="same as --embedded-engines 1",
    )
    add_options(serve, serve_options())
    serve.set_defaults(run=run_serve, _parser=serve)


def _add_call(commands: Any) -> None:
    call = commands.add_parser(
        "call",
        help="call a running service",
        description="Call a running service and print its events, one line each.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = call.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = Parser(add_help=False)
    add_options(common, CONNECTION_OPTIONS)
    common.add_argument("--json", action="store_true", help="print events as JSON lines")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(run=run_call, _parser=sub)
        return sub

    pause = action("pause", "pause the engines")
    pause.add_argument("--mode", choices=PAUSE_MODES, default=None,
                       help="abort | wait | keep (default: the server's)")  # fmt: skip
    pause.add_argument("--clear-cache", action="store_true", help="also drop the KV cache")
    add_options(pause, CALL_OPTIONS)
    update = action("update-weights", "load new weights into the paused engines")
    update.add_argument("uri", help="where the engines find the checkpoint")
    update.add_argument("version", help="the version the engines report once loaded")
    add_options(update, CALL_OPTIONS)
    add_options(action("resume", "let the engines serve again"), CALL_OPTIONS)
    refit = action("refit", "pause -> update weights -> resume as one call, safe on failure")
    refit.add_argument("uri", help="where the engines find the checkpoint")
    refit.add_argument("version", help="the version the engines report once loaded")
    refit.add_argument("--mode", choices=PAUSE_MODES, default=None,
                       help="pause mode: abort | wait | keep (default: the server's)")  # fmt: skip
    refit.add_argument("--clear-cache", action="store_true", help="also drop the KV cache")
    refit.add_argument("--on-failure", choices=("resume_old_weights", "stay_paused"),
                       default="resume_old_weights",
                       help="what to do if a step fails (default: resume_old_weights)")  # fmt: skip
    for step in ("pause", "update", "resume"):
        refit.add_argument(f"--{step}-timeout", type=float, default=None, metavar="S",
                           help=f"limit for the {step} step, seconds (default: none)")  # fmt: skip
    add_options(refit, CALL_OPTIONS)
    status = action("status", "print every engine's reachability and state")
    add_options(status, CALL_OPTIONS[1:])  # engines only: GetStatus has no request id


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run service + embedded engine through two update cycles",
        description="Start the service with an embedded engine on 127.0.0.1 (any port), then run "
        "pause -> update_weights -> resume twice (versions 1 and 2), then GetStatus.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(demo, (*DEMO_OPTIONS, *log_options("warning", env=False)))
    demo.add_argument("--engine-logs", action="store_true", help="show the engines' own logs")
    demo.set_defaults(run=run_demo, _parser=demo)


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """Parse the command line, then fill unset flags from the environment and defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # args._parser: the subcommand's own parser, so an env error names the subcommand.
    resolve_options(args._parser, args, os.environ if environ is None else environ)
    return args


# -------------------------------------------------------------------------------------- serve


def run_serve(args: argparse.Namespace) -> int:
    """Validate everything, start embedded engines if asked, serve until signalled."""
    try:
        config = service_config(args)
        loop_choice()  # a bad CONTROL_SERVICE_LOOP is bad configuration: exit 2 before anything
    except ControlError as error:
        return usage_error("serve", error.message)
    explicit = tuple(engine_configs(args.engine))
    configure_logging(args)
    try:
        run_loop(_serve(config, explicit, args))
    except ControlError as error:
        if error.code == grpc.StatusCode.INVALID_ARGUMENT:  # configuration found wanting at start
            return usage_error("serve", error.message)
        _print_lines(format_error(error), sys.stderr)
        return EXIT_FAILURE
    except (OSError, RuntimeError) as error:  # e.g. grpc's "Failed to bind to address"
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


async def _serve(
    config: ServiceConfig, explicit: tuple[EngineConfig, ...], args: argparse.Namespace
) -> None:
    from control_service.cli.embedded import EmbeddedEngines
    from control_service.server import serve

    if not args.embedded_engines:
        await serve(config)
        return
    engines = EmbeddedEngines(
        args.embedded_engines,
        transport=args.embedded_transport,
        extra_args=args.engine_args,
        name_prefix="embedded",
    )
    async with engines as started:
        await serve(dataclasses.replace(config, engines=explicit + started))


def usage_error(command: str, reason: str) -> int:
    """The one-line reason for a bad configuration, exit code 2."""
    print(f"control-service {command}: error: {reason}", file=sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------------------- call


def run_call(args: argparse.Namespace) -> int:
    """Make one call, print its events and final state; map a failure to its exit code."""
    try:
        config = client_config(args)
    except ControlError as error:
        return usage_error(f"call {args.action}", error.message)
    return asyncio.run(call(args, config, sys.stdout))


async def call(args: argparse.Namespace, config: ClientConfig, out: TextIO) -> int:
    """The `call` subcommand against `config.target`, printing to `out` (errors to stderr)."""
    printer = EventPrinter(out, tty=out.isatty(), json_lines=args.json)
    try:
        async with ControlClient(config) as client:
            if args.action == "status":
                _print_status(await client.status(args.engine), printer, args.json)
            else:
                _print_outcome(await _mutate(client, args, printer), printer, args.json)
    except ControlError as error:
        printer.close()
        _print_lines(format_error(error), sys.stderr)
        return exit_code(error.code)
    return EXIT_OK


async def _mutate(
    client: ControlClient, args: argparse.Namespace, printer: EventPrinter
) -> Outcome:
    request_id = checked_request_id(args.request_id)  # a bad id fails before the header prints
    if not args.json:
        printer.line(f"{args.action} request_id={request_id}")
    common: dict[str, Any] = {
        "request_id": request_id,
        "engines": args.engine,
        "on_event": printer,
    }
    if args.action == "pause":
        return await client.pause(args.mode, clear_cache=args.clear_cache, **common)
    if args.action == "update-weights":
        return await client.update_weights(args.uri, args.version, **common)
    if args.action == "refit":
        steps = StepTimeouts(args.pause_timeout, args.update_timeout, args.resume_timeout)
        return await client.refit(
            args.uri, args.version, mode=args.mode, clear_cache=args.clear_cache,
            on_failure=args.on_failure, steps=steps, **common,
        )  # fmt: skip
    return await client.resume(**common)


def _print_outcome(outcome: Outcome, printer: EventPrinter, json_lines: bool) -> None:
    printer.close()
    if json_lines:
        return  # the Result events already carried every final state
    retried = f" after {outcome.attempts} attempts" if outcome.attempts > 1 else ""
    printer.line(f"ok: {len(outcome.results)} engine(s){retried}")
    for engine, state in sorted(outcome.states().items()):
        printer.line(f"  {engine} {format_state(state)}")


def _print_status(status: ServiceStatus, printer: EventPrinter, json_lines: bool) -> None:
    if json_lines:
        printer.line(to_json(status.to_response()))
        return
    for name in sorted(status.engines):
        printer.line(format_status(status.engines[name]))


def _print_lines(lines: Sequence[str], stream: TextIO) -> None:
    for line in lines:
        print(line, file=stream, flush=True)


# --------------------------------------------------------------------------------------- demo


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo (see control_service.cli.demo) and return its exit code."""
    from control_service.cli.demo import DemoOptions, run

    configure_logging(args)
    options = DemoOptions(
        engines=args.embedded_engines,
        engine_args=tuple(args.engine_args),
        transport=args.embedded_transport,
        timeout_s=args.timeout,
        engine_logs=args.engine_logs,
    )
    return asyncio.run(run(options, sys.stdout))


# --------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `control-service` script and `python -m control_service`."""
    args = parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
