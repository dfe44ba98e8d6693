"""`control-service serve`: validate the whole configuration, start embedded engines if asked,
serve until SIGTERM/SIGINT, then stop gracefully."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from control_service import log
from control_service.cli import exit_codes
from control_service.cli.output import print_error
from control_service.cli.params import (
    CONTEXT,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    CommaList,
    ListenAddress,
    Words,
    config_errors,
    option,
    with_options,
)
from control_service.errors import ControlError
from control_service.log import LEVELS as LOG_LEVELS
from control_service.protocol.names import PAUSE_MODES
from control_service.server.config import (
    ConfigError,
    EngineConfig,
    LinkConfig,
    SecurityConfig,
    ServiceConfig,
    load_engines_beside,
)

FILE = click.Path(path_type=Path)
OPTIONAL_ADDRESS = ListenAddress(optional=True)
BOOL_OR_BARE = {"type": click.BOOL, "is_flag": False, "flag_value": "true"}

# (flag, config class, field, click type, help): every ServiceConfig/LinkConfig/SecurityConfig
# field but engines/link/security; a test checks that a new field gets its flag here.
SERVICE_FLAGS: tuple[tuple[str, type, str, Any, str], ...] = (
    ("--listen", ServiceConfig, "listen", ListenAddress(), "gRPC address HOST:PORT (port 0: any)"),
    ("--default-timeout", ServiceConfig, "default_timeout_s", POSITIVE_FLOAT,
     "seconds a call may take when it names no timeout"),
    ("--max-timeout", ServiceConfig, "max_timeout_s", POSITIVE_FLOAT,
     "largest timeout a call may ask for, seconds"),
    ("--default-pause-mode", ServiceConfig, "default_pause_mode", click.Choice(PAUSE_MODES),
     "pause mode when a Pause names none"),
    ("--status-timeout", ServiceConfig, "status_timeout_s", POSITIVE_FLOAT,
     "seconds GetStatus waits for each engine"),
    ("--engine-probe-interval", ServiceConfig, "engine_probe_interval_s", NON_NEGATIVE_FLOAT,
     "seconds between the service's own status probes of each engine (0: at link-up only)"),
    ("--engine-probe-rate", ServiceConfig, "engine_probe_rate", POSITIVE_FLOAT,
     "the service's own status probes a second, all engines together, at most: with more "
     "engines the rounds are further apart (4,096 engines: every 20.5 s)"),
    ("--max-open-slots", ServiceConfig, "max_open_slots", POSITIVE_INT,
     "open engine replies across all calls; past it RESOURCE_EXHAUSTED"),
    ("--slot-queue-events", ServiceConfig, "slot_queue_events", POSITIVE_INT,
     "events buffered per caller before old progress is dropped"),
    ("--max-callers-per-call", ServiceConfig, "max_callers_per_operation", POSITIVE_INT,
     "callers attached to one request_id at most; past it RESOURCE_EXHAUSTED"),
    ("--max-streams-per-connection", ServiceConfig, "max_concurrent_streams", POSITIVE_INT,
     "HTTP/2 streams (calls) one client connection may have open at once"),
    ("--max-message-bytes", ServiceConfig, "max_message_bytes", POSITIVE_INT,
     "largest gRPC message accepted, bytes"),
    ("--retry-window", ServiceConfig, "retry_window_s", NON_NEGATIVE_FLOAT,
     "seconds a finished call is remembered for same-request-id retries"),
    ("--retry-max-records", ServiceConfig, "retry_max_records", POSITIVE_INT,
     "finished calls remembered for retries, at most"),
    ("--detach-grace", ServiceConfig, "detach_grace_s", NON_NEGATIVE_FLOAT,
     "seconds an operation whose callers all left keeps running for a retry to attach"),
    ("--shutdown-grace", ServiceConfig, "shutdown_grace_s", NON_NEGATIVE_FLOAT,
     "seconds running calls get to finish on SIGTERM"),
    ("--metrics-port", ServiceConfig, "metrics_port", NON_NEGATIVE_INT,
     "serve Prometheus /metrics on this HTTP port, on the --listen host (0: off)"),
    ("--metrics-listen", ServiceConfig, "metrics_listen", OPTIONAL_ADDRESS,
     "serve Prometheus /metrics on HOST:PORT instead (e.g. 0.0.0.0:9090 for a scraper)"),
    ("--engines-file", ServiceConfig, "engines_file", FILE,
     "a file of engines, one [NAME=]ENDPOINT per line (# comments), for large N; re-read when "
     "it changes (a ConfigMap update too) and on SIGHUP"),
    ("--engines-file-interval", ServiceConfig, "engines_file_interval_s", POSITIVE_FLOAT,
     "seconds between checks of --engines-file for a change"),
    ("--engines-dns", ServiceConfig, "engines_dns", str,
     "NAME:PORT: every A/AAAA record of NAME is an engine at tcp://ADDRESS:PORT (a Kubernetes "
     "headless Service), named by its pod's hostname (SRV) or its address; re-resolved "
     "every --engines-dns-interval and on SIGHUP"),
    ("--engines-dns-interval", ServiceConfig, "engines_dns_interval_s", POSITIVE_FLOAT,
     "seconds between lookups of --engines-dns"),
    ("--dns-server", ServiceConfig, "dns_server", str,
     "IP[:PORT] of the DNS server for --engines-dns (default: the system's resolver)"),
    ("--engine-leave-grace", ServiceConfig, "engine_leave_grace_s", NON_NEGATIVE_FLOAT,
     "seconds a removed engine's calls in flight get to finish before they end UNAVAILABLE"),
    ("--ready-min-engines", ServiceConfig, "ready_min_engines", NON_NEGATIVE_INT,
     "readiness (health SERVING) needs this many engines up (0: every engine)"),
    ("--tls-cert", SecurityConfig, "tls_cert", FILE, "PEM server certificate chain: serve TLS"),
    ("--tls-key", SecurityConfig, "tls_key", FILE, "PEM server private key"),
    ("--tls-client-ca", SecurityConfig, "tls_client_ca", FILE,
     "PEM CA that client certificates must chain to (mutual TLS)"),
    ("--auth-token", SecurityConfig, "auth_token", str,
     "require 'authorization: Bearer TOKEN' (prefer the variable or --auth-token-file)"),
    ("--auth-token-file", SecurityConfig, "auth_token_file", FILE,
     "file holding the bearer token callers must send"),
    ("--auth-exempt-health", SecurityConfig, "auth_exempt_health", BOOL_OR_BARE,
     "grpc.health.v1 needs no token (for probes); bare flag or true/false"),
    ("--engine-curve-server-key", LinkConfig, "curve_server_key", FILE,
     "CURVE: the engines' public key file; encrypts the engine link"),
    ("--engine-curve-client-key", LinkConfig, "curve_client_key", FILE,
     "CURVE: this service's key pair file (.key_secret)"),
    ("--heartbeat-interval", LinkConfig, "heartbeat_ivl_s", POSITIVE_FLOAT,
     "seconds between engine heartbeats"),
    ("--heartbeat-timeout", LinkConfig, "heartbeat_timeout_s", POSITIVE_FLOAT,
     "seconds without a heartbeat before an engine is unreachable"),
    ("--heartbeat-rate", LinkConfig, "heartbeat_rate", POSITIVE_FLOAT,
     "heartbeats a second, all engines together, at most: with more engines than rate x "
     "interval, interval and timeout grow in proportion (1,024 engines: 1.02 s / 3.07 s)"),
    ("--heartbeat-interval-max", LinkConfig, "heartbeat_ivl_max_s", POSITIVE_FLOAT,
     "the longest interval --heartbeat-rate may scale heartbeats to, seconds"),
    ("--reconnect-interval", LinkConfig, "reconnect_ivl_s", POSITIVE_FLOAT,
     "first ZMQ reconnect delay, seconds"),
    ("--reconnect-interval-max", LinkConfig, "reconnect_ivl_max_s", POSITIVE_FLOAT,
     "largest ZMQ reconnect delay, seconds"),
    ("--max-frame-bytes", LinkConfig, "max_frame_bytes", POSITIVE_INT,
     "largest engine frame accepted, bytes"),
    ("--send-hwm", LinkConfig, "send_hwm", POSITIVE_INT,
     "requests queued per engine socket; past it UNAVAILABLE"),
    ("--recv-hwm", LinkConfig, "recv_hwm", POSITIVE_INT,
     "engine replies queued by ZMQ per engine socket before it stops reading"),
    ("--max-status-probes", LinkConfig, "max_status_probes", POSITIVE_INT,
     "status probes in flight per engine (apart from the calls' slots)"),
)  # fmt: skip

FLAG_OF_FIELD = {name: flag for flag, _cls, name, _type, _help in SERVICE_FLAGS}


def _default(cls: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def log_options(level: str, per_call: bool) -> list[Any]:
    """--log-level/--log-format for the commands that run the service (see control_service.log)."""
    return [
        option("--log-level", type=click.Choice(LOG_LEVELS), default=level, per_call=per_call,
               help="service log level"),
        option("--log-format", type=click.Choice(("auto", "json", "console")), default="auto",
               per_call=per_call,
               help="service log lines on stderr: json, console, or auto (console on a terminal)"),
    ]  # fmt: skip


def configure_logging(level: str, log_format: str) -> None:
    log.configure(level, json={"auto": None, "json": True, "console": False}[log_format])


def _options() -> list[Any]:
    options = [
        option("--engine", multiple=True, type=CommaList("[NAME=]ENDPOINT"),
               help="an engine as [NAME=]ENDPOINT, repeatable (variable: comma-separated)"),
        option("--embedded-engines", type=NON_NEGATIVE_INT, default=0, metavar="N",
               help="start N engine_stub processes and serve them"),
        option("--embedded-engine", is_flag=True, per_call=True,
               help="same as --embedded-engines 1"),
        option("--embedded-transport", type=click.Choice(("ipc", "tcp")), default="ipc",
               help="how embedded engines bind: ipc (private temp dir) or tcp "
               "(127.0.0.1, any port)"),
        option("--engine-args", type=Words(), default="",
               help="extra engine_stub arguments, one shell-quoted string"),
        *log_options("info", per_call=False),
    ]  # fmt: skip
    for flag, cls, name, kind, help_ in SERVICE_FLAGS:
        attrs = kind if isinstance(kind, dict) else {"type": kind}
        options.append(option(flag, default=_default(cls, name), help=help_, **attrs))
    return options


def engine_configs(specs: Sequence[str]) -> list[EngineConfig]:
    """--engine values as EngineConfigs; bare endpoints are named engine (or engine-I)."""
    if len(specs) == 1:
        return [EngineConfig.parse(specs[0])]
    return [EngineConfig.parse(spec, default_name=f"engine-{i}") for i, spec in enumerate(specs)]


def service_config(params: dict[str, Any], embedded: int) -> ServiceConfig:
    """The ServiceConfig the flags describe; embedded engines stand in under their future names,
    so everything is validated before any process starts."""
    placeholders = [EngineConfig(f"embedded-{i}", f"ipc://embedded-{i}") for i in range(embedded)]
    engines = engine_configs(params["engine"]) + placeholders
    if not (engines or params["engines_file"] or params["engines_dns"]):
        raise ConfigError(
            "at least one engine is required (--engine, --engines-file, --engines-dns or "
            "--embedded-engines)"
        )
    if params["engines_file"]:  # read at start as the service will: a bad file exits 2 here
        load_engines_beside(params["engines_file"], engines)
    fields: dict[type, dict[str, Any]] = {ServiceConfig: {}, LinkConfig: {}, SecurityConfig: {}}
    for flag, cls, name, _kind, _help in SERVICE_FLAGS:
        fields[cls][name] = params[flag.removeprefix("--").replace("-", "_")]
    security = SecurityConfig(**fields[SecurityConfig])
    security.token()  # a bad token file fails at start, with the rest of the configuration
    return ServiceConfig(
        engines=tuple(engines),
        link=LinkConfig(**fields[LinkConfig]),
        security=security,
        **fields[ServiceConfig],
    )


@dataclass(frozen=True, slots=True)
class Serve:
    """A validated `serve` command line, ready to run."""

    config: ServiceConfig
    explicit: tuple[EngineConfig, ...]  # the configured engines, without embedded placeholders
    embedded: int
    transport: str
    engine_args: tuple[str, ...]
    log_level: str
    log_format: str

    async def run(self, out: TextIO, err: TextIO) -> int:
        configure_logging(self.log_level, self.log_format)
        try:
            await self._serve()
        except ControlError as error:
            print_error(error, err)
            return exit_codes.FAILURE
        except (OSError, RuntimeError) as error:  # e.g. grpc's "Failed to bind to address"
            err.write(f"error: {error}\n")
            return exit_codes.FAILURE
        return exit_codes.OK

    async def _serve(self) -> None:
        from control_service.cli.embedded import EmbeddedEngines
        from control_service.server import serve
        from control_service.server.tracing import ServerTracing

        tracing = ServerTracing.from_env()  # before any engine starts: bad OTEL_* is exit 2
        if not self.embedded:
            await serve(self.config, tracing)
            return
        engines = EmbeddedEngines(
            self.embedded,
            transport=self.transport,  # type: ignore[arg-type]
            extra_args=self.engine_args,
            name_prefix="embedded",
        )
        async with engines as started:
            await serve(dataclasses.replace(self.config, engines=self.explicit + started), tracing)


def _command(**params: Any) -> Serve:
    embedded = params["embedded_engines"] or (1 if params["embedded_engine"] else 0)
    with config_errors(FLAG_OF_FIELD):
        config = service_config(params, embedded)
        explicit = tuple(engine_configs(params["engine"]))
    return Serve(
        config, explicit, embedded, params["embedded_transport"], params["engine_args"],
        params["log_level"], params["log_format"],
    )  # fmt: skip


def _build() -> click.Command:
    callback = with_options(_options(), _command)
    return click.command(
        "serve",
        context_settings=CONTEXT,
        help="Run the control service until SIGTERM/SIGINT, then stop gracefully.",
        epilog=exit_codes.HELP,
    )(callback)


command = _build()
