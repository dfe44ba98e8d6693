"""Every command in every README code block, run literally, each in its own subprocess.

What a user types first is what must work, so no line is skipped and no fixture stands in for a
documented command: the README's `serve ... &` line starts the service these tests talk to, on
uvloop and on the standard loop (`CONTROL_SERVICE_LOOP`, the only thing the environment adds).

Runners (a code block line no runner covers fails `test_every_readme_line_has_a_runner`, so a
command added to the README later is run, or the suite goes red):
- the blocks after `<!-- demo-command -->` and `<!-- test-command -->` (the set-up commands:
  a venv, an install, the demo or the tests) are run by `.ci/run` on a fresh clone, not here;
  this module checks that `.ci/run --print` names exactly them.
- every other ```bash block: each line (comments stripped, `\\` continuations joined) runs as
  `bash -c LINE` in README order and must exit 0. A line ending in `&` must start
  `control-service serve`: it runs in the background, and the next line waits until the service
  reports SERVING on its health service (a person would wait for it too).
- every ```python block: written to a file and run as a script with `.venv/bin/python`, after the
  bash blocks before it, against the same service; it must exit 0.
- the block after `<!-- adapters-session -->` (adapters beside vLLM and SGLang, which cannot run
  here) is run line by line by tests/e2e/test_adapters.py against those engines' HTTP fakes, with
  their ports substituted; this module checks that test exists.
- a block in any other language has no runner and fails the test.

Substitution, the only change made to a line: `127.0.0.1:50051` becomes `127.0.0.1:<a free
port>`, and each path under `/tmp/` moves under the test's own temp directory. Lines run in a temp
directory where `.venv` links to the environment running the tests and `constraints.txt` to the
checkout's, so `.venv/bin/...` is the install under test, as it is for the user who ran the
README's install.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from tests.harness import free_port
from tests.served import children, loaded_uvloop, terminate_group, wait_gone, wait_serving

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ADDRESS = "127.0.0.1:50051"
CI_MARKERS = ("demo-command", "test-command")
# Blocks run by another test module, against fakes of engines that cannot run here.
DELEGATED = {"adapters-session": ("test_adapters.py", "def test_readme_adapter_session_as_written")}
LINE_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Block:
    language: str
    marker: str  # the `<!-- name -->` comment right before the block, or ""
    lines: tuple[str, ...]  # bash: the commands; python: the source lines

    @property
    def runner(self) -> str:
        if self.marker in CI_MARKERS:
            return "ci"
        if self.marker in DELEGATED:
            return "delegated"
        return {"bash": "bash", "python": "python"}.get(self.language, "")


def blocks(text: str) -> list[Block]:
    found = []
    pattern = r"(?:<!--\s*([\w-]+)\s*-->\s*\n)?^```(\w*)[^\n]*\n(.*?)^```"
    for match in re.finditer(pattern, text, re.S | re.M):
        marker, language, body = match.group(1) or "", match.group(2), match.group(3)
        lines = commands(body) if language == "bash" else tuple(body.splitlines())
        found.append(Block(language, marker, lines))
    return found


def commands(body: str) -> tuple[str, ...]:
    """A bash block's commands: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for raw in joined.splitlines():
        line = re.sub(r"(^|\s+)#.*$", "", raw).strip()  # a `#` starting a word: a comment
        if line:
            out.append(line)
    return tuple(out)


def substitute(line: str, port: int, tmp: Path) -> str:
    return line.replace(ADDRESS, f"127.0.0.1:{port}").replace("/tmp/", f"{tmp}/files/")


# ------------------------------------------------------------------------------------ coverage


def test_every_readme_line_has_a_runner() -> None:
    found = blocks(README.read_text())
    assert found, "README.md has no code blocks"
    for block in found:
        assert block.runner, f"no runner for a ```{block.language} block: {block.lines}"
        if block.runner == "bash":
            for line in block.lines:
                background = line.endswith("&")
                assert not background or " serve " in f" {line} ", f"no runner for: {line}"
        if block.runner == "delegated":
            module, test = DELEGATED[block.marker]
            assert test in (Path(__file__).parent / module).read_text(), (block.marker, module)
    session = [line for b in found if b.runner == "bash" for line in b.lines]
    assert any("control-service serve" in line for line in session), "nothing starts a service"


