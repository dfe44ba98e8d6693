"""`control-service demo`: one process runs what an RL loop does against a real engine.

Service (ControlServer on 127.0.0.1, any port) + embedded engine_stub + two safetensors
checkpoints; then pause -> update_weights -> resume for version "1" and again for version "2",
and GetStatus. It checks what a trainer would (every engine reports the new version, the digest
changes with the weights, nothing is left paused) so that a zero exit means the loop works.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click
import grpc

from control_service.cli import exit_codes
from control_service.cli.embedded import EmbeddedEngines
from control_service.cli.output import CallOutput
from control_service.cli.params import (
    CONTEXT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    Words,
    option,
    with_options,
)
from control_service.cli.render import format_error
from control_service.cli.serve import configure_logging, log_options
from control_service.client import ClientConfig, ControlClient, Outcome, new_request_id
from control_service.errors import ControlError
from control_service.server.config import ServiceConfig


@dataclass(frozen=True, slots=True)
class DemoOptions:
    engines: int = 1
    engine_args: tuple[str, ...] = ()
    transport: str = "ipc"
    timeout_s: float = 60.0
    engine_logs: bool = False
    ready_timeout_s: float = 30.0
    log_level: str = "warning"
    log_format: str = "auto"

    async def run(self, out: TextIO, err: TextIO) -> int:
        configure_logging(self.log_level, self.log_format)
        return await run(self, out)


class DemoCheckFailed(Exception):
    """The calls succeeded but the engines do not report what they should."""


async def run(options: DemoOptions, out: TextIO) -> int:
    """Run the whole demo, printing as it goes; 0 on success, non-zero with the reason otherwise."""
    printer = CallOutput(out)
    try:
        with tempfile.TemporaryDirectory(prefix="control-service-demo-") as tmp:
            await _run(options, Path(tmp), printer)
    except ControlError as error:
        printer.close()
        for line in format_error(error):
            printer.line(line)
        return exit_codes.FAILURE
    except DemoCheckFailed as error:
        printer.line(f"error: demo check failed: {error}")
        return exit_codes.FAILURE
    except Exception as error:  # noqa: BLE001 - the demo reports any failure as one line
        printer.line(f"error: {type(error).__name__}: {error}")
        return exit_codes.FAILURE
    printer.line("demo ok")
    return exit_codes.OK


async def _run(options: DemoOptions, tmp: Path, printer: CallOutput) -> None:
    from control_service.server import ControlServer

    engines = EmbeddedEngines(
        options.engines,
        transport=options.transport,  # type: ignore[arg-type]
        extra_args=options.engine_args,
        ready_timeout_s=options.ready_timeout_s,
        forward_stderr=options.engine_logs,
    )
    async with engines as configs:
        printer.line("engines: " + ", ".join(f"{e.name} at {e.endpoint}" for e in configs))
        server = ControlServer(ServiceConfig(engines=configs, listen="127.0.0.1:0"))
        port = await server.start()
        printer.line(f"service listening on 127.0.0.1:{port}")
        try:
            if not await server.wait_engines_up(options.ready_timeout_s):
                raise ControlError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"engines not connected within {options.ready_timeout_s:g}s",
                )
            config = ClientConfig(target=f"127.0.0.1:{port}", timeout_s=options.timeout_s)
            async with ControlClient(config) as client:
                await client.wait_ready(options.timeout_s)
                await _cycles(client, tmp, printer)
        finally:
            await server.stop(grace=1.0)


async def _cycles(client: ControlClient, tmp: Path, printer: CallOutput) -> None:
    """Cycle 1 as three calls, cycle 2 as one Refit, then GetStatus; raises DemoCheckFailed on
    a wrong state."""
    digests: dict[str, dict[str, str]] = {}
    checkpoint = await _checkpoint(tmp, "1", 1, printer)
    await _step(printer, "pause", lambda rid: client.pause(request_id=rid, on_event=printer))
    loaded = await _step(
        printer,
        "update_weights version=1",
        lambda rid: client.update_weights(str(checkpoint), "1", request_id=rid, on_event=printer),
    )
    digests["1"] = _check_loaded(loaded, "1")
    resumed = await _step(
        printer, "resume", lambda rid: client.resume(request_id=rid, on_event=printer)
    )
    _check_resumed(resumed, "1")

    checkpoint = await _checkpoint(tmp, "2", 2, printer)
    refitted = await _step(
        printer,
        "refit (pause -> update_weights -> resume as one call) version=2",
        lambda rid: client.refit(str(checkpoint), "2", request_id=rid, on_event=printer),
    )
    digests["2"] = _check_loaded(refitted, "2")
    _check_resumed(refitted, "2")
    _check_digests_differ(digests)
    await _status(client, printer)


async def _checkpoint(tmp: Path, version: str, seed: int, printer: CallOutput) -> Path:
    checkpoint = tmp / f"checkpoint-v{version}"
    size = await asyncio.to_thread(_write_checkpoint, checkpoint, seed)
    printer.line(f"== cycle {version}: checkpoint {checkpoint} ({size} bytes)")
    return checkpoint


async def _step(
    printer: CallOutput, what: str, make_call: Callable[[str], Awaitable[Outcome]]
) -> Outcome:
    """One call with a request id printed up front (what a trainer would log to retry by)."""
    request_id = new_request_id()
    printer.line(f"-- {what} request_id={request_id}")
    outcome = await make_call(request_id)
    printer.close()
    return outcome


async def _status(client: ControlClient, printer: CallOutput) -> None:
    printer.line("== status")
    status = await client.status()
    printer.status(status)
    bad = [
        name
        for name, engine in status.engines.items()
        if not engine.reachable or engine.state.paused or engine.state.weight_version != "2"
    ]
    if bad:
        raise DemoCheckFailed(f"engines not serving version 2 after the demo: {sorted(bad)}")


def _check_loaded(outcome: Outcome, version: str) -> dict[str, str]:
    """Every engine reports `version`; returns each engine's weight digest."""
    states = outcome.states()
    wrong = {e: s.weight_version for e, s in states.items() if s.weight_version != version}
    if not states or wrong:
        reported = wrong or "nothing"
        raise DemoCheckFailed(f"after update_weights({version!r}) engines report {reported}")
    return {engine: state.weight_digest for engine, state in outcome.states().items()}


