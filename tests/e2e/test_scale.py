"""1,024 engine links in one service, as an operator runs it: `control-service serve
--engines-file` in its own process, started with the common soft limit of 1,024 open files, and
a clear exit 2 (one line, no traceback) when the engines configured cannot fit."""

from __future__ import annotations

import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from control_service.client import ClientConfig, ControlClient
from control_service.server.capacity import DESCRIPTORS_PER_LINK, RESERVED_DESCRIPTORS
from tests.serve_process import ServeProcess
from tests.stub_process import StubProcess

LINKS = 1024
STUBS = 16  # one engine_stub ROUTER serves many links: 64 each, as the issue describes


def _soft_open_files(limit: int) -> None:
    """In the child before exec: the soft open-files limit most shells start with."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))


def _hard_open_files(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def _engines_file(path: Path, endpoints: list[str], links: int) -> Path:
    lines = [f"e{i}={endpoints[i % len(endpoints)]}" for i in range(links)]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_1024_links_on_16_engine_processes_run_a_refit(tmp_path: Path) -> None:
    stubs = [StubProcess() for _ in range(STUBS)]
    try:
        with ThreadPoolExecutor(STUBS) as pool:  # each start waits for its own ready line
            endpoints = list(pool.map(lambda s: s.start("--instant", timeout=60.0), stubs))
        engines = _engines_file(tmp_path / "engines.txt", endpoints, LINKS)
        with ServeProcess(
            ["--engines-file", str(engines)],
            log=tmp_path / "serve.log",
            preexec_fn=lambda: _soft_open_files(1024),
            ready_timeout=90.0,  # 1,024 handshakes on 2 shared cores
        ) as service:
            config = ClientConfig(target=service.target, timeout_s=60.0)
            async with ControlClient(config) as client:
                outcome = await client.refit("/ckpt/step-1", "1", mode="abort")
                status = await client.status(timeout=30.0)
            assert len(outcome.results) == LINKS
            assert {r.state.weight_version for r in outcome.results.values()} == {"1"}
            assert not any(r.state.paused for r in outcome.results.values())
            assert status.all_reachable and len(status.engines) == LINKS
            assert service.stop() == 0, service.tail()
        # A fleet's names are summarised, never listed: "serving" and "engines changed" name
        # 16 and count the rest.
        longest = max((tmp_path / "serve.log").read_text().splitlines(), key=len)
        assert len(longest) < 2_000, f"a log line of {len(longest)} characters: {longest[:300]}"
    finally:
        for stub in stubs:
            stub.__exit__(None, None, None)
    served = sum(len(stub.requests("update_weights")) for stub in stubs)
    assert served == LINKS, "every link's update_weights reached its engine process"


def test_engines_that_cannot_fit_exit_2_with_one_line(tmp_path: Path) -> None:
    engines = _engines_file(tmp_path / "engines.txt", ["tcp://127.0.0.1:9"], 100)
    needed = 100 * DESCRIPTORS_PER_LINK + RESERVED_DESCRIPTORS
    done = subprocess.run(
        [sys.executable, "-m", "control_service", "serve", "--engines-file", str(engines),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=lambda: _hard_open_files(256),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("control-service: error: "), lines
    assert f"100 engine links need 300 ZMQ sockets and {needed} file descriptors" in lines[0]
    assert "256 open files (hard limit 256)" in lines[0], lines
