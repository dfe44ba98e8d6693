"""Graceful shutdown: NOT_SERVING and UNAVAILABLE for new calls at once, a grace period for the
running ones, UNAVAILABLE for what outlives it, no slot left open."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import Service, StartService, eventually_async, free_port
from tests.stub_process import StubProcess

Code = grpc.StatusCode


async def health(service: Service) -> int:
    stub = health_pb2_grpc.HealthStub(service.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return reply.status


async def started(stub: StubProcess, request_id: str) -> None:
    await asyncio.to_thread(stub.wait_event, lambda e: e.get("request_id") == request_id, 10.0)


async def test_running_call_finishes_within_grace_while_new_calls_are_refused(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub("--reply-delay", "0.5")
    service = await start_service({"a": stub.endpoint, "b": stub.endpoint})
    running = asyncio.ensure_future(
        service.events("Pause", pb.PauseRequest(request_id="inflight", engines=["a"]), timeout=10)
    )
    await started(stub, "inflight")
    stopping = asyncio.ensure_future(service.server.stop(grace=5.0))
    await eventually_async(lambda: health(service), health_pb2.HealthCheckResponse.NOT_SERVING)
    err, _ = await service.failed("Pause", pb.PauseRequest(engines=["b"]), timeout=5)
    assert err.code() == Code.UNAVAILABLE and "shutting down" in err.details()
    events = await running
    assert events[-1].result.state.paused, "the running call finished within the grace"
    await asyncio.wait_for(stopping, 10)
    assert service.server.open_slots == 0


async def test_call_outliving_grace_ends_unavailable(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub("--silent")
    service = await start_service([stub.endpoint])
    running = asyncio.ensure_future(
        service.failed("Pause", pb.PauseRequest(request_id="stuck"), timeout=30)
    )
    await started(stub, "stuck")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(service.server.stop(grace=0.5), 10)
    err, _ = await running
    assert err.code() == Code.UNAVAILABLE and "shutting down" in err.details()
    assert 0.5 <= loop.time() - t0 < 3.0
    assert service.server.open_slots == 0


async def test_sigterm_drains_and_exits_zero(start_stub: Callable[..., StubProcess]) -> None:
    import signal
    import sys

    from control_service.gen.control.v1 import control_pb2_grpc

    stub = start_stub("--reply-delay", "0.5")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", "serve", "--listen", f"127.0.0.1:{port}",
        "--engine", f"e0={stub.endpoint}", "--shutdown-grace", "5", "--log-format", "json",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            service = Service(None, port, channel, control_pb2_grpc.ControlServiceStub(channel))  # type: ignore[arg-type]
            await eventually_async(
                lambda: _health_or_none(service), health_pb2.HealthCheckResponse.SERVING, 15
            )
            running = asyncio.ensure_future(
                service.events("Pause", pb.PauseRequest(request_id="sig-1"), timeout=10)
            )
            await started(stub, "sig-1")
            proc.send_signal(signal.SIGTERM)
            events = await running
            assert events[-1].result.state.paused, "the in-flight call finished within the grace"
        code = await asyncio.wait_for(proc.wait(), 15)
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _health_or_none(service: Service) -> int | None:
    try:
        return await health(service)
    except grpc.aio.AioRpcError:
        return None  # not listening yet
