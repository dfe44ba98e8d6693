"""Calls across hundreds of engine links: a failure on every one of them still reaches the
caller as its real status, naming engines, instead of a transport error about trailer size."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import zmq

from control_service.client import ClientConfig, ControlClient
from control_service.errors import STATUS_MAX_BYTES, ControlError
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.server.config import LinkConfig
from tests.harness import StartService, eventually, free_port
from tests.stub_process import StubProcess

Stubs = Callable[..., StubProcess]

LINKS = 400


async def test_a_call_failing_on_400_engines_ends_with_its_own_status(
    start_service: StartService,
) -> None:
    nobody = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: every link stays down
    service = await start_service([nobody] * LINKS, wait_up=False)

    error, events = await service.failed("Pause", pb.PauseRequest())
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()[:200]
    assert error.details().startswith(f"{LINKS} of {LINKS} engines failed: e"), error.details()[:80]
    assert len(error.details().encode()) <= STATUS_MAX_BYTES, "fits in any trailer"
    errors = {e.engine for e in events if e.HasField("error")}
    assert len(errors) == LINKS, "every engine's own failure is still in its event"

    async with ControlClient(ClientConfig(target=service.target)) as client:
        try:
            await client.resume()
        except ControlError as failure:
            assert failure.code == grpc.StatusCode.UNAVAILABLE, failure.message[:200]
            assert failure.failures and all(
                f.code == grpc.StatusCode.UNAVAILABLE for f in failure.failures
            ), "the engines the status names come with their ErrorInfo"
        else:
            raise AssertionError("resume on 400 unreachable engines succeeded")


async def test_heartbeats_on_the_sockets_are_scaled_to_the_links(
    start_service: StartService, start_stub: Stubs
) -> None:
    """The scaled heartbeat is what each DEALER is given (libzmq's own options, read back), and
    the links come up and answer with it."""
    stub = start_stub()
    link = LinkConfig(heartbeat_rate=10.0)  # 4 links -> every 0.4 s, timeout 1.2 s
    service = await start_service([stub.endpoint] * 4, link=link)
    for engine_link in service.server.links.values():
        sock = engine_link.socket
        assert sock is not None
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 400
        assert sock.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 1200
        assert sock.getsockopt(zmq.HEARTBEAT_TTL) == 1200
    events = await service.events("Pause", pb.PauseRequest(request_id="scaled"), timeout=10)
    assert sum(e.HasField("result") for e in events) == 4


async def test_probe_rounds_keep_within_the_probe_rate(
    start_service: StartService, start_stub: Stubs
) -> None:
    """2 engines at 2 probes a second: rounds 1 s apart, though the interval asks for 10 ms."""
    stub = start_stub()
    service = await start_service(
        [stub.endpoint] * 2, engine_probe_interval_s=0.01, engine_probe_rate=2.0
    )
    links = service.server.links.values()
    await eventually(lambda: all(link.probes.counters.delivered >= 1 for link in links))
    first = sum(link.counters.sent for link in links)
    await asyncio.sleep(0.5)  # a measuring window: at 10 ms, ~50 rounds would fall in it
    assert sum(link.counters.sent for link in links) == first, "no second round within 0.5 s"
