"""Health: SERVING for "" and control.v1.ControlService only while every engine link is up;
Watch streams each change (engine lost, engine back, shutdown). "liveness" ignores the engine and
turns NOT_SERVING only at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness import StartService
from tests.stub_process import StubProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_follows_the_engine_and_shutdown(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    endpoint = f"ipc://{tmp_path}/engine.sock"
    stub = start_stub("--bind", endpoint)
    service = await start_service([endpoint])
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", "control.v1.ControlService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == SERVING

    watch = health.Watch(health_pb2.HealthCheckRequest(service="control.v1.ControlService"))
    seen: asyncio.Queue[int] = asyncio.Queue()

    async def read() -> None:
        async for reply in watch:
            await seen.put(reply.status)

    liveness: list[int] = []

    async def read_liveness() -> None:
        try:
            async for reply in health.Watch(health_pb2.HealthCheckRequest(service="liveness")):
                liveness.append(reply.status)
        except grpc.aio.AioRpcError:
            pass  # the server stopped

    reader = asyncio.ensure_future(read())
    liveness_reader = asyncio.ensure_future(read_liveness())
    assert await asyncio.wait_for(seen.get(), 5) == SERVING

    stub.kill()
    assert await asyncio.wait_for(seen.get(), 5) == NOT_SERVING
    check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert check.status == NOT_SERVING, "the overall service follows the engine too"
    check = await health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
    assert check.status == SERVING, "liveness does not follow the engine"

    start_stub("--bind", endpoint)
    assert await asyncio.wait_for(seen.get(), 10) == SERVING

    stopping = asyncio.ensure_future(service.server.stop(grace=1.0))
    assert await asyncio.wait_for(seen.get(), 5) == NOT_SERVING
    await stopping
    reader.cancel()
    await asyncio.wait_for(liveness_reader, 5)
    assert liveness == [SERVING, NOT_SERVING], "liveness changes at shutdown only"
