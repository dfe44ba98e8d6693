"""The engine side of the engine protocol: a ZMQ ROUTER that owns the protocol's duties.

An engine supplies an `EngineHandler` (handler.py); this server does the rest, so every engine
built on it gets them right once: envelope and body checks (a bad frame is answered
INVALID_ARGUMENT when it names a request, else logged and dropped), argument checks, one mutation
at a time (a second gets ABORTED naming the running one), `status` never queued behind a
mutation, `cancel` by request_id, `timeout_s` enforced (DEADLINE_EXCEEDED), progress to every
attached peer, repeats of a request_id attached to the running operation or answered from the
record of its outcome (records.py), replies to gone peers dropped (ROUTER_MANDATORY), sends that
never block, CURVE with a ZAP allow-list, and a clean shutdown. The socket itself (binding,
CURVE, draining, non-blocking sends) is router.py's, the argument rules arguments.py's and the
running mutation's record and ending replies running.py's; this module is what the frames mean.

The running mutation's end is kept by its task's done callback, not by code inside the task, so
a mutation cancelled before it ever started (a `cancel` read in the same batch) still frees the
slot and still gets its CANCELLED reply.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, cast

from control_service.protocol import names, wire

from .arguments import check_args
from .config import EngineServerConfig
from .handler import (
    Done,
    EngineHandler,
    EngineState,
    Operation,
    Stager,
    can_stage,
    clip,
)
from .records import OutcomeRecords, Record
from .router import EngineServerError as EngineServerError
from .router import RouterServer
from .running import Running, as_awaitable, discard, failure, other_call, stopped
from .tracing import EngineTracing, MutationSpan, log_setup, passed_on

log = logging.getLogger("control_service.engine")

# Sends one encoded reply body to one peer; returns False when the peer is known to be gone.
Sender = Callable[[bytes, bytes], "bool | None"]

# EngineServer's default `tracing`: as the OTEL_* variables say, read when it starts serving.
FROM_ENV: Final = "from OTEL_* variables"

# Peers one operation answers (the first, and repeats from restarted services): bounded, as
# everything a peer can make grow.
MAX_PEERS_PER_OPERATION = 16


class EngineServer(RouterServer):
    """Serve one handler on one ROUTER until stopped.

    on_request: called with every decoded request except `status` (cancel included), on receipt,
    before it runs (engine_stub prints it, to prove what reached the engine).
    sender: how an encoded reply reaches a peer; by default `send_frame`. A test engine wraps it
    to delay, drop or corrupt replies.
    tracing: a span per mutation (tracing.py); by default as the OTEL_* variables say, None: off.
    """

    def __init__(
        self,
        handler: EngineHandler,
        config: EngineServerConfig,
        *,
        on_request: Callable[[wire.Request], None] | None = None,
        sender: Sender | None = None,
        tracing: EngineTracing | str | None = FROM_ENV,
    ) -> None:
        super().__init__(config)
        self._tracing_arg = tracing
        self.tracing = tracing if isinstance(tracing, EngineTracing) else None
        self.handler = handler
        self._on_request = on_request
        self._sender: Sender = sender or self.send_frame
        self._records = OutcomeRecords(config.outcome_records, config.outcome_ttl_s)
        self._running: Running | None = None
        self._status_tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> str | None:
        """The request_id of the mutation in progress, if any."""
        return self._running.request.request_id if self._running else None

    # ------------------------------------------------------------------------------ lifecycle

    async def serve(
        self, stop: asyncio.Event | None = None, ready: Callable[[str], None] | None = None
    ) -> None:
        """RouterServer.serve, with tracing set up first from OTEL_* unless it was given (bad
        variables raise EngineServerError, as a bind that fails does)."""
        if self._tracing_arg != FROM_ENV:
            await super().serve(stop, ready)
            return
        self.tracing = EngineTracing.from_env(self.config.name)

        def bound(endpoint: str) -> None:
            log_setup(self.config.name)
            if ready is not None:
                ready(endpoint)

        await super().serve(stop, bound)

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
            self._send(identity, failure(request, err))
            return
        if isinstance(got, EngineState):
            self._send(identity, self._status_reply(request, got))
            return
        if len(self._status_tasks) >= self.config.max_status_in_flight:
            discard(got)
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
            reply = failure(request, err)
        self._send(identity, reply)

    def _status_reply(self, request: wire.Request, state: EngineState) -> wire.Reply:
        reply = wire.result(request.request_id, state.to_wire(), clip(state.message))
        caps = self.handler.capabilities().to_wire()
        caps[names.CAP_STAGE] = bool(caps.get(names.CAP_STAGE, True)) and can_stage(self.handler)
        reply.data["capabilities"] = caps
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
        problem = check_args(self.handler, request)
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

    def _attach(self, running: Running, identity: bytes, request: wire.Request) -> None:
        """A repeat of the running operation: the new peer gets its remaining replies."""
        rid = request.request_id
        if request.method != running.request.method or request.args != running.request.args:
            self._send(identity, other_call(request))
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
            self._send(identity, other_call(request))
            return
        log.info("%s %s repeated: answered from its record", request.method, request.request_id)
        self._send(identity, record.reply)

    def _start(self, identity: bytes, request: wire.Request) -> None:
        """Run the mutation; traced (its span, its context current while the handler is called
        and inherited by its task) when this process traces or the request brings a trace."""
        if self.tracing is not None:
            with self.tracing.mutation(request) as span:
                self._begin(identity, request, span)
        elif request.trace is not None:
            with passed_on(request.trace):
                self._begin(identity, request, None)
        else:
            self._begin(identity, request, None)

    def _begin(self, identity: bytes, request: wire.Request, span: MutationSpan | None) -> None:
        run = Running(request, [identity], span=span)
        deadline = time.monotonic() + request.timeout_s
        run.op = op = Operation(
            request.request_id, request.method, deadline, functools.partial(self._report, run)
        )
        try:
            answer = self._call_handler(op, request)
        except Exception as err:  # noqa: BLE001 - EngineError or a bug: this call's error
            self._end(run, failure(request, err))
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
            if args.get(names.STAGED, False):
                return cast(Stager, handler).commit_staged(op, args["version"])
            return handler.update_weights(op, args["uri"], args["version"])
        if request.method == names.STAGE_WEIGHTS:
            return cast(Stager, handler).stage_weights(op, args["uri"], args["version"])
        return handler.resume(op)

    def _state_now(self) -> EngineState | None:
        """The handler's state when it can give it without waiting; None otherwise."""
        got = self.handler.status()
        if isinstance(got, EngineState):
            return got
        discard(got)
        return None

    def _run_as_task(self, run: Running, answer: Done | Awaitable[Done]) -> None:
        loop = asyncio.get_running_loop()
        run.awaitable = as_awaitable(answer)
        self._running = run
        run.task = loop.create_task(
            self._drive(run, run.awaitable), name=f"{run.request.method} {run.request.request_id}"
        )
        run.task.add_done_callback(functools.partial(self._task_ended, run))
        run.timer = loop.call_later(run.request.timeout_s, self._expire, run)

    async def _drive(self, run: Running, awaitable: Awaitable[Done]) -> None:
        request = run.request
        try:
            done = await awaitable
            state = done.state or await self._state()
            reply = self._done_reply(request, done, state)
        except asyncio.CancelledError:
            if self._closing:
                raise
            reply = stopped(run)
        except Exception as err:  # noqa: BLE001 - EngineError or a bug: this call's error
            reply = failure(request, err)
        self._end(run, reply)

    async def _state(self) -> EngineState:
        got = self.handler.status()
        return got if isinstance(got, EngineState) else await got

    def _task_ended(self, run: Running, task: asyncio.Task[None]) -> None:
        """The safety net: a task cancelled before its first step never ran `_drive`'s body."""
        if run.finished:
            return
        if run.awaitable is not None:
            discard(run.awaitable)
        if self._closing:
            run.finished = True
            self._running = None if self._running is run else self._running
            return
        if task.cancelled():
            self._end(run, stopped(run))
        else:
            error = task.exception()
            rid = run.request.request_id
            log.error("%s %s ended without a reply: %r", run.request.method, rid, error)
            self._end(run, wire.error(rid, "INTERNAL", clip(repr(error))))

    def _expire(self, run: Running) -> None:
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

    def _end(self, run: Running, reply: wire.Reply) -> None:
        """The one place an operation ends: free the slot, record the outcome, answer."""
        if run.finished:
            return
        run.finished = True
        if run.timer is not None:
            run.timer.cancel()
        if self._running is run:
            self._running = None
        self._records.put(run.request, reply)
        if run.span is not None:
            run.span.end(reply)
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

    def _report(self, run: Running, reply: wire.Reply) -> None:
        """accepted/progress from the handler; dropped once the operation has ended, so nothing
        ever follows a terminal reply (a worker thread may still be reporting)."""
        if run.finished:
            log.debug("%s after the end of %s dropped", reply.kind, reply.request_id)
            return
        self._to_peers(run, reply)

    def _to_peers(self, run: Running, reply: wire.Reply) -> None:
        """One reply to every peer waiting on the operation; a peer known gone is forgotten."""
        body = wire.encode_reply(reply)
        for peer in list(run.peers):
            if self._sender(peer, body) is False and len(run.peers) > 1:
                run.peers.remove(peer)

    def _send(self, identity: bytes, reply: wire.Reply) -> None:
        self._sender(identity, wire.encode_reply(reply))
