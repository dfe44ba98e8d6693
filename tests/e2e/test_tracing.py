"""Tracing as an operator turns it on: `control-service serve --embedded-engine` with the standard
OTEL_* variables pointing at a collector, a trainer's traced call, and one trace in the collector
with the service's spans and the engine process's, linked parent to child."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from control_service.client import ClientConfig, ControlClient
from tests.collector import Collector, Span
from tests.serve_process import REPO, ServeProcess


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    with Collector() as running:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", running.endpoint)  # otlp by default
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        yield running


async def test_serve_exports_one_trace_from_the_service_and_its_engine(
    collector: Collector, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with ServeProcess(["--embedded-engine"], log=tmp_path / "serve.log") as service:
        async with ControlClient(ClientConfig(target=service.target)) as client:
            with provider.get_tracer("trainer").start_as_current_span("trainer step") as root:
                await client.pause("abort", request_id="e2e-traced")
        trace_id = format(root.get_span_context().trace_id, "032x")
        root_id = format(root.get_span_context().span_id, "016x")

        def ours(spans: list[Span]) -> list[Span]:
            return [s for s in spans if s.trace_id == trace_id]

        spans = ours(collector.wait_for(lambda spans: len(ours(spans)) >= 3))
        log = service.log.read_text()
    by_name = {s.name: s for s in spans}
    server = by_name["/control.v1.ControlService/Pause"]
    part = by_name["engine pause"]
    engine = by_name["pause"]
    assert (server.service, server.parent_id) == ("control-service", root_id)
    assert (part.service, part.parent_id) == ("control-service", server.span_id)
    assert part.attributes["control.engine"] == "embedded-0"
    assert (engine.service, engine.parent_id) == ("embedded-0", part.span_id)
    assert engine.attributes["control.request_id"] == "e2e-traced"
    assert not any("Health" in s.name for s in collector.spans), "health checks are not traced"
    where = f"exporting to otlp_proto_grpc at {collector.endpoint}"
    assert log.count(f"tracing on: service.name control-service, {where}") == 1, log
    assert f"tracing on: service.name embedded-0, {where}" in log, log


def test_an_unknown_exporter_stops_serve_with_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CONTROL_SERVICE_"))}
    done = subprocess.run(
        [sys.executable, "-m", "control_service", "serve", "--embedded-engine"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
        env={**env, "OTEL_TRACES_EXPORTER": "zipkin"},
    )  # fmt: skip
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "OTEL_TRACES_EXPORTER=zipkin" in lines[0], done.stderr
