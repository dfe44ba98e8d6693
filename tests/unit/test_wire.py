"""The engine-protocol decoder: whatever bytes arrive, it returns a fully valid value or raises
WireError; nothing else escapes, so one bad frame can only ever cost itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_service.protocol import wire
from control_service.server import messages
from control_service.server.operations import Event

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
reply_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, "1", True, None]),
        "request_id": st.one_of(st.text(max_size=300), st.integers(), st.none()),
        "kind": st.sampled_from(["accepted", "progress", "result", "error", "bogus", 3])
        | json_values,
        "data": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "state": json_values,
                    "message": json_values,
                    "done": json_values,
                    "total": json_values,
                    "code": st.sampled_from(["NOT_FOUND", "OK", "nope", 5]) | json_values,
                    "aborted": st.integers(min_value=-5, max_value=1 << 70),
                },
            ),
        ),
    },
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_wire_error(body: bytes) -> None:
    _decode_checked(body)


@settings(max_examples=600, deadline=None)
@given(reply_like)
def test_any_reply_shaped_object_decodes_to_a_valid_event_or_wire_error(obj: dict) -> None:
    _decode_checked(json.dumps(obj).encode())


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=256),
    st.sampled_from(sorted(wire.ERROR_CODES)),
    st.text(max_size=100),
    st.integers(min_value=0, max_value=(1 << 32) - 1),
)
def test_valid_replies_round_trip(rid: str, code: str, message: str, n: int) -> None:
    for reply in (
        wire.accepted(rid, message),
        wire.progress(rid, "load", n, n, message),
        wire.result(rid, wire.state(True, message, n, "sha256:x"), message, aborted=n),
        wire.error(rid, code, message),
    ):
        decoded = wire.decode_reply(wire.encode_reply(reply))
        assert decoded.request_id == rid and decoded.kind == reply.kind
        messages.event(rid, Event("e0", 1, decoded))  # every decoded reply makes a ControlEvent


def test_frame_over_limit_rejected_before_parsing() -> None:
    body = wire.encode_reply(wire.accepted("r", "x" * 100))
    with pytest.raises(wire.WireError, match="exceeds"):
        wire.decode_reply(body, max_bytes=50)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"[1]", "object"),
        (b'{"v": 2, "request_id": "r", "kind": "result"}', "version"),
        (b'{"v": true, "request_id": "r", "kind": "result"}', "version"),
        (b'{"v": 1, "kind": "result"}', "request_id"),
        (b'{"v": 1, "request_id": "r", "kind": "nope"}', "unknown kind"),
        (b'{"v": 1, "request_id": "r", "kind": "progress", "data": {"done": -1}}', "done"),
        (
            b'{"v": 1, "request_id": "r", "kind": "result", "data": {"state": {"paused": 1}}}',
            "paused",
        ),
        (b'{"v": 1, "request_id": "r", "kind": "error", "data": {"code": "OK"}}', "code"),
        # unhashable values where a name is looked up in a set: a WireError, not a TypeError
        (b'{"v": 1, "request_id": "r", "kind": []}', "unknown kind"),
        (b'{"v": 1, "request_id": "r", "kind": "error", "data": {"code": {}}}', "code"),
    ],
)
def test_each_violation_is_named(body: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.decode_reply(body)


request_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, None]),
        "request_id": st.one_of(st.text(max_size=300), st.integers(), st.none()),
        "method": st.sampled_from(sorted(wire.METHODS)) | json_values,
        "args": json_values,
        "timeout_s": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(request_like)
def test_any_request_shaped_object_decodes_or_wire_error(obj: dict) -> None:
    """The engine side's decoder: the same promise (engine_stub answers a WireError naming the
    request with INVALID_ARGUMENT; anything else escaping would cost a logged traceback)."""
    try:
        request = wire.decode_request(json.dumps(obj).encode())
    except wire.WireError:
        return
    assert request.method in wire.METHODS and request.timeout_s > 0
    assert isinstance(request.args, dict)


def test_an_unhashable_method_is_a_wire_error() -> None:
    body = b'{"v": 1, "request_id": "r", "method": ["pause"], "args": {}, "timeout_s": 1}'
    with pytest.raises(wire.WireError, match="unknown method") as caught:
        wire.decode_request(body)
    assert caught.value.request_id == "r"


def _decode_checked(body: bytes) -> None:
    try:
        reply = wire.decode_reply(body)
    except wire.WireError:
        return
    messages.event(reply.request_id, Event("e0", 1, reply))  # must not raise: the data is trusted


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=64), st.text(max_size=64), st.integers(0, (1 << 32) - 1))
def test_stdlib_fallback_codec_agrees_with_the_installed_one(rid: str, text: str, n: int) -> None:
    """Without the `fast` extra the standard library encodes; both must read each other."""
    std_encode, std_decode = wire._stdlib_codec()
    obj = {"v": 1, "request_id": rid, "kind": "result",
           "data": {"state": wire.state(True, text, n), "message": text, "aborted": n}}  # fmt: skip
    assert std_decode(wire._encode(obj)) == obj
    assert wire._decode(std_encode(obj)) == obj
    with pytest.raises(ValueError):
        std_decode(b"\xff not json")


# What a field of a result or a state may hold on the wire: every JSON type, the edges of the
# ranges and of the text limit, so the fast paths are tried on both sides of every condition.
_edge_values = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
    st.sampled_from([0, 1, -1, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, 1 << 64]),
    st.sampled_from(["", "v1", "x" * wire.MAX_TEXT_CHARS, "x" * (wire.MAX_TEXT_CHARS + 1)]),
)  # fmt: skip
_state_like = st.dictionaries(
    st.sampled_from(["paused", "weight_version", "in_flight", "weight_digest"]), _edge_values
)
_result_like = st.dictionaries(
    st.sampled_from(["message", "aborted", "drained", "bytes_loaded"]), _edge_values
).flatmap(lambda d: st.one_of(st.just(d), _state_like.map(lambda s: {**d, "state": s})))


def _outcome(check: Any, value: Any) -> Any:
    try:
        return check(value)
    except wire.WireError as err:
        return ("WireError", err.reason)


@settings(max_examples=400, deadline=None)
@given(_state_like)
def test_state_fast_path_agrees_with_the_field_checks(value: dict[str, Any]) -> None:
    assert _outcome(wire._check_state, value) == _outcome(wire._check_state_fields, value)


@settings(max_examples=400, deadline=None)
@given(_result_like)
def test_result_fast_path_agrees_with_the_field_checks(value: dict[str, Any]) -> None:
    assert _outcome(wire._check_result, value) == _outcome(wire._check_result_fields, value)


_EDGES = [
    None, True, False, 0.5, [1], 0, 1, -1, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, 1 << 64,
    "", "v1", "x" * wire.MAX_TEXT_CHARS, "x" * (wire.MAX_TEXT_CHARS + 1),
]  # fmt: skip
_GOOD_STATE = {"paused": True, "weight_version": "v1", "in_flight": 3, "weight_digest": "d"}
_GOOD_RESULT = {"message": "ok", "aborted": 1, "drained": 2, "bytes_loaded": 3}


@pytest.mark.parametrize("key", [*_GOOD_STATE, None])
def test_state_fast_path_agrees_at_every_edge_of_every_field(key: str | None) -> None:
    """Each field in turn takes each edge value, the others valid (or the field is absent):
    the random cases above may miss a single boundary, these cannot."""
    for value in _EDGES if key else [None]:
        state = dict(_GOOD_STATE)
        if key:
            state[key] = value
        for case in (state, {k: v for k, v in state.items() if k != key}):
            assert _outcome(wire._check_state, case) == _outcome(wire._check_state_fields, case)


@pytest.mark.parametrize("key", [*_GOOD_RESULT, "state"])
def test_result_fast_path_agrees_at_every_edge_of_every_field(key: str) -> None:
    for value in _EDGES:
        result: dict[str, Any] = {**_GOOD_RESULT, "state": dict(_GOOD_STATE), key: value}
        for case in (result, {k: v for k, v in result.items() if k != key}):
            assert _outcome(wire._check_result, case) == _outcome(wire._check_result_fields, case)
