"""`control-service call ACTION`: one call to a running service, its events as they arrive.

The connection flags (--target, --token, TLS, ...) belong to `call` and to every action, so
they are accepted before or after the action (`call --target H:P status`, `call status --target
H:P`); a flag on the command line wins over its variable wherever it was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click
from click.core import ParameterSource

from control_service.cli import exit_codes
from control_service.cli.output import CallOutput, print_error
from control_service.cli.params import (
    CONTEXT,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    option,
    with_options,
)
from control_service.client import ClientConfig, ControlClient, Outcome, StepTimeouts, TlsConfig
from control_service.client._utils import checked_request_id
from control_service.errors import ControlError
from control_service.protocol.names import PAUSE_MODES

FILE = click.Path(path_type=Path)
CONNECTION = (
    option("--target", default="127.0.0.1:50051", help="the service's HOST:PORT"),
    option("--timeout", type=POSITIVE_FLOAT, default=None,
           help="operation timeout in seconds (none: the server's default)"),
    option("--retries", type=NON_NEGATIVE_INT, default=0,
           help="retries of an UNAVAILABLE call, with the same request id"),
    option("--token", default=None, help="bearer token sent as 'authorization: Bearer TOKEN'"),
    option("--tls-ca", type=FILE, default=None, help="PEM root certificate(s); enables TLS"),
    option("--tls-cert", type=FILE, default=None,
           help="PEM client certificate chain (mTLS); enables TLS"),
    option("--tls-key", type=FILE, default=None, help="PEM client private key (mTLS)"),
    option("--tls-server-name", default=None, help="expected server name in its certificate"),
    option("--keepalive", type=NON_NEGATIVE_FLOAT, default=30.0,
           help="seconds between HTTP/2 pings during a call (0: off)"),
    option("--json", "json_lines", is_flag=True, per_call=True,
           help="print events as JSON lines"),
)  # fmt: skip
CONNECTION_NAMES = (
    "target", "timeout", "retries", "token", "tls_ca", "tls_cert", "tls_key", "tls_server_name",
    "keepalive", "json_lines",
)  # fmt: skip
_RANK = {ParameterSource.COMMANDLINE: 3, ParameterSource.ENVIRONMENT: 2}

REQUEST_ID = option("--request-id", per_call=True, default=None,
                    help="request id (none: a new one, printed first)")  # fmt: skip
ENGINES = option("--engine", "engines", multiple=True, per_call=True, metavar="NAME",
                 help="target this engine, repeatable (none: all)")  # fmt: skip


def connection(ctx: click.Context) -> dict[str, Any]:
    """The connection flags of `call` and of its action: per flag, the better-sourced value."""
    parent = ctx.parent
    assert parent is not None
    merged = {}
    for name in CONNECTION_NAMES:
        here = _RANK.get(ctx.get_parameter_source(name), 0)  # type: ignore[arg-type]
        there = _RANK.get(parent.get_parameter_source(name), 0)  # type: ignore[arg-type]
        merged[name] = parent.params[name] if there > here else ctx.params[name]
    return merged


def client_config(flags: dict[str, Any]) -> ClientConfig:
    """The ClientConfig the connection flags describe; ControlError if they do not fit."""
    tls = None
    if flags["tls_ca"] or flags["tls_cert"] or flags["tls_key"] or flags["tls_server_name"]:
        tls = TlsConfig(flags["tls_ca"], flags["tls_cert"], flags["tls_key"],
                        flags["tls_server_name"])  # fmt: skip
    return ClientConfig(
        target=flags["target"],
        timeout_s=flags["timeout"],
        retries=flags["retries"],
        tls=tls,
        bearer_token=flags["token"],
        keepalive_time_s=flags["keepalive"] or None,
    )


@dataclass(frozen=True, slots=True)
class Call:
    """A validated `call` command line, ready to run."""

    action: str  # pause | update-weights | stage-weights | resume | refit | status
    client: ClientConfig
    json_lines: bool = False
    engines: tuple[str, ...] = ()
    request_id: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)  # the action's own

    async def run(self, out: TextIO, err: TextIO) -> int:
        return await self.run_with(CallOutput(out, json_lines=self.json_lines), err)

    async def run_with(self, output: CallOutput, err: TextIO) -> int:
        try:
            async with ControlClient(self.client) as client:
                if self.action == "status":
                    output.status(await client.status(list(self.engines)))
                else:
                    output.outcome(await self._mutate(client, output))
        except ControlError as error:
            output.close()
            print_error(error, err)
            return exit_codes.for_status(error.code)
        finally:
            output.close()
        return exit_codes.OK

    async def _mutate(self, client: ControlClient, output: CallOutput) -> Outcome:
        request_id = checked_request_id(self.request_id)  # fails before the header prints
        if not self.json_lines:
            output.line(f"{self.action} request_id={request_id}")
        a = self.arguments
        common: dict[str, Any] = {
            "request_id": request_id, "engines": list(self.engines), "on_event": output,
        }  # fmt: skip
        common["max_failed_engines"] = a["max_failed_engines"]
        if self.action == "pause":
            return await client.pause(a["mode"], clear_cache=a["clear_cache"], **common)
        if self.action == "update-weights":
            return await client.update_weights(a["uri"], a["version"], **common)
        if self.action == "stage-weights":
            return await client.stage_weights(a["uri"], a["version"], **common)
        if self.action == "refit":
            steps = StepTimeouts(a["pause_timeout"], a["update_timeout"], a["resume_timeout"],
                                 a["stage_timeout"])  # fmt: skip
            return await client.refit(
                a["uri"], a["version"], mode=a["mode"], clear_cache=a["clear_cache"],
                on_failure=a["on_failure"], steps=steps, stage=a["stage"], **common,
            )  # fmt: skip
        return await client.resume(**common)


def _group(**_flags: Any) -> None:
    """Call a running service and print its events, one line each."""


command = click.group("call", context_settings=CONTEXT, epilog=exit_codes.HELP)(
    with_options(CONNECTION, _group)
)


def _action(name: str, help_: str, *options: Any) -> None:
    """Register an action: its own options, then every connection flag again."""

    @click.pass_context
    def callback(ctx: click.Context, **params: Any) -> Call:
        flags = connection(ctx)
        try:
            config = client_config(flags)
        except ControlError as error:
            raise click.UsageError(error.message) from None
        own = {k: v for k, v in params.items() if k not in CONNECTION_NAMES}
        engines = own.pop("engines", ())
        request_id = own.pop("request_id", None)
        return Call(name, config, flags["json_lines"], tuple(engines), request_id, own)

    decorated = with_options((*options, *CONNECTION), callback)
    command.command(
        name, context_settings=CONTEXT, help=help_, short_help=help_, epilog=exit_codes.HELP
    )(decorated)


MODE = option("--mode", type=click.Choice(PAUSE_MODES), default=None, per_call=True,
              help="pause mode: abort | wait | keep (default: the server's)")  # fmt: skip
CLEAR = option("--clear-cache", is_flag=True, per_call=True, help="also drop the KV cache")
URI = click.argument("uri")
VERSION = click.argument("version")
STEP_TIMEOUTS = tuple(
    option(f"--{step}-timeout", type=POSITIVE_FLOAT, default=None, per_call=True, metavar="S",
           help=f"limit for the {step} step, seconds (none: no limit)")
    for step in ("pause", "update", "resume", "stage")
)  # fmt: skip
STAGE = option("--stage", is_flag=True, per_call=True,
               help="load while the engines serve; pause them only for the swap")  # fmt: skip
ON_FAILURE = option(
    "--on-failure", type=click.Choice(("resume_old_weights", "stay_paused")),
    default="resume_old_weights", per_call=True, help="what to do if a step fails",
)  # fmt: skip

MAX_FAILED = option(
    "--max-failed-engines", type=NON_NEGATIVE_INT, default=0, per_call=True, metavar="N",
    help="engines that may fail while the call still succeeds (0: every engine must)",
)  # fmt: skip

_action("pause", "pause the engines", MODE, CLEAR, MAX_FAILED, REQUEST_ID, ENGINES)
_action("update-weights", "load new weights into the paused engines",
        URI, VERSION, MAX_FAILED, REQUEST_ID, ENGINES)  # fmt: skip
_action("stage-weights", "load new weights beside the served ones while the engines serve",
        URI, VERSION, MAX_FAILED, REQUEST_ID, ENGINES)  # fmt: skip
_action("resume", "let the engines serve again", MAX_FAILED, REQUEST_ID, ENGINES)
_action("refit", "pause -> update weights -> resume as one call, safe on failure",
        URI, VERSION, MODE, CLEAR, STAGE, ON_FAILURE, *STEP_TIMEOUTS, MAX_FAILED,
        REQUEST_ID, ENGINES)  # fmt: skip
_action("status", "print every engine's reachability and state", ENGINES)
