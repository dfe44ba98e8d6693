"""A scripted ControlService on a real grpc.aio server: drop the first N attempts, fail with a
given error, or hang; records what each call received. For the client's and `call`'s tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from control_service.errors import ControlError, to_grpc_status
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc

ENGINES = ("e0", "e1")
STATE = pb.EngineState(
    paused=True, weight_version="7", in_flight=2, weight_digest="sha256:" + "ab" * 32
)


@dataclass
class Seen:
    method: str
    request: Any
    metadata: dict[str, str]
    time_remaining: float | None


@dataclass
class FakeControl(control_pb2_grpc.ControlServiceServicer):
    """Scripted servicer: drop the first N attempts, fail with an error, or hang."""

    unavailable_first: int = 0
    fail_with: ControlError | None = None
    hang: bool = False
    seen: list[Seen] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    target: str = ""

    async def Pause(self, request: Any, context: Any) -> AsyncIterator[pb.ControlEvent]:
        async for event in self._run("Pause", request, context):
            yield event

    async def UpdateWeights(self, request: Any, context: Any) -> AsyncIterator[pb.ControlEvent]:
        async for event in self._run("UpdateWeights", request, context):
            yield event

    async def Resume(self, request: Any, context: Any) -> AsyncIterator[pb.ControlEvent]:
        async for event in self._run("Resume", request, context):
            yield event

    async def GetStatus(self, request: Any, context: Any) -> pb.GetStatusResponse:
        self._record("GetStatus", request, context)
        if len(self.seen) <= self.unavailable_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return pb.GetStatusResponse(
            engines=[
                pb.EngineStatus(engine="e0", reachable=True, state=STATE),
                pb.EngineStatus(engine="e1", reachable=False, error="down"),
            ]
        )

    def _record(self, method: str, request: Any, context: Any) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen.append(Seen(method, request, metadata, context.time_remaining()))

    async def _run(self, method: str, request: Any, context: Any) -> AsyncIterator[pb.ControlEvent]:
        self._record(method, request, context)
        rid = request.request_id
        accepted = pb.Accepted(message="go")
        yield pb.ControlEvent(request_id=rid, engine="e0", seq=1, accepted=accepted)
        if len(self.seen) <= self.unavailable_first:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
        if self.hang:
            try:
                await asyncio.Event().wait()
            finally:
                self.cancelled.set()
        if self.fail_with is not None:
            status = to_grpc_status(self.fail_with)
            await context.abort(status.code, status.details, status.trailing_metadata)
        version = getattr(request, "version", "")
        for engine in request.engines or ENGINES:
            state = pb.EngineState(paused=method != "Resume", weight_version=version)
            yield pb.ControlEvent(
                request_id=rid, engine=engine, seq=2, result=pb.Result(state=state)
            )


async def serve_fake() -> AsyncIterator[FakeControl]:
    """A FakeControl listening on loopback until the generator is closed (a fixture's body)."""
    servicer = FakeControl()
    server = grpc.aio.server()
    control_pb2_grpc.add_ControlServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.target = f"127.0.0.1:{port}"
    try:
        yield servicer
    finally:
        await server.stop(None)
