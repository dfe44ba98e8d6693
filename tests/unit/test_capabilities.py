"""The optional `capabilities` of a status result: built, bounded and read by wire alone, with
the defaults an engine that reports none is taken to have."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_service.engine import Capabilities
from control_service.protocol import wire

ALL = {"pause_modes": ["abort", "keep", "wait"], "cancel": True, "progress": True}


def status_body(caps: object) -> bytes:
    data = {"state": wire.state(False, "v1", 0), "message": "", "capabilities": caps}
    return json.dumps({"v": 1, "request_id": "s", "kind": "result", "data": data}).encode()


def test_an_engine_that_reports_none_has_every_capability() -> None:
    reply = wire.decode_reply(wire.encode_reply(wire.result("s", wire.state(False, "", 0))))
    assert "capabilities" not in reply.data
    assert wire.reported_capabilities(reply.data) == ALL


def test_capabilities_round_trip_and_keep_unknown_flags() -> None:
    caps = Capabilities(pause_modes=frozenset({"wait"}), cancel=False, flags=(("stage", True),))
    reply = wire.result("s", wire.state(False, "", 0))
    reply.data["capabilities"] = caps.to_wire()
    decoded = wire.decode_reply(wire.encode_reply(reply))
    assert decoded.data["capabilities"] == {
        "pause_modes": ["wait"], "cancel": False, "progress": True, "stage": True,
    }  # fmt: skip


def test_missing_fields_default_and_unknown_modes_or_values_are_dropped() -> None:
    decoded = wire.decode_reply(status_body({"pause_modes": ["abort", "freeze"], "later": {}}))
    assert decoded.data["capabilities"] == {**ALL, "pause_modes": ["abort"]}


@pytest.mark.parametrize(
    ("caps", "reason"),
    [
        ([], "must be an object"),
        ({"cancel": "yes"}, "cancel must be a boolean"),
        ({"progress": 1}, "progress must be a boolean"),
        ({"pause_modes": "abort"}, "pause_modes must be a list"),
        ({"pause_modes": [["abort"]]}, "pause_modes must hold strings"),
        ({"pause_modes": ["abort"] * 33}, "pause_modes must be a list of at most 32"),
        ({f"f{i}": True for i in range(33)}, "more than 32 fields"),
        ({"x" * 65: True}, "names are 1-64"),
    ],
)
def test_each_violation_is_named(caps: object, reason: str) -> None:
    with pytest.raises(wire.WireError, match=reason):
        wire.decode_reply(status_body(caps))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        json_values,
        st.dictionaries(st.sampled_from(["pause_modes", "cancel", "progress", "x"]), json_values),
    )
)
def test_any_capabilities_decode_to_the_documented_shape_or_wire_error(caps: Any) -> None:
    try:
        data = wire.decode_reply(status_body(caps)).data
    except wire.WireError:
        return
    got = wire.reported_capabilities(data)  # null is absent: the defaults
    assert set(got["pause_modes"]) <= wire.PAUSE_MODES
    assert all(isinstance(v, bool) for k, v in got.items() if k != "pause_modes")
    assert len(got) <= wire.MAX_CAPABILITIES + 3
