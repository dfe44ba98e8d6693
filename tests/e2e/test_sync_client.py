"""The blocking client against a real `control-service serve` process and engine: the same
methods, results and errors as the async client, progress through a plain callback, and usable
where an event loop is already running (a Ray async actor, a notebook)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from control_service import (
    ClientConfig,
    ControlClient,
    ControlError,
    Outcome,
    ServiceStatus,
    SyncControlClient,
)
from control_service.gen.control.v1 import control_pb2 as pb
from engine_stub.checkpoint import write_checkpoint
from tests.serve_process import ServeProcess
from tests.stub_process import StubProcess


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with StubProcess() as engine:
        engine.start()
        with ServeProcess(["--engine", f"engine-0={engine.endpoint}"], log=log) as running:
            yield running


@pytest.fixture
def checkpoint(tmp_path: Path) -> str:
    write_checkpoint(tmp_path / "ckpt")
    return str(tmp_path / "ckpt")


def test_a_training_loop_refits_step_by_step_and_in_one_call(
    service: ServeProcess, checkpoint: str
) -> None:
    seen: list[pb.ControlEvent] = []
    with SyncControlClient(ClientConfig(target=service.target, timeout_s=60)) as control:
        paused = control.pause("wait", on_event=seen.append)
        loaded = control.update_weights(checkpoint, "7", on_event=seen.append)
        resumed = control.resume()
        refit = control.refit(checkpoint, "8", request_id="sync-refit-8", on_event=seen.append)
        status = control.status()

    assert isinstance(paused, Outcome) and isinstance(status, ServiceStatus)
    assert [r.state.paused for r in paused.results.values()] == [True]
    assert [r.state.weight_version for r in loaded.results.values()] == ["7"]
    assert [r.state.paused for r in resumed.results.values()] == [False]
    assert refit.request_id == "sync-refit-8" and refit.attempts == 1
    assert {r.state.weight_version for r in refit.results.values()} == {"8"}
    assert status.all_reachable
    assert any(e.HasField("progress") for e in seen), "the callback saw the load's progress"
    assert {e.step for e in seen if e.request_id == "sync-refit-8"} >= {"pause", "refit"}


def test_stage_weights_loads_while_serving_and_the_update_commits_it(
    service: ServeProcess, checkpoint: str
) -> None:
    progress: list[pb.ControlEvent] = []
    with SyncControlClient(ClientConfig(target=service.target, timeout_s=60)) as control:
        staged = control.stage_weights(checkpoint, "9", request_id="sync-stage-9",
                                       on_event=progress.append)  # fmt: skip
        status = control.status()
        control.pause("wait")
        committed = control.update_weights(checkpoint, "9")
        control.resume()

    assert staged.request_id == "sync-stage-9" and any(e.HasField("progress") for e in progress)
    assert [r.state.paused for r in staged.results.values()] == [False], "served throughout"
    assert [s.state.staged_version for s in status.engines.values()] == ["9"]
    assert not any(e.HasField("progress") for e in committed.events), "a swap, not a load"
    assert [r.state.weight_version for r in committed.results.values()] == ["9"]


def test_a_failed_call_raises_the_same_error_as_the_async_client(service: ServeProcess) -> None:
    config = ClientConfig(target=service.target)
    with SyncControlClient(config) as control:
        control.resume()  # serving: an update now is refused by the engine
        with pytest.raises(ControlError) as blocking:
            control.update_weights("/no/such/checkpoint", "9")

    async def with_async_client() -> ControlError:
        async with ControlClient(config) as client:
            with pytest.raises(ControlError) as info:
                await client.update_weights("/no/such/checkpoint", "9")
            return info.value

    expected = asyncio.run(with_async_client())
    got = blocking.value
    assert got.code == expected.code == grpc.StatusCode.FAILED_PRECONDITION
    assert got.message == expected.message and got.failures == expected.failures
    assert [f.engine for f in got.failures] == ["engine-0"]


def test_it_blocks_inside_a_running_event_loop_without_clashing(service: ServeProcess) -> None:
    """A Ray async actor or a notebook has a loop running: a client that drove its own loop
    (asyncio.run) would fail there; grpc's blocking stubs do not care."""

    async def actor_method() -> bool:
        with SyncControlClient(ClientConfig(target=service.target)) as control:
            control.wait_ready(10)
            return control.status().all_reachable

    assert asyncio.run(actor_method())


def test_bad_arguments_fail_before_any_round_trip() -> None:
    with SyncControlClient(ClientConfig(target="127.0.0.1:9")) as control:
        with pytest.raises(ControlError) as info:
            control.refit("", "1")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ControlError) as info:
            control.pause("sideways")  # type: ignore[arg-type]
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_an_unreachable_service_is_unavailable_after_the_retries() -> None:
    config = ClientConfig(target="127.0.0.1:9", retries=1, retry_backoff_s=0.01)
    with SyncControlClient(config) as control:
        with pytest.raises(ControlError) as info:
            control.status(timeout=2)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
