"""One trainer call as a value: its engines' parts, its callers, its one outcome.

An Operation is passive: it is driven by callbacks (a reply from an engine link, its deadline
timer, a lost engine), never by a task of its own, so a reply costs no extra hop. Each engine's
part is the sink of that engine's reply slot. Callers read the operation through Subscribers, so a
retry with the same request_id can attach to a running operation, and a finished one can be
replayed from its recorded final events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from control_service.errors import ENDED_BY_ENGINE, ControlError, EngineFailure, status_code
from control_service.protocol import wire
from control_service.server.deadlines import Deadline

if TYPE_CHECKING:
    from control_service.server.tracing import PartSpan


class Event(NamedTuple):
    """One engine reply as a caller sees it; the servicer turns it into a ControlEvent."""

    engine: str
    seq: int  # per engine, from 1, within the call
    reply: wire.Reply
    step: str = ""  # in a Refit, the step the event belongs to
    # A Refit's final Result of an engine that failed a step: where, why, and what was done.
    failure: EngineFailure | None = None


@dataclass(slots=True)
class Command:
    """A validated mutating call, the same shape whichever RPC brought it. A value nothing
    mutates; not a frozen dataclass, whose __init__ costs 3x on every call (see wire.Request)."""

    request_id: str
    method: str  # names.PAUSE | names.UPDATE_WEIGHTS | names.RESUME | names.REFIT
    args: dict[str, Any]
    engines: tuple[str, ...]
    deadline: float  # event-loop time
    # How many engines may fail while the call still ends OK (the request's max_failed_engines);
    # the service's own, never sent to an engine with `args`.
    max_failed: int = 0

    def fingerprint(self) -> str:
        """What must match for a retry to count as the same call: not the deadline, nor any
        other timeout (a retry naturally has less time left)."""
        args = {k: v for k, v in self.args.items() if not k.endswith("_timeout_s")}
        return json.dumps(
            [self.method, args, sorted(self.engines), self.max_failed], sort_keys=True
        )


@dataclass(frozen=True, slots=True)
class FinalStatus:
    """How an operation ended (the client's `Outcome` is what a caller gets from a success)."""

    code: grpc.StatusCode
    message: str
    failures: tuple[EngineFailure, ...]
    # True when every engine reported its own terminal reply: only such outcomes are replayed.
    engine_reported: bool
    # The stable reason the service gave when it ended the call itself ("": derived at the edge).
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    def error(self) -> ControlError:
        return ControlError(self.code, self.message, self.failures, reason=self.reason)


class Subscriber:
    """One caller's view: a bounded queue of events. When full, the oldest progress-type event is
    dropped (counted); terminal events are never dropped, so a slow reader loses no outcome."""

    __slots__ = ("_items", "_limit", "_waiter", "closed", "dropped")

    def __init__(self, limit: int) -> None:
        self._items: deque[Event] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False  # no event will come any more (those queued may still be popped)
        self.dropped = 0

    def push(self, event: Event) -> None:
        items = self._items
        if len(items) >= self._limit and not event.reply.terminal:
            self._drop_oldest_nonterminal()
        items.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _drop_oldest_nonterminal(self) -> None:
        for i, item in enumerate(self._items):
            if not item.reply.terminal:
                del self._items[i]
                self.dropped += 1
                return

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pop(self) -> Event | None:
        """The next queued event, or None when there is none yet (see `closed`, `wait`)."""
        items = self._items
        return items.popleft() if items else None

    def wait(self) -> asyncio.Future[None]:
        """A future done when an event is queued or the subscriber closes. The servicer's
        relay awaits it directly: one future per wait, no coroutine frame per event."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        if self._items or self.closed:
            waiter.set_result(None)
        return waiter

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Event:
        items = self._items
        while not items:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return items.popleft()


class Part:
    """One engine's share of an operation; the sink of that engine's reply slot."""

    __slots__ = ("done", "engine", "op", "seq", "span")

    def __init__(self, op: Operation, engine: str) -> None:
        self.op = op
        self.engine = engine
        self.seq = 0
        self.done = False
        self.span: PartSpan | None = None  # set when the service traces (server/tracing.py)

    def on_reply(self, reply: wire.Reply) -> None:
        if self.done:
            return
        if self.span is not None:
            self.span.on_reply(reply)
        self.seq += 1
        event = Event(self.engine, self.seq, reply)
        if reply.kind in wire.TERMINAL_KINDS:
            self.done = True
            self.op.part_done(self, event, engine_reported=True)
        else:
            self.op.publish(event)

    def on_lost(self, error: ControlError) -> None:
        """The service ended this part (engine lost, deadline, cancel, shutdown)."""
        if self.done:
            return
        self.seq += 1
        self.done = True
        if self.span is not None:
            self.span.lost(error.code, error.message)
        if error.reason and self.op.lost_reason is None:
            self.op.lost_reason = (error.code, error.reason)
        reply = wire.error(self.op.command.request_id, error.code.name, error.message)
        self.op.part_done(self, Event(self.engine, self.seq, reply), engine_reported=False)


class Operation:
    """Fan-in of every engine's replies, fan-out to every caller, and the one outcome."""

    def __init__(
        self,
        command: Command,
        queue_limit: int,
        on_part_done: Callable[[Operation, Part], None],
        on_finished: Callable[[Operation], None],
        driven: bool = False,
        owner: Operation | None = None,
        max_callers: int = 64,
    ) -> None:
        self.command = command
        self.max_callers = max_callers
        # A Refit's step has its Refit as owner: it runs on engines the owner holds.
        self.owner = owner
        # A driven operation (Refit) has no engine parts of its own: a task publishes its events
        # and calls complete(); its final events are kept here for replay.
        self.driven = driven
        self.parts = {} if driven else {name: Part(self, name) for name in command.engines}
        self.finals: list[Event] = []
        self.subscribers: list[Subscriber] = []
        self.outcome: FinalStatus | None = None
        self.timer: Deadline | None = None  # its deadline (control_service/deadlines.py)
        # Set while no caller is attached: cancels the operation when it fires.
        self.detach_timer: asyncio.TimerHandle | None = None
        self._queue_limit = queue_limit
        self._pending = len(self.parts)
        self._failures: list[EngineFailure] = []
        # (code, reason) of the first failure the service imposed (deadline, shutdown...).
        self.lost_reason: tuple[grpc.StatusCode, str] | None = None
        self._all_reported = True
        self._on_part_done = on_part_done
        self._on_finished = on_finished

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def subscribe(self) -> Subscriber:
        """A new caller. On a finished operation it gets the recorded final events at once."""
        sub = Subscriber(self._queue_limit)
        if self.outcome is not None:
            for event in self.finals:
                sub.push(event)
            sub.close()
        else:
            if len(self.subscribers) >= self.max_callers:
                raise ControlError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{len(self.subscribers)} callers are attached to request_id "
                    f"{self.command.request_id}, the limit is {self.max_callers}",
                )
            self._stop_detach_timer()
            self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> bool:
        """Remove a caller; True when it was the last one of a still-running operation."""
        if self.outcome is not None:  # finished: its callers are gone already (every call ends
            return False  # here, and a raised ValueError would cost more than the call)
        try:
            self.subscribers.remove(sub)
        except ValueError:
            return False
        return not self.subscribers and self.outcome is None

    def publish(self, event: Event) -> None:
        for sub in self.subscribers:
            sub.push(event)

    def part_done(self, part: Part, event: Event, engine_reported: bool) -> None:
        self.publish(event)
        self.finals.append(event)
        reply = event.reply
        if reply.kind == wire.ERROR:
            code = status_code(reply.data["code"])
            message = reply.data["message"]
            if engine_reported and code is grpc.StatusCode.DEADLINE_EXCEEDED:
                message = f"{ENDED_BY_ENGINE}: {message}"  # the service's timer says its own
            self._failures.append(EngineFailure(part.engine, code, message))
        self._all_reported &= engine_reported
        self._pending -= 1
        self._on_part_done(self, part)
        if self._pending == 0:
            self._finish()

    def open_parts(self) -> list[Part]:
        return [p for p in self.parts.values() if not p.done]

    def _stop_detach_timer(self) -> None:
        if self.detach_timer is not None:
            self.detach_timer.cancel()
            self.detach_timer = None

    def complete(self, outcome: FinalStatus, finals: list[Event]) -> None:
        """End a driven operation with the outcome its task decided."""
        self.finals = finals
        self._finish(outcome)

    def _finish(self, outcome: FinalStatus | None = None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.detach_timer is not None:
            self._stop_detach_timer()
        if outcome is None:
            outcome = summarize(
                self._failures, len(self.parts), self._all_reported, self.command.max_failed
            )
            if self.lost_reason is not None and self.lost_reason[0] is outcome.code:
                outcome = dataclasses.replace(outcome, reason=self.lost_reason[1])
        self.outcome = outcome
        self.parts = {}  # Part.op <-> Operation.parts is a cycle: break it, free memory at once
        for sub in self.subscribers:
            sub.close()
        self.subscribers.clear()
        self._on_finished(self)


_OK_REPORTED = FinalStatus(grpc.StatusCode.OK, "", (), engine_reported=True)
_OK_UNREPORTED = FinalStatus(grpc.StatusCode.OK, "", (), engine_reported=False)


def summarize(
    failures: list[EngineFailure], engines: int, engine_reported: bool, max_failed: int = 0
) -> FinalStatus:
    """The documented rule: OK if every engine succeeded, or if no more than `max_failed` failed
    (the failures are kept, and named in the message, for the log and GetStatus); else
    UNAVAILABLE if any engine was unreachable; else the code of the first engine to fail. The
    message names every failure."""
    if not failures:
        return _OK_REPORTED if engine_reported else _OK_UNREPORTED
    listed = "; ".join(f"{f.engine}: {f.code.name}: {f.message}" for f in failures)
    message = listed if engines == 1 else f"{len(failures)} of {engines} engines failed: {listed}"
    if len(failures) <= max_failed:
        return FinalStatus(grpc.StatusCode.OK, f"{message} (tolerated: max_failed_engines="
                           f"{max_failed})", tuple(failures), engine_reported)  # fmt: skip
    codes = {f.code for f in failures}
    code = grpc.StatusCode.UNAVAILABLE if grpc.StatusCode.UNAVAILABLE in codes else failures[0].code
    return FinalStatus(code, message, tuple(failures), engine_reported)
