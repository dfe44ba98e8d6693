"""ruff and mypy (settings in pyproject.toml) pass, so style and types hold in CI, not by memory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
pytestmark = pytest.mark.slow  # ~30 s: the whole tree, checked from scratch

MYPY = shutil.which("mypy", path=str(Path(sys.executable).parent)) or shutil.which("mypy")


@pytest.mark.skipif(RUFF is None, reason="ruff not installed (it is in the test extra)")
@pytest.mark.parametrize("args", [["check"], ["format", "--check"]])
def test_ruff(args: list[str]) -> None:
    done = subprocess.run(
        [RUFF or "ruff", *args, "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(MYPY is None, reason="mypy not installed (it is in the test extra)")
def test_mypy() -> None:
    done = subprocess.run(
        [MYPY or "mypy", "--no-incremental"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
