"""The engine library continues the service's trace: a span per mutation whose parent is the
request's `trace`, current while the handler runs (inline or as a task), and `trace_headers()`
naming it; without tracing in the engine process the request's context passes through as it is.
A real EngineServer on loopback and a real DEALER."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import zmq
import zmq.asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from control_service.engine import (
    Capabilities,
    Done,
    EngineError,
    EngineServer,
    EngineServerConfig,
    EngineState,
    EngineTracing,
    Operation,
    trace_headers,
)
from control_service.protocol import wire
from control_service.protocol.tracing import TraceContext

PARENT = TraceContext("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "k=v")


@dataclass
class Seen:
    span_id: int  # the handler's current span (0: none valid)
    headers: dict[str, str]


class Recording:
    """pause answers inline, resume as a task, update_weights fails: what each saw is kept."""

    def __init__(self) -> None:
        self.seen: dict[str, Seen] = {}

    def _see(self, method: str) -> None:
        ctx = trace.get_current_span().get_span_context()
        self.seen[method] = Seen(ctx.span_id if ctx.is_valid else 0, trace_headers())

    def capabilities(self) -> Capabilities:
        return Capabilities()

    def status(self) -> EngineState:
        return EngineState(paused=False)

    def pause(self, op: Operation, mode: str, clear_cache: bool) -> Done:
        self._see("pause")
        return Done(state=EngineState(paused=True))

    async def update_weights(self, op: Operation, uri: str, version: str) -> Done:
        self._see("update_weights")
        raise EngineError("NOT_FOUND", "no such checkpoint")

    async def resume(self, op: Operation) -> Done:
        self._see("resume")
        return Done(state=EngineState(paused=False))


@dataclass
class Engine:
    handler: Recording
    sock: zmq.asyncio.Socket

    async def call(self, rid: str, method: str, args: dict[str, object]) -> wire.Reply:
        request = wire.Request(rid, method, args, 5.0, PARENT)
        await self.sock.send_multipart([b"", wire.encode_request(request)])
        while True:
            frames = await asyncio.wait_for(self.sock.recv_multipart(), 5.0)
            reply = wire.decode_reply(frames[1])
            if reply.terminal:
                return reply


@contextlib.asynccontextmanager
async def started(tracing: EngineTracing | None) -> AsyncIterator[Engine]:
    handler = Recording()
    server = EngineServer(handler, EngineServerConfig(bind="tcp://127.0.0.1:0"), tracing=tracing)
    stop = asyncio.Event()
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(server.serve(stop, bound.set_result))
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(await asyncio.wait_for(bound, 5.0))
    try:
        yield Engine(handler, sock)
    finally:
        sock.close()
        ctx.term()
        stop.set()
        await asyncio.wait_for(task, 5.0)


@pytest.fixture
def exported() -> tuple[EngineTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return EngineTracing(provider), exporter


async def test_each_mutation_is_a_span_under_the_requests_trace_current_in_its_handler(
    exported: tuple[EngineTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = exported
    async with started(tracing) as engine:
        assert (await engine.call("p1", "pause", {"mode": "abort"})).kind == wire.RESULT
        await engine.call("u1", "update_weights", {"uri": "/ckpt", "version": "2"})
        assert (await engine.call("r1", "resume", {})).kind == wire.RESULT
        seen = engine.handler.seen
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert sorted(spans) == ["pause", "resume", "update_weights"]
    for method, span in spans.items():
        ctx = span.get_span_context()
        assert span.parent is not None and span.parent.span_id == int(PARENT.parent_id, 16)
        assert ctx is not None and ctx.trace_id == int(PARENT.trace_id, 16)
        assert seen[method].span_id == ctx.span_id, f"{method}: the handler saw its own span"
        assert (
            seen[method]
            .headers["traceparent"]
            .startswith(f"00-{PARENT.trace_id}-{ctx.span_id:016x}-")
        ), "what a handler sends on names its span"
        assert seen[method].headers["tracestate"] == "k=v"
        assert span.attributes is not None and span.attributes["control.method"] == method
    failed = spans["update_weights"]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["control.status"] == "NOT_FOUND"
    assert spans["pause"].attributes["control.status"] == "OK"  # type: ignore[index]
    assert trace_headers() == {}, "nothing leaks outside a mutation"


async def test_without_tracing_the_requests_context_passes_through() -> None:
    async with started(None) as engine:
        await engine.call("p1", "pause", {"mode": "abort"})
        await engine.call("r1", "resume", {})
        seen = engine.handler.seen
    for method in ("pause", "resume"):
        assert seen[method] == Seen(0, PARENT.headers()), method
