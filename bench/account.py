"""Where the service's CPU goes, by phase of a call: `python -m bench.account`.

One instant engine and one service (64 engine entries on it, as in the bridge rows of
`python -m bench`), the service run with `--account` (bench/_accounting.py). After a warm-up it
makes `--calls` Pause calls at 1 and at `--inflight` in flight and prints, for each, the
service's CPU per call (every thread, from /proc) and the thread CPU time per call spent in each
phase of our code on the event loop's thread. What is left is gRPC (its C core, its Cython on
the loop, its poller thread), ZMQ's I/O thread, the event loop itself, and the garbage collector.
The wrappers add ~0.5 us per phase entered; the figures include it.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench import _accounting
from bench.cases import channel, pause_calls
from bench.load import measure
from bench.procs import REPO, BenchError, Children
from bench.report import cpu_ticks, environment
from control_service.cli.aio import run

WARMUP = 3_000
DOC = REPO / "docs" / "where-the-time-goes.md"
DOC_HEAD = """# Where the service's time goes

The last run of `.venv/bin/python -m bench.account --doc` (bench/account.py says how it
measures): the service's CPU per Pause call (every thread, from /proc), and the part of it spent
in each phase of our own code on the event loop's thread (thread CPU time around each phase, in
the real server under load). What is left is gRPC's C core, its Cython on the loop and its poller
thread, ZMQ's I/O thread, the event loop itself and the garbage collector. A call costs our code
3-4x what the same code costs in a hot loop in one process: between calls the CPU runs the other
processes, and each wake-up of another thread (a ZMQ send wakes the I/O thread) is charged here.

"""


async def account(calls: int, inflight: int) -> list[str]:
    children = Children()
    try:
        engine = children.start("bench._engine")
        entries = [f"l{i}={engine.info['endpoint']}" for i in range(64)]
        service = children.start("bench._service", "--account", *entries)
        lines = []
        async with channel(service.info["port"]) as ch:
            names = service.info["engines"]
            for width in (1, inflight):
                call = pause_calls(ch, [[name] for name in names], 1)
                await measure(call, WARMUP, width)
                before = service.ask("stats")["account_ns"]
                stats = await measure(call, calls, width, {"server": (service.info["pid"],)})
                after = service.ask("stats")["account_ns"]
                if stats.lost:
                    raise BenchError(f"{stats.lost} calls failed: {dict(stats.problems)}")
                lines += _table(width, stats.cpu_us_per_call("server") or 0.0, before, after,
                                calls)  # fmt: skip
        return lines
    finally:
        children.stop_all()


def _table(
    inflight: int, total_us: float, before: dict[str, int], after: dict[str, int], calls: int
) -> list[str]:
    out = [
        f"### {inflight} in flight: the service used {total_us:,.0f} us of CPU per call",
        "",
        "| phase (event loop thread) | us per call | share of the service's CPU |",
        "|---|--:|--:|",
    ]
    top = 0.0
    for name, parent in _accounting.PHASES:
        us = (after.get(name, 0) - before.get(name, 0)) / calls / 1000
        if not parent:
            top += us
        label = f"&nbsp;&nbsp;of which {name}" if parent else name
        out.append(f"| {label} | {us:,.1f} | {us / total_us:.0%} |")
    rest = total_us - top
    out += [
        f"| **our code, all phases** | **{top:,.1f}** | **{top / total_us:.0%}** |",
        f"| the rest: gRPC, ZMQ's I/O thread, event loop, GC | {rest:,.1f} | {rest / total_us:.0%} |",
        "",
    ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="measured calls per row")
    parser.add_argument("--inflight", type=int, default=64, help="the second row's concurrency")
    parser.add_argument("--doc", action="store_true", help=f"also write {DOC.relative_to(REPO)}")
    args = parser.parse_args()
    load, ticks = os.getloadavg(), cpu_ticks()
    try:
        text = "\n".join(run(account(args.calls, args.inflight)))
    except BenchError as err:
        print(f"bench.account: {err}", file=sys.stderr)
        return 2
    print(text)
    if args.doc:
        env = environment("bench.account", sys.argv[1:], load, ticks)
        DOC.write_text(DOC_HEAD + text + "\n" + "\n".join(env) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
