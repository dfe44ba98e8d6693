"""The benchmark and soak scripts run end to end and report no lost reply and no open slot.
Speed is not asserted here: it lives in the scripts' output (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return done.stdout


def test_bench_quick_prints_every_row() -> None:
    out = run("bench.run", "--quick")
    rows = ("floor A", "floor B", "naive bridge", "bridge: Pause via", "fan-out: Pause to 64")
    for row in rows:
        assert row in out
    assert "lost replies: **0**, open slots at the end: **0**" in out
    assert "bridge / naive bridge: p50" in out


def test_soak_short_run_loses_nothing() -> None:
    out = run("bench.soak", "--calls", "3000", "--warmup", "500")
    assert "lost replies: 0" in out and "open slots at the end: 0 " in out
