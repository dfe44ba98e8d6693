"""engine_stub as a real process, spoken to with a raw DEALER through control_service.protocol.wire.

Each test names one behaviour of the stub that the service's tests, the demo or the benchmark
rely on, and fails if it breaks. Synchronisation is on replies and on the stub's stdout events;
the few short `nothing_within` / `time.sleep` windows only ever assert that something does NOT
happen (no reply, no change), never wait for something to happen.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from control_service.protocol import wire
from engine_stub import write_checkpoint
from engine_stub.server import parse_knobs
from tests.conftest import Launch
from tests.stub_process import EngineClient, StubError

SLOW = ("--token-interval", "0.05", "--tokens", "100")  # first request finishes after >= 1.25 s


def kinds(replies: list[wire.Reply]) -> list[str]:
    return [r.kind for r in replies]


def tokens_in(message: str) -> list[int]:
    """The per-request token counts the stub writes as `tokens=[a, b, ...]` in its messages."""
    match = re.search(r"tokens=\[([0-9, ]*)\]", message)
    assert match, f"no tokens in {message!r}"
    return [int(t) for t in match.group(1).split(",") if t.strip()]


def expected_digest(directory: Path) -> str:
    """The documented digest, computed independently of the stub's code."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*.safetensors")):
        tensors = load_file(str(path))
        for name in sorted(tensors):
            digest.update(name.encode())
            digest.update(tensors[name].tobytes())
    return "sha256:" + digest.hexdigest()


def body(**fields: object) -> bytes:
    """A hand-made (possibly malformed) request body; real requests go through wire."""
    return json.dumps(fields).encode()


# ------------------------------------------------------------------------------ process interface


def test_ready_line_names_the_bound_endpoint_and_pid(launch: Launch) -> None:
    stub, client = launch()
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", stub.endpoint)
    assert not stub.endpoint.endswith(":0"), "must report the actual port, not the requested 0"
    ready = [e for e in stub.events if e["event"] == "ready"]
    assert ready == [{"event": "ready", "endpoint": stub.endpoint, "pid": stub.pid}]
    state = client.result("status").data["state"]
    assert state == {"paused": False, "weight_version": "", "in_flight": 4, "weight_digest": ""}


