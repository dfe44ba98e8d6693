"""control_service.engine's duties, through engine_stub (a handler on it) as a real process and a
raw DEALER: the ones issue 16 found broken in the hand-written stub, each with the test that
failed before the library took them over, and the ones the library added (repeats of a
request_id, capabilities)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from control_service.protocol import wire
from engine_stub import write_checkpoint
from engine_stub.checkpoint import CheckpointError, checkpoint_files
from tests.conftest import Launch
from tests.stub_process import EngineClient

SLOW = ("--token-interval", "0.05", "--tokens", "100")  # a WAIT drain takes >= 1.25 s


def unread_bytes(port: int) -> int:
    """Bytes the kernel holds, not yet read, on the accepted loopback connection to `port`."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues = fields[1], fields[3], fields[4]
        if state == "01" and int(local.split(":")[1], 16) == port:
            total += int(queues.split(":")[1], 16)
    return total


def stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (a SIGSTOP takes effect when each is next scheduled)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        states.append(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
    return all(state in ("T", "t") for state in states)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not reached within {timeout}s"
        time.sleep(0.005)


# ------------------------------------------------------------------------------ issue 16: wedge


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the kernel's TCP queues")
def test_a_cancel_in_the_same_read_as_its_mutation_never_wedges_the_engine(
    launch: Launch,
) -> None:
    """The engine is stopped (SIGSTOP) while the mutation and its cancel reach its TCP buffer,
    so it reads both in one batch: the mutation's task is cancelled before its first step."""
    stub, client = launch(*SLOW)
    client.result("status")  # connected and handshaken
    port = int(stub.endpoint.rsplit(":", 1)[1])
    pause = wire.encode_request(wire.Request("w", "pause", {"mode": "wait"}, 10.0))
    cancel = wire.encode_request(wire.Request("w", "cancel", {}, 10.0))
    os.kill(stub.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: stopped(stub.pid), timeout=15.0)
        client.send_raw([b"", pause])
        client.send_raw([b"", cancel])
        wait_for(lambda: unread_bytes(port) >= len(pause) + len(cancel), timeout=15.0)
    finally:
        os.kill(stub.pid, signal.SIGCONT)
    ended = client.until_terminal("w", timeout=5.0)
    assert [(r.kind, r.data.get("code")) for r in ended] == [("error", "CANCELLED")]
    after = client.call("pause", {"mode": "abort"})[-1]
    assert after.kind == wire.RESULT, f"the engine is wedged: {after.data}"
    assert after.data["state"]["paused"]


# ------------------------------------------------------------------------------ issue 16: URIs


def test_a_path_component_over_255_characters_is_invalid_argument(
    launch: Launch, tmp_path: Path
) -> None:
    _, client = launch()
    client.result("pause", {"mode": "abort"})
    uri = str(tmp_path / ("a" * 300))
    reply = client.call("update_weights", {"uri": uri, "version": "v1"})[-1]
    assert (reply.kind, reply.data["code"]) == (wire.ERROR, "INVALID_ARGUMENT"), reply.data
    assert "too long" in reply.data["message"]


def test_the_root_folder_is_refused_at_once_not_walked(launch: Launch) -> None:
    _, client = launch()
    client.result("pause", {"mode": "abort"})
    started = time.monotonic()
    reply = client.call("update_weights", {"uri": "/", "version": "v1"}, timeout_s=30.0)[-1]
    assert (reply.kind, reply.data["code"]) == (wire.ERROR, "INVALID_ARGUMENT"), reply.data
    assert "not a checkpoint directory" in reply.data["message"]
    assert time.monotonic() - started < 5.0
    assert client.result("status").data["state"]["weight_version"] == ""


def test_the_checkpoint_walk_stops_at_the_deadline(tmp_path: Path) -> None:
    """It runs in a thread that cancellation cannot stop: it must look at the clock itself."""
    for i in range(200):
        (tmp_path / f"f{i}.txt").touch()
    with pytest.raises(CheckpointError) as info:
        checkpoint_files(str(tmp_path), time.monotonic() - 1.0)
    assert info.value.code == "DEADLINE_EXCEEDED"


def test_the_checkpoint_walk_is_bounded_in_depth_and_entries(tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    deep.joinpath(*["d"] * 4).mkdir(parents=True)
    with pytest.raises(CheckpointError, match="more than 3 deep") as info:
        checkpoint_files(str(deep), time.monotonic() + 60, max_depth=3)
    assert info.value.code == "INVALID_ARGUMENT"
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(11):
        (wide / f"f{i}.txt").touch()
    with pytest.raises(CheckpointError, match="more than 10 entries"):
        checkpoint_files(str(wide), time.monotonic() + 60, max_entries=10)
    write_checkpoint(tmp_path / "ok")
    assert len(checkpoint_files(str(tmp_path / "ok"), time.monotonic() + 60)) == 2


# ------------------------------------------------------------------------------ repeats


def test_a_repeat_from_another_peer_attaches_to_the_running_operation(launch: Launch) -> None:
    """The first peer goes away mid-drain (a service that died); the same request_id from a new
    peer gets the rest of the replies and the one outcome: the drain is not started again."""
    stub, client = launch("--tokens", "40", "--token-interval", "0.02")
    with EngineClient(stub.endpoint) as first:
        first.send("pause", {"mode": "wait"}, request_id="drain-1")
        assert first.recv().kind == wire.ACCEPTED
    client.send("pause", {"mode": "wait"}, request_id="drain-1")
    replies = client.until_terminal("drain-1")
    assert wire.ACCEPTED not in [r.kind for r in replies], "attached, not started again"
    assert replies[-1].kind == wire.RESULT and replies[-1].data["drained"] == 4
    assert len(stub.requests("pause")) == 2, "both reached the engine"


def test_a_repeat_of_a_finished_operation_is_answered_from_its_record(
    launch: Launch, tmp_path: Path
) -> None:
    _stub, client = launch()
    client.result("pause", {"mode": "abort"})
    write_checkpoint(tmp_path / "a", seed=1)
    write_checkpoint(tmp_path / "b", seed=2)
    args = {"uri": str(tmp_path / "a"), "version": "v1"}
    first = client.call("update_weights", args, request_id="u-1")
    client.result("update_weights", {"uri": str(tmp_path / "b"), "version": "v2"})
    again = client.call("update_weights", args, request_id="u-1")
    assert [r.kind for r in again] == ["result"], "no accepted/progress: it did not run again"
    assert again[0].data == first[-1].data
    assert client.result("status").data["state"]["weight_version"] == "v2", "v1 was not reloaded"
    other = client.call("update_weights", {**args, "version": "v3"}, request_id="u-1")[-1]
    assert other.data["code"] == "ALREADY_EXISTS"


def test_a_cancelled_operation_runs_again_when_repeated(launch: Launch) -> None:
    _, client = launch(*SLOW)
    client.send("pause", {"mode": "wait"}, request_id="c-1")
    assert client.recv().kind == wire.ACCEPTED
    client.send("cancel", request_id="c-1")
    assert client.until_terminal("c-1")[-1].data["code"] == "CANCELLED"
    client.send("pause", {"mode": "abort"}, request_id="c-1")
    # other arguments, same id: a cancelled outcome is not recorded, so this is a new run
    assert client.until_terminal("c-1")[-1].data["aborted"] == 4


# ------------------------------------------------------------------------------ capabilities


def test_status_reports_capabilities(launch: Launch) -> None:
    _, client = launch()
    status = client.result("status")
    caps = status.data["capabilities"]
    assert caps == {"pause_modes": ["abort", "keep", "wait"], "cancel": True, "progress": True,
                    "stage": True}  # fmt: skip
    assert wire.reported_capabilities(status.data) == caps


def test_arguments_out_of_bounds_never_reach_the_handler(launch: Launch) -> None:
    _stub, client = launch()
    client.result("pause", {"mode": "abort"})
    reply = client.call("update_weights", {"uri": "x" * (wire.MAX_TEXT_CHARS + 1), "version": "1"})
    assert (reply[-1].kind, reply[-1].data["code"]) == (wire.ERROR, "INVALID_ARGUMENT")
    assert client.result("status").data["state"]["weight_version"] == ""
