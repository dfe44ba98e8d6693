"""Runs commands against the engine links: admission, slots, sending, deadlines, endings.

`submit` is synchronous from admission to the last send, so there is no await between opening
a slot and sending its request: a reply cannot arrive before its slot exists, however fast the
engine. Every ending of an operation (terminal replies, deadline, cancellation, engine loss,
shutdown) goes through the same two exits, `Part.on_reply` / `Part.on_lost`, which close slots
and release the engine for the next mutation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from control_service.errors import ENDED_BY_SERVICE, ControlError, shutting_down
from control_service.protocol import names, wire
from control_service.server.config import ServiceConfig
from control_service.server.deadlines import Deadlines
from control_service.server.engine_link import EngineLink
from control_service.server.metrics import Metrics
from control_service.server.operations import Command, FinalStatus, Operation, Part, Subscriber
from control_service.server.refit import RefitDriver

log = structlog.get_logger("control_service.server.dispatcher")

_CANCEL_TIMEOUT_S = 5.0
_PAUSING = frozenset({names.PAUSE, names.REFIT})  # the methods whose arguments need capabilities
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


@dataclass(frozen=True, slots=True)
class EngineReport:
    engine: str
    reachable: bool
    state: dict[str, Any] | None
    error: str
    expected_version: str = ""
    capabilities: dict[str, Any] | None = None

    @property
    def skewed(self) -> bool:
        """Reports a version other than the one last requested of it."""
        return bool(
            self.expected_version
            and self.state is not None
            and self.state["weight_version"] != self.expected_version
        )


class Dispatcher:
    def __init__(
        self,
        config: ServiceConfig,
        links: dict[str, EngineLink],
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.links = links
        self.running: dict[str, Operation] = {}
        # Finished operations whose outcome the engines reported, oldest first, for replay.
        self._records: OrderedDict[str, tuple[float, Operation]] = OrderedDict()
        # engine -> the mutating operation it is running (one at a time per engine).
        self._busy: dict[str, Operation] = {}
        # engine -> the version of the last update to it that succeeded on at least one of its
        # engines (a Refit's update step included), for version-skew reports.
        self.expected_versions: dict[str, str] = {}
        # engine -> what it reported it can do, from status replies since its link came up.
        self.capabilities: dict[str, dict[str, Any]] = {}
        # engine -> why it is down though its link is up: its status said UNAVAILABLE (an
        # adapter whose engine is unreachable). Readiness and GetStatus show it down.
        self.engine_down: dict[str, str] = {}
        # Called when an engine's health (engine_down) changes: the server republishes health.
        self.on_engine_change: Callable[[], None] | None = None
        self._ids = itertools.count(1)
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
        driver = RefitDriver(op, self._start_step, self._probe)
        task = self._loop.create_task(driver.run())
        self._drivers.add(task)
        task.add_done_callback(self._drivers.discard)
        return op, sub

    def _start_step(self, command: Command, owner: Operation) -> tuple[Operation, Subscriber]:
        """A Refit's step: runs on the engines its Refit holds, even during shutdown's drain."""
        self._check_engines_free(command, owner)
        return self._start(command, owner)

    async def _probe(
        self, engines: tuple[str, ...]
    ) -> dict[str, tuple[dict[str, Any] | None, str]]:
        return {r.engine: (r.state, r.error) for r in await self.status(engines)}

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

    def _check_capable(self, command: Command) -> None:
        """Refuse, before anything is sent to any engine, a call that some engine has said it
        cannot honour, so a fleet is never left half-paused. An engine whose capabilities are
        not known yet (its link came up less than a status round trip ago) is not refused here:
        that engine refuses an unknown mode itself."""
        mode, clear_cache = command.args["mode"], command.args["clear_cache"]
        lacking = []
        for name in command.engines:
            caps = self.capabilities.get(name)
            if caps is None:
                continue
            missing = [] if mode in caps["pause_modes"] else [f"pause mode {mode.upper()}"]
            if clear_cache and caps.get("clear_cache") is False:
                missing.append("clear_cache")
            if missing:
                lacking.append(f"{name} lacks {' and '.join(missing)}")
        if lacking:
            raise ControlError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{len(lacking)} of {len(command.engines)} engines cannot honour this "
                f"{command.method}; nothing was sent: {'; '.join(lacking)}",
            )

    def forget(self, engine: str) -> None:
        """The engine's link went down: what it said of itself may not hold for what comes back."""
        self.capabilities.pop(engine, None)
        self.engine_down.pop(engine, None)

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

    def _open_slots(self, op: Operation) -> None:
        """Open every engine's slot, or none of them."""
        rid = op.command.request_id
        opened: list[EngineLink] = []
        try:
            for part in op.parts.values():
                link = self.links[part.engine]
                link.open(rid, part)
                opened.append(link)
        except ControlError:
            for link in opened:
                link.slots.close(rid)
            raise

    def _send_all(self, op: Operation, now: float) -> None:
        c = op.command
        request = wire.Request(c.request_id, c.method, c.args, max(c.deadline - now, 0.001))
        body = wire.encode_request(request)  # once, however many engines
        for part in list(op.parts.values()):
            link = self.links[part.engine]
            try:
                link.send_encoded(body)
            except ControlError as err:
                link.slots.close(c.request_id)
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
            link = self.links[part.engine]
            if link.slots.close(rid):
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

    def _finished(self, op: Operation) -> None:
        rid = op.command.request_id
        self.running.pop(rid, None)
        for name in op.command.engines:
            if self._busy.get(name) is op:
                del self._busy[name]
        outcome = op.outcome
        assert outcome is not None
        if op.command.method == names.UPDATE_WEIGHTS:
            self._expect_version(op.command, outcome)
        if op.owner is None and _replayable(outcome):
            self._remember(rid, op)
        if not self.running and self._idle is not None:
            self._idle.set()

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

    # --------------------------------------------------------------------------------- status

    async def status(self, engines: tuple[str, ...]) -> list[EngineReport]:
        """Ask every engine for its state at once; never queued behind a mutation."""
        reports = await asyncio.gather(*(self._status_one(name) for name in engines))
        expected = self.expected_versions
        return [
            dataclasses.replace(
                r,
                expected_version=expected.get(r.engine, ""),
                capabilities=self.capabilities.get(r.engine),
            )
            for r in reports
        ]

    async def _status_one(self, name: str) -> EngineReport:
        link = self.links[name]
        if not link.up:
            return EngineReport(name, False, None, link.down_reason)
        rid = f"status/{next(self._ids)}"  # '/' is not allowed in callers' ids: no collision
        waiter = _OneReply()
        timeout = self.config.status_timeout_s
        try:
            link.probes.open(rid, waiter)  # the probes' own bound, not the calls' slot budget
            sent = time.perf_counter()
            link.send(wire.Request(rid, names.STATUS, {}, timeout))
            reply = await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
            if self.metrics is not None:
                self.metrics.engine_rtt.labels(name).observe(time.perf_counter() - sent)
        except ControlError as err:
            return EngineReport(name, link.up, None, err.message)
        except TimeoutError:
            return EngineReport(name, True, None, f"no status reply within {timeout:g}s")
        finally:
            link.probes.close(rid)  # on every exit, cancellation of the caller included
        if reply.kind == wire.ERROR:
            why = f"{reply.data['code']}: {reply.data['message']}"
            down = reply.data["code"] == "UNAVAILABLE"  # the engine behind its adapter is down
            self._engine_health(name, why if down else "")
            return EngineReport(name, not down, None, why)
        if link.up:  # a link lost meanwhile forgot the engine: do not learn it back
            self.capabilities[name] = wire.reported_capabilities(reply.data)
            self._engine_health(name, "")
        return EngineReport(name, True, reply.data["state"], "")

    def _engine_health(self, name: str, down: str) -> None:
        was = self.engine_down.get(name, "")
        if down:
            self.engine_down[name] = down
        else:
            self.engine_down.pop(name, None)
        if bool(was) != bool(down) and self.on_engine_change is not None:
            self.on_engine_change()


def _replayable(outcome: FinalStatus) -> bool:
    """Only outcomes the engines decided are replayed. Not one that the service imposed on any
    engine, nor one where any engine failed on time or reachability (a deadline ends a call on
    whichever side sees it first: the engine's own timeout_s or the service's timer, so a
    retry must run again either way)."""
    if not outcome.engine_reported:
        return False
    if outcome.code is _OK:  # tested first: a StatusCode's hash, for the set test, costs a call
        return True
    return outcome.code not in _FRESH and not any(f.code in _FRESH for f in outcome.failures)


class _OneReply:
    """A slot sink that waits for one terminal reply (status probes)."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()

    def on_reply(self, reply: wire.Reply) -> None:
        if reply.terminal and not self.future.done():
            self.future.set_result(reply)

    def on_lost(self, error: ControlError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
