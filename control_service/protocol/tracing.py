"""The trace context that crosses the ZMQ hop: W3C `traceparent` / `tracestate`, checked here.

A request may carry the caller's trace (wire: the optional `trace` object) so that an engine's
spans join the trainer's trace, and an adapter can pass it on to the engine's HTTP API as the
same two headers. Both sides read it through this module, and neither needs OpenTelemetry for
it: it is two bounded strings with a fixed shape (https://www.w3.org/TR/trace-context/).
What is not in that shape is refused here, so a peer can never put arbitrary text into a
header the adapter sends, or into a trace exporter.

Both sides also turn tracing on the same way, from the standard OTEL_* variables
(`configure_from_env`): the only place OpenTelemetry's SDK is imported, and only when those
variables ask for tracing, so a plain install (no `otel` extra) never needs it. Once on, both
handle their spans alike (`SpanTools`: the context a span hands on, and its end with a status).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from control_service.protocol import trace_exporters

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# version 00: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>", lower case.
TRACEPARENT_CHARS: Final = 55
MAX_TRACESTATE_CHARS: Final = 512
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_VISIBLE_ASCII: Final = re.compile(r"[\x20-\x7e]*")
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_PARENT_ID: Final = "0" * 16
# Span attributes both sides set: the call's words, under this project's prefix.
REQUEST_ID: Final = "control.request_id"
METHOD: Final = "control.method"
STATUS: Final = "control.status"


class TraceContextError(ValueError):
    """A trace context that is not in the W3C shape; the reason says which rule it broke."""


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A checked W3C trace context: build it with `check_trace` or `from_headers`."""

    traceparent: str
    tracestate: str = ""

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def parent_id(self) -> str:
        return self.traceparent[36:52]

    def to_wire(self) -> dict[str, str]:
        """The request's `trace` object (tracestate only when there is one)."""
        return self.headers()

    def headers(self) -> dict[str, str]:
        """As HTTP headers (or a propagator's carrier): the same two names, lower case."""
        if self.tracestate:
            return {TRACEPARENT: self.traceparent, TRACESTATE: self.tracestate}
        return {TRACEPARENT: self.traceparent}


def check_trace(value: object) -> TraceContext:
    """The wire's `trace` object as a TraceContext; TraceContextError naming the first rule it
    breaks: an object with a `traceparent` of the W3C version-00 shape (55 characters, lower-case
    hex, trace and parent ids not all zeros) and an optional `tracestate` of at most 512 visible
    ASCII characters."""
    if not isinstance(value, dict):
        raise TraceContextError("trace must be an object")
    return _checked(value.get(TRACEPARENT), value.get(TRACESTATE, ""))


def from_headers(carrier: Mapping[str, str]) -> TraceContext | None:
    """What a propagator injected into `carrier`, checked; None when it injected nothing (no
    span is recording) or a traceparent outside the shape. A tracestate outside its bounds (a
    caller's, say, over 512 characters) is left behind, not the trace with it: W3C lets a hop
    drop what it cannot pass on."""
    parent = carrier.get(TRACEPARENT)
    if parent is None:
        return None
    try:
        return _checked(parent, carrier.get(TRACESTATE, ""))
    except TraceContextError:
        pass
    try:
        return _checked(parent, "")
    except TraceContextError:
        return None


def _checked(parent: Any, state: Any) -> TraceContext:
    if not isinstance(parent, str) or len(parent) != TRACEPARENT_CHARS:
        raise TraceContextError(f"traceparent must be a string of {TRACEPARENT_CHARS} characters")
    match = _TRACEPARENT.fullmatch(parent)
    if match is None:
        raise TraceContextError("traceparent must be 00-<32 hex>-<16 hex>-<2 hex>, lower case")
    version, trace_id, parent_id, _flags = match.groups()
    if version != "00":
        raise TraceContextError(f"traceparent version {version} is not 00")
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        raise TraceContextError("traceparent has an all-zero trace or parent id")
    if state is None:
        state = ""
    if not isinstance(state, str) or len(state) > MAX_TRACESTATE_CHARS:
        raise TraceContextError(f"tracestate must be a string of at most {MAX_TRACESTATE_CHARS}")
    if _VISIBLE_ASCII.fullmatch(state) is None:
        raise TraceContextError("tracestate must be visible ASCII")
    return TraceContext(parent, state)


