"""Reply slots: where an engine's replies for one request_id land.

The rule this service exists for: a slot is opened *before* its request is sent, and it is the
only way a reply reaches a caller. A reply whose request_id has no open slot (late, duplicated,
or never asked for) is dropped and counted, never cached for later. Every slot is closed on every
path (terminal reply, deadline, cancellation, engine loss, shutdown), and the number open is
bounded by one budget shared by all engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

from control_service.errors import ControlError
from control_service.protocol import wire


class ReplySink(Protocol):
    """The owner of a slot: one engine's part of one operation."""

    def on_reply(self, reply: wire.Reply) -> None:
        """Each reply for the slot; a terminal reply is the last call."""

    def on_lost(self, error: ControlError) -> None:
        """The slot was closed by the service (engine lost, shutdown) before a terminal reply."""


class SlotBudget:
    """How many slots may be open across every engine (RESOURCE_EXHAUSTED past it)."""

    __slots__ = ("limit", "open")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


@dataclass(slots=True)
class SlotCounters:
    """What was dropped and why: the service's proof that nothing is parked in a side path."""

    delivered: int = 0
    unmatched: int = 0  # no open slot: late, duplicated or unknown request_id


class SlotTable:
    """request_id -> sink for one engine link."""

    def __init__(self, budget: SlotBudget) -> None:
        self._sinks: dict[str, ReplySink] = {}
        self._budget = budget
        self.counters = SlotCounters()

    def __len__(self) -> int:
        return len(self._sinks)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._sinks

    def open(self, request_id: str, sink: ReplySink) -> None:
        if request_id in self._sinks:
            raise ControlError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id {request_id!r} already has an open slot",
            )
        budget = self._budget
        if budget.open >= budget.limit:
            raise ControlError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{budget.open} reply slots are open, the limit is {budget.limit}",
            )
        budget.open += 1
        self._sinks[request_id] = sink

    def close(self, request_id: str) -> bool:
        """Close a slot; False when it was already closed (closing is idempotent)."""
        if self._sinks.pop(request_id, None) is None:
            return False
        self._budget.open -= 1
        return True

    def deliver(self, reply: wire.Reply) -> bool:
        """Hand a reply to its slot, closing the slot on a terminal reply; False if none is open."""
        if reply.kind in wire.TERMINAL_KINDS:
            sink = self._sinks.pop(reply.request_id, None)
            if sink is not None:
                self._budget.open -= 1
        else:
            sink = self._sinks.get(reply.request_id)
        if sink is None:
            self.counters.unmatched += 1
            return False
        self.counters.delivered += 1
        sink.on_reply(reply)
        return True

    def fail(self, request_id: str, error: ControlError) -> bool:
        """Close one slot and tell its owner why (a malformed reply for it); False if none."""
        sink = self._sinks.pop(request_id, None)
        if sink is None:
            return False
        self._budget.open -= 1
        sink.on_lost(error)
        return True

    def fail_all(self, error: ControlError) -> int:
        """Close every slot and tell each owner why (engine lost, shutdown); returns how many."""
        count = 0
        while self._sinks:
            _, sink = self._sinks.popitem()
            self._budget.open -= 1
            sink.on_lost(error)
            count += 1
        return count
