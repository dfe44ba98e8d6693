"""Is a change faster? `python -m bench.ab BASE [CHANGED]`: two services, interleaved rounds.

BASE is a git revision (checked out into a temporary worktree) or a folder; CHANGED is a
folder, by default this checkout as it is (uncommitted edits included). Each side gets its own instant engine and
service (64 engine entries, as in the bridge rows of `python -m bench`), both up at once; every
round measures A then B (B then A on odd rounds) at `--inflight`, and the report gives, per side,
the median over rounds of calls/s, the service's CPU per call and p50, with the B/A ratios.

Why this and not two runs of `python -m bench`: on this shared 2-core machine the absolute
numbers move ±10% from run to run, more than most single changes are worth; interleaving puts
the drift on both sides. An A/A run (`python -m bench.ab HEAD`) shows the noise left: medians
within ~3% (calls/s) and ~2% (CPU per call) over 7 rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.cases import channel, pause_calls
from bench.load import Call, Stats, measure
from bench.procs import REPO, BenchError, Children
from control_service.cli.aio import run

ENTRIES = 64
WARMUP = 3_000


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """`rev` checked out (detached) in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        path = Path(tmp) / "base"
        git = ["git", "-C", str(REPO)]
        done = subprocess.run([*git, "worktree", "add", "--detach", str(path), rev],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise BenchError(f"cannot check out {rev!r}: {done.stderr.strip()}")
        try:
            yield path
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(path)],
                           capture_output=True, check=False)  # fmt: skip


def _checkout(base: str) -> contextlib.AbstractContextManager[Path]:
    if Path(base).is_dir():
        return contextlib.nullcontext(Path(base).resolve())
    return worktree(base)


async def compare(repos: dict[str, Path], rounds: int, calls: int, inflight: int) -> list[str]:
    children = Children()
    try:
        sides: dict[str, tuple[Call, int]] = {}
        async with contextlib.AsyncExitStack() as stack:
            for label, repo in repos.items():
                engine = children.start("bench._engine", repo=repo)
                entries = [f"l{i}={engine.info['endpoint']}" for i in range(ENTRIES)]
                service = children.start("bench._service", *entries, repo=repo)
                ch = await stack.enter_async_context(channel(service.info["port"]))
                call = pause_calls(ch, [[name] for name in service.info["engines"]], 1)
                await measure(call, WARMUP, inflight)
                sides[label] = (call, service.info["pid"])
            got: dict[str, list[Stats]] = {label: [] for label in sides}
            for r in range(rounds):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for label in order:
                    call, pid = sides[label]
                    stats = await measure(call, calls, inflight, {"server": (pid,)})
                    if stats.lost:
                        raise BenchError(f"{label}: {stats.lost} calls failed: {stats.problems}")
                    got[label].append(stats)
        return report(repos, got, inflight)
    finally:
        children.stop_all()


def report(repos: dict[str, Path], got: dict[str, list[Stats]], inflight: int) -> list[str]:
    def med(label: str, value: str) -> float:
        stats = got[label]
        if value == "rate":
            return statistics.median(s.rate for s in stats)
        if value == "cpu":
            return statistics.median(s.cpu_us_per_call("server") or 0.0 for s in stats)
        return statistics.median(s.p50_us for s in stats)

    rounds = len(got["A"])
    lines = [
        f"{rounds} interleaved rounds of {got['A'][0].count:,} Pause calls at {inflight} in flight",
        "",
        "| side | code | calls/s | service CPU per call | p50 |",
        "|---|---|--:|--:|--:|",
    ]
    for label, repo in repos.items():
        lines.append(
            f"| {label} | {repo} | {med(label, 'rate'):,.0f} | {med(label, 'cpu'):,.0f} us | "
            f"{med(label, 'p50'):,.0f} us |"
        )
    lines.append(
        f"| B / A | | {med('B', 'rate') / med('A', 'rate'):.3f} | "
        f"{med('B', 'cpu') / med('A', 'cpu'):.3f} | {med('B', 'p50') / med('A', 'p50'):.3f} |"
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="side A: a git revision (HEAD, main~3) or a folder")
    parser.add_argument("changed", nargs="?", default=str(REPO),
                        help="folder for side B (default: this checkout, as it is)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=8_000, help="calls per side per round")
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    try:
        with _checkout(args.base) as base:
            repos = {"A": base, "B": Path(args.changed).resolve()}
            print("\n".join(run(compare(repos, args.rounds, args.calls, args.inflight))))
    except BenchError as err:
        print(f"bench.ab: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
