"""Child processes of the benchmark: start, read their JSON lines with a bound, ask, stop.

Every party runs as `python -m <module>` with stdin/stdout pipes. A child's first stdout line is
its ready line (JSON); later lines answer commands written to its stdin. Lines are read by one
daemon thread per child into a queue, so every wait is bounded and never a sleep.

Children run in their own session (a Ctrl-C in the terminal reaches only the benchmark, which
then stops them in order) and call `die_with_parent()` on start, so even a benchmark killed with
SIGKILL leaves nothing behind. `Children` stops whatever is still running on exit.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
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


class Child:
    """One child process (`python -m module args`) speaking JSON lines. `repo`: the checkout
    its code is imported from (this one by default; bench.ab runs two side by side)."""

    def __init__(self, module: str, *args: str, repo: Path = REPO) -> None:
        self.name = module.rsplit(".", 1)[-1] + (f" {args[0]}" if args else "")
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH", "")])),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=repo, env=env, text=True,
            start_new_session=True,
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name=f"{self.name}-stdout", daemon=True).start()
        self.info: dict[str, Any] = {}

    def ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait for the ready line (the first JSON line) and keep it as `info`."""
        self.info = self.line(timeout)
        return self.info

    def line(self, timeout: float) -> dict[str, Any]:
        """The next stdout line as JSON; BenchError if none comes within `timeout`."""
        try:
            raw = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.name}: no line within {timeout:g}s") from None
        if raw is None:
            raise BenchError(f"{self.name}: exited (code {self.proc.poll()}) before answering")
        try:
            return json.loads(raw)
        except ValueError:
            raise BenchError(f"{self.name}: not a JSON line: {raw[:200]!r}") from None

    def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        """Write one command line, return the answer line."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except OSError as err:
            raise BenchError(f"{self.name}: cannot send {command!r}: {err}") from None
        return self.line(timeout)

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

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            for raw in stdout:
                if raw.strip():
                    self._lines.put(raw)
        except (OSError, ValueError):  # closed under us by stop()
            pass
        self._lines.put(None)


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
