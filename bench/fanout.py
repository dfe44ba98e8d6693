"""`python -m bench.fanout`: Pause and Refit fanned out to 1, 64 and 1,024 engine links.

    .venv/bin/python -m bench.fanout                    # 1, 64, 1,024 links (a few minutes)
    .venv/bin/python -m bench.fanout --quick            # a smoke run: a few calls per width
    .venv/bin/python -m bench.fanout --widths 4096 --processes 64   # go further

What an RL engineer scaling out wants to know: does a call to every engine stay linear in the
engines, and what does each engine link cost the service when nothing happens? For each width
W a service is started with exactly W engine links, spread round robin over `--processes`
instant engine processes (engine_stub --instant, bench/_engine.py: one ROUTER serves many
links), and Pause and Refit are called on all W links, one call in flight, every part in its own
process on loopback. Printed per width and method: p50/p99 per call; the service's and the
client's CPU per engine per call (user + system, all threads, /proc/<pid>/stat; the service's
figure includes its heartbeats during the calls, which is what it costs); the service's RSS and
open descriptors with W links; the service's idle CPU with W links (heartbeats: every 200 ms
per link up to 200 links, then 1,000 a second for all links together, up to every 2 s per
link: `LinkConfig.for_links`); and how long until every link was up. Targets (issue 15): every call OK and 0
slots open at the end; the service's CPU per engine per call at the widest width no more than
at 64; RSS per engine link (over the 1-link service) under 100 KiB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from bench.cases import channel, pause_calls, stop_service
from bench.load import Call, Pids, Stats, measure, stream_call
from bench.procs import BenchError, Child, Children, cpu_s
from bench.report import cpu_ticks, environment, say
from control_service.gen.control.v1 import control_pb2 as pb

REFIT_METHOD = "/control.v1.ControlService/Refit"
ENGINE_WORK = 5_000  # engine-calls per width and method: calls = ENGINE_WORK / width
MIN_CALLS = 10
IDLE_S = 3.0  # the idle window over which heartbeats' CPU is measured
RSS_TARGET_KIB = 100


@dataclass(frozen=True)
class Run:
    """One width: the service's footprint and each method's calls."""

    width: int
    up_s: float  # from starting the service to every link up
    rss_kb: int  # with every link up, before any call
    rss_after_kb: int  # after the calls (retry records of the last 1,024 calls included)
    descriptors: int
    idle_cpu_pct: float  # of one core, with W idle links
    methods: dict[str, Stats]
    open_slots: int  # at the end, while still serving


def refit_calls(ch: grpc.aio.Channel, engines: int) -> Call:
    """Refit of every engine; good when the stream ended OK with one final Result (step
    "refit") from each of the `engines` engines."""
    refit = ch.unary_stream(
        REFIT_METHOD,
        request_serializer=pb.RefitRequest.SerializeToString,
        response_deserializer=pb.ControlEvent.FromString,
    )

    def check(events: list[Any]) -> bool:
        finals = sum(1 for e in events if e.step == "refit" and e.HasField("result"))
        return finals == engines

    request = pb.RefitRequest(uri="/ckpt/bench", version="1", mode=pb.PAUSE_MODE_ABORT)
    return stream_call(refit, [request], check, timeout=120.0)


def descriptors(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


async def run_width(
    children: Children,
    engines: Sequence[Child],
    width: int,
    work: int,
    min_calls: int,
    heartbeat: str | None = None,
) -> Run:
    entries = [f"e{i}={engines[i % len(engines)].info['endpoint']}" for i in range(width)]
    options = [f"--heartbeat={heartbeat}"] if heartbeat else []
    started = time.perf_counter()
    service = children.start("bench._service", *options, *entries, timeout=300.0)
    up_s = time.perf_counter() - started
    if "error" in service.info:  # e.g. the links were not all up at once within its bound
        raise BenchError(f"{width:,} links: service: {service.info['error']}")
    pid = service.info["pid"]
    rss_kb = service.ask("stats")["rss_kb"]
    before = cpu_s(pid)
    await asyncio.sleep(IDLE_S)  # a measuring window, not a synchronisation
    idle = (cpu_s(pid) - before) / IDLE_S * 100
    cpu: dict[str, Pids] = {"client": ("self",), "server": (pid,)}
    calls = max(min_calls, work // width)
    methods: dict[str, Stats] = {}
    async with channel(service.info["port"]) as ch:
        for method, call in (
            ("Pause", pause_calls(ch, [[]], width)),
            ("Refit", refit_calls(ch, width)),
        ):
            say(f"  {width} links, {method}: {calls:,} calls")
            await measure(call, max(2, calls // 10), 1)  # warm-up
            methods[method] = await measure(call, calls, 1, cpu)
    fds = descriptors(pid)
    end = stop_service(children, service)
    return Run(width, up_s, rss_kb, end["rss_kb"], fds, idle, methods, end["open_slots"])


def render(runs: list[Run], processes: int) -> list[str]:
    lines = [
        "| links | call | calls | p50 | p99 | service CPU / engine / call | client CPU / engine / call | failed |",
        "|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for run in runs:
        for method, s in run.methods.items():
            server = s.cpu_s["server"] / s.count / run.width * 1e6
            client = s.cpu_s["client"] / s.count / run.width * 1e6
            lines.append(
                f"| {run.width:,} | {method} | {s.count:,} | {s.p50_us / 1000:,.1f} ms | "
                f"{s.p99_us / 1000:,.1f} ms | {server:,.1f} us | {client:,.1f} us | {s.lost} {dict(s.problems) if s.lost else ''} |"
            )
    base = next((r.rss_kb for r in runs if r.width == 1), None)
    lines += [
        "",
        "| links | every link up after | service RSS, links up | RSS / link over 1 link | RSS after the calls | open descriptors | idle service CPU (heartbeats) |",
        "|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for run in runs:
        per = (
            f"{(run.rss_kb - base) / (run.width - 1):,.1f} KiB"
            if base is not None and run.width > 1
            else "—"
        )
        lines.append(
            f"| {run.width:,} | {run.up_s:,.1f} s | {run.rss_kb / 1024:,.1f} MiB | {per} | "
            f"{run.rss_after_kb / 1024:,.1f} MiB | "
            f"{run.descriptors:,} | {run.idle_cpu_pct:.1f}% of a core |"
        )
    lines += [
        "",
        *verdicts(runs),
        f"- engines: {processes} instant engine processes, links spread round robin",
    ]
    return lines


def _per_engine(run: Run, method: str) -> float:
    s = run.methods[method]
    return s.cpu_s["server"] / s.count / run.width


def verdicts(runs: list[Run]) -> list[str]:
    failed = sum(s.lost for run in runs for s in run.methods.values())
    slots = sum(run.open_slots for run in runs)
    out = [f"- every call OK: {failed} failed, open slots at the end: {slots} (target 0 and 0): "
           f"{_mark(failed == 0 and slots == 0)}"]  # fmt: skip
    widths = {run.width: run for run in runs}
    widest = max(widths)
    if 64 in widths and widest > 64:
        for method in widths[64].methods:
            at64, wide = _per_engine(widths[64], method), _per_engine(widths[widest], method)
            out.append(
                f"- {method}: service CPU per engine per call at {widest:,} / at 64 = "
                f"{wide * 1e6:,.1f} / {at64 * 1e6:,.1f} us = **{wide / at64:.2f}** "
                f"(target <= 1): {_mark(wide <= at64)}"
            )
    if 1 in widths and widest > 1:
        per = (widths[widest].rss_kb - widths[1].rss_kb) / (widest - 1)
        out.append(
            f"- RSS per engine link at {widest:,}: **{per:,.1f} KiB** (target < {RSS_TARGET_KIB}): "
            f"{_mark(per < RSS_TARGET_KIB)}"
        )
    return out


def _mark(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--widths", default="1,64,1024", help="engine links per service (default 1,64,1024)"
    )
    p.add_argument(
        "--processes", type=int, default=16, help="instant engine processes (default 16)"
    )
    p.add_argument("--work", type=int, default=ENGINE_WORK,
                   help=f"engine-calls per width and method (default {ENGINE_WORK:,})")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="a smoke run: a few calls per width")
    p.add_argument("--heartbeat", metavar="IVL/TIMEOUT[/RATE]",
                   help="the service's engine heartbeats: interval and timeout in seconds, and "
                   "at most RATE a second for all links together (default 0.2/0.6/1000: "
                   "scaled past 200 links)")  # fmt: skip
    args = p.parse_args(argv)
    try:
        args.widths = sorted({int(w) for w in args.widths.split(",")})
    except ValueError:
        p.error("--widths takes numbers separated by commas")
    if min(args.widths) < 1 or args.processes < 1 or args.work < 1:
        p.error("widths, --processes and --work must be >= 1")
    return args


async def measure_all(args: argparse.Namespace, children: Children) -> list[Run]:
    engines = [children.spawn("bench._engine") for _ in range(args.processes)]
    for engine in engines:
        engine.ready()
    work, min_calls = (args.work // 100, 3) if args.quick else (args.work, MIN_CALLS)
    runs = []
    for width in args.widths:
        say(f"{width:,} engine links on {args.processes} engine processes")
        runs.append(await run_width(children, engines, width, work, min_calls, args.heartbeat))
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    load, ticks = os.getloadavg(), cpu_ticks()
    try:
        with Children() as children:
            runs = asyncio.run(measure_all(args, children))
    except BenchError as err:
        print(f"bench.fanout: {err}", file=sys.stderr)
        return 1
    print(
        "\n".join([*render(runs, args.processes), *environment("bench.fanout", argv, load, ticks)])
    )
    ok = all(s.lost == 0 for run in runs for s in run.methods.values())
    return 0 if ok and all(run.open_slots == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
