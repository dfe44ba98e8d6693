"""One trace from the trainer's span through the service to a real engine process: the service's
spans (in memory, in this process) and the engine's (exported over OTLP to a real collector) share
the trace id, and each parent link is the one the hop made."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from control_service.client import ClientConfig, ControlClient, ControlError
from control_service.protocol import wire
from control_service.protocol.tracing import TraceContext
from control_service.server.tracing import ServerTracing
from tests.collector import Collector, Span
from tests.fakes.process import AdapterProcess, FakeEngine
from tests.harness import StartService
from tests.stub_process import EngineClient, StubProcess

Checkpoint = Callable[[int], tuple[str, int]]


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    """A collector, and the OTEL_* variables that make an engine process export to it."""
    with Collector() as running:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", running.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export within 50 ms, not 5 s
        yield running


def recorder() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def hex_ids(span: ReadableSpan) -> tuple[str, str, str]:
    """(trace id, span id, parent span id) as OTLP writes them: lower-case hex."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent.span_id.to_bytes(8, "big").hex() if span.parent else ""
    return ctx.trace_id.to_bytes(16, "big").hex(), ctx.span_id.to_bytes(8, "big").hex(), parent


def engine_spans(collector: Collector, trace_id: str, count: int) -> list[Span]:
    def ours(spans: list[Span]) -> list[Span]:
        return [s for s in spans if s.trace_id == trace_id]

    return ours(collector.wait_for(lambda spans: len(ours(spans)) >= count))


async def test_one_trace_from_the_trainer_through_the_service_to_the_engine(
    collector: Collector, start_stub: Callable[..., StubProcess], start_service: StartService
) -> None:
    stub = start_stub("--name", "traced-engine")
    service_provider, service_spans = recorder()
    service = await start_service({"e0": stub.endpoint}, tracing=ServerTracing(service_provider))
    trainer_provider, trainer_spans = recorder()
    trainer = trainer_provider.get_tracer("trainer")

    async with ControlClient(ClientConfig(target=service.target)) as client:
        with trainer.start_as_current_span("trainer step"):
            await client.pause("abort", request_id="traced-1")

    (root,) = trainer_spans.get_finished_spans()
    trace_id, root_id, _ = hex_ids(root)
    by_name = {s.name: s for s in service_spans.get_finished_spans()}
    server = by_name["/control.v1.ControlService/Pause"]
    part = by_name["engine pause"]
    assert hex_ids(server)[0] == trace_id and hex_ids(server)[2] == root_id, "trainer is parent"
    assert server.kind is SpanKind.SERVER
    assert server.attributes is not None and server.attributes["control.request_id"] == "traced-1"
    assert server.attributes["control.status"] == "OK"
    assert (server.attributes["control.engine"], server.attributes["control.engine_count"]) == (
        "e0", 1)  # fmt: skip
    _, server_id, _ = hex_ids(server)
    part_trace, part_id, part_parent = hex_ids(part)
    assert (part_trace, part_parent) == (trace_id, server_id), "the part is the call's child"
    assert part.attributes is not None
    assert dict(part.attributes) == {"control.request_id": "traced-1", "control.engine": "e0",
                                     "control.method": "pause", "control.status": "OK"}  # fmt: skip

    announced = stub.wait_event(lambda e: e.get("event") == "request")
    sent = announced["trace"]["traceparent"]
    assert sent.startswith(f"00-{trace_id}-{part_id}-"), "the request carries the part's context"
    (engine,) = engine_spans(collector, trace_id, 1)
    assert engine.service == "traced-engine", "the engine process's own name (--name)"
    assert (engine.name, engine.parent_id) == ("pause", part_id), "continued across the ZMQ hop"
    assert engine.attributes["control.request_id"] == "traced-1"
    assert engine.attributes["control.status"] == "OK"


async def test_a_refit_has_a_span_per_step_per_engine_and_failures_carry_their_status(
    collector: Collector,
    start_stub: Callable[..., StubProcess],
    start_service: StartService,
    checkpoint: Checkpoint,
) -> None:
    stubs = [start_stub("--name", f"traced-{i}") for i in range(2)]
    provider, exported = recorder()
    service = await start_service(
        {f"e{i}": s.endpoint for i, s in enumerate(stubs)}, tracing=ServerTracing(provider)
    )
    uri, _ = checkpoint(1)
    stubs[1].knob(fail_next={"code": "NOT_FOUND", "message": "no such checkpoint",
                             "method": "update_weights"})  # fmt: skip
    async with ControlClient(ClientConfig(target=service.target)) as client:
        with pytest.raises(ControlError) as failed:
            await client.refit(uri, "1", request_id="traced-refit")
    assert failed.value.code is grpc.StatusCode.NOT_FOUND

    spans = exported.get_finished_spans()
    server = next(s for s in spans if s.name == "/control.v1.ControlService/Refit")
    trace_id, server_id, _ = hex_ids(server)
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None and server.attributes["control.status"] == "NOT_FOUND"
    parts = [s for s in spans if s.name.startswith("engine ")]
    assert all(hex_ids(p)[:3:2] == (trace_id, server_id) for p in parts), "children of the call"
    steps = sorted((p.attributes["control.method"], p.attributes["control.engine"],  # type: ignore[index]
                    p.attributes["control.status"]) for p in parts)  # type: ignore[index]  # fmt: skip
    assert steps == [
        ("pause", "e0", "OK"), ("pause", "e1", "OK"),
        ("resume", "e0", "OK"), ("resume", "e1", "OK"),  # the failure policy's resume
        ("update_weights", "e0", "OK"), ("update_weights", "e1", "NOT_FOUND"),
    ]  # fmt: skip
    failed_part = next(p for p in parts if p.attributes["control.status"] == "NOT_FOUND")  # type: ignore[index]
    assert failed_part.status.status_code is StatusCode.ERROR
    assert "no such checkpoint" in (failed_part.status.description or "")
    assert all(p.attributes["control.refit.request_id"] == "traced-refit" for p in parts)  # type: ignore[index]

    part_ids = {hex_ids(p)[1]: p for p in parts}
    engine = engine_spans(collector, trace_id, len(parts))
    assert {e.parent_id for e in engine} == set(part_ids), "each engine span under its part"
    for e in engine:
        part = part_ids[e.parent_id]
        assert e.name == part.attributes["control.method"]  # type: ignore[index]
        assert e.service == f"traced-{part.attributes['control.engine'][1]}"  # type: ignore[index]
    bad = next(e for e in engine if e.attributes["control.status"] == "NOT_FOUND")
    assert bad.status_code == 2 and bad.service == "traced-1"


