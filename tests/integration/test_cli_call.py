"""`control-service call` against a scripted service on loopback (tests/fake_control.py): what
it prints in each form (plain lines, JSON lines, a terminal), and its exit codes."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format
from rich.console import Console

from control_service.cli import app
from control_service.cli.call import Call
from control_service.cli.output import CallOutput
from control_service.errors import ControlError, EngineFailure
from control_service.gen.control.v1 import control_pb2 as pb
from tests.fake_control import FakeControl, serve_fake


@pytest.fixture
async def fake() -> AsyncIterator[FakeControl]:
    async for servicer in serve_fake():
        yield servicer


def call(*argv: str) -> Call:
    plan = app.parse(["call", *argv])
    assert isinstance(plan, Call)
    return plan


async def test_call_prints_header_events_and_final_state(fake: FakeControl) -> None:
    plan = call("update-weights", "/ckpt", "9", "--target", fake.target, "--engine", "e1",
                "--request-id", "rid-1")  # fmt: skip
    out = io.StringIO()
    assert await plan.run(out, io.StringIO()) == 0
    assert out.getvalue().splitlines() == [
        "update-weights request_id=rid-1",
        "e0 #1 accepted go",
        "e1 #2 result paused=yes version=9 in_flight=0 digest=-",
        "ok: 1 engine(s)",
        "  e1 paused=yes version=9 in_flight=0 digest=-",
    ]
    assert fake.seen[0].request.uri == "/ckpt" and fake.seen[0].request.engines == ["e1"]


async def test_connection_flags_before_the_action_reach_the_call(fake: FakeControl) -> None:
    plan = call("--target", fake.target, "--token", "s3cret", "--json", "update-weights", "/ckpt",
                "5", "--engine", "e1")  # fmt: skip
    out = io.StringIO()
    assert await plan.run(out, io.StringIO()) == 0
    seen = fake.seen[0]
    assert seen.metadata["authorization"] == "Bearer s3cret"
    assert (seen.request.uri, seen.request.version, seen.request.engines) == ("/ckpt", "5", ["e1"])
    assert [json.loads(line)["engine"] for line in out.getvalue().splitlines()] == ["e0", "e1"]


async def test_call_failure_prints_error_and_exits_with_the_codes_number(
    fake: FakeControl,
) -> None:
    fake.fail_with = ControlError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "1 of 2 engines failed",
        (EngineFailure("e0", grpc.StatusCode.FAILED_PRECONDITION, "not paused"),),
    )
    err = io.StringIO()
    assert await call("update-weights", "/c", "1", "--target", fake.target).run(
        io.StringIO(), err
    ) == 109  # fmt: skip
    assert err.getvalue().splitlines() == [
        "error: FAILED_PRECONDITION: 1 of 2 engines failed",
        "  e0: FAILED_PRECONDITION: not paused",
    ]


async def test_a_bad_request_id_fails_before_anything_is_sent(fake: FakeControl) -> None:
    err = io.StringIO()
    code = await call("pause", "--request-id", "has space", "--target", fake.target).run(
        io.StringIO(), err
    )
    assert code == 100 + grpc.StatusCode.INVALID_ARGUMENT.value[0] and fake.seen == []
    assert err.getvalue().startswith("error: INVALID_ARGUMENT: ")


async def test_call_json_keeps_its_format(fake: FakeControl) -> None:
    out = io.StringIO()
    plan = call("pause", "--mode", "keep", "--json", "--request-id", "r1", "--target", fake.target)
    assert await plan.run(out, io.StringIO()) == 0
    lines = out.getvalue().splitlines()
    # The exact bytes scripts parse today: compact proto3 JSON, zero values included.
    assert lines[0] == (
        '{"requestId":"r1","engine":"e0","seq":1,"accepted":{"message":"go"},"step":""}'
    )
    events = [json_format.Parse(line, pb.ControlEvent()) for line in lines]
    assert [e.engine for e in events] == ["e0", "e0", "e1"]
    assert fake.seen[0].request.mode == pb.PAUSE_MODE_KEEP

    out = io.StringIO()
    assert await call("status", "--json", "--target", fake.target).run(out, io.StringIO()) == 0
    assert out.getvalue().count("\n") == 1
    response = json_format.Parse(out.getvalue(), pb.GetStatusResponse())
    assert [e.engine for e in response.engines] == ["e0", "e1"]


async def test_status_prints_lines_when_piped_and_a_table_on_a_terminal(
    fake: FakeControl,
) -> None:
    out = io.StringIO()
    assert await call("status", "--target", fake.target).run(out, io.StringIO()) == 0
    assert out.getvalue().splitlines() == [
        "e0 reachable paused=yes version=7 in_flight=2 digest=sha256:abababababababab…",
        "e1 unreachable down",
    ]
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    code = await call("status", "--target", fake.target).run_with(
        CallOutput(screen, console=console), io.StringIO()
    )
    rows = [line for line in screen.getvalue().splitlines() if "e0" in line or "e1" in line]
    assert code == 0 and len(rows) == 2
    cells = [cell.strip() for cell in rows[0].split("│")[1:7]]
    assert cells == ["e0", "yes", "yes", "7", "2", "sha256:abababababababab…"]
    assert "NO" in rows[1] and "down" in rows[1]
