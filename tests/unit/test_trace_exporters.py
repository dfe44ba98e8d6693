"""OTEL_TRACES_EXPORTER read as the SDK's auto-configuration reads it: a comma list of entry
point names, `otlp` resolved by the OTLP protocol variables, anything not installed refused."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from control_service.protocol import trace_exporters, tracing


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, ["otlp_proto_grpc"]),  # only an endpoint set: otlp, over gRPC
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp_proto_grpc"]),
        ({"OTEL_TRACES_EXPORTER": " console , otlp "}, ["console", "otlp_proto_grpc"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
         ["otlp_proto_http"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, ["otlp_proto_grpc"]),  # traces' own wins
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "",
          "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ["otlp_proto_http"]),  # empty: unset
        ({"OTEL_TRACES_EXPORTER": "otlp_proto_grpc", "OTEL_EXPORTER_OTLP_PROTOCOL":
          "http/protobuf"}, ["otlp_proto_grpc"]),  # an exporter named outright stays
    ],
)  # fmt: skip
def test_names_are_the_entry_points_asked_for(env: dict[str, str], names: list[str]) -> None:
    assert trace_exporters.names(env) == names


def test_an_otlp_protocol_with_no_exporter_is_refused() -> None:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    with pytest.raises(ValueError, match="unsupported OTLP protocol 'http/json'"):
        trace_exporters.names(env)


def test_installed_exporters_load_as_their_classes_once_each() -> None:
    loaded = trace_exporters.load(["console", "otlp_proto_grpc", "console"])
    assert loaded == {"console": ConsoleSpanExporter, "otlp_proto_grpc": OTLPSpanExporter}


def test_an_exporter_not_installed_is_refused_naming_those_that_are() -> None:
    with pytest.raises(ValueError, match=r"no exporter 'zipkin' .*installed: .*console"):
        trace_exporters.load(["zipkin"])


def test_an_entry_point_that_is_not_a_span_exporter_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NotAnExporter:
        def load(self) -> type:
            return dict

    monkeypatch.setattr(trace_exporters, "_entry_point", lambda name: NotAnExporter())
    with pytest.raises(ValueError, match="'console' is not a span exporter"):
        trace_exporters.load(["console"])


def test_an_unsupported_protocol_stops_tracing_as_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(tracing.TracingConfigError, match="OTEL_TRACES_EXPORTER=otlp: unsupported"):
        tracing._configure("x")
