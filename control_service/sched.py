"""How the service's threads are scheduled: by default, a thread that wakes never preempts the
one running (Linux SCHED_BATCH), it waits for that thread's slice or a free core.

Why: every call wakes several of the service's threads (gRPC's completion-queue poller and I/O
threads, ZMQ's I/O thread, the event loop), on cores the service shares with the inference
engine. Under the default policy each wake-up preempted whatever was running, the service's own
event loop included: about 6 involuntary context switches per call at 64 calls in flight, on a
2-core machine. With SCHED_BATCH the woken thread waits instead, work gathers into fewer
switches, and the service used 14% less CPU per call at 64 in flight (and 1 in flight lost
nothing): see docs/benchmarks.md. The engine's threads, which serve tokens, are not preempted by
the control plane's wake-ups either. A control call waits at most one scheduler slice for a busy
core, which no Pause or weight update notices.

SCHED_BATCH needs no privilege. `normal` leaves the OS default (SCHED_OTHER); elsewhere than
Linux both are a no-op.
"""

from __future__ import annotations

import os

POLICIES = ("batch", "normal")


def apply(policy: str) -> int:
    """Put every thread of this process under `policy` (threads started later inherit it from
    the thread that starts them). Returns how many threads were set: 0 where the OS lacks it."""
    if policy not in POLICIES:
        raise ValueError(f"cpu policy must be one of {POLICIES}, got {policy!r}")
    native = getattr(os, "SCHED_BATCH" if policy == "batch" else "SCHED_OTHER", None)
    setter = getattr(os, "sched_setscheduler", None)
    if native is None or setter is None:
        return 0
    param = os.sched_param(0)
    count = 0
    for tid in _threads():
        try:
            setter(tid, native, param)
        except (ProcessLookupError, PermissionError):  # gone, or a real-time thread: leave it
            continue
        count += 1
    return count


def policy_of(tid: int = 0) -> str:
    """The policy a thread runs under, by this module's names ("other" for anything else)."""
    native = os.sched_getscheduler(tid)
    return {getattr(os, "SCHED_BATCH", -1): "batch", os.SCHED_OTHER: "normal"}.get(native, "other")


def _threads() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: this thread only
        return [0]
