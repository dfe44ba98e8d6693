"""`control-service serve --engines-file` as an operator runs it: editing the file and sending
SIGHUP changes the engines without a restart (the poll interval is an hour here, so only the
signal can have done it); the process survives SIGHUP and still drains cleanly on SIGTERM."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from tests.serve_process import ServeProcess
from tests.stub_process import StubProcess


def engines_shown(stub: control_pb2_grpc.ControlServiceStub) -> list[str]:
    return [e.engine for e in stub.GetStatus(pb.GetStatusRequest(), timeout=10).engines]


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    """A bounded wait on a condition read through the service's own GetStatus."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not reached within {timeout}s"
        time.sleep(0.02)


def test_sighup_reloads_the_engines_file(
    tmp_path: Path, start_stub: Callable[..., StubProcess]
) -> None:
    a, b = start_stub(), start_stub()
    engines = tmp_path / "engines.txt"
    engines.write_text(f"a={a.endpoint}\n")
    args = ["--engines-file", str(engines), "--engines-file-interval", "3600"]
    with ServeProcess(args, log=tmp_path / "serve.log") as service:
        with grpc.insecure_channel(service.target) as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            assert engines_shown(stub) == ["a"]

            engines.write_text(f"a={a.endpoint}\nb={b.endpoint}\n")
            assert service.proc is not None
            service.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: engines_shown(stub) == ["a", "b"])
            status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
            assert {e.source for e in status.engines} == {pb.ENGINE_SOURCE_FILE}
            assert status.membership_generation == 2
            service.wait_serving(15)  # b's link is up: every engine is

            paused = list(stub.Pause(pb.PauseRequest(), timeout=10))
            assert {e.engine for e in paused if e.HasField("result")} == {"a", "b"}
            list(stub.Resume(pb.ResumeRequest(), timeout=10))

            engines.write_text(f"b={b.endpoint}\n")
            service.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: engines_shown(stub) == ["b"])
            try:
                list(stub.Pause(pb.PauseRequest(engines=["a"]), timeout=10))
                raise AssertionError("a removed engine was paused")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND
        assert service.stop() == 0, service.tail()
    log = (tmp_path / "serve.log").read_text()
    assert log.count("engines changed") == 3, "each change logged once (start, add, remove)"
