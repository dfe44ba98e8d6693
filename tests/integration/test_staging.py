"""Staged weights on the engine side: engine_stub (on control_service.engine) as a real process,
spoken to with a raw DEALER. Staging loads while the engine serves; the commit is a swap under
the pause; a failed, cancelled or replaced stage never touches the served weights."""

from __future__ import annotations

import time
from pathlib import Path

from control_service.protocol import wire
from engine_stub import write_checkpoint
from tests.conftest import Launch
from tests.integration.test_engine_stub import expected_digest, kinds
from tests.stub_process import EngineClient

# Generation advances one token per 10 ms; each staged file takes >= 0.1 s more (a slow disk).
SERVING = ("--token-interval", "0.01", "--tokens", "1000", "--load-interval", "0.1")


def state(client: EngineClient) -> dict[str, object]:
    return client.result("status").data["state"]


def finished(client: EngineClient) -> int:
    """Generation requests finished so far (from the status message): it grows while serving."""
    message = client.result("status").data["message"]
    return int(message.split("finished=")[1].split()[0])


def test_stage_while_serving_then_commit_is_a_swap_under_the_pause(
    launch: Launch, tmp_path: Path
) -> None:
    _, client = launch("--token-interval", "0.002", "--tokens", "2", "--load-interval", "0.1")
    assert client.result("status").data["capabilities"]["stage"] is True
    total = write_checkpoint(tmp_path / "v1", files=3, seed=1)
    before = finished(client)

    replies = client.call("stage_weights", {"uri": str(tmp_path / "v1"), "version": "v1"})
    assert kinds(replies) == ["accepted", "progress", "progress", "progress", "result"]
    assert {r.data["stage"] for r in replies if r.kind == wire.PROGRESS} == {"stage"}
    staged = replies[-1].data
    assert staged["bytes_loaded"] == total and staged["state"]["paused"] is False
    assert finished(client) > before, "generation went on while the files were read"
    now = state(client)
    assert (now["staged_version"], now["staged_bytes"]) == ("v1", total)
    assert now["weight_version"] == "" and now["paused"] is False, "served weights untouched"

    client.result("pause", {"mode": "abort"})
    started = time.monotonic()
    commit = client.call("update_weights", {"uri": str(tmp_path / "v1"), "version": "v1",
                                            "staged": True})  # fmt: skip
    assert kinds(commit) == ["result"], "a swap: no load, no progress"
    assert time.monotonic() - started < 0.1, "three files at >= 0.1 s each were not read again"
    served = commit[-1].data["state"]
    assert served["weight_version"] == "v1"
    assert served["weight_digest"] == expected_digest(tmp_path / "v1"), "the staged digest"
    assert "staged_version" not in served, "the staging area is empty after the commit"


def test_update_weights_of_the_staged_version_commits_instead_of_loading(
    launch: Launch, tmp_path: Path
) -> None:
    _, client = launch(*SERVING)
    write_checkpoint(tmp_path / "v1", files=3, seed=1)
    client.result("stage_weights", {"uri": str(tmp_path / "v1"), "version": "v1"})
    client.result("pause", {"mode": "abort"})
    replies = client.call("update_weights", {"uri": str(tmp_path / "v1"), "version": "v1"})
    assert kinds(replies) == ["result"] and "committed staged v1" in replies[-1].data["message"]
    assert replies[-1].data["state"]["weight_digest"] == expected_digest(tmp_path / "v1")


def test_a_commit_of_a_replaced_stage_is_failed_precondition(
    launch: Launch, tmp_path: Path
) -> None:
    _, client = launch(*SERVING)
    for version, seed in (("v1", 1), ("v2", 2)):
        write_checkpoint(tmp_path / version, files=1, seed=seed)
        client.result("stage_weights", {"uri": str(tmp_path / version), "version": version})
    assert state(client)["staged_version"] == "v2", "one staged version: the second replaced it"
    client.result("pause", {"mode": "abort"})
    refused = client.call("update_weights", {"uri": str(tmp_path / "v1"), "version": "v1",
                                             "staged": True})[-1]  # fmt: skip
    assert (refused.kind, refused.data["code"]) == ("error", "FAILED_PRECONDITION")
    assert "v1 is not staged (v2 is staged)" in refused.data["message"]
    assert state(client)["weight_version"] == "", "nothing was loaded instead"


def test_a_failed_or_cancelled_stage_leaves_the_served_weights_and_the_engine_serving(
    launch: Launch, tmp_path: Path
) -> None:
    _, client = launch(*SERVING, "--max-staged-bytes", "150000")
    small = write_checkpoint(tmp_path / "v0", files=1, seed=0)
    assert small <= 150_000
    client.result("pause", {"mode": "abort"})
    client.result("update_weights", {"uri": str(tmp_path / "v0"), "version": "v0"})
    client.result("resume")
    served = state(client)
    write_checkpoint(tmp_path / "big", files=1, shape=(200, 200))  # 320 kB > the bound
    write_checkpoint(tmp_path / "slow", files=4, seed=5)  # 131 kB

    missing = client.call("stage_weights", {"uri": str(tmp_path / "none"), "version": "x"})[-1]
    assert missing.data["code"] == "NOT_FOUND"
    big = client.call("stage_weights", {"uri": str(tmp_path / "big"), "version": "big"})[-1]
    assert big.data["code"] == "RESOURCE_EXHAUSTED" and "at most 150000" in big.data["message"]
    rid = client.send("stage_weights", {"uri": str(tmp_path / "slow"), "version": "slow"})
    assert client.recv().kind == wire.ACCEPTED
    client.send("cancel", request_id=rid)
    ended = client.until_terminal(rid)[-1]
    assert (ended.kind, ended.data["code"]) == ("error", "CANCELLED")
    timed_out = client.call("stage_weights", {"uri": str(tmp_path / "slow"), "version": "slow"},
                            timeout_s=0.15)[-1]  # fmt: skip
    assert timed_out.data["code"] == "DEADLINE_EXCEEDED"

    after = state(client)
    assert after == served, "served weights, version and digest as before; nothing staged"
    before = finished(client)
    assert client.result("status").data["message"].startswith("serving")
    deadline = time.monotonic() + 5
    while finished(client) == before:  # bounded wait on the event: a request finishes
        assert time.monotonic() < deadline, "the engine stopped generating"
