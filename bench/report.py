"""The benchmark's table, its verdicts against the targets, the machine, and docs/benchmarks.md."""

from __future__ import annotations

import collections
import datetime
import os
import platform
import shlex
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import zmq

from bench.load import Stats

# The targets, as the issue states them.
P50_RATIO_MAX = 1.15
P99_RATIO_MAX = 1.5
RATE_SHARE_MIN = 0.70
RSS_GROWTH_MAX_MB = 5.0
FANOUT_P50_MAX = 3.0


@dataclass
class Row:
    case: str
    stats: Stats
    note: str = ""


@dataclass
class ServiceRun:
    """What the service process said about itself: its RSS after warm-up and at steps of the
    calls after it (the last one at the end), and its stats as it stopped."""

    rss_kb: list[int]
    end: dict
    calls_after_warmup: int

    @property
    def growth_mb(self) -> float:
        return (self.rss_kb[-1] - self.rss_kb[0]) / 1024


@dataclass
class MainResult:
    """Floors and bridge: rows by key ("a1", "b1", "bridge1", "a64", "bridge64"), pooled over
    rounds; the rounds themselves; the service's account; lost replies by reason."""

    rows: dict[str, Row]
    per_round: list[dict[str, Stats]]
    service: ServiceRun
    lost: collections.Counter[str]


@dataclass
class FanoutResult:
    rows: list[Row]  # 1, 8, 64 engines
    end: dict  # the fan-out service's account
    lost: collections.Counter[str]


def _us(v: float) -> str:
    return f"{v:,.0f} us"


def table(rows: list[Row]) -> list[str]:
    out = [
        "| case | in flight | calls | p50 | p99 | calls/s | note |",
        "|---|--:|--:|--:|--:|--:|---|",
    ]
    for r in rows:
        s = r.stats
        out.append(
            f"| {r.case} | {s.inflight} | {s.count:,} | {_us(s.p50_us)} | {_us(s.p99_us)} | {s.rate:,.0f} | {r.note.strip('; ')} |"
        )
    return out


