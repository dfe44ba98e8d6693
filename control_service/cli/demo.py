"""The self-contained demo: one process runs what an RL loop does against a real engine.

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
from typing import TextIO

import grpc

from control_service.cli.embedded import EmbeddedEngines
from control_service.cli.render import EventPrinter, format_error, format_status
from control_service.client import ClientConfig, ControlClient, Outcome, new_request_id
from control_service.errors import ControlError
from control_service.server.config import ServiceConfig

EXIT_OK = 0
EXIT_FAILED = 1


@dataclass(frozen=True, slots=True)
class DemoOptions:
    engines: int = 1
    engine_args: tuple[str, ...] = ()
    transport: str = "ipc"
    timeout_s: float = 60.0
    engine_logs: bool = False
    ready_timeout_s: float = 30.0


class DemoCheckFailed(Exception):
    """The calls succeeded but the engines do not report what they should."""


async def run(options: DemoOptions, out: TextIO) -> int:
    """Run the whole demo, printing as it goes; 0 on success, non-zero with the reason otherwise."""
    printer = EventPrinter(out, tty=out.isatty())
    try:
        with tempfile.TemporaryDirectory(prefix="control-service-demo-") as tmp:
            await _run(options, Path(tmp), printer)
    except ControlError as error:
        printer.close()
        for line in format_error(error):
            printer.line(line)
        return EXIT_FAILED
    except DemoCheckFailed as error:
        printer.line(f"error: demo check failed: {error}")
        return EXIT_FAILED
    except Exception as error:  # noqa: BLE001 - the demo reports any failure as one line
        printer.line(f"error: {type(error).__name__}: {error}")
        return EXIT_FAILED
    printer.line("demo ok")
    return EXIT_OK


async def _run(options: DemoOptions, tmp: Path, printer: EventPrinter) -> None:
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


async def _cycles(client: ControlClient, tmp: Path, printer: EventPrinter) -> None:
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


async def _checkpoint(tmp: Path, version: str, seed: int, printer: EventPrinter) -> Path:
    checkpoint = tmp / f"checkpoint-v{version}"
    size = await asyncio.to_thread(_write_checkpoint, checkpoint, seed)
    printer.line(f"== cycle {version}: checkpoint {checkpoint} ({size} bytes)")
    return checkpoint


async def _step(
    printer: EventPrinter, what: str, make_call: Callable[[str], Awaitable[Outcome]]
) -> Outcome:
    """One call with a request id printed up front (what a trainer would log to retry by)."""
    request_id = new_request_id()
    printer.line(f"-- {what} request_id={request_id}")
    outcome = await make_call(request_id)
    printer.close()
    return outcome


async def _status(client: ControlClient, printer: EventPrinter) -> None:
    printer.line("== status")
    status = await client.status()
    for name in sorted(status.engines):
        printer.line(format_status(status.engines[name]))
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