class SpanTools:
    """What the service and an engine do alike with their spans, with OpenTelemetry's API
    imported once: made only when tracing is on (a process that does not trace never is)."""

    __slots__ = ("_error", "_in_context", "_propagator", "_status")

    def __init__(self) -> None:
        from opentelemetry.trace import Status, StatusCode, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._status, self._error = Status, StatusCode.ERROR
        self._in_context = set_span_in_context
        self._propagator = TraceContextTextMapPropagator()

    def context_of(self, span: Any) -> TraceContext | None:
        """`span` as the W3C context it hands on (a request's `trace`, an HTTP header), checked
        as anything on the wire is."""
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, self._in_context(span))
        return from_headers(carrier)

    def failed(self, span: Any, description: str) -> None:
        """Mark `span` an error: a trace viewer shows it red, with why."""
        span.set_status(self._status(self._error, description))

    def end(self, span: Any, code: str, description: str) -> None:
        """End `span` with the call's status code (`control.status`); not OK also fails it."""
        span.set_attribute(STATUS, code)
        if code != "OK":
            self.failed(span, description)
        span.end()


# ---------------------------------------------------------------------- configured by OTEL_*


class TracingConfigError(ValueError):
    """OTEL_* variables that ask for tracing this process cannot do (an unknown exporter, an
    OTLP protocol without its package): the service's and engines' CLIs exit 2 with it."""


@dataclass(frozen=True, slots=True)
class TracingSetup:
    """What the standard OTEL_* variables made of tracing in this process: the SDK's tracer
    provider when on, None when off; `summary` is the one line each side logs at start."""

    provider: Any
    summary: str

    @property
    def on(self) -> bool:
        return self.provider is not None


_OTLP_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_setup: list[TracingSetup] = []  # this process's one setup, once made


def configure_from_env(default_service_name: str) -> TracingSetup:
    """Tracing as the standard variables say, once per process (the SDK's provider is global,
    and the service and an engine may share a process): off unless OTEL_TRACES_EXPORTER names
    an exporter, or an OTLP endpoint is set (then the exporter is `otlp`); always off with
    OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. Exporters are found as the SDK's own
    auto-configuration finds them (trace_exporters; each reads its own OTEL_EXPORTER_* variables),
    the service name comes from OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, else the default.
    Without the `otel` extra installed, asking for tracing leaves it off and says so."""
    if not _setup:
        setup = _configure(default_service_name)
        if setup.on:
            from opentelemetry import trace

            trace.set_tracer_provider(setup.provider)  # a handler's own spans join in
        _setup.append(setup)
    return _setup[0]


def _configure(default_service_name: str) -> TracingSetup:
    """configure_from_env's reading, without making the provider this process's global one."""
    env = os.environ  # the SDK reads it too (the resource, the sampler, each exporter's own)
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingSetup(None, "tracing off: OTEL_SDK_DISABLED=true")
    asked = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if asked.lower() == "none":
        return TracingSetup(None, "tracing off: OTEL_TRACES_EXPORTER=none")
    if not asked and not any(env.get(name) for name in _OTLP_ENDPOINTS):
        return TracingSetup(None, "tracing off: no OTEL_TRACES_EXPORTER or OTLP endpoint set")
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return TracingSetup(None, "tracing off: OTEL_* asks for it but OpenTelemetry is not "
                            "installed (install control-service[otel])")  # fmt: skip
    try:  # OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_*PROTOCOL, read as the SDK reads them
        exporters = trace_exporters.load(trace_exporters.names(env))
    except (ValueError, ImportError) as err:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={asked or 'otlp'}: {err}") from None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, as the SDK's
    for exporter in exporters.values():
        provider.add_span_processor(BatchSpanProcessor(exporter()))  # OTEL_BSP_* likewise
    where = ", ".join(_where(name, env) for name in exporters)
    name = resource.attributes.get(SERVICE_NAME)
    return TracingSetup(provider, f"tracing on: service.name {name}, exporting to {where}")


def _where(exporter: str, env: Mapping[str, str]) -> str:
    if not exporter.startswith("otlp"):
        return exporter
    endpoint = next((env[name] for name in _OTLP_ENDPOINTS if env.get(name)), None)
    return f"{exporter} at {endpoint or 'the default endpoint (localhost:4317 / :4318)'}"
