"""The benchmark and soak scripts run end to end and report no lost reply and no open slot.
Speed is not asserted here: it lives in the scripts' output (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_bench_quick_prints_every_row() -> None:
    out = run("bench.run", "--quick")
    rows = ("floor A", "floor B", "naive bridge", "bridge: Pause via", "fan-out: Pause to 64")
    for row in rows:
        assert row in out
    assert "lost replies: **0**, open slots at the end: **0**" in out
    assert "bridge / naive bridge: p50" in out


@pytest.mark.slow
def test_soak_short_run_loses_nothing() -> None:
    out = run("bench.soak", "--calls", "3000", "--warmup", "500")
    assert "lost replies: 0" in out and "open slots at the end: 0 " in out


@pytest.mark.slow
def test_chaos_soak_short_run_recovers_and_leaves_nothing_open() -> None:
    """Every fault kind at least once (they rotate every few seconds), then the same report."""
    out = run("bench.soak", "--chaos", "--minutes", "0.75", "--workers", "8")
    assert "calls without a final status: 0" in out and "open slots at the end: 0 " in out
    injected = out.split("faults injected: ")[1].splitlines()[0]
    for fault in ("kill", "stop", "oversize", "rotate", "flood", "idle-callers"):
        assert f"'{fault}'" in injected, injected
    recovered = int(out.split("link recoveries: ")[1].split()[0])
    assert recovered > 0, "the oversize frame and the refused key each needed a fresh socket"


@pytest.mark.slow
def test_account_shows_every_phase_of_a_call() -> None:
    out = run("bench.account", "--calls", "300", "--inflight", "8")
    tables = out.split("### ")[1:]
    assert [t.split(" in flight")[0] for t in tables] == ["1", "8"]
    phases = ("validate", "submit", "zmq send", "reply: zmq recv", "decode, deliver",
              "ControlEvent", "unsubscribe", "end:", "our code")  # fmt: skip
    for table in tables:
        for phase in phases:  # each phase was entered, so each wrapper is in place
            row = next(line for line in table.splitlines() if phase in line)
            assert float(row.split("|")[2].strip(" *").replace(",", "")) > 0, row


@pytest.mark.slow
def test_ab_compares_two_checkouts() -> None:
    # A folder as the base, so that the test does not need git history (an A/A run)
    out = run("bench.ab", str(ROOT), "--rounds", "2", "--calls", "300", "--inflight", "8")
    assert "2 interleaved rounds of 300 Pause calls at 8 in flight" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert {"A", "B", "B / A"} <= set(rows)
    ratio = float(rows["B / A"].split("|")[3])  # calls/s, B over A: both sides ran calls
    assert ratio > 0


@pytest.mark.slow
def test_ab_refuses_an_unknown_revision() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.ab", "no-such-rev"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "bench.ab: cannot check out 'no-such-rev'" in done.stderr


@pytest.mark.slow
def test_split_measures_the_service_its_bare_transport_and_the_naive_bridge() -> None:
    out = run("bench.split", "--rounds", "2", "--calls-1", "100", "--calls-64", "300")
    rows = [
        line.split("|") for line in out.splitlines() if line.startswith("| ") and "us |" in line
    ]
    got = {(cells[1].strip(), cells[2].strip()) for cells in rows}
    sides = ("service", "transport only", "naive bridge")
    assert got == {(side, n) for side in sides for n in ("1", "64")}, out
    for cells in rows:  # every side answered calls and was measured
        assert (
            float(cells[4].replace(",", "")) > 0
            and float(cells[5].strip(" us").replace(",", "")) > 0
        )


def test_report_gives_the_hosts_share_of_cpu_time_during_the_run(monkeypatch) -> None:
    from bench import report

    monkeypatch.setattr(report, "cpu_ticks", lambda: (30, 1_000))
    lines = report.environment("bench", [], (0.0, 0.0, 0.0), ticks_before=(10, 600))
    assert lines[-1].endswith("during the run: 5.0% of all CPU time")  # (30-10) / (1000-600)
    no_start = report.environment("bench", [], (0.0, 0.0, 0.0))
    assert not any("steal" in line for line in no_start)


def test_cpu_ticks_reads_steal_from_proc_stat() -> None:
    from bench.report import cpu_ticks

    ticks = cpu_ticks()
    assert ticks is not None and 0 <= ticks[0] <= ticks[1]
    fields = Path("/proc/stat").read_text().split()[1:9]
    assert ticks[0] <= int(fields[7])  # read before: steal only grows


def test_syscalls_reads_strace_summaries() -> None:
    from bench.syscalls import parse_summary

    text = """% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 66.99    0.965008      965008         1           epoll_wait
 16.01    0.230681          23     10002           poll
 15.76    0.227032          22     10016        12 getpid
------ ----------- ----------- --------- --------- ----------------
100.00    1.422721          70     20019        12 total
"""
    assert parse_summary(text) == {"epoll_wait": 1, "poll": 10002, "getpid": 10016}


def test_fanout_quick_reports_every_width_and_method() -> None:
    out = run("bench.fanout", "--quick", "--widths", "1,8,64", "--processes", "4")
    for width in ("1", "8", "64"):
        for method in ("Pause", "Refit"):
            assert f"| {width} | {method} |" in out
    assert "every call OK: 0 failed, open slots at the end: 0" in out
    assert "RSS per engine link at 64:" in out
