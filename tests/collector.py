"""A small real OTLP/gRPC trace collector on loopback: what a process's exporter sends, recorded.

It implements opentelemetry.proto's TraceService with grpc, so a process under test exports to
it exactly as it would to a real collector (OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint), and
a test waits, bounded, for the spans it expects:

    with Collector() as collector:
        ... start a process with OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint ...
        spans = collector.wait_for(lambda spans: len(spans) >= 3)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2


@dataclass(frozen=True)
class Span:
    """One exported span, in the terms a test checks: ids as lower-case hex ("" for no parent)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status_code: int = 0  # 0 unset, 1 ok, 2 error (OTLP's Status.StatusCode)
    status_message: str = ""


def _value(v: common_pb2.AnyValue) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._cond = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Collector:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(0)

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        got = []
        for resource_spans in request.resource_spans:
            service = _attributes(resource_spans.resource.attributes).get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    got.append(Span(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                                    s.parent_span_id.hex(), s.kind, _attributes(s.attributes),
                                    s.status.code, s.status.message))  # fmt: skip
        with self._cond:
            self.spans.extend(got)
            self._cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, enough: Callable[[list[Span]], bool], timeout: float = 15.0) -> list[Span]:
        """The spans received, once `enough` says so; AssertionError with what came otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not enough(list(self.spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"collector: not enough spans in {timeout}s: {self.spans}")
                self._cond.wait(left)
            return list(self.spans)
