"""Refit's pause window: how long each engine stops generating, per checkpoint size and fleet.

    .venv/bin/python -m bench.refit           # full run (a few minutes on 2 cores); writes the
                                              # Refit section of docs/benchmarks.md
    .venv/bin/python -m bench.refit --quick   # smoke run: small checkpoints, 1 and 2 engines

What an RL step pays for a refit is the time its engines do not generate, not the control
call's overhead. Every party is a real process on loopback: this one (a grpc.aio client), the
control service (bench._service) and 8 engine_stub processes, each simulating generation and
loading real safetensors files. Checkpoints of 64 MiB and 512 MiB are written with engine_stub's
write_checkpoint into a temporary folder (removed at the end). Each row runs `--refits` Refits
to 1 engine (e0) or to 8 (one per process), each with a new version. The checkpoint sizes
of a fleet and mode are interleaved, refit by refit (64, 512, 512, 64, ...), so that drift in
the machine's load falls on both sizes alike: the growth from 64 to 512 MiB is a difference of
about a millisecond, less than the run-to-run spread of rows measured one after the other. The
pause window of every engine is the service's own `paused_ms` from its final Result (from its
pause result to its resume result), pooled over the row's refits and engines; the refit time is
the whole call at the client. The exit code is 1 when a Refit did not end OK, 2 when the run
itself failed.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.procs import REPO, BenchError, Child, Children
from bench.report import REFIT_SECTION, environment, say
from control_service.cli.aio import run
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc as pb_grpc
from engine_stub.checkpoint import write_checkpoint

DOC = REPO / "docs" / "benchmarks.md"
SECTION = REFIT_SECTION
PROCESSES = 8
MIB = 1 << 20
TENSOR = (1024, 1024)  # float32: 4 MiB per tensor
TENSOR_MIB = 4
REFIT_TIMEOUT_S = 600.0
# The modes compared: what a Refit asks for in each.
MODES: dict[str, dict[str, object]] = {"load in the pause": {}, "staged": {"stage": True}}


@dataclass(frozen=True)
class Plan:
    sizes_mib: tuple[int, ...]
    fleets: tuple[int, ...]
    refits: int


FULL = Plan(sizes_mib=(64, 512), fleets=(1, 8), refits=5)
QUICK = Plan(sizes_mib=(4, 32), fleets=(1, 2), refits=2)


@dataclass
class Row:
    mode: str
    size_mib: float
    engines: int
    windows_ms: list[float] = field(default_factory=list)
    refit_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def write_sized_checkpoint(folder: Path, size_mib: int) -> int:
    """A checkpoint of about `size_mib` MiB: 4 MiB tensors, 4 to a file where there are 4."""
    tensors = max(1, size_mib // TENSOR_MIB)
    files = max(1, tensors // 4)
    return write_checkpoint(
        folder, files=files, tensors_per_file=tensors // files, shape=TENSOR, seed=size_mib
    )


async def refit_once(
    stub: pb_grpc.ControlServiceStub, engines: list[str], uri: str, version: str, mode: str
) -> tuple[float, list[float], str]:
    """One Refit: (its time at the client in ms, each engine's paused_ms, failure or '')."""
    request = pb.RefitRequest(uri=uri, version=version, engines=engines, **MODES[mode])  # type: ignore[arg-type]
    started = time.perf_counter()
    finals: list[pb.ControlEvent] = []
    try:
        async for event in stub.Refit(request, timeout=REFIT_TIMEOUT_S):
            if event.step == "refit" and event.HasField("result"):
                finals.append(event)
    except grpc.aio.AioRpcError as err:
        return (time.perf_counter() - started) * 1000, [], f"{err.code().name}: {err.details()}"
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, [e.result.paused_ms for e in finals], ""


async def measure(port: int, plan: Plan, checkpoints: dict[int, tuple[str, int]]) -> list[Row]:
    rows = {
        (size_mib, fleet, mode): Row(mode, size / MIB, fleet)
        for size_mib, (_, size) in checkpoints.items()
        for fleet in plan.fleets
        for mode in MODES
    }
    versions = (f"v{n}" for n in itertools.count(1))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ControlServiceStub(channel)
        for fleet in plan.fleets:
            engines = [f"e{i}" for i in range(fleet)]
            for mode in MODES:
                sizes = list(checkpoints)
                say(f"  {mode}: {', '.join(f'{s} MiB' for s in sizes)} to {fleet} engine(s), "
                    f"{plan.refits} refits each, interleaved")  # fmt: skip
                for size_mib in sizes:  # one unmeasured refit first: the files read once
                    await refit_once(stub, engines, checkpoints[size_mib][0], next(versions), mode)
                for _ in range(plan.refits):
                    for size_mib in sizes:
                        row = rows[size_mib, fleet, mode]
                        ms, windows, failed = await refit_once(
                            stub, engines, checkpoints[size_mib][0], next(versions), mode
                        )
                        row.refit_ms.append(ms)
                        row.windows_ms.extend(windows)
                        if failed:
                            row.failures.append(failed)
                    sizes.reverse()  # 64, 512, 512, 64, ...: neither size always goes first
    return list(rows.values())


def render(rows: list[Row], plan: Plan, env: list[str]) -> str:
    lines = [
        SECTION,
        "",
        "What an RL step pays for a refit is the time each engine does not generate. The pause "
        "window is the service's `paused_ms` from each engine's final Refit Result (from its pause "
        "result to its resume result), pooled over the row's refits and engines; the refit is the "
        "whole Refit call at the client. Nearest-rank percentiles. Every party is a real process: "
        f"the client, the service and {PROCESSES} engine_stub processes simulating generation and "
        "reading real safetensors files (from the page cache: one unmeasured refit per row first). "
        "Method: `bench/refit.py`.",
        "",
        "| mode | checkpoint | engines | refits | pause p50 | pause p99 | refit p50 | refit p99 | failed |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.mode} | {r.size_mib:,.1f} MiB | {r.engines} | {len(r.refit_ms)} "
            f"| {percentile(r.windows_ms, 50):,.1f} ms | {percentile(r.windows_ms, 99):,.1f} ms "
            f"| {percentile(r.refit_ms, 50):,.1f} ms | {percentile(r.refit_ms, 99):,.1f} ms "
            f"| {len(r.failures)} |"
        )
    lines.append("")
    lines.extend(targets(rows))
    for r in rows:
        for failure in r.failures[:3]:
            lines.append(f"- failed ({r.mode}, {r.size_mib:,.0f} MiB, {r.engines}): {failure}")
    lines.extend(env)
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    """The issue's targets for staged refits: pause p50 <= 50 ms, and < 20% growth from the
    smallest checkpoint to the largest; each with the unstaged figure beside it."""
    out = []
    by = {(r.mode, r.engines, round(r.size_mib)): r for r in rows}
    sizes = sorted({round(r.size_mib) for r in rows})
    for fleet in sorted({r.engines for r in rows}):
        staged = [by.get(("staged", fleet, size)) for size in sizes]
        plain = [by.get(("load in the pause", fleet, size)) for size in sizes]
        if not all(staged) or not all(plain):
            continue
        p50s = [percentile(r.windows_ms, 50) for r in staged if r]
        unstaged = [percentile(r.windows_ms, 50) for r in plain if r]
        worst = max(p50s)
        growth = p50s[-1] / p50s[0] - 1 if p50s[0] > 0 else math.inf
        beside = ", ".join(f"{ms:,.1f} ms" for ms in unstaged)
        out.append(
            f"- {fleet} engine(s), staged: pause p50 at most **{worst:,.1f} ms** (target <= 50 ms): "
            f"{'met' if worst <= 50 else '**MISSED**'}; {sizes[0]} -> {sizes[-1]} MiB grows it "
            f"**{growth:+.0%}** (target < +20%): {'met' if growth < 0.2 else '**MISSED**'}; "
            f"without staging: {beside}"
        )
    return out


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of the doc (from its heading to the end), or add it."""
    doc = path.read_text() if path.exists() else ""
    head = doc.split(SECTION, 1)[0].rstrip("\n")
    path.write_text((head + "\n\n" if head else "") + text + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.refit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small checkpoints; writes no doc")
    p.add_argument("--refits", type=int, help="measured refits per row (default 5; quick 2)")
    p.add_argument(
        "--doc", type=Path, help="write the section here (default: the doc on full runs)"
    )
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    args.plan = Plan(base.sizes_mib, base.fleets, args.refits or base.refits)
    if args.plan.refits < 1:
        p.error("--refits must be at least 1")
    if args.doc is None and not args.quick:
        args.doc = DOC
    return args


def start_parties(children: Children) -> Child:
    engines = [
        children.spawn("engine_stub", "--no-request-lines", "--log-level", "WARNING")
        for _ in range(PROCESSES)
    ]
    for engine in engines:
        engine.ready()
    entries = [f"e{i}={engine.info['endpoint']}" for i, engine in enumerate(engines)]
    return children.start("bench._service", *entries)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    load = os.getloadavg()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-refit-") as tmp, Children() as children:
            checkpoints: dict[int, tuple[str, int]] = {}
            for size_mib in args.plan.sizes_mib:
                say(f"writing a {size_mib} MiB checkpoint")
                folder = Path(tmp) / f"ckpt-{size_mib}"
                checkpoints[size_mib] = (str(folder), write_sized_checkpoint(folder, size_mib))
            service = start_parties(children)
            rows = run(measure(service.info["port"], args.plan, checkpoints))
    except BenchError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; every child process stopped", file=sys.stderr)
        return 130
    text = render(rows, args.plan, environment("bench.refit", argv, load))
    print(text)
    if args.doc is not None:
        write_section(args.doc, text)
        say(f"wrote {args.doc}")
    return 1 if any(r.failures for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
