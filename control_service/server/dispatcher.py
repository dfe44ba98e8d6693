"""Runs commands against the engine links: admission, slots, sending, deadlines, endings.

`submit` is synchronous from admission to the last send, so there is no await between opening
a slot and sending its request: a reply cannot arrive before its slot exists, however fast the
engine. Every ending of an operation (terminal replies, deadline, cancellation, engine loss,
shutdown) goes through the same two exits, `Part.on_reply` / `Part.on_lost`, which close slots
and release the engine for the next mutation. What the engines say of themselves (status
probes, capabilities, health, expected versions) is probes.py's: a Dispatcher is a StatusProbes.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Callable

import grpc
import structlog

from control_service.errors import ENDED_BY_SERVICE, ControlError, shutting_down, unavailable
from control_service.protocol import names, wire
from control_service.server.config import ServiceConfig
from control_service.server.deadlines import Deadlines
from control_service.server.engine_link import EngineLink
from control_service.server.metrics import Metrics
from control_service.server.operations import Command, FinalStatus, Operation, Part, Subscriber
from control_service.server.probes import EngineReport as EngineReport
from control_service.server.probes import StatusProbes
from control_service.server.refit import RefitDriver
from control_service.server.tracing import ServerTracing

log = structlog.get_logger("control_service.server.dispatcher")

_CANCEL_TIMEOUT_S = 5.0
# the methods whose arguments need capabilities
_PAUSING = frozenset({names.PAUSE, names.REFIT, names.STAGE_WEIGHTS})
_OK = grpc.StatusCode.OK
# Outcomes about time, reachability or being busy, not about the operation: a retry runs again,
# even when the engine itself reported them (its own timeout_s can fire as ours does; ABORTED
# means "busy now, try again later", so replaying it would refuse every retry for the window).
_FRESH = frozenset(
    {
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
    }
)


class Dispatcher(StatusProbes):
    def __init__(
        self,
        config: ServiceConfig,
        links: dict[str, EngineLink],
        metrics: Metrics | None = None,
        tracing: ServerTracing | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.tracing = tracing  # None: the service does not trace
        self.links = links
        super().__init__()  # what the status probes learn (probes.py)
        self.running: dict[str, Operation] = {}
        # Finished operations whose outcome the engines reported, oldest first, for replay.
        self._records: OrderedDict[str, tuple[float, Operation]] = OrderedDict()
        # engine -> the mutating operation it is running (one at a time per engine).
        self._busy: dict[str, Operation] = {}
        # Called with an engine's name when the operation holding it lets it go (membership.py
        # waits for that before it closes a removed engine's link).
        self.on_release: Callable[[str], None] | None = None
        self._drivers: set[asyncio.Task[None]] = set()
        # Set when the last running operation ends, while shutdown waits for that (wait_idle).
        self._idle: asyncio.Event | None = None
        self.closing = False
        self._loop = asyncio.get_running_loop()  # built by ControlServer.start, on its loop
        self._deadlines = Deadlines(self._loop)

    # ------------------------------------------------------------------------------ admission

    def submit(self, command: Command) -> tuple[Operation, Subscriber]:
        """Start `command`, attach to it if it is running, or replay it if it finished."""
        rid = command.request_id
        if rid in self.running or rid in self._records:  # else a new request_id: no lookup
            existing = self._existing(command)
            if existing is not None:
                return existing, existing.subscribe()
        if self.closing:
            raise shutting_down()
        if command.method in _PAUSING:
            self._check_capable(command)
        self._check_engines_free(command, None)
        if command.method == names.REFIT:
            return self._start_refit(command)
        return self._start(command, None)

    def _start(self, command: Command, owner: Operation | None) -> tuple[Operation, Subscriber]:
        """Open every slot, then send: the order this service exists for."""
        op = Operation(
            command, self.config.slot_queue_events, self._part_done, self._finished, owner=owner,
            max_callers=self.config.max_callers_per_operation,
        )  # fmt: skip
        sub = op.subscribe()
        self._open_slots(op)
        self._register(op)
        loop = self._loop
        op.timer = self._deadlines.add(command.deadline, op, self._expire)
        self._send_all(op, loop.time())
        return op, sub

    def _register(self, op: Operation) -> None:
        command = op.command
        self.running[command.request_id] = op
        if op.owner is None:
            for name in command.engines:
                self._busy[name] = op

    def _start_refit(self, command: Command) -> tuple[Operation, Subscriber]:
        op = Operation(
            command, self.config.slot_queue_events, self._part_done, self._finished, driven=True,
            max_callers=self.config.max_callers_per_operation,
        )  # fmt: skip
        sub = op.subscribe()
        self._register(op)
        windows = self.metrics.pause_window if self.metrics is not None else None
        driver = RefitDriver(op, self._start_step, self._probe, windows)
        task = self._loop.create_task(driver.run())
        self._drivers.add(task)
        task.add_done_callback(self._drivers.discard)
        return op, sub

    def _start_step(self, command: Command, owner: Operation) -> tuple[Operation, Subscriber]:
        """A Refit's step: runs on the engines its Refit holds, even during shutdown's drain."""
        self._check_engines_free(command, owner)
        return self._start(command, owner)

    def _existing(self, command: Command) -> Operation | None:
        rid = command.request_id
        op = self.running.get(rid) or self._record(rid)
        if op is not None and op.command.fingerprint() != command.fingerprint():
            raise ControlError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id {rid!r} was already used for {op.command.method} with other "
                "arguments; use a new request_id for a new call",
                reason="REQUEST_ID_REUSED",
            )
        return op

    def _record(self, request_id: str) -> Operation | None:
        entry = self._records.get(request_id)
        if entry is None:
            return None
        if self._loop.time() - entry[0] > self.config.retry_window_s:
            del self._records[request_id]
            return None
        return entry[1]

    def _check_engines_free(self, command: Command, owner: Operation | None) -> None:
        for name in command.engines:
            holder = self._busy.get(name)
            if holder is not None and holder is not owner:
                raise ControlError(
                    grpc.StatusCode.ABORTED,
                    f"engine {name} is running {holder.command.method} "
                    f"(request_id {holder.command.request_id}); retry when it has finished",
                    reason="ENGINE_BUSY",
                    engines=(name,),
                )

    def holds(self, engine: str) -> bool:
        """A running call holds the engine (a Refit does between its steps too)."""
        return engine in self._busy

    def drop(self, engine: str) -> None:
        """The engine left the fleet: forget what it said and what was asked of it."""
        self.forget(engine)
        self.failed.pop(engine, None)
        self.expected_versions.pop(engine, None)
        if self.metrics is not None:
            self.metrics.forget_engine(engine)

    def _open_slots(self, op: Operation) -> None:
        """Open every engine's slot, or none of them. An engine that left the fleet since the
        call started (a Refit's later step) has no link: `_send_all` fails its part."""
        rid = op.command.request_id
        opened: list[EngineLink] = []
        try:
            for part in op.parts.values():
                link = self.links.get(part.engine)
                if link is None:
                    continue
                link.open(rid, part)
                opened.append(link)
        except ControlError:
            for link in opened:
                link.slots.close(rid)
            raise

    def _send_all(self, op: Operation, now: float) -> None:
        c = op.command
        request = wire.Request(c.request_id, c.method, c.args, max(c.deadline - now, 0.001))
        tracing = self.tracing
        if tracing is not None:
            request.trace = tracing.sampled_out()
            if request.trace is None:  # sampled: a span per engine part
                self._send_traced(op, request, tracing)
                return
        body = wire.encode_request(request)  # once, however many engines
        for part in list(op.parts.values()):
            self._send_part(part, body)

    def _send_traced(self, op: Operation, request: wire.Request, tracing: ServerTracing) -> None:
        """Each engine's part gets its own span, and its request that span's trace context (so
        one body per engine rather than one for all)."""
        owner = op.owner.command.request_id if op.owner is not None else ""
        for part in list(op.parts.values()):
            part.span = span = tracing.part(op.command, part.engine, owner)
            request.trace = span.context()
            self._send_part(part, wire.encode_request(request))

    def _send_part(self, part: Part, body: bytes) -> None:
        link = self.links.get(part.engine)
        if link is None:  # it left the fleet since the call started (a Refit's later step)
            part.on_lost(unavailable(f"engine {part.engine} left the fleet"))
            return
        try:
            link.send_encoded(body)
        except ControlError as err:
            link.slots.close(part.op.command.request_id)
            part.on_lost(err)

    # -------------------------------------------------------------------------------- endings

    def unsubscribe(self, op: Operation, sub: Subscriber) -> None:
        """A caller left. If it was the last caller of a running operation, cancel the operation
        after the detach grace, unless a retry attaches first."""
        if not op.unsubscribe(sub) or op.driven:
            return  # a Refit always runs to its end: its policy is what keeps engines safe
        grace = self.config.detach_grace_s
        if grace <= 0:
            self._detached(op)
        else:
            op.detach_timer = self._loop.call_later(grace, self._detached, op)

    def _detached(self, op: Operation) -> None:
        op.detach_timer = None
        code = grpc.StatusCode.CANCELLED
        self._end(op, ControlError(code, "every caller went away", reason="CALLER_GONE"))

    def _expire(self, op: Operation) -> None:
        op.timer = None
        message = f"{ENDED_BY_SERVICE}: no result from the engine by the deadline"
        self._end(op, ControlError(grpc.StatusCode.DEADLINE_EXCEEDED, message, reason="DEADLINE"))

    def fail_all(self, error: ControlError) -> None:
        """End every running operation (shutdown)."""
        for op in list(self.running.values()):
            self._end(op, error)

    def _end(self, op: Operation, error: ControlError) -> None:
        """Close the open parts' slots, tell their engines to stop (best effort), end the parts."""
        rid = op.command.request_id
        for part in op.open_parts():
            link = self.links.get(part.engine)
            if link is not None and link.slots.close(rid):
                self._send_cancel(link, rid)
            part.on_lost(error)

    def _send_cancel(self, link: EngineLink, request_id: str) -> None:
        try:
            link.send(wire.Request(request_id, names.CANCEL, {}, _CANCEL_TIMEOUT_S))
        except ControlError:
            pass  # the engine is gone: there is nothing left to cancel

    def _part_done(self, op: Operation, part: Part) -> None:
        if self._busy.get(part.engine) is op:
            del self._busy[part.engine]
            if self.on_release is not None:
                self.on_release(part.engine)

    def _finished(self, op: Operation) -> None:
        rid = op.command.request_id
        self.running.pop(rid, None)
        for name in op.command.engines:
            if self._busy.get(name) is op:
                del self._busy[name]
                if self.on_release is not None:
                    self.on_release(name)
        outcome = op.outcome
        assert outcome is not None
        if op.command.method == names.UPDATE_WEIGHTS:
            self._expect_version(op.command, outcome)
        if op.owner is None:
            self._flag_failed(op.command, outcome)
            if _replayable(outcome):
                self._remember(rid, op)
        if not self.running and self._idle is not None:
            self._idle.set()

    def _flag_failed(self, command: Command, outcome: FinalStatus) -> None:
        """Flag for GetStatus each engine that failed this call; unflag those it succeeded on.
        A Refit that failed as a whole succeeded on none (on_failure undid its steps), so it
        unflags nothing; every other call succeeded on each engine it does not name failed."""
        failed = {f.engine: f for f in outcome.failures}
        for name in command.engines:
            failure = failed.get(name)
            if failure is not None:
                if not failure.step:  # a Pause/UpdateWeights/Resume did nothing about it
                    failure = dataclasses.replace(
                        failure, step=command.method, action=names.LEFT_AS_REPORTED
                    )
                self.failed[name] = dataclasses.replace(failure, request_id=command.request_id)
            elif outcome.ok or command.method != names.REFIT:
                self.failed.pop(name, None)
        if outcome.ok and failed and self.metrics is not None:
            self.metrics.tolerated(command.method, len(failed))

    def _remember(self, rid: str, op: Operation) -> None:
        """Keep a finished operation's outcome for retries (the newest last, bounded)."""
        records = self._records
        if rid in records:  # a new key is inserted last already
            records.move_to_end(rid)
        records[rid] = (self._loop.time(), op)
        while len(records) > self.config.retry_max_records:
            records.popitem(last=False)

    def _expect_version(self, command: Command, outcome: FinalStatus) -> None:
        """An update that succeeded on at least one engine makes its version the expected one for
        all its engines (those that failed now serve another: skewed); one that failed
        everywhere changes nothing, as every engine kept its old weights."""
        if len(outcome.failures) < len(command.engines):
            for name in command.engines:
                self.expected_versions[name] = command.args["version"]

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no operation runs; False if `timeout` passed first."""
        if not self.running:
            return True
        idle = self._idle
        if idle is None or idle.is_set():  # none yet, or a stale one: waiters share a fresh one
            idle = self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _replayable(outcome: FinalStatus) -> bool:
    """Only outcomes the engines decided are replayed. Not one that the service imposed on any
    engine, nor one where any engine failed on time or reachability (a deadline ends a call on
    whichever side sees it first: the engine's own timeout_s or the service's timer, so a
    retry must run again either way)."""
    if outcome.code is _OK:  # an OK call (failures tolerated included) is decided: a retry
        return True  # must not pause or load again the engines it succeeded on
    if not outcome.engine_reported:
        return False
    return outcome.code not in _FRESH and not any(f.code in _FRESH for f in outcome.failures)
