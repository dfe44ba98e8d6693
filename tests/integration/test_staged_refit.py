"""Refit with staging through the real service: the engines load while serving and stop
generating only for the swap; engines that cannot stage are refused before anything is paused."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from control_service.gen.control.v1 import control_pb2 as pb
from engine_stub import write_checkpoint
from tests.harness import StartService, eventually, free_port
from tests.integration.test_engine_protocol_doc import minimal_engine_source
from tests.integration.test_engine_stub import expected_digest
from tests.stub_process import StubProcess

Code = grpc.StatusCode
SLOW_DISK = 0.2  # seconds per checkpoint file on top of reading it


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[str]:
    """The docs' minimal engine (no stage hook) as a process; its endpoint."""
    script = tmp_path / "toy_engine.py"
    script.write_text(minimal_engine_source())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, str(script), endpoint], cwd=tmp_path)
    try:
        yield endpoint
    finally:
        proc.kill()
        proc.wait(10)


async def test_staged_refit_pauses_only_for_the_swap(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    stub = start_stub("--load-interval", str(SLOW_DISK))
    service = await start_service({"e0": stub.endpoint})
    files = 3
    for version in ("1", "2"):
        write_checkpoint(tmp_path / version, files=files, seed=int(version))

    loaded = await service.events(
        "Refit", pb.RefitRequest(uri=str(tmp_path / "1"), version="1"), timeout=30
    )
    assert loaded[-1].result.paused_ms >= files * SLOW_DISK * 1000, "the load is in the pause"

    staged = await service.events(
        "Refit", pb.RefitRequest(uri=str(tmp_path / "2"), version="2", stage=True), timeout=30
    )
    order = list(dict.fromkeys(e.step for e in staged))
    assert order == ["stage_weights", "pause", "update_weights", "resume", "refit"]
    stage_progress = [e for e in staged if e.step == "stage_weights" and e.HasField("progress")]
    assert len(stage_progress) == files
    final = staged[-1].result
    assert final.state.weight_version == "2" and final.state.paused is False
    assert final.state.weight_digest == expected_digest(tmp_path / "2"), "the staged digest"
    assert 0 < final.paused_ms < SLOW_DISK * 1000, "no file was read inside the pause"
    asked = [e["args"] for e in stub.requests() if e["method"] == "update_weights"]
    assert asked[-1].get("staged") is True, "the update commits, never loads"


async def test_stage_weights_rpc_then_update_commits_and_status_shows_the_staged_version(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    size = write_checkpoint(tmp_path / "7", files=2, seed=7)
    events = await service.events(
        "StageWeights", pb.StageWeightsRequest(uri=str(tmp_path / "7"), version="7"), timeout=30
    )
    assert events[-1].result.bytes_loaded == size and events[-1].result.state.paused is False
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    state = status.engines[0].state
    assert (state.staged_version, state.staged_bytes, state.weight_version) == ("7", size, "")

    await service.events("Pause", pb.PauseRequest(), timeout=10)
    update = await service.events(
        "UpdateWeights", pb.UpdateWeightsRequest(uri=str(tmp_path / "7"), version="7"), timeout=30
    )
    assert not any(e.HasField("progress") for e in update), "committed, not loaded again"
    assert update[-1].result.state.weight_version == "7"
    assert update[-1].result.state.staged_version == ""


async def test_staging_refused_up_front_naming_the_engines_that_cannot(
    start_service: StartService, start_stub: Callable[..., StubProcess], toy: str, tmp_path: Path
) -> None:
    stub = start_stub()
    # probed at link-up (the harness turns the service's own probes off by default)
    service = await start_service({"stub": stub.endpoint, "toy": toy}, engine_probe_interval_s=0)
    await eventually(lambda: {"stub", "toy"} <= set(service.server.dispatcher.capabilities), 15)
    write_checkpoint(tmp_path / "1", files=1)
    for method, request in (
        ("Refit", pb.RefitRequest(uri=str(tmp_path / "1"), version="1", stage=True)),
        ("StageWeights", pb.StageWeightsRequest(uri=str(tmp_path / "1"), version="1")),
    ):
        err, events = await service.failed(method, request, timeout=10)
        assert err.code() == Code.FAILED_PRECONDITION, err.details()
        assert "1 of 2 engines" in err.details() and "toy lacks stage" in err.details()
        assert events == []
    assert [e for e in stub.requests() if e["method"] != "status"] == [], "nothing was sent"
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert not any(e.state.paused for e in status.engines), "nothing was paused"


async def test_a_failed_stage_fails_the_refit_with_nothing_paused(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    err, events = await service.failed(
        "Refit", pb.RefitRequest(uri=str(tmp_path / "none"), version="1", stage=True), timeout=30
    )
    assert err.code() == Code.NOT_FOUND
    assert err.details().startswith("stage_weights failed: e0: NOT_FOUND")
    assert err.details().endswith("nothing was paused")
    assert "pause" not in {e.step for e in events}
    assert events[-1].step == "refit" and events[-1].result.state.paused is False
    assert events[-1].result.paused_ms == 0


async def test_the_client_asks_for_a_staged_refit(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    from control_service.client import ClientConfig, ControlClient

    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    write_checkpoint(tmp_path / "3", files=1, seed=3)
    steps: list[str] = []
    async with ControlClient(ClientConfig(target=service.target)) as client:
        outcome = await client.refit(
            str(tmp_path / "3"), "3", stage=True, on_event=lambda e: steps.append(e.step)
        )
    assert steps[0] == "stage_weights" and outcome.results["e0"].state.weight_version == "3"


async def test_the_client_stages_weights_and_an_update_commits_them(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    from control_service.client import ClientConfig, ControlClient

    stub = start_stub()
    service = await start_service({"e0": stub.endpoint})
    size = write_checkpoint(tmp_path / "4", files=2, seed=4)
    async with ControlClient(ClientConfig(target=service.target)) as client:
        staged = await client.stage_weights(str(tmp_path / "4"), "4", request_id="stage-4")
        status = await client.status()
        await client.pause("wait")
        committed = await client.update_weights(str(tmp_path / "4"), "4")
    assert staged.request_id == "stage-4"
    assert staged.results["e0"].bytes_loaded == size and not staged.results["e0"].state.paused
    assert status.engines["e0"].state.staged_version == "4"
    assert not any(e.HasField("progress") for e in committed.events), "committed, not loaded"
    assert committed.results["e0"].state.weight_digest == expected_digest(tmp_path / "4")
    asked = [e["method"] for e in stub.requests() if e["method"] != "status"]
    assert asked == ["stage_weights", "pause", "update_weights"]
