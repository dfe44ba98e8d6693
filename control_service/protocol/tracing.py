"""The trace context that crosses the ZMQ hop: W3C `traceparent` / `tracestate`, checked here.

A request may carry the caller's trace (wire: the optional `trace` object) so that an engine's
spans join the trainer's trace, and an adapter can pass it on to the engine's HTTP API as the
same two headers. Both sides read it through this module, and neither needs OpenTelemetry for
it: it is two bounded strings with a fixed shape (https://www.w3.org/TR/trace-context/).
What is not in that shape is refused here, so a peer can never put arbitrary text into a
header the adapter sends, or into a trace exporter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
# version 00: "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>", lower case.
TRACEPARENT_CHARS: Final = 55
MAX_TRACESTATE_CHARS: Final = 512
_TRACEPARENT: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_VISIBLE_ASCII: Final = re.compile(r"[\x20-\x7e]*")
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_PARENT_ID: Final = "0" * 16


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
    span is recording) or something outside the shape."""
    parent = carrier.get(TRACEPARENT)
    if parent is None:
        return None
    try:
        return _checked(parent, carrier.get(TRACESTATE, ""))
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
