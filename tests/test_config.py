"""Configuration: engines from a file for large N, validated with a one-line reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from control_service.config import EngineConfig, load_engines
from control_service.errors import ControlError


def test_engines_file_with_names_comments_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "engines.txt"
    path.write_text("# replicas\ndp0=tcp://127.0.0.2:5555\n\ntcp://127.0.0.3:5555  # unnamed\n")
    assert load_engines(path) == [
        EngineConfig("dp0", "tcp://127.0.0.2:5555"),
        EngineConfig("engine-4", "tcp://127.0.0.3:5555"),
    ]


@pytest.mark.parametrize(
    ("text", "needle"),
    [("", "no engines"), ("x=udp://h:1\n", ":1:"), ("a b=tcp://h:1\n", "engine name")],
)
def test_bad_engines_file_names_the_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "engines.txt"
    path.write_text(text)
    with pytest.raises(ControlError, match=needle):
        load_engines(path)


def test_serve_with_bad_engines_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "engines.txt"
    path.write_text("ok=tcp://127.0.0.1:1\nok=tcp://127.0.0.1:2\n")
    done = subprocess.run(
        [sys.executable, "-m", "control_service", "serve", "--engines-file", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "unique" in lines[0], done.stderr
