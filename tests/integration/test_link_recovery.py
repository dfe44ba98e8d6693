"""The engine link comes back after the disconnects libzmq does not retry by itself.

libzmq 4.3 ends a connection for good after a protocol error: a failed handshake (another
security mechanism, a refused CURVE key) or a message over MAXMSGSIZE. For each cause, on real
sockets and real engine processes: the link goes down, the engine is made good again, and within
2 s the link is up again on a fresh socket and a call works.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import wire
from control_service.server.config import LinkConfig
from control_service.server.engine_link import _TRANSPORT_MAX_BYTES
from tests.harness import StartService, eventually, free_port
from tests.scripted_engine import ScriptedEngine, healthy
from tests.stub_process import StubProcess
from tests.zmtp_peers import WrongMechanismPeer

BACK_WITHIN_S = 2.0


@pytest.fixture
def oversize_engine() -> Iterator[ScriptedEngine]:
    """Its first reply is one frame over the link's transport cap; then it is a healthy engine."""
    sent: list[bool] = []

    def script(request: wire.Request) -> list[bytes]:
        if not sent and request.method != "cancel":
            sent.append(True)
            return [b" " * (_TRANSPORT_MAX_BYTES + 1)]
        return healthy(request)

    with ScriptedEngine(script) as engine:
        yield engine


async def test_link_comes_back_after_an_oversize_frame(
    start_service: StartService, oversize_engine: ScriptedEngine
) -> None:
    service = await start_service([oversize_engine.endpoint])
    link = service.server.links["e0"]
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="big"), timeout=10)
    assert err.code().name == "UNAVAILABLE", "the call on the dropped connection fails at once"
    # The engine is good from here on: the link must come back by itself.
    good_at = time.monotonic()
    assert await service.server.wait_engines_up(BACK_WITHIN_S), "link not back within 2 s"
    print(f"oversize: link back after {time.monotonic() - good_at:.3f}s")
    assert link.counters.recreated >= 1
    events = await service.events("Pause", pb.PauseRequest(request_id="after"), timeout=10)
    assert events[-1].result.state.paused, "a call works on the fresh socket"


async def test_link_comes_back_after_a_security_mechanism_mismatch(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    """A peer on the endpoint that speaks another ZMTP security mechanism: a protocol error in
    the handshake. Then a real engine binds the same endpoint."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    wrong = WrongMechanismPeer(port)
    try:
        service = await start_service([endpoint], wait_up=False)
        link = service.server.links["e0"]
        await eventually(lambda: link.counters.disconnects >= 1, timeout=5)
        assert not link.up
    finally:
        wrong.close()
    start_stub("--instant", "--bind", endpoint)
    good_at = time.monotonic()
    assert await service.server.wait_engines_up(BACK_WITHIN_S), "link not back within 2 s"
    print(f"mechanism mismatch: link back after {time.monotonic() - good_at:.3f}s")
    assert link.counters.recreated >= 1
    events = await service.events("Pause", pb.PauseRequest(), timeout=10)
    assert events[-1].result.state.paused


async def test_link_comes_back_after_a_refused_curve_key(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    """The engine's allow-list lacks the service's key (the handshake is refused); the engine is
    fixed and restarted on the same endpoint."""
    folders = {name: tmp_path / name for name in ("engine", "service", "nobody")}
    for name, folder in folders.items():
        folder.mkdir()
        zmq.auth.create_certificates(folder, name)
    engine_public, engine_secret = (folders["engine"] / f"engine.key{s}" for s in ("", "_secret"))
    link_config = LinkConfig(
        curve_server_key=engine_public,
        curve_client_key=folders["service"] / "service.key_secret",
    )
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    broken = start_stub("--instant", "--bind", endpoint, "--curve-secret-key", str(engine_secret),
                        "--curve-allowed-clients", str(folders["nobody"]))  # fmt: skip
    service = await start_service([endpoint], link=link_config, wait_up=False)
    link = service.server.links["e0"]
    await eventually(lambda: link.down_reason.startswith("handshake refused"), timeout=5)
    broken.kill()
    start_stub("--instant", "--bind", endpoint, "--curve-secret-key", str(engine_secret),
               "--curve-allowed-clients", str(folders["service"]))  # fmt: skip
    good_at = time.monotonic()
    assert await service.server.wait_engines_up(BACK_WITHIN_S), "link not back within 2 s"
    print(f"refused key: link back after {time.monotonic() - good_at:.3f}s")
    assert link.counters.recreated >= 1
    events = await service.events("Pause", pb.PauseRequest(), timeout=10)
    assert events[-1].result.state.paused