def _check_resumed(outcome: Outcome, version: str) -> None:
    paused = sorted(e for e, s in outcome.states().items() if s.paused)
    if not outcome.results or paused:
        raise DemoCheckFailed(f"after resume (version {version}) still paused: {paused or 'all'}")


def _check_digests_differ(digests: dict[str, dict[str, str]]) -> None:
    same = sorted(e for e, d in digests["1"].items() if d and d == digests["2"].get(e))
    if same:
        raise DemoCheckFailed(f"weight digest did not change between versions on {same}")


def _write_checkpoint(directory: Path, seed: int) -> int:
    from engine_stub.checkpoint import write_checkpoint

    return write_checkpoint(directory, seed=seed)


def _demo(**params: Any) -> DemoOptions:
    """Start the service with an embedded engine on 127.0.0.1 (any port), then run
    pause -> update_weights -> resume twice (versions 1 and 2), then GetStatus."""
    return DemoOptions(**params)


command = click.command(
    "demo", context_settings={**CONTEXT, "auto_envvar_prefix": None}, epilog=exit_codes.HELP
)(
    with_options(
        [
            option("--embedded-engines", "engines", type=POSITIVE_INT, default=1, per_call=True,
                   metavar="N", help="embedded engines to start"),
            option("--engine-args", type=Words(), default="", per_call=True,
                   help="extra engine_stub arguments, one shell-quoted string"),
            option("--embedded-transport", "transport", type=click.Choice(("ipc", "tcp")),
                   default="ipc", per_call=True, help="how the engines bind"),
            option("--timeout", "timeout_s", type=POSITIVE_FLOAT, default=60.0, per_call=True,
                   help="timeout of each call, seconds"),
            *log_options("warning", per_call=True),
            option("--engine-logs", is_flag=True, per_call=True,
                   help="show the engines' own logs"),
        ],
        _demo,
    )
)  # fmt: skip