def test_ci_runs_exactly_the_readme_setup_commands() -> None:
    ci_blocks = {b.marker: b.lines for b in blocks(README.read_text()) if b.runner == "ci"}
    assert sorted(ci_blocks) == sorted(CI_MARKERS), ci_blocks
    for marker, lines in ci_blocks.items():
        assert len(lines) == 1, f"{marker}: .ci/run runs one command, the block has {lines}"
    printed = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True,
        timeout=30, check=True, stdin=subprocess.DEVNULL,
    ).stdout.splitlines()  # fmt: skip
    assert printed == [ci_blocks["demo-command"][0], ci_blocks["test-command"][0]]
    for command in printed:
        assert "-c constraints.txt" in command, f"installs without the lock: {command}"


# ------------------------------------------------------------------------------------- session


@dataclass
class Session:
    cwd: Path
    env: dict[str, str]
    port: int
    tmp: Path
    log: Path
    service_pgid: int | None = None

    def run(self, line: str) -> None:
        if line.endswith("&"):
            self.start_background(line)
            return
        if self.service_pgid is not None:
            self.wait_serving()
        done = subprocess.run(
            ["bash", "-c", line], cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=LINE_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"README line failed ({done.returncode}): {line}\n{done.stdout}\n{done.stderr}"
            f"\nservice log:\n{self.log.read_text()}"
        )

    def start_background(self, line: str) -> None:
        assert self.service_pgid is None, "a second background service"
        with self.log.open("w") as log:
            launcher = subprocess.Popen(
                ["bash", "-c", line], cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.service_pgid = launcher.pid  # its own session: the background job is in its group
        assert launcher.wait(timeout=30) == 0, self.log.read_text()
        self._serving = False

    def wait_serving(self) -> None:
        if getattr(self, "_serving", True):
            return
        try:
            wait_serving(f"127.0.0.1:{self.port}", timeout=60, alive=lambda: bool(self.pids()))
        except AssertionError as err:
            raise AssertionError(f"{err}\nservice log:\n{self.log.read_text()}") from None
        self._serving = True

    def pids(self) -> list[int]:
        """The live processes of the background job's group (the service)."""
        if self.service_pgid is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.service_pgid and fields[0] != "Z":
                    found.append(int(entry.name))
        return found


@pytest.mark.timeout(600)  # a dozen processes, each a Python start-up on a shared 2-core machine
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_readme_commands_run_as_written(loop: str, tmp_path: Path) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="the test extra installs uvloop")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "files").mkdir()
    (cwd / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (cwd / "constraints.txt").symlink_to(ROOT / "constraints.txt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_SERVICE_")}
    session = Session(
        cwd, {**env, "CONTROL_SERVICE_LOOP": loop}, free_port(), tmp_path, tmp_path / "serve.log"
    )
    ran = 0
    try:
        for index, block in enumerate(blocks(README.read_text())):
            if block.runner == "bash":
                for line in block.lines:
                    session.run(substitute(line, session.port, tmp_path))
                    ran += 1
            elif block.runner == "python":
                script = tmp_path / f"readme-block-{index}.py"
                source = "\n".join(block.lines) + "\n"
                script.write_text(substitute(source, session.port, tmp_path))
                session.run(f".venv/bin/python {script}")
                ran += 1
        assert ran >= 10 and session.service_pgid is not None
        (service_pid,) = [p for p in session.pids() if "control-service" in _cmdline(p)]
        assert loaded_uvloop(service_pid) is (loop == "uvloop"), "ran on the other loop"
        engines = children(service_pid)
        with grpc.insecure_channel(f"127.0.0.1:{session.port}") as channel:
            status = control_pb2_grpc.ControlServiceStub(channel).GetStatus(
                pb.GetStatusRequest(), timeout=10
            )
        assert [(e.reachable, e.state.paused) for e in status.engines] == [(True, False)]
        assert not status.skewed_engines, status
    finally:
        if session.service_pgid is not None:
            pids = session.pids()
            terminate_group(session.service_pgid)
            wait_gone(pids, timeout=30)
    wait_gone(engines, timeout=15)  # the service stopped its engines on SIGTERM
    assert "stopped" in session.log.read_text()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
