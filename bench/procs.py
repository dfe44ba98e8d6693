"""Child processes of the benchmark: start, read their JSON lines with a bound, ask, stop.

Every party runs as `python -m <module>` with stdin/stdout pipes. A child's first stdout line is
its ready line (JSON); later lines answer commands written to its stdin. Lines are read by one
daemon thread per child, so every wait is bounded and never a sleep. The tests' engine_stub
processes are `Child`ren too (tests/stub_process.py).

Children run in their own session (a Ctrl-C in the terminal reaches only the benchmark, which
then stops them in order) and call `die_with_parent()` on start, so even a benchmark killed with
SIGKILL leaves nothing behind. `Children` stops whatever is still running on exit.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 30.0


class BenchError(RuntimeError):
    """A child did not answer in time, died, or said something unexpected."""


def die_with_parent() -> None:
    """In a child: get SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent was already gone before prctl took effect
        os._exit(1)


def rss_kb(pid: int | str = "self") -> int:
    """VmRSS of a process in kB, from /proc/<pid>/status (Linux); -1 when unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def cpu_s(pid: int | str = "self") -> float:
    """CPU time (user + system, every thread) a process has used, from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def emit(**fields: Any) -> None:
    """In a child: one JSON line on stdout, flushed."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


Line = dict[str, Any]


class Child:
    """One child process (`python -m module args`) speaking JSON lines: the one supervisor of
    the benchmark's parties and of the tests' engine_stub processes (tests/stub_process.py).

    Every stdout line is kept (`lines`; one that is not JSON as {"event": "raw", "line": ...}),
    read by a daemon thread so the pipe never fills; waits are bounded waits on a condition.
    `line` reads them in order, `wait_line` finds one by predicate. `repo`: the checkout its code
    is imported from (this one by default; bench.ab runs two side by side). `new_session`: a
    terminal's Ctrl-C then reaches only the parent, which stops its children in order.
    """

    error: type[Exception] = BenchError  # what a failed wait raises

    def __init__(
        self, module: str, *args: str, repo: Path = REPO, new_session: bool = True
    ) -> None:
        self.name = module.rsplit(".", 1)[-1] + (f" {args[0]}" if args else "")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH", "")])),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=repo, env=env, text=True,
            start_new_session=new_session,
        )  # fmt: skip
        self.lines: list[Line] = []
        self._next = 0  # the first line `line` has not returned yet
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, name=f"{self.name}-stdout", daemon=True).start()
        self.info: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    # --------------------------------------------------------------------------------- lines

    def ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the ready line (the first JSON line) and keep it as `info`."""
        self.info = self.line(timeout)
        return self.info

    def line(self, timeout: float) -> Line:
        """The next stdout line as JSON; `error` if none comes within `timeout`."""
        index = self._next
        found = self.wait_line(lambda _: True, timeout, since=index)
        self._next = index + 1
        if found.get("event") == "raw" and set(found) == {"event", "line"}:
            raise self.error(f"{self.name}: not a JSON line: {found['line'][:200]!r}")
        return found

    def mark(self) -> int:
        """The index the next stdout line will get: pass it as `since` to ignore older ones."""
        with self._cond:
            return len(self.lines)

    def wait_line(self, predicate: Callable[[Line], bool], timeout: float, since: int = 0) -> Line:
        """The first stdout line at index >= since that matches; `error` after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            scanned = since
            while True:
                for line in itertools.islice(self.lines, scanned, None):
                    if predicate(line):
                        return line
                scanned = max(scanned, len(self.lines))
                if self._eof:
                    raise self.error(f"{self.name}: exited (code {self._exit_code()}) first")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.error(f"{self.name}: no matching line within {timeout:g}s")
                self._cond.wait(left)

    def write(self, text: str) -> None:
        """One line on the child's stdin."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except OSError as err:
            raise self.error(f"{self.name}: cannot send {text!r}: {err}") from None

    def ask(self, command: str, timeout: float = 30.0) -> Line:
        """Write one command line, return the answer line."""
        self.write(command)
        return self.line(timeout)

    # ------------------------------------------------------------------------------- signals

    def send_signal(self, sig: int) -> None:
        """Send `sig` unless the child has exited (SIGSTOP, say: nothing is waited for)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit; its exit code (negative: the signal that ended it)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self.error(f"{self.name}: still running after {timeout:g}s") from None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`; the exit code."""
        proc = self.proc
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        return proc.returncode

    def _exit_code(self) -> int | None:
        try:
            return self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            return None

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            for raw in stdout:
                if raw.strip():
                    self._append(_parse(raw))
        except (OSError, ValueError):  # closed under us by stop()
            pass
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _append(self, line: Line) -> None:
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()


def _parse(raw: str) -> Line:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"event": "raw", "line": raw}


class Children:
    """Owns every child started through it; stops them all (newest first) on exit."""

    def __init__(self) -> None:
        self._all: list[Child] = []

    def spawn(self, module: str, *args: str, repo: Path = REPO) -> Child:
        """Start a child without waiting for it (call its `ready` before use)."""
        child = Child(module, *args, repo=repo)
        self._all.append(child)
        return child

    def start(
        self, module: str, *args: str, timeout: float = READY_TIMEOUT_S, repo: Path = REPO
    ) -> Child:
        """Start a child and wait (bounded) for its ready line."""
        child = self.spawn(module, *args, repo=repo)
        child.ready(timeout)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self._all:
            self._all.remove(child)

    def stop_all(self) -> None:
        while self._all:
            self._all.pop().stop(timeout=5.0)

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
