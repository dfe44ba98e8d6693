"""The trainer's trace, carried into the service: its current span becomes the call's parent.

A trainer that traces its own steps (OpenTelemetry installed, a tracer provider configured, a
span current around the call) gets the service's and the engines' spans in the same trace, with
its span as the root. Nothing here imports OpenTelemetry unless the trainer's process already has:
a trainer that does not trace loads none of it and pays one dictionary lookup per call.
"""

from __future__ import annotations

import sys


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current span's context as call metadata (the configured propagators: W3C
    `traceparent` by default), or nothing when no span is current."""
    if "opentelemetry.trace" not in sys.modules:
        return ()
    from opentelemetry import propagate, trace

    if not trace.get_current_span().get_span_context().is_valid:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
