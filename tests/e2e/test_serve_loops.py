"""`control-service serve` with embedded engines, as a real process, on both event loops.

uvloop rejects asyncio's `process_group` argument, so the documented start crashed on every
install with the `fast` extra while every in-process test (standard loop) passed. Here the real
command runs with `CONTROL_SERVICE_LOOP=uvloop` and `=asyncio`, and /proc tells which loop it ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from tests.harness import free_port
from tests.served import children, loaded_uvloop, wait_gone, wait_serving

CONTROL_SERVICE = str(Path(sys.executable).parent / "control-service")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_SERVICE_")}
    return {**env, **extra}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_serve_with_embedded_engines_starts_serves_and_stops(loop: str, tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(
        [CONTROL_SERVICE, "serve", "--embedded-engines", "2", "--listen", target],
        env=clean_env(CONTROL_SERVICE_LOOP=loop), stdin=subprocess.DEVNULL,
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        try:
            wait_serving(target, timeout=60, alive=lambda: proc.poll() is None)
        except AssertionError as err:
            log.seek(0)
            pytest.fail(f"serve did not start on {loop} ({err}):\n{log.read()}")
        assert loaded_uvloop(proc.pid) is (loop == "uvloop")
        engines = children(proc.pid)
        assert len(engines) == 2, engines
        with grpc.insecure_channel(target) as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            events = list(stub.Pause(pb.PauseRequest(request_id=f"loop-{loop}"), timeout=30))
            status = stub.GetStatus(pb.GetStatusRequest(), timeout=30)
        assert {e.engine for e in events if e.HasField("result")} == {"embedded-0", "embedded-1"}
        assert all(e.reachable and e.state.paused for e in status.engines), status
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        wait_gone(engines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("value", ["tokio", "uvloop-ish"])
def test_unknown_loop_is_bad_configuration(value: str) -> None:
    done = subprocess.run(
        [CONTROL_SERVICE, "serve", "--embedded-engine"], env=clean_env(CONTROL_SERVICE_LOOP=value),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "CONTROL_SERVICE_LOOP" in done.stderr and done.stderr.count("\n") == 1, done.stderr
