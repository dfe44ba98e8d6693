"""The stub engine as a process: control_service.engine's server, plus the stub's test interface.

The protocol's duties (frames, one mutation at a time, status never queued, cancel, timeouts,
progress, repeats) are the library's; handler.py adapts the simulation (engine.py) to it. What
stays here is what makes the stub a test peer: stdout is a machine interface (JSON lines:
`ready`, `request`, `knob`; human logs go to stderr), knobs arrive as JSON lines on stdin (read by
a daemon thread so that a blocking read never holds the event loop and stdin EOF merely ends
knob reading), and the reply knobs (silent, garbage, reply_delay) wrap the library's sender.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from control_service.engine import (
    CurveConfig,
    EngineServer,
    EngineServerConfig,
    serve_until_signalled,
)
from control_service.protocol import names, wire

from .engine import Engine, SimConfig
from .handler import Knobs, StubHandler

log = logging.getLogger("engine_stub")

GARBAGE = b"\xff\x00 this frame is not JSON"
_BOOL_KNOBS = ("instant", "silent", "garbage")


@dataclass(frozen=True)
class ServerConfig:
    bind: str
    name: str = "engine-stub"
    curve: CurveConfig | None = None
    sim: SimConfig = field(default_factory=SimConfig)
    knobs: Knobs = field(default_factory=Knobs)
    # Print a `request` line per request (the tests' proof of delivery); the benchmark turns it
    # off, or every call would pay a JSON line on a pipe nobody reads.
    announce_requests: bool = True

    def engine_server(self) -> EngineServerConfig:
        return EngineServerConfig(bind=self.bind, name=self.name, curve=self.curve)


def emit_event(event: str, **fields: Any) -> None:
    """One JSON line on stdout, flushed: tests and the demo synchronise on these, never on time."""
    try:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):  # the reader went away: the engine keeps running
        pass


def parse_knobs(obj: object) -> dict[str, Any]:
    """Validate one knob line as a whole (all or nothing); raise ValueError naming the problem."""
    if not isinstance(obj, dict) or not obj:
        raise ValueError("a knob line must be a non-empty JSON object")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key in _BOOL_KNOBS:
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            out[key] = value
        elif key == "reply_delay":
            if not _is_number(value) or value < 0:
                raise ValueError("reply_delay must be a number >= 0")
            out[key] = float(value)
        elif key == "fail_next":
            out[key] = _parse_fail_next(value)
        elif key == "hang_next":
            if value is not None and value not in names.MUTATIONS:
                raise ValueError("hang_next must be pause, update_weights, resume or null")
            out[key] = value
        elif key == "exit":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
                raise ValueError("exit must be an integer in 0..255")
            out[key] = value
        else:
            raise ValueError(f"unknown knob {key!r}")
    return out


def _parse_fail_next(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    code = value.get("code") if isinstance(value, dict) else None
    if not isinstance(value, dict) or not isinstance(code, str) or code not in wire.ERROR_CODES:
        raise ValueError(
            'fail_next must be {"code": <gRPC status name>, "message": str, "method": str} or null'
        )
    message = value.get("message", "")
    if not isinstance(message, str):
        raise ValueError("fail_next.message must be a string")
    method = value.get("method")  # only that method's next mutation fails (a bad checkpoint)
    if method is not None and method not in names.MUTATIONS:
        raise ValueError("fail_next.method must be pause, update_weights, resume or stage_weights")
    parsed = {"code": code, "message": message or f"injected {code}"}
    return parsed if method is None else {**parsed, "method": method}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


class Server:
    """The library's server with the stub's handler, knobs and stdout/stdin interface."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.knobs = config.knobs
        self.handler = StubHandler(engine, self.knobs)
        self.server = EngineServer(
            self.handler,
            config.engine_server(),
            on_request=_announce if config.announce_requests else None,
            sender=self._send,
        )
        self._delayed: asyncio.Queue[tuple[float, bytes, bytes]] = asyncio.Queue()
        self._pending_delayed = 0

    async def serve(self) -> int:
        """Run until a signal; return the process exit code (0, or 2 when the bind fails)."""
        loop = asyncio.get_running_loop()
        self._start_knob_reader(loop)
        workers = [
            asyncio.create_task(self.engine.run(), name="ticker"),
            asyncio.create_task(self._delayed_sender(), name="delayed-sender"),
        ]
        try:
            return await serve_until_signalled(self.server, ready=self._ready)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _ready(self, endpoint: str) -> None:
        log.info("%s listening on %s (pid %d)", self.config.name, endpoint, os.getpid())
        emit_event("ready", endpoint=endpoint, pid=os.getpid())

    # ------------------------------------------------------------------------------ sending

    def _send(self, identity: bytes, body: bytes) -> bool | None:
        """Send one reply, subject to the silent / garbage / reply_delay knobs."""
        knobs = self.knobs
        if knobs.silent:
            log.debug("silent: dropped a reply for peer %s", identity.hex())
            return None
        if knobs.garbage:
            knobs.garbage = False
            self._out(identity, GARBAGE)
        return self._out(identity, body)

    def _out(self, identity: bytes, body: bytes) -> bool | None:
        # Once anything is queued, everything queues behind it, so replies never overtake.
        if self.knobs.reply_delay > 0 or self._pending_delayed:
            self._pending_delayed += 1
            self._delayed.put_nowait((time.monotonic() + self.knobs.reply_delay, identity, body))
            return None
        return self.server.send_frame(identity, body)

    async def _delayed_sender(self) -> None:
        while True:
            due, identity, body = await self._delayed.get()
            # Until the due time, not one sleep: uvloop's timers run on libuv's cached
            # millisecond clock and can wake a little early (a CI run saw 0.29996 s for 0.3 s).
            while (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            self._pending_delayed -= 1
            self.server.send_frame(identity, body)

    # ------------------------------------------------------------------------------ knobs

    def _start_knob_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside a BufferedReader
        # holds its lock, and interpreter shutdown then aborts the process (no clean exit 0).
        def read() -> None:
            pending = b""
            while chunk := _read_stdin():
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    try:
                        loop.call_soon_threadsafe(self.apply_knob_line, line)
                    except RuntimeError:  # the loop is closed: we are exiting
                        return
            if pending.strip():  # a last line without its newline
                loop.call_soon_threadsafe(self.apply_knob_line, pending)
            log.info("stdin closed: no more knobs (the engine keeps running)")

        threading.Thread(target=read, name="knobs", daemon=True).start()

    def apply_knob_line(self, raw: bytes) -> None:
        """Apply one JSON knob line and acknowledge it on stdout (`exit` exits instead)."""
        if not raw.strip():
            return
        try:
            changes = parse_knobs(json.loads(raw))
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("bad knob line %r: %s", raw[:200], err)
            emit_event("knob", ok=False, error=str(err))
            return
        self._apply(changes)
        if "exit" in changes:
            log.warning("knob exit: leaving now with code %d", changes["exit"])
            sys.stderr.flush()
            os._exit(changes["exit"])
        log.info("knobs applied: %s", changes)
        emit_event("knob", ok=True, **changes)

    def _apply(self, changes: dict[str, Any]) -> None:
        knobs = self.knobs
        for key in ("reply_delay", "silent", "garbage", "hang_next"):
            if key in changes:
                setattr(knobs, key, changes[key])
        if "instant" in changes:
            self.handler.set_instant(changes["instant"])
        if "fail_next" in changes:
            fail = changes["fail_next"]
            knobs.fail_next = None if fail is None else (fail["code"], fail["message"])
            knobs.fail_method = None if fail is None else fail.get("method")


def _announce(request: wire.Request) -> None:
    """Every request but status, on receipt: proof that it did (or did not) reach the engine."""
    emit_event(
        "request",
        request_id=request.request_id,
        method=request.method,
        args=request.args,
        timeout_s=request.timeout_s,
        **({"trace": request.trace.to_wire()} if request.trace is not None else {}),
    )


def _read_stdin() -> bytes:
    try:
        return os.read(0, 65536)
    except OSError:  # no stdin at all (closed fd 0): same as EOF
        return b""


async def run(config: ServerConfig) -> int:
    """Build the engine and serve it; the process's exit code."""
    return await Server(config, Engine(config.sim)).serve()
