"""The service's CPU policy (control_service/sched.py), read from outside a real `control-service
serve` process: every thread it runs, gRPC's and ZMQ's included, is under the policy asked for."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from control_service import sched
from tests.harness import eventually_async, free_port
from tests.stub_process import StubProcess

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling only")


def policies(pid: int) -> dict[int, int]:
    """tid -> the thread's scheduling policy, for every thread of a running process."""
    return {int(t): os.sched_getscheduler(int(t)) for t in os.listdir(f"/proc/{pid}/task")}


async def serving(port: int) -> int | None:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = health_pb2.HealthCheckRequest(service="")
            reply = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=2)
            return reply.status
    except grpc.aio.AioRpcError:
        return None  # not listening yet


@pytest.mark.parametrize(
    ("flag", "expected"), [((), "SCHED_BATCH"), (("--cpu-policy", "normal"), "SCHED_OTHER")]
)
async def test_every_thread_of_the_service_runs_under_its_cpu_policy(
    start_stub: Callable[..., StubProcess], flag: tuple[str, ...], expected: str
) -> None:
    stub = start_stub()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", "serve", "--listen", f"127.0.0.1:{port}",
        "--engine", f"e0={stub.endpoint}", "--log-format", "json", *flag,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await eventually_async(lambda: serving(port), health_pb2.HealthCheckResponse.SERVING, 15)
        seen = policies(proc.pid)
        # the loop, gRPC's poller and I/O threads, ZMQ's I/O thread: all started by then
        assert len(seen) >= 4, seen
        assert set(seen.values()) == {getattr(os, expected)}, seen
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


def test_apply_sets_every_thread_and_refuses_an_unknown_policy() -> None:
    before = sched.policy_of()
    try:
        assert sched.apply("batch") >= 1
        assert sched.policy_of() == "batch"
        assert sched.apply("normal") >= 1
        assert sched.policy_of() == "normal"
    finally:
        sched.apply(before if before in sched.POLICIES else "normal")
    with pytest.raises(ValueError, match="cpu policy"):
        sched.apply("fifo")