async def test_without_tracing_no_trace_goes_to_the_engine(
    start_stub: Callable[..., StubProcess], start_service: StartService
) -> None:
    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    async with ControlClient(ClientConfig(target=service.target)) as client:
        await client.pause("abort", request_id="plain-1")
    seen = stub.wait_event(lambda e: e.get("event") == "request")
    assert seen["request_id"] == "plain-1" and "trace" not in seen, seen


# ---------------------------------------------------------------------------------- adapters

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MUTATIONS = [
    ("pause", {"mode": "abort", "clear_cache": False}),
    ("update_weights", {"uri": "/ckpt/7", "version": "7"}),
    ("resume", {}),
]


@pytest.mark.parametrize("kind", ["vllm", "sglang", "fastdeploy"])
def test_an_adapter_passes_the_trace_on_with_every_request_of_the_call(
    kind: str, fake_engine: Callable[..., FakeEngine], start_adapter: Callable[..., AdapterProcess]
) -> None:
    """No tracing in the adapter process: the service's context goes on to the engine as it is."""
    fake = fake_engine(kind)
    with EngineClient(start_adapter(kind, fake.url).endpoint) as engine:
        engine.result("status")
        for method, args in MUTATIONS:
            before = len(fake.log()["requests"])
            trace = TraceContext(PARENT, f"{kind}=t61rcWkgMzE")
            assert engine.call(method, args, trace=trace)[-1].kind == wire.RESULT
            sent = fake.log()["requests"][before:]
            assert sent, f"{method} sent nothing to {kind}"
            assert all(r.get("trace") == trace.headers() for r in sent), (method, sent)
        before = len(fake.log()["requests"])
        engine.result("status")
        assert all("trace" not in r for r in fake.log()["requests"][before:]), "status: no trace"


def test_a_traced_adapter_sends_its_own_span_as_the_engines_parent(
    collector: Collector,
    fake_engine: Callable[..., FakeEngine],
    start_adapter: Callable[..., AdapterProcess],
) -> None:
    fake = fake_engine("vllm")
    with EngineClient(start_adapter("vllm", fake.url).endpoint) as engine:
        before = len(fake.log()["requests"])
        engine.result("pause", MUTATIONS[0][1], trace=TraceContext(PARENT))
        sent = fake.log()["requests"][before:]
    trace_id, parent_id = PARENT[3:35], PARENT[36:52]
    (span,) = engine_spans(collector, trace_id, 1)
    assert (span.name, span.parent_id) == ("pause", parent_id)
    assert {r["trace"]["traceparent"][:52] for r in sent} == {f"00-{trace_id}-{span.span_id}"}


async def test_a_call_sampled_out_has_no_part_spans_and_its_engines_follow_the_decision(
    start_stub: Callable[..., StubProcess], start_service: StartService
) -> None:
    stubs = [start_stub() for _ in range(2)]
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = await start_service(
        {f"e{i}": s.endpoint for i, s in enumerate(stubs)}, tracing=ServerTracing(provider)
    )
    async with ControlClient(ClientConfig(target=service.target)) as client:
        await client.pause("abort", request_id="unsampled-1")
    assert exporter.get_finished_spans() == ()
    sent = [s.wait_event(lambda e: e.get("event") == "request")["trace"] for s in stubs]
    assert sent[0] == sent[1], "one context for every engine: the call's own"
    flags = int(sent[0]["traceparent"][-2:], 16)
    assert not flags & 1, "the sampled flag is off: the engines drop it too"


async def test_a_call_to_many_engines_names_a_few_and_counts_them_all(
    start_stub: Callable[..., StubProcess], start_service: StartService
) -> None:
    """One call's span stays small at fleet scale: the first 16 engines and a count, as a log
    line names them (a call to 1,024 engines would otherwise carry a 10 KiB attribute)."""
    stub = start_stub()
    provider, exported = recorder()
    engines = {f"e{i:02d}": stub.endpoint for i in range(20)}  # 20 links to one engine process
    service = await start_service(engines, tracing=ServerTracing(provider))
    async with ControlClient(ClientConfig(target=service.target)) as client:
        status = await client.status()
    assert len(status.engines) == 20
    (span,) = [s for s in exported.get_finished_spans() if s.name.endswith("/GetStatus")]
    assert span.attributes is not None
    shown = ",".join(f"e{i:02d}" for i in range(16))
    assert span.attributes["control.engine"] == f"{shown} and 4 more"
    assert span.attributes["control.engine_count"] == 20
