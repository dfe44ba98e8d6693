"""Optional: sample the service with py-spy during one phase, and summarise the samples.

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
    """py-spy record on `pid` for the duration of the block."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
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


def _name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("site-packages/", "lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m['func']} ({Path(file).name if '/' in file else file})"


def summarize(path: Path, top: int = 15) -> list[str]:
    """The `top` functions by self samples and by total samples, as markdown lines."""
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
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    if not samples:
        return ["(no samples)"]
    out = [f"{samples:,} busy samples", "", "| self | function |", "|--:|---|"]
    out += [f"| {n / samples:.1%} | {name} |" for name, n in own.most_common(top)]
    out += ["", "| total | function |", "|--:|---|"]
    out += [f"| {n / samples:.1%} | {name} |" for name, n in total.most_common(top)]
    return out
