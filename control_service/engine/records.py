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


# Not frozen: one is built for every mutation, the instant engine's included (see wire.Request).
@dataclass(slots=True)
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
        """Keep the newest `limit`; an old one is dropped by `get` when it is read (or pushed out
        by newer ones), so the count bounds the memory and the age bounds what is answered."""
        if self._limit <= 0 or (reply.kind == wire.ERROR and reply.data["code"] in NOT_RECORDED):
            return
        records = self._records
        rid = request.request_id
        records.pop(rid, None)  # a re-run (after a cancel, say) goes to the newest end
        records[rid] = Record(request.method, request.args, reply, time.monotonic())
        if len(records) > self._limit:
            records.popitem(last=False)
