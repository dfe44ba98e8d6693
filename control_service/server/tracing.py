"""The service's traces: a server span per call, and a child span per engine part of it.

When a refit is slow, the question is which engine and which step. So each call gets the gRPC
instrumentation's server span (its parent is the trainer's span when the trainer sends a trace
context), and each engine's part of it a child span, from the moment the part is sent until that
engine's final reply (or its loss) arrives, with request_id, engine, method and status; a Refit's
steps are parts too, so a refit shows a span per step per engine. The part's own context goes to
the engine in the request's `trace` (protocol/tracing.py), so the engine's spans are its children.

Off unless the standard OTEL_* variables ask for it (protocol/tracing.py: `configure_from_env`).
This is the service's only module that imports OpenTelemetry, and only once tracing is on: with
it off the service holds `None` where a `ServerTracing` would be, and pays one `is None` test per
call and per reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from control_service.log import few_names
from control_service.protocol import tracing, wire
from control_service.protocol.tracing import METHOD, REQUEST_ID, STATUS, SpanTools, TraceContext
from control_service.server.config import ConfigError
from control_service.server.trace_interceptor import interceptor_class

if TYPE_CHECKING:
    from control_service.server.operations import Command

log = structlog.get_logger("control_service.server.tracing")

DEFAULT_SERVICE_NAME = "control-service"
# Attribute names besides the ones both sides set (protocol/tracing.py); gRPC's own under rpc.*.
ENGINE = "control.engine"  # a part's engine; on a call's span, its first engines (few_names)
ENGINE_COUNT = "control.engine_count"  # on a call's span: how many engines it went to
OWNER = "control.refit.request_id"  # a Refit step's part: the refit it belongs to
# Health checks and reflection would bury the calls in probe spans.
_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/")


class PartSpan:
    """One engine's part of a call, as a span: ended by the part's final reply or its loss."""

    __slots__ = ("_span", "_tracing")

    def __init__(self, span: Any, tracing: ServerTracing) -> None:
        self._span = span
        self._tracing = tracing

    def context(self) -> TraceContext | None:
        """This span as the request's `trace`: the engine continues from here."""
        return self._tracing.spans.context_of(self._span)

    def on_reply(self, reply: wire.Reply) -> None:
        """accepted/progress become span events (where the time went); the terminal reply ends
        the span with the engine's status."""
        if reply.kind == wire.PROGRESS:
            d = reply.data
            self._span.add_event("progress", {"stage": d["stage"], "done": d["done"],
                                              "total": d["total"]})  # fmt: skip
        elif reply.kind == wire.ACCEPTED:
            self._span.add_event("accepted")
        elif reply.kind == wire.RESULT:
            self._end("OK", "")
        else:
            self._end(reply.data["code"], reply.data["message"])

    def lost(self, code: grpc.StatusCode, message: str) -> None:
        """The service ended the part (engine lost, deadline, cancel, shutdown)."""
        self._end(code.name, message)

    def _end(self, code: str, message: str) -> None:
        self._tracing.spans.end(self._span, code, f"{code}: {message}"[:512])


class ServerTracing:
    """Tracing on: the gRPC server interceptor and the engine parts' spans, from one provider
    (the SDK's, from OTEL_*; a test passes its own, with an in-memory exporter). Made once, at
    start: an installed instrumentation this cannot work with is a ConfigError here, not a
    failure of every call (trace_interceptor)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import SpanKind, get_current_span

        self._interceptor_class = interceptor_class()
        self.provider = provider
        self.spans = SpanTools()
        self._tracer = provider.get_tracer("control_service.server")
        self._current_span = get_current_span
        self._part_kind = SpanKind.CLIENT  # the service calls the engine

    @classmethod
    def from_env(cls) -> ServerTracing | None:
        """As the OTEL_* variables say (None: off; `log_setup` says which once serving).
        Variables that ask for what cannot be done are a ConfigError (the CLI's exit 2)."""
        try:
            setup = tracing.configure_from_env(DEFAULT_SERVICE_NAME)
        except tracing.TracingConfigError as err:
            raise ConfigError(str(err)) from None
        return cls(setup.provider) if setup.on else None

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """opentelemetry-instrumentation-grpc's server interceptor, health and reflection left
        out, taught the handler style of this service's streams (trace_interceptor)."""
        interceptor: grpc.aio.ServerInterceptor = self._interceptor_class(
            self._tracer, filter_=_traced
        )
        return interceptor

    def part(self, command: Command, engine: str, owner: str = "") -> PartSpan:
        """A child of the current span (the call's server span, or the Refit's) for one engine's
        part of `command`; ended by PartSpan.on_reply / lost."""
        attributes = {REQUEST_ID: command.request_id, ENGINE: engine, METHOD: command.method}
        if owner:
            attributes[OWNER] = owner
        span = self._tracer.start_span(f"engine {command.method}", attributes=attributes,
                                       kind=self._part_kind)  # fmt: skip
        return PartSpan(span, self)

    def sampled_out(self) -> TraceContext | None:
        """The current span's context when the call is traced but not sampled (its span does
        not record), else None. Such a call gets no part spans: its engines are sent this
        context, so they follow the same sampling decision."""
        span = self._current_span()
        if span.is_recording() or not span.get_span_context().is_valid:
            return None
        return self.spans.context_of(span)

    def call_ended(self, request_id: str, engines: Sequence[str], code: grpc.StatusCode,
                   message: str) -> None:  # fmt: skip
        """The call's own words on its server span: request_id, engines, status (an abort with
        rich details bypasses the instrumentation's own status tracking). The engines as a log
        line names them (the first few and a count): a call to 1,024 engines would otherwise
        put a 10 KiB attribute on every span, past what most backends keep."""
        span = self._current_span()
        if not span.is_recording():
            return
        span.set_attribute(REQUEST_ID, request_id)
        span.set_attribute(ENGINE, few_names(engines))
        span.set_attribute(ENGINE_COUNT, len(engines))
        span.set_attribute(STATUS, code.name)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            self.spans.failed(span, f"{code.name}: {message}"[:512])


def _traced(details: grpc.HandlerCallDetails) -> bool:
    """The interceptor's filter: every method but health and reflection. Not the package's
    `filters.service_name`, whose generic matching (isinstance checks against ABCs, path
    normalisation) cost more per call than the spans it guards (measured: bench.ab)."""
    return not details.method.startswith(_UNTRACED)


def log_setup() -> None:
    """One line, once the service started (a start that fails says only why): whether it
    traces and where it exports, as `from_env` found it."""
    log.info(tracing.configure_from_env(DEFAULT_SERVICE_NAME).summary)
