"""Optional: sample the service with py-spy during one phase, and summarise the samples.

For our own code's cost per call, prefer `python -m bench.account`: on this VM py-spy's samples
land where the process is stopped, which over-weights system calls (its --native mode put 7% of
the service in getpid, a 0.13 us call), while the account measures each phase's CPU directly.

py-spy is not a dependency (`.venv/bin/pip install py-spy`); `--profile OUT` uses it when present.
It attaches to the running service by pid (needs ptrace permission), writes collapsed stacks
(`--format raw`) to OUT, and the summary lists the functions holding the most samples: `self`
(on top of the stack) and `total` (anywhere on it). Idle samples are not recorded, so shares are
of the service's busy CPU time.
"""

from __future__ import annotations

import collections
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


@contextlib.contextmanager
def sampling(pid: int, out: Path, rate: int = 250) -> Iterator[None]:
    """py-spy record on `pid` for the duration of the block. Python frames only: time in C
    (uvloop, gRPC's Cython and C core, libzmq) counts as the innermost Python frame's self time,
    so the event loop's own `run` holds what its C callbacks cost. (py-spy --native splits
    that further, but stops the process for each sample and over-counts system calls.)"""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    out.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
         "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.strip()[-500:]}")


def _name(frame: str) -> tuple[str, str]:
    """("function (file)", file) of one collapsed-stack frame."""
    m = _FRAME.match(frame)
    if not m:
        return frame, ""
    file = m["file"]
    for marker in ("site-packages/", "lib/python3.11/", "lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m['func']} ({file})", file


def _own_module(file: str) -> bool:
    """A frame of the service's own code (py-spy may show control_service files bare)."""
    return file.startswith("control_service/") or file in _SERVICE_FILES


# py-spy may name the service's files bare; aio.py only starts the loop (it is on every stack).
_SERVICE = Path(__file__).resolve().parent.parent / "control_service"
_SERVICE_FILES = {p.name for p in _SERVICE.glob("*.py")} - {"aio.py"}


def summarize(path: Path, top: int = 15) -> list[str]:
    """Markdown: the `top` functions by self samples (any code), and the service's own
    functions by total samples (anywhere on the stack: the inclusive cost of each step)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1][0]] += n
        for name in {name for name, file in frames if _own_module(file)}:
            total[name] += n
    if not samples:
        return ["(no samples)"]
    out = [f"{samples:,} samples of the busy service (idle time is not sampled)", ""]
    out += ["| self | function (innermost Python frame) |", "|--:|---|"]
    out += [f"| {n / samples:.1%} | {name} |" for name, n in own.most_common(top)]
    out += ["", "| total | the service's own functions, inclusive |", "|--:|---|"]
    out += [f"| {n / samples:.1%} | {name} |" for name, n in total.most_common(top)]
    return out