def test_ipc_endpoint(launch: Launch, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/engine.sock"
    stub, client = launch("--bind", endpoint)
    assert stub.endpoint == endpoint
    assert client.result("status").kind == wire.RESULT


def test_every_request_but_status_is_announced_on_stdout(launch: Launch) -> None:
    stub, client = launch()
    client.result("status")
    client.result("pause", {"mode": "abort"}, request_id="p-1", timeout_s=7.0)
    requests = stub.requests()
    assert len(requests) == 1, "status is not announced, pause is"
    assert requests[0]["request_id"] == "p-1" and requests[0]["method"] == "pause"
    assert requests[0]["timeout_s"] == 7.0 and requests[0]["args"] == {"mode": "abort"}


def test_no_request_lines_mutes_only_the_request_lines(launch: Launch) -> None:
    """The benchmark's peer: requests are answered, but not announced on stdout."""
    stub, client = launch("--no-request-lines")
    client.result("pause", {"mode": "abort"}, request_id="quiet-1")
    stub.knob(reply_delay=0)  # its ack follows, on the same stdout, any line the pause printed
    assert stub.requests() == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exits_zero_on_sigterm_and_sigint(launch: Launch, sig: signal.Signals) -> None:
    stub, client = launch()
    client.result("status")
    assert stub.signal_and_wait(sig, 10.0) == 0


def test_stdin_eof_does_not_stop_the_engine(launch: Launch) -> None:
    stub, client = launch()
    stub.close_stdin()
    assert client.result("pause", {"mode": "abort"}).data["state"]["paused"]
    assert not client.result("resume").data["state"]["paused"]
    assert stub.alive


# ------------------------------------------------------------------------------ pause modes


def test_pause_abort_aborts_every_in_flight_request(launch: Launch) -> None:
    _, client = launch("--requests", "3")
    replies = client.call("pause", {"mode": "abort", "clear_cache": True})
    assert kinds(replies) == ["result"], "abort answers at once, without accepted/progress"
    data = replies[0].data
    assert data["aborted"] == 3 and data["drained"] == 0
    assert data["state"]["paused"] and data["state"]["in_flight"] == 0
    assert "cache cleared" in data["message"]


def test_pause_wait_drains_with_one_progress_per_finished_request(launch: Launch) -> None:
    _, client = launch("--requests", "3", "--tokens", "6")
    replies = client.call("pause", {"mode": "wait"})
    assert kinds(replies) == ["accepted", "progress", "progress", "progress", "result"]
    progress = [r.data for r in replies if r.kind == wire.PROGRESS]
    assert [(p["stage"], p["done"], p["total"]) for p in progress] == [
        ("drain", 1, 3),
        ("drain", 2, 3),
        ("drain", 3, 3),
    ]
    result = replies[-1].data
    assert result["drained"] == 3 and result["aborted"] == 0
    assert result["state"]["paused"] and result["state"]["in_flight"] == 0


def test_pause_keep_freezes_requests_and_resume_continues_them(launch: Launch) -> None:
    _, client = launch("--requests", "3", "--tokens", "1000", "--token-interval", "0.002")
    kept = client.result("pause", {"mode": "keep"})
    assert kept.data["state"] == {**kept.data["state"], "paused": True, "in_flight": 3}
    assert kept.data["aborted"] == 0 and kept.data["drained"] == 0
    frozen = tokens_in(kept.data["message"])
    time.sleep(0.1)  # a window of ~50 ticks in which nothing may move
    status = client.result("status")
    assert tokens_in(status.data["message"]) == frozen, "kept requests must not advance"
    assert status.data["state"]["in_flight"] == 3

    resumed = client.result("resume")
    assert not resumed.data["state"]["paused"] and resumed.data["state"]["in_flight"] == 3
    assert tokens_in(resumed.data["message"]) == frozen, "resume continues the kept requests"
    deadline = time.monotonic() + 5.0
    while tokens_in(client.result("status").data["message"]) == frozen:
        assert time.monotonic() < deadline, "resumed requests never advanced"


def test_resume_after_abort_admits_fresh_requests(launch: Launch) -> None:
    _, client = launch("--requests", "2")
    client.result("pause", {"mode": "abort"})
    resumed = client.result("resume")
    assert resumed.data["state"]["in_flight"] == 2
    message = resumed.data["message"]
    assert "0 kept requests" in message and "2 new admitted" in message


def test_pausing_paused_and_resuming_serving_are_ok_noops(launch: Launch) -> None:
    _, client = launch()
    assert "already serving" in client.result("resume").data["message"]
    client.result("pause", {"mode": "keep"})
    again = client.result("pause", {"mode": "abort"})
    assert "already paused" in again.data["message"]
    assert again.data["aborted"] == 0 and again.data["state"]["in_flight"] == 4


@pytest.mark.parametrize("mode", ["sideways", ["abort"]])  # a list: unhashable, still refused
def test_pause_with_a_bad_mode_is_invalid_argument(launch: Launch, mode: object) -> None:
    _, client = launch()
    reply = client.call("pause", {"mode": mode})[-1]
    assert reply.kind == wire.ERROR and reply.data["code"] == "INVALID_ARGUMENT"
    assert not client.result("status").data["state"]["paused"]


# ------------------------------------------------------------------------------ update_weights


def test_update_weights_requires_a_paused_engine(launch: Launch, tmp_path: Path) -> None:
    stub, client = launch()
    write_checkpoint(tmp_path)
    reply = client.call("update_weights", {"uri": str(tmp_path), "version": "v1"})
    assert kinds(reply) == ["error"] and reply[0].data["code"] == "FAILED_PRECONDITION"
    assert client.result("status").data["state"]["weight_version"] == ""
    assert stub.requests("update_weights"), "the request was received, and refused"


def test_update_weights_bad_arguments(launch: Launch, tmp_path: Path) -> None:
    _, client = launch()
    client.result("pause", {"mode": "abort"})
    (tmp_path / "empty").mkdir()
    cases = {
        "NOT_FOUND": [
            {"uri": str(tmp_path / "missing"), "version": "v1"},
            {"uri": str(tmp_path / "empty"), "version": "v1"},
        ],
        "INVALID_ARGUMENT": [{"uri": "", "version": "v1"}, {"uri": str(tmp_path), "version": ""}],
    }
    for code, arg_sets in cases.items():
        for args in arg_sets:
            reply = client.call("update_weights", args)[-1]
            assert (reply.kind, reply.data["code"]) == ("error", code), args


def test_update_weights_loads_each_file_with_progress_and_a_digest(
    launch: Launch, tmp_path: Path
) -> None:
    _, client = launch()
    client.result("pause", {"mode": "abort"})
    first, second = tmp_path / "a", tmp_path / "b"
    total = write_checkpoint(first, files=3, seed=1)
    write_checkpoint(second, files=3, seed=2)

    replies = client.call("update_weights", {"uri": str(first), "version": "v1"})
    assert kinds(replies) == ["accepted", "progress", "progress", "progress", "result"]
    progress = [r.data for r in replies if r.kind == wire.PROGRESS]
    assert all(p["stage"] == "load" and p["total"] == total for p in progress)
    done = [p["done"] for p in progress]
    assert done == sorted(set(done)) and done[-1] == total, "bytes loaded grow to the total"
    assert [p["message"] for p in progress] == sorted(p.name for p in first.iterdir())
    result = replies[-1].data
    assert result["bytes_loaded"] == total
    assert result["state"]["weight_version"] == "v1"
    assert result["state"]["weight_digest"] == expected_digest(first)

    other = client.result("update_weights", {"uri": f"file://{second}", "version": "v2"})
    assert other.data["state"]["weight_version"] == "v2"
    assert other.data["state"]["weight_digest"] == expected_digest(second)
    assert other.data["state"]["weight_digest"] != result["state"]["weight_digest"]
    again = client.result("update_weights", {"uri": str(first), "version": "v3"})
    assert again.data["state"]["weight_digest"] == result["state"]["weight_digest"]


def test_an_unparsable_file_is_invalid_argument_naming_it(launch: Launch, tmp_path: Path) -> None:
    _, client = launch()
    client.result("pause", {"mode": "abort"})
    write_checkpoint(tmp_path, files=1)
    (tmp_path / "zz-broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    replies = client.call("update_weights", {"uri": str(tmp_path), "version": "v1"})
    assert kinds(replies) == ["accepted", "progress", "error"]
    assert replies[-1].data["code"] == "INVALID_ARGUMENT"
    assert "zz-broken.safetensors" in replies[-1].data["message"]
    assert client.result("status").data["state"]["weight_version"] == "", "old weights stay"


def test_write_checkpoint_is_deterministic_and_returns_its_size(tmp_path: Path) -> None:
    total = write_checkpoint(tmp_path / "x", files=2, tensors_per_file=3, shape=(8, 4), seed=5)
    files = sorted((tmp_path / "x").iterdir())
    assert len(files) == 2 and total == sum(f.stat().st_size for f in files)
    assert len(load_file(str(files[0]))) == 3
    write_checkpoint(tmp_path / "y", files=2, tensors_per_file=3, shape=(8, 4), seed=5)
    assert expected_digest(tmp_path / "x") == expected_digest(tmp_path / "y")


# ------------------------------------------------------------------------------ concurrency


def test_a_second_mutation_is_aborted_while_status_answers_at_once(launch: Launch) -> None:
    _, client = launch(*SLOW)
    slow = client.send("pause", {"mode": "wait"}, request_id="slow")
    assert client.recv().kind == wire.ACCEPTED

    client.send("resume", request_id="second")
    refused = client.recv()
    assert (refused.request_id, refused.kind) == ("second", wire.ERROR)
    assert refused.data["code"] == "ABORTED" and "slow" in refused.data["message"]

    client.send("status", request_id="look")
    status = client.recv()
    assert (status.request_id, status.kind) == ("look", wire.RESULT), "status is never queued"

    client.send("cancel", request_id=slow)
    cancelled = client.recv()
    assert (cancelled.request_id, cancelled.kind) == ("slow", wire.ERROR)
    assert cancelled.data["code"] == "CANCELLED"
    assert client.nothing_within(0.2), "cancel itself gets no reply"
    status = client.result("status").data
    assert not status["state"]["paused"] and status["state"]["in_flight"] == 4
    assert status["message"].startswith("serving"), "a cancelled drain goes back to serving"


def test_an_operation_past_its_timeout_ends_with_deadline_exceeded(launch: Launch) -> None:
    _, client = launch(*SLOW)
    started = time.monotonic()
    replies = client.call("pause", {"mode": "wait"}, timeout_s=0.2)
    assert kinds(replies) == ["accepted", "error"]
    assert replies[-1].data["code"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 1.0
    status = client.result("status").data
    assert not status["state"]["paused"] and status["message"].startswith("serving")
    assert client.result("pause", {"mode": "abort"}).data["aborted"] == 4, "the slot is free again"


def test_cancel_of_nothing_running_gets_no_reply(launch: Launch) -> None:
    stub, client = launch()
    client.send("cancel", request_id="nope")
    stub.wait_event(lambda e: e.get("request_id") == "nope" and e.get("method") == "cancel")
    assert client.nothing_within(0.2)


def test_a_peer_that_went_away_costs_only_its_replies(launch: Launch) -> None:
    stub, client = launch("--tokens", "10", "--token-interval", "0.01")
    with EngineClient(stub.endpoint) as gone:
        gone.send("pause", {"mode": "wait"}, request_id="orphan")
        stub.wait_event(lambda e: e.get("request_id") == "orphan")
    deadline = time.monotonic() + 5.0
    while not client.result("status").data["state"]["paused"]:  # the drain ended: replies tried
        assert time.monotonic() < deadline, "the orphaned drain never finished"
    assert "already paused" in client.result("pause", {"mode": "abort"}).data["message"]
    assert stub.alive


# ------------------------------------------------------------------------------ malformed input


def test_malformed_requests_naming_an_id_get_invalid_argument(launch: Launch) -> None:
    _, client = launch()
    bad_bodies = {
        "m1": body(v=1, request_id="m1", method="explode", args={}, timeout_s=1),
        "m2": body(v=1, request_id="m2", method="pause", args={"mode": "abort"}),
        "m3": body(v=2, request_id="m3", method="status", args={}, timeout_s=1),
        "m4": body(v=1, request_id="m4", method="pause", args=[], timeout_s=1),
    }
    for rid, raw in bad_bodies.items():
        client.send_raw([b"", raw])
        reply = client.recv()
        assert (reply.request_id, reply.kind) == (rid, wire.ERROR)
        assert reply.data["code"] == "INVALID_ARGUMENT"
    assert not client.result("status").data["state"]["paused"], "m2 did not run"


def test_a_bad_envelope_naming_an_id_gets_invalid_argument(launch: Launch) -> None:
    stub, client = launch()
    good = wire.encode_request(wire.Request("env", "pause", {"mode": "abort"}, 1.0))
    client.send_raw([b"not-empty", good])
    reply = client.recv()
    assert (reply.request_id, reply.data["code"]) == ("env", "INVALID_ARGUMENT")
    assert not stub.requests(), "a malformed frame is never executed"


def test_undecodable_frames_are_dropped_and_the_engine_carries_on(launch: Launch) -> None:
    _, client = launch()
    for frames in ([b"", b"\xff\xfe not json"], [b"", b"[1, 2]"], [b"", b"{}"], [b"only"]):
        client.send_raw(frames)
    client.send("status", request_id="after")
    reply = client.recv()
    assert reply.request_id == "after", "nothing was sent for the nameless frames"
    assert client.nothing_within(0.1)


# ------------------------------------------------------------------------------ knobs


def test_fail_next_fails_only_the_next_mutation(launch: Launch) -> None:
    stub, client = launch()
    ack = stub.knob(fail_next={"code": "NOT_FOUND", "message": "no such thing"})
    fail = {"code": "NOT_FOUND", "message": "no such thing"}
    assert ack == {"event": "knob", "ok": True, "fail_next": fail}
    assert client.result("status").kind == wire.RESULT, "status does not consume it"
    failed = client.call("pause", {"mode": "abort"})
    assert kinds(failed) == ["error"]
    assert failed[0].data == {"code": "NOT_FOUND", "message": "no such thing"}
    assert not client.result("status").data["state"]["paused"], "the failed pause did not run"
    assert client.result("pause", {"mode": "abort"}).data["state"]["paused"]


def test_fail_next_of_one_method_waits_for_that_method(launch: Launch) -> None:
    """A bad checkpoint on one node: its pause runs, its load fails (refit tests rely on it)."""
    stub, client = launch()
    stub.knob(
        fail_next={"code": "NOT_FOUND", "message": "shard 3 missing", "method": "update_weights"}
    )
    assert client.result("pause", {"mode": "abort"}).data["state"]["paused"], "pause not failed"
    failed = client.call("update_weights", {"uri": "/nowhere", "version": "2"})
    assert kinds(failed) == ["error"]
    assert failed[0].data == {"code": "NOT_FOUND", "message": "shard 3 missing"}
    assert client.result("resume").data["state"]["paused"] is False, "used once"
    with pytest.raises(ValueError, match=r"fail_next\.method"):
        parse_knobs({"fail_next": {"code": "NOT_FOUND", "method": "status"}})


def test_fail_next_flag(launch: Launch) -> None:
    _, client = launch("--fail-next", "UNAVAILABLE")
    assert client.call("resume")[-1].data["code"] == "UNAVAILABLE"
    assert client.result("resume").kind == wire.RESULT


def test_silent_receives_but_never_replies(launch: Launch) -> None:
    stub, client = launch()
    stub.knob(silent=True)
    client.send("status", request_id="s1")
    client.send("pause", {"mode": "abort"}, request_id="p1")
    stub.wait_event(lambda e: e.get("request_id") == "p1")
    assert client.nothing_within(0.3)
    stub.knob(silent=False)
    client.send("status", request_id="s2")
    assert client.recv().request_id == "s2", "silenced replies are dropped, not held back"


def test_silent_flag(launch: Launch) -> None:
    stub, client = launch("--silent")
    client.send("resume", request_id="r1")
    stub.wait_event(lambda e: e.get("request_id") == "r1")
    assert client.nothing_within(0.3)


def test_garbage_sends_one_malformed_frame_before_the_next_reply(launch: Launch) -> None:
    stub, client = launch()
    stub.knob(garbage=True)
    client.send("status", request_id="g1")
    first = client.recv_raw()
    assert first[0] == b""
    with pytest.raises(wire.WireError):
        wire.decode_reply(first[1])
    assert client.recv().request_id == "g1"
    client.send("status", request_id="g2")
    assert client.recv().request_id == "g2", "only once"


def test_reply_delay_knob_and_flag(launch: Launch) -> None:
    stub, client = launch()
    stub.knob(reply_delay=0.3)
    started = time.monotonic()
    client.result("status")
    assert time.monotonic() - started >= 0.3
    stub.knob(reply_delay=0)
    _, delayed = launch("--reply-delay", "0.25")
    started = time.monotonic()
    replies = delayed.call("pause", {"mode": "wait"})
    assert time.monotonic() - started >= 0.25
    assert kinds(replies)[0] == "accepted" and kinds(replies)[-1] == "result", "order kept"


def test_instant_answers_every_operation_with_one_result(launch: Launch) -> None:
    _, client = launch("--instant", *SLOW)
    pause = client.call("pause", {"mode": "wait"})
    assert kinds(pause) == ["result"] and pause[0].data["state"]["paused"]
    update = client.call("update_weights", {"uri": "/nowhere", "version": "v9"})
    assert kinds(update) == ["result"]
    state = update[0].data["state"]
    assert (state["weight_version"], state["weight_digest"]) == ("v9", "sha256:instant")
    assert not client.result("resume").data["state"]["paused"]


def test_instant_knob_switches_a_running_engine(launch: Launch) -> None:
    stub, client = launch(*SLOW)
    stub.knob(instant=True)
    assert kinds(client.call("pause", {"mode": "wait"}, timeout=1.0)) == ["result"]
    stub.knob(instant=False)
    client.result("resume")
    assert kinds(client.call("pause", {"mode": "abort"})) == ["result"]


def test_a_bad_knob_line_is_refused_and_changes_nothing(launch: Launch) -> None:
    stub, client = launch()
    with pytest.raises(StubError, match="unknown knob"):
        stub.knob(silent=True, bogus=1)
    assert client.result("status").kind == wire.RESULT, "silent was not applied either"


def test_fail_next_with_an_unhashable_code_is_refused() -> None:
    """A list where a status name belongs: refused like any bad knob, not a TypeError."""
    with pytest.raises(ValueError, match="fail_next must be"):
        parse_knobs({"fail_next": {"code": ["NOT_FOUND"]}})


def test_exit_knob_exits_at_once_with_that_code(launch: Launch) -> None:
    stub, _ = launch()
    assert stub.knob(exit=7) == 7
