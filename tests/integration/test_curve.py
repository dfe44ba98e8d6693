"""ZMQ CURVE on the engine link: the right keys connect; a client with wrong keys gets nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import zmq.auth

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.server.config import LinkConfig
from engine_stub.__main__ import parse_args as engine_stub_args
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
    status = await intruder.stub.GetStatus(pb.GetStatusRequest(), timeout=5)
    assert not status.engines[0].reachable
    assert "handshake refused" in status.engines[0].error, "the operator is told why"

    # The right client key but another server's public key: the engine cannot prove it is the
    # engine, so the service never talks to it.
    spoofed = LinkConfig(curve_server_key=k["intruder_public"], curve_client_key=k["service"])
    fooled = await start_service([stub.endpoint], link=spoofed, wait_up=False)
    assert not await fooled.server.wait_engines_up(1.5), "a wrong server key never comes up"
    assert fooled.server.links["e0"].down_reason.startswith("handshake failed")

    # A plain (unencrypted) peer gets nothing either: no reply to a well-formed request.
    with EngineClient(stub.endpoint) as plain:
        plain.send("status")
        assert plain.nothing_within(1.0)


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (("--curve-secret-key", "engine_public"), "no secret key"),
        (("--curve-secret-key", "garbage"), "not a zmq.auth key file"),
        (("--curve-secret-key", "engine", "--curve-allowed-clients", "nowhere"), "not a folder"),
        (("--curve-allowed-clients", "allowed"), "needs --curve-secret-key"),
    ],
)
def test_engine_stub_refuses_bad_curve_flags_with_one_line(
    flags: tuple[str, ...], reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    k = keys(tmp_path)
    (tmp_path / "garbage").write_text("no keys here\n")
    named = {**k, "garbage": tmp_path / "garbage", "allowed": tmp_path / "allowed",
             "nowhere": tmp_path / "nowhere"}  # fmt: skip
    argv = [str(named.get(f, f)) for f in flags]
    with pytest.raises(SystemExit) as info:
        engine_stub_args(argv)
    assert info.value.code == 2
    assert reason in capsys.readouterr().err
