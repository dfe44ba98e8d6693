"""The engine-protocol decoder: whatever bytes arrive, it returns a fully valid value or raises
WireError; nothing else escapes, so one bad frame can only ever cost itself."""

from __future__ import annotations

import json
import subprocess
import sys
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


@pytest.mark.slow  # hundreds of generated cases: the full suite runs them
@settings(max_examples=600, deadline=None)
@given(reply_like)
def test_any_reply_shaped_object_decodes_to_a_valid_event_or_wire_error(obj: dict) -> None:
    _decode_checked(json.dumps(obj).encode())


@pytest.mark.slow  # hundreds of generated cases: the full suite runs them
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


@pytest.mark.slow  # hundreds of generated cases: the full suite runs them
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
    messages.event(reply.request_id, Event("e0", 1, reply))  # must not raise: data is trusted


# Run in a child where orjson cannot be imported: the stdlib codec encodes each reply read from
# stdin (as JSON lines) and decodes each body, printing both. Frames then cross between the two.
_STDLIB_SIDE = """
import sys
sys.modules["orjson"] = None
import json
from control_service.protocol import wire
for line in sys.stdin:
    request_id, kind, data, body = json.loads(line)
    encoded = wire.encode_reply(wire.Reply(request_id, kind, data))
    decoded = wire.decode_reply(bytes.fromhex(body))
    print(json.dumps([encoded.hex(), [decoded.request_id, decoded.kind, decoded.data]]))
"""


@pytest.mark.slow  # a child process per example: the full suite runs it
@settings(max_examples=5, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=64), st.text(max_size=64), st.integers(0, 1 << 32)),
        min_size=1,
        max_size=40,
    )
)
def test_stdlib_fallback_codec_agrees_with_the_installed_one(
    cases: list[tuple[str, str, int]],
) -> None:
    """Without the `fast` extra the standard library encodes; both must read each other."""
    replies = [
        wire.result(rid, wire.state(True, text, n % (1 << 32)), text, aborted=n % (1 << 32))
        for rid, text, n in cases
    ]
    lines = "".join(
        json.dumps([r.request_id, r.kind, r.data, wire.encode_reply(r).hex()]) + "\n"
        for r in replies
    )
    done = subprocess.run(
        [sys.executable, "-c", _STDLIB_SIDE], input=lines, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(replies)
    for reply, (stdlib_body, stdlib_read) in zip(replies, answers, strict=True):
        assert stdlib_read == [reply.request_id, reply.kind, reply.data]  # it reads ours
        ours = wire.decode_reply(bytes.fromhex(stdlib_body))  # we read its
        assert (ours.request_id, ours.kind, ours.data) == (reply.request_id, reply.kind, reply.data)


def test_the_stdlib_fallback_codec_is_used_without_orjson() -> None:
    """The child above really runs without orjson: a frame it cannot parse says so in
    the stdlib's words, not orjson's."""
    code = (
        'import sys; sys.modules["orjson"] = None\n'
        "from control_service.protocol import wire\n"
        "try:\n    wire.decode_reply(b'{bad')\n"
        "except wire.WireError as err:\n    print(err.reason)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("not UTF-8 JSON: Expecting property name")


# What a field of a result or a state may hold on the wire: every JSON type and the edges of the
# ranges and of the text limit.
_EDGES = [
    None, True, False, 0.5, [1], 0, 1, -1, (1 << 32) - 1, 1 << 32, (1 << 64) - 1, 1 << 64,
    "", "v1", "x" * wire.MAX_TEXT_CHARS, "x" * (wire.MAX_TEXT_CHARS + 1),
]  # fmt: skip
_GOOD_STATE = {"paused": True, "weight_version": "v1", "in_flight": 3, "weight_digest": "d"}
_GOOD_RESULT = {"message": "ok", "aborted": 1, "drained": 2, "bytes_loaded": 3}
_U32, _U64 = (1 << 32) - 1, (1 << 64) - 1
# field -> what it accepts, and what it is when absent
_RULES: dict[str, tuple[Any, Any]] = {
    "paused": (lambda v: isinstance(v, bool), False),
    "weight_version": (lambda v: isinstance(v, str) and len(v) <= wire.MAX_TEXT_CHARS, ""),
    "weight_digest": (lambda v: isinstance(v, str) and len(v) <= wire.MAX_TEXT_CHARS, ""),
    "message": (lambda v: isinstance(v, str) and len(v) <= wire.MAX_TEXT_CHARS, ""),
    "in_flight": (lambda v: type(v) is int and 0 <= v <= _U32, 0),
    "aborted": (lambda v: type(v) is int and 0 <= v <= _U32, 0),
    "drained": (lambda v: type(v) is int and 0 <= v <= _U32, 0),
    "bytes_loaded": (lambda v: type(v) is int and 0 <= v <= _U64, 0),
}


def _decoded_field(key: str, value: Any, present: bool) -> Any:
    """Decode a result whose field `key` (of the result or its state) is `value` (or absent);
    the field's decoded value, or the WireError's reason."""
    state = dict(_GOOD_STATE)
    result: dict[str, Any] = {**_GOOD_RESULT, "state": state}
    holder = state if key in _GOOD_STATE else result
    holder.pop(key)
    if present:
        holder[key] = value
    body = json.dumps({"v": 1, "request_id": "r", "kind": "result", "data": result}).encode()
    try:
        data = wire.decode_reply(body).data
    except wire.WireError as err:
        return ("WireError", err.reason)
    return data["state"][key] if key in _GOOD_STATE else data[key]


@pytest.mark.parametrize("key", sorted(_RULES))
def test_every_result_field_at_every_edge(key: str) -> None:
    """Each field in turn takes each edge value, the others valid: a value the field accepts
    comes back as sent (a null text as ""), any other is a WireError naming the field; an absent
    field is its default."""
    accepts, default = _RULES[key]
    assert _decoded_field(key, None, present=False) == default
    for value in _EDGES:
        got = _decoded_field(key, value, present=True)
        if accepts(value):
            assert got == value and type(got) is type(value), (key, value)
        elif value is None and default == "":
            assert got == ""
        else:
            assert isinstance(got, tuple) and got[0] == "WireError" and key in got[1], (key, value)
