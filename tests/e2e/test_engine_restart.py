"""A service restarted in the middle of a mutation: the trainer retries with the same request_id
against the new service process, which has no record of it, and passes that request_id on. The
engine (control_service.engine, under engine_stub) must not run the mutation a second time: it
attaches the retry to the running load, or answers it from the record of its outcome."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from engine_stub import write_checkpoint
from tests.harness import free_port
from tests.stub_process import StubProcess

SERVICE = "control.v1.ControlService"  # SERVING once the engines are up


@contextlib.asynccontextmanager
async def service_process(port: int, engine: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`control-service serve` as its own process, yielded once it serves with its engine up."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", "serve", "--listen", f"127.0.0.1:{port}",
        "--engine", f"e0={engine}", "--log-format", "json",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await _until_serving(channel, 20.0)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _until_serving(channel: grpc.aio.Channel, timeout: float) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass  # not listening yet
        assert loop.time() < deadline, f"the service did not serve within {timeout}s"
        await asyncio.sleep(0.05)


async def test_a_service_killed_mid_load_and_restarted_never_loads_twice(
    start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    stub = start_stub("--load-interval", "0.4")  # 4 files: the load takes >= 1.6 s
    uri = tmp_path / "ckpt"
    write_checkpoint(uri, files=4)
    port = free_port()
    request = pb.UpdateWeightsRequest(request_id="uw-restart", uri=str(uri), version="v1")

    async with service_process(port, stub.endpoint) as first:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            control = control_pb2_grpc.ControlServiceStub(channel)
            pause = [e async for e in control.Pause(pb.PauseRequest(mode=pb.PAUSE_MODE_ABORT))]
            assert pause[-1].result.state.paused
            call = control.UpdateWeights(request, timeout=30)
            seen = []
            async for event in call:
                seen.append(event.WhichOneof("event"))
                if event.HasField("progress"):
                    break  # mid-load: one file of four loaded
            assert seen[0] == "accepted"
            first.kill()  # SIGKILL: no cancel reaches the engine
            await first.wait()
            call.cancel()

    async with service_process(port, stub.endpoint):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            control = control_pb2_grpc.ControlServiceStub(channel)
            retry = [e async for e in control.UpdateWeights(request, timeout=30)]
            kinds = [e.WhichOneof("event") for e in retry]
            assert kinds[-1] == "result", retry[-1]
            assert "accepted" not in kinds, f"the engine started the load again: {kinds}"
            assert retry[-1].request_id == "uw-restart"
            assert retry[-1].result.state.weight_version == "v1"
            assert retry[-1].result.bytes_loaded > 0

            # Once finished, a further retry is answered from the engine's record.
            again = [e async for e in control.UpdateWeights(request, timeout=30)]
            assert [e.WhichOneof("event") for e in again] == ["result"]
            assert again[-1].result.state.weight_digest == retry[-1].result.state.weight_digest

    received = stub.requests("update_weights")
    assert [e["request_id"] for e in received] == ["uw-restart"] * len(received)
    assert len(received) >= 2, "the service passed the trainer's request_id on to the engine"
