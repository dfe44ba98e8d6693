"""The load generator: latency percentiles and calls/s of async calls at a fixed concurrency.

One code path measures everything: `measure` runs `count` calls with `inflight` workers (1 =
sequential), each worker starting its next call when its last one ended, and times every call.
For gRPC (floor A, the bridge, the fan-out) a call is a grpc.aio unary_stream call whose stream
is consumed to its end; a call is good when it ended with status OK and its messages pass the
case's check (for the bridge: a Result from every engine asked). Anything else is a lost reply,
counted by reason.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.procs import cpu_s

# A call returns None when it ended well, else the reason it did not (a status name, ...).
Call = Callable[[int], Awaitable[str | None]]
# The processes a role's CPU time is summed over: their pids ("self" for this process).
Pids = tuple[int | str, ...]
CALL_TIMEOUT_S = 10.0


@dataclass
class Stats:
    """What one measured run of calls gave."""

    latencies_ns: list[int]  # sorted
    elapsed_s: float
    inflight: int
    problems: collections.Counter[str] = field(default_factory=collections.Counter)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process role -> CPU seconds used

    @property
    def count(self) -> int:
        return len(self.latencies_ns)

    @property
    def lost(self) -> int:
        return sum(self.problems.values())

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s

    def percentile_us(self, q: float) -> float:
        """Nearest-rank percentile (q in 0..100), in microseconds."""
        values = self.latencies_ns
        rank = max(1, math.ceil(q / 100 * len(values)))
        return values[rank - 1] / 1000

    @classmethod
    def merge(cls, runs: Sequence[Stats]) -> Stats:
        """Several runs at the same concurrency as one: latencies pooled, times and problems
        summed (so `rate` is calls over the time spent in these runs)."""
        latencies = sorted(x for run in runs for x in run.latencies_ns)
        problems: collections.Counter[str] = collections.Counter()
        for run in runs:
            problems.update(run.problems)
        cpu = {role: sum(r.cpu_s.get(role, 0.0) for r in runs) for role in runs[0].cpu_s}
        return cls(latencies, sum(r.elapsed_s for r in runs), runs[0].inflight, problems, cpu)

    def cpu_us_per_call(self, role: str) -> float | None:
        seconds = self.cpu_s.get(role)
        return None if seconds is None else seconds / self.count * 1e6

    @property
    def p50_us(self) -> float:
        return self.percentile_us(50)

    @property
    def p99_us(self) -> float:
        return self.percentile_us(99)


async def measure(
    call: Call, count: int, inflight: int = 1, cpu_of: dict[str, Pids] | None = None
) -> Stats:
    """Run `count` calls, `inflight` at a time; worker w (0..inflight-1) passes w to `call`.
    The whole run is bounded (a call that never ends fails the run, it does not hang it).
    `cpu_of` (role -> pids, "self" for this process): CPU time each role used during the run."""
    cpu_of = cpu_of or {}
    latencies: list[int] = []
    problems: collections.Counter[str] = collections.Counter()
    tickets = iter(range(count))
    clock = time.perf_counter_ns

    async def worker(w: int) -> None:
        for _ in tickets:
            started = clock()
            problem = await call(w)
            latencies.append(clock() - started)
            if problem is not None:
                problems[problem] += 1

    bound = 120.0 + count / 200  # generous: only a hang can reach it
    cpu_before = {role: _cpu(pids) for role, pids in cpu_of.items()}
    started = time.perf_counter()
    async with asyncio.timeout(bound):
        await asyncio.gather(*(worker(w) for w in range(min(inflight, count))))
    elapsed = time.perf_counter() - started
    cpu = {role: _cpu(pids) - cpu_before[role] for role, pids in cpu_of.items()}
    latencies.sort()
    return Stats(latencies, elapsed, inflight, problems, cpu)


def stream_call(
    method: grpc.aio.UnaryStreamMultiCallable,
    requests: Sequence[Any],
    check: Callable[[list[Any]], bool],
    timeout: float = CALL_TIMEOUT_S,
) -> Call:
    """A call of a server-streaming method, its stream read to the end. Worker w sends
    requests[w % len(requests)] (so each worker can target its own engine)."""

    async def call(w: int) -> str | None:
        try:
            messages = [m async for m in method(requests[w % len(requests)], timeout=timeout)]
        except grpc.aio.AioRpcError as err:
            return err.code().name
        return None if check(messages) else "no result"

    return call


def _cpu(pids: Pids) -> float:
    return sum(cpu_s(pid) for pid in pids)
