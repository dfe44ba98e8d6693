"""ZMQ CURVE on the engine link: the right keys connect; a client with wrong keys gets nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import zmq.auth

from control_service.config import LinkConfig
from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import StartService
from tests.stub_process import EngineClient, StubProcess


def keys(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, folder in (("engine", "engine"), ("service", "allowed"), ("intruder", "other")):
        (tmp_path / folder).mkdir()
        public, secret = zmq.auth.create_certificates(tmp_path / folder, name)
        out[name], out[f"{name}_public"] = Path(secret), Path(public)
    return out


async def test_curve_link_with_right_and_wrong_keys(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    k = keys(tmp_path)
    stub = start_stub(
        "--curve-secret-key", str(k["engine"]),
        "--curve-allowed-clients", str(tmp_path / "allowed"),
    )  # fmt: skip
    good = LinkConfig(curve_server_key=k["engine_public"], curve_client_key=k["service"])
    service = await start_service([stub.endpoint], link=good)
    events = await service.events("Pause", pb.PauseRequest(), timeout=10)
    assert events[-1].result.state.paused, "the encrypted link carries calls"

    bad = LinkConfig(curve_server_key=k["engine_public"], curve_client_key=k["intruder"])
    intruder = await start_service([stub.endpoint], link=bad, wait_up=False)
    assert not await intruder.server.wait_engines_up(1.5), "a refused key never comes up"
    err, _ = await intruder.failed("Resume", pb.ResumeRequest(), timeout=5)
    assert err.code() == grpc.StatusCode.UNAVAILABLE

    # A plain (unencrypted) peer gets nothing either: no reply to a well-formed request.
    with EngineClient(stub.endpoint) as plain:
        plain.send("status")
        assert plain.nothing_within(1.0)
