"""System calls per call, by name: `python -m bench.syscalls [--inflight N] [--calls N]`.

The service (to engine_stub --instant) and the naive bridge (to floor B's echo), each with 64
engine entries as in `python -m bench`; each process (bridge, then its engine) is traced alone
with `strace -c -f` (every thread) while the same client makes `--calls` Pause calls. Why count
system calls: on this VM a system call costs 1-2 us and the kernel holds about half of the
service's CPU, so the count is a steady measure of transport work where timings swing with the
host. Counts, not times: strace slows every call several times over, which also inflates what
is driven by the clock rather than by calls (ZMQ heartbeats: 64 links x 5 a second) per call.

strace is not a dependency (`apt install strace`); tracing needs ptrace permission.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.cases import channel, pause_calls
from bench.load import Call, measure
from bench.procs import BenchError, Children
from control_service.cli.aio import run

ENTRIES = 64
SIDES = ("service", "naive bridge")
ROLES = ("bridge", "engine")


@contextlib.contextmanager
def tracing(pid: int, out: Path) -> Iterator[None]:
    """`strace -c -f -p pid` for the duration of the block; its summary lands in `out`."""
    exe = shutil.which("strace")
    if exe is None:
        raise BenchError("bench.syscalls needs strace (not installed)")
    proc = subprocess.Popen(
        [exe, "-c", "-f", "-o", str(out), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_attached(proc, pid)
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # strace writes its summary when interrupted
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.exists() or "total" not in out.read_text():
            raise BenchError(f"strace traced nothing (ptrace permission?): {err.strip()[-300:]}")


def _wait_attached(proc: subprocess.Popen[str], pid: int, timeout: float = 10.0) -> None:
    """Return once strace says it attached to `pid` ("Process N attached [with M threads]": every
    thread at once), so no traced call is counted without its system calls."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    fd, seen = proc.stderr.fileno(), b""  # read raw: a buffered readline hides lines from select
    while b"attached" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise BenchError(f"strace did not attach to {pid} within {timeout:g}s")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise BenchError(f"strace exited before attaching to {pid} (ptrace permission?)")
        seen += chunk


def parse_summary(text: str) -> dict[str, int]:
    """`strace -c` output -> calls by system call name (the `total` row dropped)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[-1] == "total" or not fields[3].isdigit():
            continue
        try:
            float(fields[0])
        except ValueError:
            continue  # the header and the dashed rule
        counts[fields[-1]] = int(fields[3])
    return counts


async def count(calls: int, inflight: int) -> dict[tuple[str, str], tuple[dict[str, int], float]]:
    children = Children()
    got: dict[tuple[str, str], tuple[dict[str, int], float]] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            sides: dict[str, tuple[Call, dict[str, int]]] = {}
            for side in SIDES:
                naive = side == "naive bridge"
                engine = (
                    children.start("bench.floors", "zmq")
                    if naive
                    else children.start("bench._engine")
                )
                entries = [f"l{i}={engine.info['endpoint']}" for i in range(ENTRIES)]
                server = children.start("bench.naive" if naive else "bench._service", *entries)
                ch = await stack.enter_async_context(channel(server.info["port"]))
                names = server.info["engines"]
                targets = [names[:1]] if inflight == 1 else [[n] for n in names]
                call = pause_calls(ch, targets, 1)
                await measure(call, 2_000, inflight)  # warm-up
                pids = {"bridge": server.info["pid"], "engine": engine.info["pid"]}
                sides[side] = (call, pids)
            with tempfile.TemporaryDirectory() as tmp:
                for side, (call, pids) in sides.items():
                    for role in ROLES:
                        out = Path(tmp) / f"{side}-{role}.txt"
                        with tracing(pids[role], out):
                            stats = await measure(call, calls, inflight)
                        if stats.lost:
                            raise BenchError(f"{side}: {stats.lost} calls failed")
                        got[(side, role)] = (parse_summary(out.read_text()), stats.elapsed_s)
    finally:
        children.stop_all()
    return got


def report(
    got: dict[tuple[str, str], tuple[dict[str, int], float]], calls: int, inflight: int
) -> list[str]:
    names = sorted({n for counts, _ in got.values() for n in counts})
    keys = [(side, role) for role in ROLES for side in SIDES]
    per_call = {k: {n: got[k][0].get(n, 0) / calls for n in names} for k in keys}
    shown = [n for n in names if max(per_call[k][n] for k in keys) >= 0.05]
    shown.sort(key=lambda n: -per_call[keys[0]][n])
    lines = [
        f"system calls per Pause call at {inflight} in flight ({calls:,} calls traced each)",
        "",
    ]
    lines.append("| system call | " + " | ".join(f"{s}: {r}" for s, r in keys) + " |")
    lines.append("|---|" + "--:|" * len(keys))
    for n in shown:
        lines.append(f"| {n} | " + " | ".join(f"{per_call[k][n]:.2f}" for k in keys) + " |")
    totals = " | ".join(f"**{sum(per_call[k].values()):.1f}**" for k in keys)
    lines.append(f"| **all** | {totals} |")
    seconds = " | ".join(f"{got[k][1]:.1f}" for k in keys)
    lines.append(f"| seconds traced (heartbeats: 320 a second each way) | {seconds} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--calls", type=int, default=3_000, help="calls traced per process")
    args = parser.parse_args()
    try:
        got = run(count(args.calls, args.inflight))
    except BenchError as err:
        print(f"bench.syscalls: {err}", file=sys.stderr)
        return 2
    print("\n".join(report(got, args.calls, args.inflight)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
