"""The bridge against its floors, in one run, each party in its own process, on loopback.

    .venv/bin/python -m bench              # full run (~2 min on 2 cores); writes docs/benchmarks.md
    .venv/bin/python -m bench --quick      # smoke run: every row, small counts (~6 s); writes nothing
    .venv/bin/python -m bench --no-fanout  # without the fan-out section (or --fanout-only)

Rows: floor A (a raw grpc.aio server-streaming echo of one 128-byte message), floor B (a raw
pyzmq DEALER/ROUTER echo of 128 bytes), the naive bridge (bench/naive.py, the reference to
beat) and the bridge (Pause through the service to an instant-reply engine) at 1 and 64 in
flight, and Pause fanned out to 1, 8 and 64 engines. Then the targets: p50 and p99 ratios
against the floors, the share of floor A's calls/s at 64 in flight, the bridge against the
naive bridge, lost replies and open slots, the service's RSS growth over 100,000 calls after warm-up,
and the fan-out's cost. The exit code is 1 when a call was lost or a slot left open (speed
targets are reported, not enforced), 2 when the run itself failed.

Processes: this one (the grpc.aio load generator), `bench.floors grpc` and `bench.floors zmq`
(the floors' servers), `bench.naive` (the naive bridge, on the zmq echo), `bench._service` (the ControlServer) and `bench._engine` (engine_stub
--instant; 1 process for the bridge, 8 for the fan-out). `--profile OUT` samples the service
with py-spy during the RSS run (the bridge at 64 in flight) and prints the top functions.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from bench import cases, profile
from bench.procs import REPO, BenchError, Children
from bench.report import FanoutResult, MainResult, cpu_ticks, environment, render, say, write_doc
from control_service.cli.aio import run

DOC = REPO / "docs" / "benchmarks.md"

FULL = cases.Counts(
    calls=6_000,
    calls_inflight=24_000,
    warmup=10_000,
    rss_calls=100_000,
    fanout_calls=1_000,
    rounds=6,  # even: with the order alternated, each row runs first and last equally often
)
QUICK = cases.Counts(
    calls=300, calls_inflight=2_000, warmup=500, rss_calls=3_000, fanout_calls=100, rounds=2
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small counts: a smoke run (does not write the doc unless --doc is given)",
    )
    p.add_argument(
        "--calls",
        type=int,
        help=f"calls measured at 1 in flight (default {FULL.calls:,}; quick {QUICK.calls})",
    )
    p.add_argument(
        "--calls-64",
        dest="calls_inflight",
        type=int,
        help=f"calls measured at 64 in flight (default {FULL.calls_inflight:,}; quick {QUICK.calls_inflight:,})",
    )
    p.add_argument(
        "--warmup",
        type=int,
        help=f"bridge calls before the RSS baseline (default {FULL.warmup:,}; quick {QUICK.warmup})",
    )
    p.add_argument(
        "--rss-calls",
        type=int,
        help=f"bridge calls after the RSS baseline, measured ones included (default {FULL.rss_calls:,}; quick {QUICK.rss_calls:,})",
    )
    p.add_argument(
        "--fanout-calls",
        type=int,
        help=f"calls per fan-out width (default {FULL.fanout_calls:,}; quick {QUICK.fanout_calls})",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds the measured calls are split into (default {FULL.rounds}; quick {QUICK.rounds})",
    )
    section = p.add_mutually_exclusive_group()
    section.add_argument("--no-fanout", action="store_true", help="skip the fan-out section")
    section.add_argument("--fanout-only", action="store_true", help="run only the fan-out section")
    p.add_argument(
        "--doc",
        type=Path,
        help=f"write the report here (default: {DOC.relative_to(REPO)} on full runs)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="OUT",
        help="py-spy the service during the RSS run, the bridge at 64 in flight (collapsed stacks to OUT); implies no doc",
    )
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.counts = cases.Counts(
        calls=args.calls or base.calls,
        calls_inflight=args.calls_inflight or base.calls_inflight,
        warmup=args.warmup if args.warmup is not None else base.warmup,
        rss_calls=args.rss_calls if args.rss_calls is not None else base.rss_calls,
        fanout_calls=args.fanout_calls or base.fanout_calls,
        rounds=args.rounds or base.rounds,
    )
    c = args.counts
    if min(c.calls, c.calls_inflight, c.warmup, c.rss_calls, c.fanout_calls, c.rounds) < 0:
        p.error("counts must not be negative")
    if min(c.calls, c.calls_inflight) < 2 * c.rounds or c.fanout_calls < 2:
        p.error("too few calls: each round needs at least 2 calls of each kind")
    if args.doc is None and not args.quick and not args.profile:
        args.doc = DOC
    return args


async def measure_all(
    args: argparse.Namespace, children: Children
) -> tuple[MainResult | None, FanoutResult | None]:
    n: cases.Counts = args.counts
    core = fan = None
    if not args.fanout_only:
        say(f"floors A and B and the bridge, {n.rounds} interleaved rounds")
        core = await cases.floors_and_bridge(children, n, args.profile)
    if not args.no_fanout:
        say("fan-out: Pause to 1, 8, 64 engines")
        fan = await cases.fanout(children, n)
    return core, fan


NOTES = [
    "- Floors and bridge were measured in interleaved rounds (all their servers up at once, each round measuring "
    "every row once, odd rounds in reverse order: a row measured right after a saturating one runs slower here, so a fixed "
    "order biased the rows it put last); each row pools its rounds, and `per round` gives the range of a ratio over the rounds.",
    "- The naive bridge's engine is floor B's echo, and that echo reads like engine_stub (a plain socket on `loop.add_reader`), "
    "so both bridges' engines pay the same per message for their I/O; the instant engine also decodes each request and "
    "encodes its reply (the engine CPU column shows the difference).",
    "- The bridge's engine is `engine_stub --instant`, run by bench/_engine.py, which only mutes the stub's per-request "
    "stdout line; at 64 in flight the service has 64 engine entries l0..l63 on that one engine process and worker w always calls l<w>.",
    "- The naive bridge (bench/naive.py) is the reference the issue names, built as `../shared/notes/grpc-zmq-facts.md` "
    "describes it: a future per call in a dict, a zmq.asyncio DEALER per engine entry with a receive task each, one message "
    "yielded; no validation, deadlines, metrics, JSON or retry records. It has the bridge's 64 entries, on floor B's echo.",
    "- RSS: the service's VmRSS after the warm-up (by default 10,000 bridge calls, most at 64 in flight), after the rounds, "
    "and after each quarter of the rest of the 100,000 calls (the measured ones count among them).",
    "- Fan-out: one service with 64 engine entries on 8 instant engine processes (8 entries each); 1 engine = one entry, "
    "8 engines = one entry on each process, 64 engines = all entries (a Pause with an empty `engines` list).",
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    load, ticks = os.getloadavg(), cpu_ticks()
    # SIGTERM ends the run like Ctrl-C does: through the finally below, which stops every child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Children() as children:
            core, fan = run(measure_all(args, children))
    except BenchError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every child process stopped", file=sys.stderr)
        return 130
    text = render(core, fan, NOTES, environment("bench", argv, load, ticks))
    print(text)
    if args.profile is not None and core is not None:
        print("\n## Service profile (py-spy, bridge at 64 in flight)\n")
        print("\n".join(profile.summarize(args.profile)))
    if args.doc is not None:
        write_doc(args.doc, text)
        say(f"wrote {args.doc}")
    lost = (sum(core.lost.values()) + core.service.end["open_slots"]) if core else 0
    lost += (sum(fan.lost.values()) + fan.end["open_slots"]) if fan else 0
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
