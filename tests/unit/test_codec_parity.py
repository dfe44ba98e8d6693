"""The engine protocol means the same with and without orjson: the standard library fallback is
run in a subprocess (orjson blocked from import) on the same frames as orjson here, and every
frame must decode to the same value or be refused by both with WireError."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from control_service.protocol import wire

REPO = Path(__file__).resolve().parents[2]


def _result(extra: str) -> str:
    return '{"v":1,"request_id":"r","kind":"result","data":{"state":{"in_flight":0}' + extra + "}}"


_ACCEPTED_X = '{"v":1,"request_id":"r","kind":"accepted","data":{"x":'
FRAMES: list[str] = [
    _result(""),
    '{"v":1.0,"request_id":"r","kind":"accepted"}',  # 1.0 is not version 1
    '{"v":true,"request_id":"r","kind":"accepted"}',
    '{"v":1,"request_id":"r","kind":"accepted","data":{"message":"' + "[" * 10 + '"}}',
    '{"v":1,"request_id":"r","kind":"progress","data":{"done":NaN}}',
    '{"v":1,"request_id":"r","kind":"progress","data":{"done":Infinity}}',
    '{"v":1,"request_id":"r","kind":"progress","data":{"done":1e400}}',
    '{"v":1,"request_id":"r","kind":"progress","data":{"done":18446744073709551616}}',
    '{"v":1,"request_id":"r","kind":"progress","data":{"done":18446744073709551615}}',
    '{"v":1,"request_id":"r","kind":"progress","data":{"done":' + "9" * 5000 + "}}",
    '{"v":1,"request_id":"r","kind":"accepted","data":{"x":' + "[" * 100_000 + "]" * 100_000 + "}}",
    '{"v":1,"request_id":"r","kind":"accepted","data":{"x":'
    + '{"a":' * 5_000
    + "1"
    + "}" * 5_000
    + "}}",
    '{"v":1,"request_id":"r","kind":"accepted","data":{"x":' + "[" * 100_000,
]


def outcomes() -> list[str]:
    """Each frame's decoded reply, or the fact that it was refused (WireError)."""
    out = []
    for frame in FRAMES:
        try:
            reply = wire.decode_reply(frame.encode())
        except wire.WireError:
            out.append("WireError")
        else:
            out.append(json.dumps([reply.request_id, reply.kind, reply.data], sort_keys=True))
    return out


_FALLBACK = """
import json, sys
sys.modules["orjson"] = None  # import orjson now raises ImportError: the fallback is used
from control_service.protocol import wire
from tests.unit import test_codec_parity as t
print(json.dumps(t.outcomes()))
"""


def test_orjson_and_the_standard_library_agree_on_every_frame() -> None:
    assert importlib.util.find_spec("orjson"), "the test environment installs the fast extra"
    done = subprocess.run(
        [sys.executable, "-c", _FALLBACK],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    fallback = json.loads(done.stdout)
    here = outcomes()
    assert here[0] != "WireError" and here[1] == here[2] == "WireError"
    assert here[-3] == here[-2] == here[-1] == "WireError", "deep nesting is refused"
    for frame, fast, slow in zip(FRAMES, here, fallback, strict=True):
        assert fast == slow, f"{frame[:80]}: orjson {fast[:80]} / json {slow[:80]}"
