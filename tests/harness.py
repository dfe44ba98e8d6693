"""A real grpc.aio server on loopback in front of real engine links, as tests use it."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from control_service.server import ControlServer


@dataclasses.dataclass
class Service:
    server: ControlServer
    port: int
    channel: grpc.aio.Channel
    stub: control_pb2_grpc.ControlServiceStub

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def events(self, rpc: str, request: Any, **kw: Any) -> list[pb.ControlEvent]:
        """Every event of one call (raises AioRpcError on a failed call)."""
        return [event async for event in getattr(self.stub, rpc)(request, **kw)]

    async def failed(self, rpc: str, request: Any, **kw: Any) -> tuple[grpc.aio.AioRpcError, list]:
        """A call that must fail: its error and the events before it."""
        got: list[pb.ControlEvent] = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for event in getattr(self.stub, rpc)(request, **kw):
                got.append(event)
        return info.value, got


StartService = Callable[..., Awaitable[Service]]


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait, with a bound, for a condition that the service changes from its own callbacks
    (a counter, a link state) and that has no event of its own to await."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"condition not reached within {timeout}s"
        await asyncio.sleep(0.005)


async def eventually_async(
    probe: Callable[[], Awaitable[object]], expected: object, timeout: float = 5.0
) -> None:
    """Like `eventually`, for a condition read through an RPC (health status, say)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await probe()) != expected:
        assert loop.time() < deadline, f"still {got!r}, wanted {expected!r}, after {timeout}s"
        await asyncio.sleep(0.005)


def free_port() -> int:
    """A loopback port free right now, for a child process that must be told its port."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
