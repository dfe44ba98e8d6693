"""The engine side of a trace: a span per mutation, continuing the service's trace.

A request may carry the trace context of the service's span for this engine's part of the call
(wire: `trace`). With tracing configured in the engine process (the standard OTEL_* variables,
as for the service: protocol/tracing.py), each mutation gets a span whose parent is that context,
ended with the mutation's terminal reply, and exported from this process. While the handler runs,
the mutation's context is current: a handler that traces reads it as usual
(`opentelemetry.trace.get_current_span()`), and one that calls its engine over HTTP sends
`trace_headers()` on, so the engine's own spans join the same trace (the adapters do).
Without tracing in this process, `trace_headers()` still passes the service's context through.

The engine library's only module that imports OpenTelemetry, and only once tracing is on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from control_service.protocol import tracing, wire
from control_service.protocol.tracing import METHOD, REQUEST_ID, SpanTools, TraceContext

from .router import EngineServerError

log = logging.getLogger("control_service.engine")

# The running mutation's trace context, as sent on: its own span's when this process traces,
# else the one the request brought. Set while the handler is called; its task inherits it.
_current: ContextVar[TraceContext | None] = ContextVar("control_service_engine_trace", default=None)


def trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) for whatever the running mutation sends on (an HTTP
    request to its engine); empty outside a traced mutation. Bounded and checked: safe to use
    as headers as they are."""
    current = _current.get()
    return current.headers() if current is not None else {}


class MutationSpan:
    """One mutation's span, ended by its terminal reply."""

    __slots__ = ("_span", "_tracing")

    def __init__(self, span: Any, engine_tracing: EngineTracing) -> None:
        self._span = span
        self._tracing = engine_tracing

    def end(self, reply: wire.Reply) -> None:
        """Ended by the terminal reply, with its status: an error's code and message, or OK."""
        if reply.kind == wire.ERROR:
            code = reply.data["code"]
            self._tracing.spans.end(self._span, code, f"{code}: {reply.data['message']}")
        else:
            self._tracing.spans.end(self._span, "OK", "")


class EngineTracing:
    """Tracing on in this engine process: a tracer from the SDK's provider (a test may pass a
    provider of its own)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import context
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.spans = SpanTools()
        self._tracer = provider.get_tracer("control_service.engine")
        self._kind = SpanKind.SERVER
        self._context = context
        self._in_context = set_span_in_context
        self._propagator = TraceContextTextMapPropagator()  # the request's context, read

    @classmethod
    def from_env(cls, default_service_name: str) -> EngineTracing | None:
        """As the OTEL_* variables say (None: off; `log_setup` says which once bound). Variables
        asking for what cannot be done stop the engine from starting (EngineServerError: exit 2)."""
        try:
            setup = tracing.configure_from_env(default_service_name)
        except tracing.TracingConfigError as err:
            raise EngineServerError(str(err)) from None
        return cls(setup.provider) if setup.on else None

    @contextlib.contextmanager
    def mutation(self, request: wire.Request) -> Iterator[MutationSpan]:
        """A span for `request`, a child of its wire trace context, current inside the block."""
        parent = None
        if request.trace is not None:
            parent = self._propagator.extract(request.trace.headers())
        span = self._tracer.start_span(
            request.method,
            context=parent,
            kind=self._kind,
            attributes={REQUEST_ID: request.request_id, METHOD: request.method},
        )
        token = self._context.attach(self._in_context(span))
        try:
            with passed_on(self.spans.context_of(span)):
                yield MutationSpan(span, self)
        finally:
            self._context.detach(token)


@contextlib.contextmanager
def passed_on(trace: TraceContext | None) -> Iterator[None]:
    """`trace` as the running mutation's context inside the block (trace_headers)."""
    token = _current.set(trace)
    try:
        yield
    finally:
        _current.reset(token)


def log_setup(default_service_name: str) -> None:
    """One line, once the engine is bound (a start that fails says only why): whether this
    process traces and where it exports."""
    log.info("%s", tracing.configure_from_env(default_service_name).summary)
