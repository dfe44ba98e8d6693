"""What the bridge's cost is made of: `python -m bench.split [--rounds N]`.

Three bridges in interleaved rounds (odd rounds in reverse order), each with 64 engine entries
on its own engine process, measured at 1 and at 64 in flight by the same client:

- the service (`bench._service`, to engine_stub --instant, as the bridge rows of `python -m bench`);
- the same service with Pause reduced to its transport (`bench._bare`: slot, send, wait, write a
  prebuilt event; to engine_stub --instant);
- the naive bridge (`bench.naive`, to floor B's echo).

The service minus its transport is what its guarantees cost per call (validation, admission,
deadline, retry record, the event built from the checked reply, metrics); the transport against
the naive bridge is the engine link and relay against a first version's. Prints medians over the
rounds of p50 (1 in flight) or calls/s (64 in flight) and the CPU per call of each process.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys

from bench.cases import channel, pause_calls
from bench.load import Call, Pids, Stats, measure
from bench.procs import BenchError, Children
from control_service.cli.aio import run

ENTRIES = 64
SIDES = ("service", "transport only", "naive bridge")


async def split(rounds: int, calls_1: int, calls_64: int) -> list[str]:
    children = Children()
    try:
        sides: dict[str, tuple[Call, Call, dict[str, Pids]]] = {}
        async with contextlib.AsyncExitStack() as stack:
            for side in SIDES:
                if side == "naive bridge":
                    engine = children.start("bench.floors", "zmq")
                    module = "bench.naive"
                else:
                    engine = children.start("bench._engine")
                    module = "bench._service" if side == "service" else "bench._bare"
                entries = [f"l{i}={engine.info['endpoint']}" for i in range(ENTRIES)]
                server = children.start(module, *entries)
                ch = await stack.enter_async_context(channel(server.info["port"]))
                names = server.info["engines"]
                one = pause_calls(ch, [names[:1]], 1)
                many = pause_calls(ch, [[name] for name in names], 1)
                await measure(many, 3_000, ENTRIES)
                cpu: dict[str, Pids] = {"client": ("self",), "server": (server.info["pid"],),
                                        "engine": (engine.info["pid"],)}  # fmt: skip
                sides[side] = (one, many, cpu)
            got: dict[tuple[str, int], list[Stats]] = {}
            for r in range(rounds):
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    one, many, cpu = sides[side]
                    for call, inflight, count in ((one, 1, calls_1), (many, ENTRIES, calls_64)):
                        stats = await measure(call, count, inflight, cpu)
                        if stats.lost:
                            raise BenchError(f"{side}: {stats.lost} calls failed")
                        got.setdefault((side, inflight), []).append(stats)
        return report(got, rounds)
    finally:
        children.stop_all()


def report(got: dict[tuple[str, int], list[Stats]], rounds: int) -> list[str]:
    def med(runs: list[Stats], value: str) -> float:
        if value in ("p50", "rate"):
            return statistics.median(s.p50_us if value == "p50" else s.rate for s in runs)
        return statistics.median(s.cpu_us_per_call(value) or 0.0 for s in runs)

    lines = [f"{rounds} interleaved rounds; medians over rounds; CPU per call by process", ""]
    lines += ["| bridge | in flight | p50 | calls/s | service CPU | engine CPU | client CPU |",
              "|---|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for inflight in (1, ENTRIES):
        for side in SIDES:
            runs = got[(side, inflight)]
            lines.append(
                f"| {side} | {inflight} | {med(runs, 'p50'):,.0f} us | {med(runs, 'rate'):,.0f} | "
                f"{med(runs, 'server'):,.0f} us | {med(runs, 'engine'):,.0f} us | "
                f"{med(runs, 'client'):,.0f} us |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls-1", type=int, default=2_000, help="calls per round at 1 in flight")
    parser.add_argument("--calls-64", type=int, default=8_000, help="calls per round at 64")
    args = parser.parse_args()
    try:
        print("\n".join(run(split(args.rounds, args.calls_1, args.calls_64))))
    except BenchError as err:
        print(f"bench.split: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
