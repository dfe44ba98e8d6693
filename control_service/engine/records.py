"""The outcomes of finished mutations by request_id, so that a repeat is answered, not re-run.

A service that restarts in the middle of a mutation has no record of it; the trainer retries with
the same request_id, and the new service passes that id on. Without this record the engine would
pause, load or resume a second time. Bounded in count and in age, like the service's own record.
Only outcomes of the engine's own making are kept: a cancelled or timed-out operation (rolled
back), or one refused because another ran, is run again by its retry.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from control_service.protocol import wire

# Ends that say "this did not happen (or not all of it)": a retry must run again.
NOT_RECORDED: Final = frozenset(
    {"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED"}
)


@dataclass(frozen=True, slots=True)
class Record:
    method: str
    args: dict[str, Any]
    reply: wire.Reply
    at: float

    def same_call(self, request: wire.Request) -> bool:
        return self.method == request.method and self.args == request.args


class OutcomeRecords:
    """request_id -> the terminal reply of a finished mutation; the oldest go first."""

    def __init__(self, limit: int, ttl_s: float) -> None:
        self._limit = limit
        self._ttl_s = ttl_s
        self._records: OrderedDict[str, Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, request_id: str) -> Record | None:
        record = self._records.get(request_id)
        if record is not None and time.monotonic() - record.at > self._ttl_s:
            del self._records[request_id]
            return None
        return record

    def put(self, request: wire.Request, reply: wire.Reply) -> None:
        if self._limit <= 0 or (reply.kind == wire.ERROR and reply.data["code"] in NOT_RECORDED):
            return
        now = time.monotonic()
        records = self._records
        records[request.request_id] = Record(request.method, request.args, reply, now)
        records.move_to_end(request.request_id)
        while len(records) > self._limit:
            records.popitem(last=False)
        while records:
            oldest = next(iter(records.values()))
            if now - oldest.at <= self._ttl_s:
                break
            records.popitem(last=False)
