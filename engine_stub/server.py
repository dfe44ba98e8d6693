"""The stub engine's ZMQ side: the ROUTER loop, per-request dispatch, replies and test knobs.

One ROUTER socket; each service-side DEALER is a peer identified by its routing identity. The
socket is a plain (not zmq.asyncio) one read by `loop.add_reader`, and replies are sent with a
non-blocking send: no future and no task per message, so the benchmark's instant engine costs
about what a bare echo costs (the same reason as in control_service/engine_link.py). Every
decision about *when* and *whether* to reply lives here (one mutation at a time, timeouts,
cancel, reply delay, silence, injected failures), while engine.py decides *what* an operation
does. Nothing a peer sends can stop the loop: bad frames are answered INVALID_ARGUMENT when they
name a request, else logged and dropped; replies to a peer that is gone are dropped and logged.

stdout is a machine interface (JSON lines: `ready`, `request`, `knob`); human logs go to stderr.
Knobs arrive as JSON lines on stdin, read by a daemon thread so that a blocking read never holds
the event loop and stdin EOF merely ends knob reading.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import zmq
import zmq.asyncio
import zmq.auth

from control_service.protocol import wire

from .engine import Engine, OpError, SimConfig, clip

log = logging.getLogger("engine_stub")

GARBAGE = b"\xff\x00 this frame is not JSON"
# Plain ints: flag arithmetic on pyzmq's enum constants builds enum objects on every send.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_BOOL_KNOBS = ("instant", "silent", "garbage")


@dataclass
class Knobs:
    """Test behaviours, set by flags at start-up and by JSON lines on stdin at run time."""

    reply_delay: float = 0.0
    instant: bool = False
    silent: bool = False
    garbage: bool = False
    fail_next: tuple[str, str] | None = None  # (code, message) for the next mutation
    hang_next: str | None = None  # the next request of this method hangs until cancelled


@dataclass(frozen=True)
class ServerConfig:
    bind: str
    name: str = "engine-stub"
    # CURVE: this engine's key pair, and the folder of client public keys it accepts.
    curve_secret_key: Path | None = None
    curve_allowed_clients: Path | None = None
    sim: SimConfig = field(default_factory=SimConfig)
    knobs: Knobs = field(default_factory=Knobs)


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
            if value not in (None, "pause", "update_weights", "resume"):
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
        raise ValueError('fail_next must be {"code": <gRPC status name>, "message": str} or null')
    message = value.get("message", "")
    if not isinstance(message, str):
        raise ValueError("fail_next.message must be a string")
    return {"code": value["code"], "message": message or f"injected {value['code']}"}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


class Server:
    """Binds the ROUTER, serves until SIGTERM/SIGINT, and applies knobs."""

    def __init__(self, config: ServerConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.knobs = config.knobs
        self.engine.set_simulating(not self.knobs.instant)
        self._sock: zmq.Socket[bytes] | None = None
        self._mutation: tuple[str, asyncio.Task[None]] | None = None
        self._delayed: asyncio.Queue[tuple[float, bytes, bytes]] = asyncio.Queue()
        self._pending_delayed = 0
        self._closing = False
        self._draining = False  # inside _drain, whose loop looks at EVENTS after each send

    # ------------------------------------------------------------------------------ lifecycle

    async def serve(self) -> int:
        """Run until a signal; return the process exit code (0, or 2 when the bind fails)."""
        ctx = zmq.asyncio.Context()  # asyncio for the ZAP authenticator; the ROUTER is plain
        sock: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        auth = self._curve(ctx, sock)
        try:
            sock.bind(self.config.bind)
        except zmq.ZMQError as err:
            log.error("cannot bind %s: %s", self.config.bind, err)
            sock.close(linger=0)
            ctx.term()
            return 2
        self._sock = sock
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("%s listening on %s (pid %d)", self.config.name, endpoint, os.getpid())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # before "ready": a prompt SIGTERM exits 0
            loop.add_signal_handler(sig, stop.set)
        emit_event("ready", endpoint=endpoint, pid=os.getpid())
        try:
            return await self._run_until_stopped(stop)
        finally:
            if auth is not None:
                auth.stop()
            self._sock = None
            sock.close(linger=0)
            ctx.term()

    def _curve(self, ctx: zmq.asyncio.Context, sock: zmq.Socket) -> Any:
        """Encrypt the link, and let in only the allow-listed client keys (a ZAP handler)."""
        c = self.config
        if c.curve_secret_key is None:
            return None
        from zmq.auth.asyncio import AsyncioAuthenticator

        auth = AsyncioAuthenticator(ctx)
        auth.start()
        allowed = (
            str(c.curve_allowed_clients) if c.curve_allowed_clients else zmq.auth.CURVE_ALLOW_ANY
        )
        auth.configure_curve(domain="*", location=allowed)
        public, secret = zmq.auth.load_certificate(c.curve_secret_key)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        return auth

    async def _run_until_stopped(self, stop: asyncio.Event) -> int:
        loop = asyncio.get_running_loop()
        self._start_knob_reader(loop)
        workers = [
            asyncio.create_task(self.engine.run(), name="ticker"),
            asyncio.create_task(self._delayed_sender(), name="delayed-sender"),
        ]
        assert self._sock is not None
        fd = self._sock.FD
        loop.add_reader(fd, self._drain)
        loop.call_soon(self._drain)  # anything that came in before the reader was added
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([stopper, *workers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(fd)
        code = 0 if stopper in done else 1
        for task in done - {stopper}:
            log.error("worker %s ended unexpectedly: %r", task.get_name(), task.exception())
        await self._shutdown([stopper, *workers])
        log.info("%s stopped", self.config.name)
        return code

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        self._closing = True
        if self._mutation is not None:
            tasks.append(self._mutation[1])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------ receiving

    def _drain(self) -> None:
        """Handle every queued message. ZMQ's FD is edge-triggered: read until EVENTS shows none
        (a send can swallow the edge too, so `_send_now` looks again after sending, unless it
        runs in here)."""
        sock = self._sock
        self._draining = True
        try:
            while sock is not None and not self._closing and _readable(sock):
                frames = sock.recv_multipart(_NOBLOCK)
                try:
                    self._on_frames(frames)
                except Exception:  # a bug must cost one frame, never the engine
                    log.exception("unexpected error handling a frame; dropped")
                sock = self._sock
        finally:
            self._draining = False

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 3 or frames[1]:
            self._on_bad_envelope(frames)
            return
        identity, _, body = frames
        try:
            request = wire.decode_request(body)
        except wire.WireError as err:
            self._reject(identity, err.request_id, f"bad request: {err.reason}")
            return
        self._dispatch(identity, request)

    def _on_bad_envelope(self, frames: list[bytes]) -> None:
        request_id = None
        if len(frames) >= 2:
            try:
                request_id = wire.decode_request(frames[-1]).request_id
            except wire.WireError as err:
                request_id = err.request_id
        reason = f"malformed envelope: {len(frames)} frames, expected [identity, b'', body]"
        self._reject(frames[0], request_id, reason)

    def _reject(self, identity: bytes, request_id: str | None, reason: str) -> None:
        if request_id is None:
            log.warning("dropped a frame from peer %s: %s", identity.hex(), reason)
            return
        log.warning("rejected request %s: %s", request_id, reason)
        self._reply(identity, wire.error(request_id, "INVALID_ARGUMENT", clip(reason)))

    def _dispatch(self, identity: bytes, request: wire.Request) -> None:
        method = request.method
        if method == "status":
            self._reply(identity, self.engine.status(request.request_id))
            return
        emit_event(
            "request",
            request_id=request.request_id,
            method=method,
            args=request.args,
            timeout_s=request.timeout_s,
        )
        if method == "cancel":
            self._cancel(request.request_id)
            return
        if self._mutation is not None and self._mutation[0] == request.request_id:
            log.info("duplicate %s ignored: it is running and will answer", request.request_id)
            return
        if self.knobs.fail_next is not None:
            code, message = self.knobs.fail_next
            self.knobs.fail_next = None
            self._reply(identity, wire.error(request.request_id, code, message))
            return
        if self._mutation is not None:
            self._refuse_concurrent(identity, request)
            return
        if self.knobs.instant:
            self._reply(identity, self.engine.instant(request))
            return
        task = asyncio.create_task(self._run_mutation(identity, request))
        self._mutation = (request.request_id, task)

    def _refuse_concurrent(self, identity: bytes, request: wire.Request) -> None:
        running = self._mutation[0] if self._mutation else "?"
        message = f"{request.method} refused: operation {running} is still running"
        self._reply(identity, wire.error(request.request_id, "ABORTED", message))

    def _cancel(self, request_id: str) -> None:
        if self._mutation is not None and self._mutation[0] == request_id:
            log.info("cancelling %s", request_id)
            self._mutation[1].cancel()
        else:
            log.info("cancel %s: no such running operation", request_id)

    # ------------------------------------------------------------------------------ operations

    async def _run_mutation(self, identity: bytes, request: wire.Request) -> None:
        try:
            reply = await self._execute_bounded(request, functools.partial(self._reply, identity))
        finally:
            self._mutation = None
        self._reply(identity, reply)

    async def _execute_bounded(self, request: wire.Request, emit: Any) -> wire.Reply:
        """The operation under its timeout_s, every way it can end turned into one reply."""
        rid, method = request.request_id, request.method
        if self.knobs.hang_next == method:  # a stuck engine: not even its own timeout ends it
            self.knobs.hang_next = None
            log.info("hang_next: %s %s hangs until cancelled", method, rid)
            try:
                await asyncio.get_running_loop().create_future()
            except asyncio.CancelledError:
                if self._closing:
                    raise
                return wire.error(rid, "CANCELLED", f"{method} cancelled")
        try:
            async with asyncio.timeout(request.timeout_s):
                return await self._execute(request, emit)
        except TimeoutError:
            return wire.error(
                rid, "DEADLINE_EXCEEDED", f"{method} not done within {request.timeout_s:g}s"
            )
        except asyncio.CancelledError:
            if self._closing:
                raise
            return wire.error(rid, "CANCELLED", f"{method} cancelled")
        except OpError as err:
            return wire.error(rid, err.code, err.message)
        except Exception as err:
            log.exception("%s %s failed", method, rid)
            return wire.error(rid, "INTERNAL", clip(f"{type(err).__name__}: {err}"))

    async def _execute(self, request: wire.Request, emit: Any) -> wire.Reply:
        rid, args = request.request_id, request.args
        if request.method == "pause":
            return await self.engine.pause(rid, args, emit)
        if request.method == "resume":
            return self.engine.resume(rid)
        return await self.engine.update_weights(rid, args, emit)

    # ------------------------------------------------------------------------------ sending

    def _reply(self, identity: bytes, reply: wire.Reply) -> None:
        """Send one reply, subject to the silent / garbage / reply_delay knobs."""
        knobs = self.knobs
        if knobs.silent:
            log.debug("silent: dropped %s for %s", reply.kind, reply.request_id)
            return
        body = wire.encode_reply(reply)
        if knobs.garbage:
            knobs.garbage = False
            self._out(identity, GARBAGE)
        self._out(identity, body)

    def _out(self, identity: bytes, body: bytes) -> None:
        # Once anything is queued, everything queues behind it, so replies never overtake.
        if self.knobs.reply_delay > 0 or self._pending_delayed:
            self._pending_delayed += 1
            self._delayed.put_nowait((time.monotonic() + self.knobs.reply_delay, identity, body))
        else:
            self._send_now(identity, body)

    async def _delayed_sender(self) -> None:
        while True:
            due, identity, body = await self._delayed.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._pending_delayed -= 1
            self._send_now(identity, body)

    def _send_now(self, identity: bytes, body: bytes) -> None:
        """Non-blocking: a peer that is gone or not reading loses the reply, nobody else waits."""
        sock = self._sock
        if sock is None or self._closing:
            return
        try:
            sock.send(identity, _MORE_NOBLOCK)  # ROUTER_MANDATORY: raises if the peer is gone
            sock.send(b"", _MORE_NOBLOCK)
            sock.send(body, _NOBLOCK)
        except zmq.ZMQError as err:
            _log_send_failure(identity, err)
        # The send may have taken the edge of a request that came in. Inside _drain its loop
        # looks next anyway; asking here too would cost a second system call per reply.
        if not self._draining and _readable(sock):
            asyncio.get_running_loop().call_soon(self._drain)

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
            knobs.instant = changes["instant"]
            self.engine.set_simulating(not knobs.instant)
        if "fail_next" in changes:
            fail = changes["fail_next"]
            knobs.fail_next = None if fail is None else (fail["code"], fail["message"])


def _read_stdin() -> bytes:
    try:
        return os.read(0, 65536)
    except OSError:  # no stdin at all (closed fd 0): same as EOF
        return b""


def _readable(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


def _log_send_failure(identity: bytes, err: zmq.ZMQError) -> None:
    if isinstance(err, zmq.Again):
        log.warning("peer %s is not reading (high-water mark): reply dropped", identity.hex())
    elif isinstance(err, zmq.ZMQError) and err.errno == zmq.EHOSTUNREACH:
        log.warning("peer %s is gone: reply dropped", identity.hex())
    else:
        log.error("sending to peer %s failed: %r", identity.hex(), err)


async def run(config: ServerConfig) -> int:
    """Build the engine and serve it; the process's exit code."""
    return await Server(config, Engine(config.sim)).serve()
