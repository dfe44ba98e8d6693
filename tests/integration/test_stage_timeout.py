"""A staged Refit's stage step has its own limit (`RefitRequest.stage_timeout`,
`StepTimeouts.stage`, `call refit --stage-timeout`): it bounds the load done while serving, and
`update_timeout` bounds only the commit under the pause."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from control_service.client import ClientConfig, ControlClient, StepTimeouts
from control_service.gen.control.v1 import control_pb2 as pb
from engine_stub import write_checkpoint
from tests.e2e.test_cli_service import run_cli
from tests.harness import StartService
from tests.stub_process import StubProcess

FILES = 4
SLOW_DISK = 0.4  # seconds per checkpoint file: staging takes at least FILES * SLOW_DISK = 1.6 s


@pytest.fixture
def checkpoint(tmp_path: Path) -> str:
    write_checkpoint(tmp_path / "ckpt", files=FILES, seed=5)
    return str(tmp_path / "ckpt")


async def test_stage_timeout_ends_a_slow_stage_with_nothing_paused(
    start_service: StartService, start_stub: Callable[..., StubProcess], checkpoint: str
) -> None:
    stub = start_stub("--load-interval", str(SLOW_DISK))
    service = await start_service({"e0": stub.endpoint})
    request = pb.RefitRequest(uri=checkpoint, version="5", stage=True,
                              stage_timeout=Duration(nanos=300_000_000),
                              update_timeout=Duration(seconds=60))  # fmt: skip
    err, events = await service.failed("Refit", request, timeout=30)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.details()
    message = err.details()
    assert message.startswith("stage_weights failed: ") and "nothing was paused" in message
    assert "pause" not in {e.step for e in events}
    assert events[-1].step == "refit" and events[-1].result.state.paused is False


async def test_update_timeout_bounds_only_the_commit_of_a_staged_refit(
    start_service: StartService, start_stub: Callable[..., StubProcess], checkpoint: str
) -> None:
    """The stage outlasts update_timeout and the refit still succeeds: before stage_timeout,
    the stage ran under update_timeout and this refit ended DEADLINE_EXCEEDED."""
    stub = start_stub("--load-interval", str(SLOW_DISK))
    service = await start_service({"e0": stub.endpoint})
    async with ControlClient(ClientConfig(target=service.target)) as client:
        outcome = await client.refit(
            checkpoint, "5", stage=True, steps=StepTimeouts(update=1.0, stage=30)
        )
    final = outcome.results["e0"]
    assert final.state.weight_version == "5" and final.state.paused is False
    stage_progress = [e for e in outcome.events if e.step == "stage_weights" and e.progress.total]
    assert len(stage_progress) == FILES, "the whole load ran in the stage step"


async def test_call_refit_stage_timeout_from_the_shell(
    start_service: StartService, start_stub: Callable[..., StubProcess], checkpoint: str
) -> None:
    stub = start_stub("--load-interval", str(SLOW_DISK))
    service = await start_service({"e0": stub.endpoint})
    argv = ("refit", checkpoint, "5", "--stage", "--stage-timeout", "0.3")
    code, out, err = await run_cli("call", *argv, "--target", service.target)
    assert code == 100 + grpc.StatusCode.DEADLINE_EXCEEDED.value[0] == 104, err
    assert "stage_weights failed" in err and "nothing was paused" in err
    assert "[pause]" not in out
