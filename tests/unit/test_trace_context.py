"""The trace context on the wire: a valid one crosses unchanged, anything else is dropped with one
log line and never fails the request it rides on."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_service.protocol import wire
from control_service.protocol.tracing import (
    MAX_TRACESTATE_CHARS,
    TraceContext,
    TraceContextError,
    check_trace,
    from_headers,
)

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def request_body(trace: object) -> bytes:
    frame = {"v": 1, "request_id": "r1", "method": "resume", "args": {}, "timeout_s": 5}
    frame["trace"] = trace
    return json.dumps(frame).encode()


def test_a_trace_context_crosses_the_wire_unchanged() -> None:
    trace = TraceContext(PARENT, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    body = wire.encode_request(wire.Request("r1", "resume", {}, 5.0, trace))
    assert json.loads(body)["trace"] == {"traceparent": PARENT, "tracestate": trace.tracestate}
    decoded = wire.decode_request(body)
    assert decoded.trace == trace
    assert (decoded.trace.trace_id, decoded.trace.parent_id) == (PARENT[3:35], PARENT[36:52])


def test_a_request_without_trace_has_none_and_sends_no_field() -> None:
    body = wire.encode_request(wire.Request("r1", "resume", {}, 5.0))
    assert "trace" not in json.loads(body)
    assert wire.decode_request(body).trace is None


def test_tracestate_is_optional_and_sent_only_when_set() -> None:
    assert check_trace({"traceparent": PARENT}) == TraceContext(PARENT, "")
    assert TraceContext(PARENT).to_wire() == {"traceparent": PARENT}


BAD = [
    ("not an object", "trace must be an object"),
    ({}, "traceparent must be a string of 55"),
    ({"traceparent": 7}, "traceparent must be a string of 55"),
    ({"traceparent": PARENT + "-00"}, "traceparent must be a string of 55"),
    ({"traceparent": PARENT.upper()}, "lower case"),
    ({"traceparent": PARENT.replace("-", "_")}, "lower case"),
    ({"traceparent": "ff" + PARENT[2:]}, "version ff is not 00"),
    ({"traceparent": "00-" + "0" * 32 + PARENT[35:]}, "all-zero"),
    ({"traceparent": PARENT[:36] + "0" * 16 + "-01"}, "all-zero"),
    ({"traceparent": PARENT, "tracestate": 1}, "tracestate must be a string"),
    ({"traceparent": PARENT, "tracestate": "a" * (MAX_TRACESTATE_CHARS + 1)}, "at most 512"),
    ({"traceparent": PARENT, "tracestate": "k=v\r\nx-evil: 1"}, "visible ASCII"),
    ({"traceparent": PARENT, "tracestate": "k=\u00e9"}, "visible ASCII"),
]


@pytest.mark.parametrize(("trace", "reason"), BAD)
def test_a_bad_trace_context_is_refused_naming_the_rule(trace: object, reason: str) -> None:
    with pytest.raises(TraceContextError, match=reason):
        check_trace(trace)


@pytest.mark.parametrize(("trace", "reason"), BAD)
def test_a_bad_trace_is_dropped_with_one_line_and_the_request_still_decodes(
    trace: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="control_service.protocol"):
        request = wire.decode_request(request_body(trace))
    assert (request.request_id, request.method, request.trace) == ("r1", "resume", None)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'r1'" in lines[0] and reason.split()[0] in lines[0], lines


def test_the_longest_tracestate_passes() -> None:
    state = "k=" + "v" * (MAX_TRACESTATE_CHARS - 2)
    assert check_trace({"traceparent": PARENT, "tracestate": state}).tracestate == state


def test_headers_from_a_propagator_carrier() -> None:
    assert from_headers({}) is None
    assert from_headers({"traceparent": "junk"}) is None
    assert from_headers({"traceparent": PARENT, "tracestate": "a=b"}) == TraceContext(PARENT, "a=b")
    assert TraceContext(PARENT, "a=b").headers() == {"traceparent": PARENT, "tracestate": "a=b"}


def test_a_tracestate_too_long_to_pass_on_is_left_behind_not_the_trace() -> None:
    carrier = {"traceparent": PARENT, "tracestate": "k=" + "v" * MAX_TRACESTATE_CHARS}
    assert from_headers(carrier) == TraceContext(PARENT, "")


@given(st.one_of(st.text(max_size=80), st.dictionaries(st.text(max_size=12), st.text(max_size=80))))
def test_any_trace_value_gives_a_checked_context_or_the_error(value: object) -> None:
    try:
        trace = check_trace(value)
    except TraceContextError:
        return
    assert len(trace.traceparent) == 55 and len(trace.tracestate) <= MAX_TRACESTATE_CHARS