def cpu_table(rows: list[Row]) -> list[str]:
    """CPU time per call of each process in a row (every thread: gRPC's and ZMQ's included)."""
    out = [
        "CPU time per call, by process (user + system, all threads, from /proc/<pid>/stat; "
        "engine = the sum over the engine processes):",
        "",
        "| case | in flight | load generator | server (echo server or service) | engine | all |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        s = row.stats
        roles = [s.cpu_us_per_call(role) for role in ("client", "server", "engine")]
        cells = ["—" if v is None else f"{v:,.0f} us" for v in roles]
        total = sum(v for v in roles if v is not None)
        out.append(f"| {row.case} | {s.inflight} | {' | '.join(cells)} | {total:,.0f} us |")
    return out


def _mark(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def _spread(values: list[float], fmt: str) -> str:
    return (
        f"per round {format(min(values), fmt)}-{format(max(values), fmt)}"
        if len(values) > 1
        else ""
    )


def verdicts(main: MainResult | None, fan: FanoutResult | None) -> list[str]:
    """One line per target, each marked met or MISSED."""
    lines: list[str] = []

    def add(ok: bool, text: str) -> None:
        lines.append(f"- {text}: {_mark(ok)}")

    if main is not None:
        r = {k: row.stats for k, row in main.rows.items()}
        a1, b1, br1, a64, br64 = r["a1"], r["b1"], r["bridge1"], r["a64"], r["bridge64"]
        rounds = main.per_round
        p50 = br1.p50_us / (a1.p50_us + b1.p50_us)
        p99 = br1.p99_us / (a1.p99_us + b1.p99_us)
        share = br64.rate / a64.rate
        p50s = _spread(
            [g["bridge1"].p50_us / (g["a1"].p50_us + g["b1"].p50_us) for g in rounds], ".2f"
        )
        p99s = _spread(
            [g["bridge1"].p99_us / (g["a1"].p99_us + g["b1"].p99_us) for g in rounds], ".2f"
        )
        shares = _spread([g["bridge64"].rate / g["a64"].rate for g in rounds], ".0%")
        add(
            p50 <= P50_RATIO_MAX,
            f"p50 ratio, bridge / (floor A + floor B) = {br1.p50_us:,.0f} / ({a1.p50_us:,.0f} + {b1.p50_us:,.0f}) = **{p50:.2f}** ({p50s}; target <= {P50_RATIO_MAX})",
        )
        add(
            p99 <= P99_RATIO_MAX,
            f"p99 ratio, bridge / (floor A + floor B) = {br1.p99_us:,.0f} / ({a1.p99_us:,.0f} + {b1.p99_us:,.0f}) = **{p99:.2f}** ({p99s}; target <= {P99_RATIO_MAX})",
        )
        add(
            share >= RATE_SHARE_MIN,
            f"calls/s at {br64.inflight} in flight, bridge / floor A = {br64.rate:,.0f} / {a64.rate:,.0f} = **{share:.0%}** ({shares}; target >= {RATE_SHARE_MIN:.0%})",
        )
        lines.extend(_against_naive(r, rounds))
    lost = (main.lost if main else collections.Counter()) + (
        fan.lost if fan else collections.Counter()
    )
    slots = (main.service.end["open_slots"] if main else 0) + (fan.end["open_slots"] if fan else 0)
    reasons = (
        "; by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(lost.items())) if lost else ""
    )
    add(
        sum(lost.values()) == 0 and slots == 0,
        f"lost replies: **{sum(lost.values())}**, open slots at the end: **{slots}** (every bridge and fan-out call, warm-up included{reasons}; target 0 and 0)",
    )
    if main is not None:
        svc = main.service
        add(
            svc.growth_mb < RSS_GROWTH_MAX_MB,
            f"service RSS {svc.rss_kb[0] / 1024:.1f} MB after warm-up, {svc.rss_kb[-1] / 1024:.1f} MB after {svc.calls_after_warmup:,} more calls: growth **{svc.growth_mb:+.2f} MB** (steps: {' -> '.join(f'{kb / 1024:.1f}' for kb in svc.rss_kb)} MB; target < {RSS_GROWTH_MAX_MB:g} MB)",
        )
        e = svc.end
        lines.append(
            f"- the service's own count at the end: {e['sent']:,} requests sent, {e['delivered']:,} replies delivered, {e['unmatched']} late/unmatched, {e['malformed']} malformed, {e['send_failures']} send failures, {e['running']} operations running"
        )
    if fan is not None and len(fan.rows) == 3:
        one, wide = fan.rows[0].stats, fan.rows[2].stats
        x50, x99 = wide.p50_us / one.p50_us, wide.p99_us / one.p99_us
        add(
            x50 <= FANOUT_P50_MAX,
            f"fan-out: Pause to 64 engines costs **{x50:.1f}x** the p50 of one engine (p99 {x99:.1f}x; target <= {FANOUT_P50_MAX:g}x)",
        )
    return lines


def _against_naive(r: dict[str, Stats], rounds: list[dict[str, Stats]]) -> list[str]:
    """The reference the issue names: the bridge must beat a naive bridge, measured here in the
    same rounds and the same engine-entry layout (its ratios to the floors shown alike)."""
    a1, b1, a64, nv1, nv64 = r["a1"], r["b1"], r["a64"], r["naive1"], r["naive64"]
    br1, br64 = r["bridge1"], r["bridge64"]
    floors = a1.p50_us + b1.p50_us
    p50 = br1.p50_us / nv1.p50_us
    p99 = br1.p99_us / nv1.p99_us
    rate = br64.rate / nv64.rate
    p50s = _spread([g["bridge1"].p50_us / g["naive1"].p50_us for g in rounds], ".2f")
    rates = _spread([g["bridge64"].rate / g["naive64"].rate for g in rounds], ".2f")
    return [
        f"- the naive bridge, for reference: p50 ratio to the floors {nv1.p50_us / floors:.2f}, p99 ratio {nv1.p99_us / (a1.p99_us + b1.p99_us):.2f}, calls/s at {nv64.inflight} in flight {nv64.rate / a64.rate:.0%} of floor A's",
        f"- bridge / naive bridge: p50 {br1.p50_us:,.0f} / {nv1.p50_us:,.0f} = **{p50:.2f}** ({p50s}), p99 **{p99:.2f}**, calls/s at {br64.inflight} in flight {br64.rate:,.0f} / {nv64.rate:,.0f} = **{rate:.2f}** ({rates}; to beat it: p50 < 1, calls/s > 1): {_mark(p50 < 1 and rate > 1)}",
    ]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, all) CPU ticks since boot, from /proc/stat; None where there is none. Stolen
    ticks are time the hypervisor gave this VM's vCPUs to other guests: on a shared host they
    explain a slow run better than the load average, which only sees this VM."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return None
    ticks = [int(f) for f in fields]  # user nice system idle iowait irq softirq steal
    return (ticks[7] if len(ticks) == 8 else 0), sum(ticks)


def environment(
    module: str,
    argv: list[str],
    load: tuple[float, float, float],
    ticks_before: tuple[int, int] | None = None,
) -> list[str]:
    """The machine lines under a report; `ticks_before` (cpu_ticks() at the start) adds the
    share of CPU time the host took during the run."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.splitlines()
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    packages = ", ".join(
        f"{p} {v}"
        for p in ("grpcio", "pyzmq", "protobuf", "orjson", "uvloop")
        if (v := _version(p))
    )
    loop = "uvloop" if _version("uvloop") else "asyncio"
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"- command: `{shlex.join(['.venv/bin/python', '-m', module, *argv])}`",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; nproc: {nproc}; CPU: {cpu}; load average before the run: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)",
        f"- Python {platform.python_version()}, {packages}, libzmq {zmq.zmq_version()}; event loop: {loop} in every process",
        *_stolen(ticks_before),
    ]


def _stolen(before: tuple[int, int] | None) -> list[str]:
    after = cpu_ticks()  # looked up at call time (tests replace it)
    if before is None or after is None or after[1] <= before[1]:
        return []
    share = (after[0] - before[0]) / (after[1] - before[1])
    return [
        f"- CPU time taken by the host (steal, /proc/stat) during the run: {share:.1%} of all CPU time"
    ]


def rows(main: MainResult | None, fan: FanoutResult | None) -> list[Row]:
    keys = ("a1", "a64", "b1", "naive1", "naive64", "bridge1", "bridge64")
    out = [main.rows[k] for k in keys] if main else []
    return out + (fan.rows if fan else [])


def render(
    main: MainResult | None, fan: FanoutResult | None, notes: list[str], env: list[str]
) -> str:
    """The whole report: markdown, readable as plain text."""
    measured = [r for r in rows(main, fan) if r.stats.cpu_s]
    cpu = [*cpu_table(measured), ""] if measured else []
    return "\n".join(
        [*table(rows(main, fan)), "", *verdicts(main, fan), "", *cpu, *notes, "", *env]
    )


DOC_HEAD = """# Benchmarks

The last full run of `.venv/bin/python -m bench` (about 2 minutes on 2 cores; `--quick` for a smoke
run, `--help` for the counts; `bench/__main__.py` says what is measured and how). Every party
runs in its own process on loopback: the load generator (a grpc.aio client; `in flight` =
concurrent workers, each starting its next call when its last one ended), the floor A echo
server, the floor B ROUTER echo, the naive bridge (bench/naive.py, the reference to beat), the
control service and the instant engine(s). Floors, naive bridge and bridge are measured in the
same run, by the same client code path, in interleaved rounds. Where the service's own CPU goes,
phase by phase: [where-the-time-goes.md](where-the-time-goes.md) (`python -m bench.account`).
p50/p99 are nearest-rank percentiles of per-call latency at the client. On a shared 2-core
machine other work moves the numbers from run to run, the floors' with them: the ratios and
their per-round ranges are steadier than the absolute figures (to judge a change, use
`python -m bench.ab`, which interleaves two versions in one run).

Reading the 64-in-flight rows: the 2 cores are saturated there, so calls/s is about 2 cores
divided by the CPU per call of every process together (the last column of the CPU table). A
bridge adds at least an engine and a ZMQ client to floor A's processes, so even with no code of
its own it stays under floor A's calls/s: with an engine as cheap as floor B's echo and a ZMQ
client side like floor B's (the floor B row of the CPU table), roughly 55-75% of it here.

Reading the bridge against the naive bridge: `python -m bench.split` measures the service, the
same service with Pause reduced to its transport (bench/_bare.py) and the naive bridge side by
side. The transport (one DEALER per engine read by `loop.add_reader`, the slot, the relay) costs
less than the naive bridge's zmq.asyncio one: 10-15% less service CPU per call and 1-15% more
calls/s at 64 in flight, the same or lower p50 at 1 (five runs on 2026-12-01). What the service
does per call beyond it (validation, admission with one mutation per engine and retries by
request_id, the deadline, the retry record, the event built from the engine's checked reply,
metrics) is ~20 us in a hot loop in one process and 60-95 us of service CPU per call here, where
each call finds its caches cold after the client and the engine had the core; and an engine that
decodes each request and encodes its reply costs 5-30 us more than an echo. That is the distance
between the two rows.

"""


SCALE_HEADING = "## Scale: "  # the section from `python -m bench.fanout`, written by hand


def write_doc(path: Path, text: str) -> None:
    """The report, and the scale section kept from the file it replaces (another tool's)."""
    old = path.read_text() if path.exists() else ""
    start = old.find(SCALE_HEADING)
    kept = "\n" + old[start:] if start >= 0 else ""
    path.write_text(DOC_HEAD + text + "\n" + kept)


def say(text: str = "") -> None:
    """Progress on stderr, so stdout carries only the report."""
    print(text, file=sys.stderr, flush=True)
