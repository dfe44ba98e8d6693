"""The engine side of the engine protocol: a ZMQ ROUTER that owns the protocol's duties.

An engine supplies an `EngineHandler` (handler.py); this server does the rest, so every engine
built on it gets them right once: envelope and body checks (a bad frame is answered
INVALID_ARGUMENT when it names a request, else logged and dropped), argument checks, one mutation
at a time (a second gets ABORTED naming the running one), `status` never queued behind a
mutation, `cancel` by request_id, `timeout_s` enforced (DEADLINE_EXCEEDED), progress to every
attached peer, repeats of a request_id attached to the running operation or answered from the
record of its outcome (records.py), replies to gone peers dropped (ROUTER_MANDATORY), sends that
never block, CURVE with a ZAP allow-list, and a clean shutdown.

The socket is a plain (not zmq.asyncio) one read by `loop.add_reader`, and replies go out with a
non-blocking send: no future and no task per message, so an engine whose handler answers at once
costs about what a bare echo costs. The running mutation's end is kept by its task's done
callback, not by code inside the task, so a mutation cancelled before it ever started (a `cancel`
read in the same batch) still frees the slot and still gets its CANCELLED reply.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import zmq
import zmq.asyncio
import zmq.auth

from control_service.protocol import names, wire

from .config import EngineServerConfig
from .handler import Done, EngineError, EngineHandler, EngineState, Operation, clip
from .records import OutcomeRecords, Record

log = logging.getLogger("control_service.engine")

# Sends one encoded reply body to one peer; returns False when the peer is known to be gone.
Sender = Callable[[bytes, bytes], "bool | None"]

# Peers one operation answers (the first, and repeats from restarted services): bounded, as
# everything a peer can make grow.
MAX_PEERS_PER_OPERATION = 16

# Plain ints: flag arithmetic on pyzmq's enum constants builds enum objects on every send.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)


class EngineServerError(Exception):
    """The server cannot start (e.g. the endpoint cannot be bound)."""


@dataclass(eq=False, slots=True)
class _Running:
    """The one mutation in progress: its request, the peers waiting on it, and its task."""

    request: wire.Request
    peers: list[bytes]
    op: Operation | None = None
    task: asyncio.Task[None] | None = None
    awaitable: Awaitable[Done] | None = None
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    finished: bool = False


class EngineServer:
    """Serve one handler on one ROUTER until stopped.

    on_request: called with every decoded request except `status` (cancel included), on receipt,
    before it runs (engine_stub prints it, to prove what reached the engine).
    sender: how an encoded reply reaches a peer; by default `send_frame`. A test engine wraps it
    to delay, drop or corrupt replies.
    """

    def __init__(
        self,
        handler: EngineHandler,
        config: EngineServerConfig,
        *,
        on_request: Callable[[wire.Request], None] | None = None,
        sender: Sender | None = None,
    ) -> None:
        self.handler = handler
        self.config = config
        self._on_request = on_request
        self._sender: Sender = sender or self.send_frame
        self._records = OutcomeRecords(config.outcome_records, config.outcome_ttl_s)
        self._running: _Running | None = None
        self._status_tasks: set[asyncio.Task[None]] = set()
        self._sock: zmq.Socket[bytes] | None = None
        self._endpoint = ""
        self._closing = False
        self._draining = False  # inside _drain, whose loop looks at EVENTS after each send

    @property
    def endpoint(self) -> str:
        """The bound endpoint (the real port when bound to port 0); "" before serve()."""
        return self._endpoint

    @property
    def running(self) -> str | None:
        """The request_id of the mutation in progress, if any."""
        return self._running.request.request_id if self._running else None

    # ------------------------------------------------------------------------------ lifecycle

    async def serve(
        self, stop: asyncio.Event | None = None, ready: Callable[[str], None] | None = None
    ) -> None:
        """Bind, call `ready(endpoint)`, serve until `stop` is set (or this is cancelled), then
        cancel what runs and close. Raises EngineServerError when the bind fails."""
        ctx = zmq.asyncio.Context()  # asyncio for the ZAP authenticator; the ROUTER is plain
        sock: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        auth = self._curve(ctx, sock)
        try:
            sock.bind(self.config.bind)
        except zmq.ZMQError as err:
            _close(auth, sock, ctx)
            raise EngineServerError(f"cannot bind {self.config.bind}: {err}") from None
        self._sock = sock
        self._endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("%s listening on %s", self.config.name, self._endpoint)
        loop = asyncio.get_running_loop()
        fd = sock.FD
        loop.add_reader(fd, self._drain)
        loop.call_soon(self._drain)  # anything that came in before the reader was added
        try:
            if ready is not None:
                ready(self._endpoint)
            await (stop.wait() if stop is not None else loop.create_future())
        finally:
            loop.remove_reader(fd)
            await self._shutdown()
            self._sock = None
            _close(auth, sock, ctx)
            log.info("%s stopped", self.config.name)

    def _curve(self, ctx: zmq.asyncio.Context, sock: zmq.Socket[bytes]) -> Any:
        """Encrypt the link, and let in only the allow-listed client keys (a ZAP handler)."""
        curve = self.config.curve
        if curve is None:
            return None
        from zmq.auth.asyncio import AsyncioAuthenticator

        try:
            public, secret = curve.keys()
        except ValueError as err:
            raise EngineServerError(str(err)) from None
        auth = AsyncioAuthenticator(ctx)
        auth.start()
        allowed = curve.allowed_clients
        auth.configure_curve(
            domain="*", location=str(allowed) if allowed else zmq.auth.CURVE_ALLOW_ANY
        )
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_server = True
        return auth

    async def _shutdown(self) -> None:
        """Cancel what runs; their ends are not sent (the socket closes with linger 0)."""
        self._closing = True
        tasks = list(self._status_tasks)
        if self._running is not None and self._running.task is not None:
            tasks.append(self._running.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------ receiving

    def _drain(self) -> None:
        """Handle every queued message. ZMQ's FD is edge-triggered: read until EVENTS shows none
        (a send can swallow the edge too, so `send_frame` looks again after sending, unless it
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
            request = wire.decode_request(body, self.config.max_frame_bytes)
        except wire.WireError as err:
            self._reject(identity, err.request_id, f"bad request: {err.reason}")
            return
        if request.method == names.STATUS:
            self._answer_status(identity, request)
            return
        if self._on_request is not None:
            self._on_request(request)
        if request.method == names.CANCEL:
            self._cancel(request.request_id)
        else:
            self._mutation(identity, request)

    def _on_bad_envelope(self, frames: list[bytes]) -> None:
        request_id = None
        if len(frames) >= 2:
            try:
                request_id = wire.decode_request(frames[-1], self.config.max_frame_bytes).request_id
            except wire.WireError as err:
                request_id = err.request_id
        reason = f"malformed envelope: {len(frames)} frames, expected [identity, b'', body]"
        self._reject(frames[0], request_id, reason)

    def _reject(self, identity: bytes, request_id: str | None, reason: str) -> None:
        if request_id is None:
            log.warning("dropped a frame from peer %s: %s", identity.hex(), reason)
            return
        log.warning("rejected request %s: %s", request_id, reason)
        self._send(identity, wire.error(request_id, "INVALID_ARGUMENT", clip(reason)))

    # ------------------------------------------------------------------------------ status

    def _answer_status(self, identity: bytes, request: wire.Request) -> None:
        """At once when the handler answers at once; else as its own task, beside any mutation."""
        try:
            got = self.handler.status()
        except Exception as err:  # noqa: BLE001 - the handler's failure is this call's error
            self._send(identity, _failure(request, err))
            return
        if isinstance(got, EngineState):
            self._send(identity, self._status_reply(request, got))
            return
        if len(self._status_tasks) >= self.config.max_status_in_flight:
            _discard(got)
            limit = self.config.max_status_in_flight
            message = f"{limit} status calls are already running"
            self._send(identity, wire.error(request.request_id, "RESOURCE_EXHAUSTED", message))
            return
        task = asyncio.get_running_loop().create_task(self._status_later(identity, request, got))
        self._status_tasks.add(task)
        task.add_done_callback(self._status_tasks.discard)

    async def _status_later(
        self, identity: bytes, request: wire.Request, pending: Awaitable[EngineState]
    ) -> None:
        try:
            async with asyncio.timeout(request.timeout_s):
                reply = self._status_reply(request, await pending)
        except TimeoutError:
            message = f"status not done within {request.timeout_s:g}s"
            reply = wire.error(request.request_id, "DEADLINE_EXCEEDED", message)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - the handler's failure is this call's error
            reply = _failure(request, err)
        self._send(identity, reply)

    def _status_reply(self, request: wire.Request, state: EngineState) -> wire.Reply:
        reply = wire.result(request.request_id, state.to_wire(), clip(state.message))
        reply.data["capabilities"] = self.handler.capabilities().to_wire()
        return reply

    # ------------------------------------------------------------------------------ mutations

    def _mutation(self, identity: bytes, request: wire.Request) -> None:
        running = self._running
        rid = request.request_id
        if running is not None and running.request.request_id == rid:
            self._attach(running, identity, request)
            return
        if len(self._records):
            record = self._records.get(rid)
            if record is not None:
                self._repeat(identity, request, record)
                return
        problem = self._check_args(request)
        if problem is not None:
            log.warning("refused %s %s: %s", request.method, rid, problem.message)
            self._send(identity, wire.error(rid, problem.code, problem.message))
            return
        if running is not None:
            busy = running.request.request_id
            message = f"{request.method} refused: operation {busy} is still running"
            self._send(identity, wire.error(rid, "ABORTED", message))
            return
        self._start(identity, request)

    def _attach(self, running: _Running, identity: bytes, request: wire.Request) -> None:
        """A repeat of the running operation: the new peer gets its remaining replies."""
        rid = request.request_id
        if request.method != running.request.method or request.args != running.request.args:
            self._send(identity, _other_call(request))
        elif identity in running.peers:
            log.info("duplicate %s ignored: it is running and will answer", rid)
        elif len(running.peers) >= MAX_PEERS_PER_OPERATION:
            message = f"{rid} already has {MAX_PEERS_PER_OPERATION} peers waiting on it"
            self._send(identity, wire.error(rid, "RESOURCE_EXHAUSTED", message))
        else:
            log.info("%s %s repeated by another peer: attached", request.method, rid)
            running.peers.append(identity)

    def _repeat(self, identity: bytes, request: wire.Request, record: Record) -> None:
        """A repeat of a finished operation: its recorded outcome, without running it again."""
        if not record.same_call(request):
            self._send(identity, _other_call(request))
            return
        log.info("%s %s repeated: answered from its record", request.method, request.request_id)
        self._send(identity, record.reply)

    def _check_args(self, request: wire.Request) -> EngineError | None:
        args = request.args
        if request.method == "pause":
            mode = args.get("mode")
            if not isinstance(mode, str) or mode not in wire.PAUSE_MODES:
                got = clip(repr(mode))
                return EngineError("INVALID_ARGUMENT", f"mode must be abort, wait or keep: {got}")
            if mode not in self.handler.capabilities().pause_modes:
                return EngineError("UNIMPLEMENTED", f"this engine has no pause mode {mode}")
            if not isinstance(args.get("clear_cache", False), bool):
                return EngineError("INVALID_ARGUMENT", "clear_cache must be a boolean")
        elif request.method == names.UPDATE_WEIGHTS:
            for key in ("uri", "version"):
                value = args.get(key)
                if not isinstance(value, str) or not 0 < len(value) <= wire.MAX_TEXT_CHARS:
                    message = f"{key} must be a string of 1-{wire.MAX_TEXT_CHARS} characters"
                    return EngineError("INVALID_ARGUMENT", message)
        return None

    def _start(self, identity: bytes, request: wire.Request) -> None:
        run = _Running(request, [identity])
        deadline = time.monotonic() + request.timeout_s
        run.op = op = Operation(
            request.request_id, request.method, deadline, functools.partial(self._report, run)
        )
        try:
            answer = self._call_handler(op, request)
        except Exception as err:  # noqa: BLE001 - EngineError or a bug: this call's error
            self._end(run, _failure(request, err))
            return
        if isinstance(answer, Done):  # answered at once: inline, unless the state must wait
            state = answer.state or self._state_now()
            if state is not None:
                self._end(run, self._done_reply(request, answer, state))
                return
        self._run_as_task(run, answer)

    def _call_handler(self, op: Operation, request: wire.Request) -> Done | Awaitable[Done]:
        args, handler = request.args, self.handler
        if request.method == "pause":
            return handler.pause(op, args["mode"], args.get("clear_cache", False))
        if request.method == names.UPDATE_WEIGHTS:
            return handler.update_weights(op, args["uri"], args["version"])
        return handler.resume(op)

    def _state_now(self) -> EngineState | None:
        """The handler's state when it can give it without waiting; None otherwise."""
        got = self.handler.status()
        if isinstance(got, EngineState):
            return got
        _discard(got)
        return None

    def _run_as_task(self, run: _Running, answer: Done | Awaitable[Done]) -> None:
        loop = asyncio.get_running_loop()
        run.awaitable = _as_awaitable(answer)
        self._running = run
        run.task = loop.create_task(
            self._drive(run, run.awaitable), name=f"{run.request.method} {run.request.request_id}"
        )
        run.task.add_done_callback(functools.partial(self._task_ended, run))
        run.timer = loop.call_later(run.request.timeout_s, self._expire, run)

    async def _drive(self, run: _Running, awaitable: Awaitable[Done]) -> None:
        request = run.request
        try:
            done = await awaitable
            state = done.state or await self._state()
            reply = self._done_reply(request, done, state)
        except asyncio.CancelledError:
            if self._closing:
                raise
            reply = _stopped(run)
        except Exception as err:  # noqa: BLE001 - EngineError or a bug: this call's error
            reply = _failure(request, err)
        self._end(run, reply)

    async def _state(self) -> EngineState:
        got = self.handler.status()
        return got if isinstance(got, EngineState) else await got

    def _task_ended(self, run: _Running, task: asyncio.Task[None]) -> None:
        """The safety net: a task cancelled before its first step never ran `_drive`'s body."""
        if run.finished:
            return
        if run.awaitable is not None:
            _discard(run.awaitable)
        if self._closing:
            run.finished = True
            self._running = None if self._running is run else self._running
            return
        if task.cancelled():
            self._end(run, _stopped(run))
        else:
            error = task.exception()
            rid = run.request.request_id
            log.error("%s %s ended without a reply: %r", run.request.method, rid, error)
            self._end(run, wire.error(rid, "INTERNAL", clip(repr(error))))

    def _expire(self, run: _Running) -> None:
        if run.task is not None and not run.finished:
            run.timed_out = True
            run.task.cancel()

    def _cancel(self, request_id: str) -> None:
        running = self._running
        if running is not None and running.request.request_id == request_id:
            log.info("cancelling %s", request_id)
            if running.task is not None:
                running.task.cancel()
        else:
            log.info("cancel %s: no such running operation", request_id)

    def _end(self, run: _Running, reply: wire.Reply) -> None:
        """The one place an operation ends: free the slot, record the outcome, answer."""
        if run.finished:
            return
        run.finished = True
        if run.timer is not None:
            run.timer.cancel()
        if self._running is run:
            self._running = None
        self._records.put(run.request, reply)
        if reply.kind == wire.ERROR:
            code, message = reply.data["code"], reply.data["message"]
            log.info("%s %s failed: %s: %s", run.request.method, reply.request_id, code, message)
        self._to_peers(run, reply)

    def _done_reply(self, request: wire.Request, done: Done, state: EngineState) -> wire.Reply:
        return wire.result(
            request.request_id,
            state.to_wire(),
            clip(done.message),
            aborted=done.aborted,
            drained=done.drained,
            bytes_loaded=done.bytes_loaded,
        )

    # ------------------------------------------------------------------------------ sending

    def _report(self, run: _Running, reply: wire.Reply) -> None:
        """accepted/progress from the handler; dropped once the operation has ended, so nothing
        ever follows a terminal reply (a worker thread may still be reporting)."""
        if run.finished:
            log.debug("%s after the end of %s dropped", reply.kind, reply.request_id)
            return
        self._to_peers(run, reply)

    def _to_peers(self, run: _Running, reply: wire.Reply) -> None:
        """One reply to every peer waiting on the operation; a peer known gone is forgotten."""
        body = wire.encode_reply(reply)
        for peer in list(run.peers):
            if self._sender(peer, body) is False and len(run.peers) > 1:
                run.peers.remove(peer)

    def _send(self, identity: bytes, reply: wire.Reply) -> None:
        self._sender(identity, wire.encode_reply(reply))

    def send_frame(self, identity: bytes, body: bytes) -> bool:
        """Non-blocking: a peer that is gone or not reading loses the reply, nobody else waits.
        False when the reply was not delivered to the socket."""
        sock = self._sock
        if sock is None or self._closing:
            return False
        sent = True
        try:
            sock.send(identity, _MORE_NOBLOCK)  # ROUTER_MANDATORY: raises if the peer is gone
            sock.send(b"", _MORE_NOBLOCK)
            sock.send(body, _NOBLOCK)
        except zmq.ZMQError as err:
            _log_send_failure(identity, err)
            sent = False
        # The send may have taken the edge of a request that came in. Inside _drain its loop
        # looks next anyway; asking here too would cost a second system call per reply.
        if not self._draining and _readable(sock):
            asyncio.get_running_loop().call_soon(self._drain)
        return sent


# ---------------------------------------------------------------------------------- helpers


def _failure(request: wire.Request, err: Exception) -> wire.Reply:
    if isinstance(err, EngineError):
        return wire.error(request.request_id, err.code, err.message)
    log.error("%s %s failed", request.method, request.request_id, exc_info=err)
    return wire.error(request.request_id, "INTERNAL", clip(f"{type(err).__name__}: {err}"))


def _stopped(run: _Running) -> wire.Reply:
    request = run.request
    if run.timed_out:
        message = f"{request.method} not done within {request.timeout_s:g}s"
        return wire.error(request.request_id, "DEADLINE_EXCEEDED", message)
    return wire.error(request.request_id, "CANCELLED", f"{request.method} cancelled")


def _other_call(request: wire.Request) -> wire.Reply:
    message = (
        f"request_id {request.request_id} was already used for another call; "
        "use a new request_id for a new call"
    )
    return wire.error(request.request_id, "ALREADY_EXISTS", message)


def _as_awaitable(answer: Done | Awaitable[Done]) -> Awaitable[Done]:
    if isinstance(answer, Done):

        async def ready() -> Done:
            return answer

        return ready()
    return answer


def _discard(awaitable: Awaitable[Any]) -> None:
    """Close a coroutine that will never run, so it is not reported as never awaited."""
    if inspect.iscoroutine(awaitable) and inspect.getcoroutinestate(awaitable) == "CORO_CREATED":
        awaitable.close()


def _readable(sock: zmq.Socket[bytes]) -> bool:
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)


def _log_send_failure(identity: bytes, err: zmq.ZMQError) -> None:
    if isinstance(err, zmq.Again):
        log.warning("peer %s is not reading (high-water mark): reply dropped", identity.hex())
    elif err.errno == zmq.EHOSTUNREACH:
        log.warning("peer %s is gone: reply dropped", identity.hex())
    else:
        log.error("sending to peer %s failed: %r", identity.hex(), err)


def _close(auth: Any, sock: zmq.Socket[bytes], ctx: zmq.asyncio.Context) -> None:
    if auth is not None:
        auth.stop()
    sock.close(linger=0)
    ctx.term()
