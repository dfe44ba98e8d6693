"""Refit: pause -> update -> resume as one call that never leaves an engine paused by accident."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import Service, StartService, free_port
from tests.integration.test_metrics import scrape
from tests.stub_process import StubProcess

Code = grpc.StatusCode
Checkpoint = Callable[[int], tuple[str, int]]


@pytest.fixture
def stub(start_stub: Callable[..., StubProcess]) -> StubProcess:
    return start_stub()


@pytest.fixture
async def service(start_service: StartService, stub: StubProcess) -> Service:
    return await start_service({"e0": stub.endpoint})


def steps(events: list[pb.ControlEvent]) -> list[tuple[str, str]]:
    return [(e.step, e.WhichOneof("event")) for e in events]


async def test_clean_refit_runs_three_steps_in_order(
    service: Service, checkpoint: Checkpoint
) -> None:
    uri, size = checkpoint(1)
    events = await service.events(
        "Refit", pb.RefitRequest(request_id="rf-1", uri=uri, version="1"), timeout=30
    )
    order = [s for s, _ in steps(events)]
    assert order == sorted(order, key=["pause", "update_weights", "resume", "refit"].index)
    assert {s for s in order} == {"pause", "update_weights", "resume", "refit"}
    assert ("update_weights", "progress") in steps(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    final = events[-1]
    assert (final.step, final.engine) == ("refit", "e0")
    assert final.result.state.weight_version == "1" and final.result.state.paused is False
    update = next(e for e in events if e.step == "update_weights" and e.HasField("result"))
    assert update.result.bytes_loaded == size


@pytest.mark.parametrize(
    ("policy", "paused", "said"),
    [
        (pb.REFIT_FAILURE_POLICY_UNSPECIFIED, False, "resumed e0"),
        (pb.REFIT_FAILURE_POLICY_RESUME_OLD_WEIGHTS, False, "resumed e0"),
        (pb.REFIT_FAILURE_POLICY_STAY_PAUSED, True, "left paused"),
    ],
)
async def test_failed_update_applies_policy(
    service: Service, checkpoint: Checkpoint, policy: int, paused: bool, said: str
) -> None:
    uri, _ = checkpoint(1)
    await service.events("Refit", pb.RefitRequest(uri=uri, version="old"), timeout=30)
    err, events = await service.failed(
        "Refit", pb.RefitRequest(uri="/no/such/ckpt", version="new", on_failure=policy), timeout=30
    )
    assert err.code() == Code.NOT_FOUND
    assert err.details().startswith("update_weights failed: e0: NOT_FOUND")
    assert said in err.details()
    final = events[-1]
    assert final.step == "refit"
    assert final.result.state.paused is paused, "the final state proves what the policy did"
    assert final.result.state.weight_version == "old"
    if not paused:
        assert ("resume", "result") in steps(events)


async def test_disconnect_and_retry_gets_the_one_outcome(
    service: Service, stub: StubProcess, checkpoint: Checkpoint
) -> None:
    uri, _ = checkpoint(2)
    stub.knob(reply_delay=0.3)
    call = service.stub.Refit(pb.RefitRequest(request_id="rf-9", uri=uri, version="9"), timeout=30)
    await asyncio.to_thread(stub.wait_event, lambda e: e.get("request_id") == "rf-9/pause", 10.0)
    call.cancel()  # the trainer lost its connection mid-refit
    retry = await service.events(
        "Refit", pb.RefitRequest(request_id="rf-9", uri=uri, version="9"), timeout=30
    )
    assert retry[-1].step == "refit" and retry[-1].result.state.weight_version == "9"
    await asyncio.to_thread(stub.wait_event, lambda e: e.get("request_id") == "rf-9/resume", 10.0)
    asked = [e["request_id"] for e in stub.requests() if e["request_id"].startswith("rf-9")]
    assert asked == ["rf-9/pause", "rf-9/update_weights", "rf-9/resume"], "each step ran once"
    replay = await service.events(
        "Refit", pb.RefitRequest(request_id="rf-9", uri=uri, version="9",
                                 timeout=Duration(seconds=5)), timeout=30
    )  # fmt: skip
    assert [(e.step, e.result.state.weight_version) for e in replay] == [("refit", "9")]
    assert len([e for e in stub.requests() if e["request_id"].startswith("rf-9")]) == 3


async def test_other_mutations_are_refused_while_a_refit_holds_the_engine(
    service: Service, stub: StubProcess, checkpoint: Checkpoint
) -> None:
    uri, _ = checkpoint(3)
    stub.knob(reply_delay=0.3)
    refit = asyncio.ensure_future(
        service.events(
            "Refit", pb.RefitRequest(request_id="rf-h", uri=uri, version="3"), timeout=30
        )
    )
    await asyncio.to_thread(stub.wait_event, lambda e: e.get("request_id") == "rf-h/pause", 10.0)
    err, _ = await service.failed("Resume", pb.ResumeRequest(), timeout=10)
    assert err.code() == Code.ABORTED and "rf-h" in err.details() and "refit" in err.details()
    assert (await refit)[-1].result.state.weight_version == "3"


async def test_client_refit_and_cli_exit_code(service: Service, checkpoint: Checkpoint) -> None:
    from control_service.client import ClientConfig, ControlClient, StepTimeouts
    from control_service.errors import ControlError

    uri, _ = checkpoint(5)
    seen: list[str] = []
    async with ControlClient(ClientConfig(target=service.target)) as client:
        outcome = await client.refit(
            uri, "5", steps=StepTimeouts(update=20), on_event=lambda e: seen.append(e.step)
        )
        assert outcome.results["e0"].state.weight_version == "5"
        assert seen[0] == "pause" and seen[-1] == "refit"
        with pytest.raises(ControlError) as info:
            await client.refit("/missing", "6", on_failure="stay_paused")
        assert info.value.code == Code.NOT_FOUND and "left paused" in info.value.message

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", "call", "refit", "/missing", "7",
        "--target", service.target,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 100 + Code.NOT_FOUND.value[0], out.decode()
    assert "NOT_FOUND" in out.decode() and "[update_weights]" in out.decode()


async def test_engine_silent_during_update_step_times_out_and_policy_resumes(
    service: Service, stub: StubProcess, checkpoint: Checkpoint
) -> None:
    uri, _ = checkpoint(1)
    await service.events("Refit", pb.RefitRequest(uri=uri, version="old"), timeout=30)
    stub.knob(hang_next="update_weights")
    loop = asyncio.get_running_loop()
    started = loop.time()
    err, events = await service.failed(
        "Refit",
        pb.RefitRequest(request_id="rf-s", uri=uri, version="new",
                        update_timeout=Duration(nanos=500_000_000)),
        timeout=30,
    )  # fmt: skip
    assert err.code() == Code.DEADLINE_EXCEEDED
    assert err.details().startswith("update_weights failed: e0: DEADLINE_EXCEEDED")
    assert "resumed e0" in err.details()
    assert loop.time() - started < 5.0, "the step timeout, not the overall one, ended the update"
    # The service sends the engine its timeout_s, so either side's timer may end the step first:
    # the message says which. The service cancels only what the engine has not ended itself.
    if "ended by the service" in err.details():
        await asyncio.to_thread(
            stub.wait_event, lambda e: e.get("request_id") == "rf-s/update_weights"
            and e.get("method") == "cancel", 10.0,
        )  # fmt: skip
    else:
        assert "ended by the engine" in err.details(), err.details()
    final = events[-1]
    assert final.step == "refit" and final.result.state.paused is False
    assert final.result.state.weight_version == "old"


async def test_step_that_cannot_start_fails_the_refit_with_its_own_status(
    start_service: StartService, start_stub: Callable[..., StubProcess], checkpoint: Checkpoint
) -> None:
    stub = start_stub()
    # Two engines, one slot: the pause step cannot open its slots.
    service = await start_service({"a": stub.endpoint, "b": stub.endpoint}, max_open_slots=1)
    uri, _ = checkpoint(1)
    err, _ = await service.failed("Refit", pb.RefitRequest(uri=uri, version="1"), timeout=30)
    assert err.code() == Code.RESOURCE_EXHAUSTED
    assert err.details().startswith("pause failed:") and "limit is 1" in err.details()


async def test_pause_window_is_reported_per_engine_and_observed(
    start_service: StartService, stub: StubProcess, checkpoint: Checkpoint
) -> None:
    port = free_port()
    service = await start_service({"e0": stub.endpoint}, metrics_port=port)
    uri, _ = checkpoint(1)
    stub.knob(reply_delay=0.2)  # the update's and the resume's replies each come 0.2 s late
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await service.events("Refit", pb.RefitRequest(uri=uri, version="1"), timeout=30)
    wall_ms = (loop.time() - started) * 1000
    final = events[-1]
    assert final.step == "refit" and final.result.state.paused is False
    assert 400 <= final.result.paused_ms < wall_ms, "pause result -> resume result, both late"
    assert all(e.result.paused_ms == 0 for e in events[:-1]), "only the final Result has it"
    m = await scrape(port)
    assert m[("control_refit_pause_seconds_count", (("engine", "e0"),))] == 1
    observed = m[("control_refit_pause_seconds_sum", (("engine", "e0"),))]
    assert observed == pytest.approx(final.result.paused_ms / 1000)

    stub.knob(reply_delay=0)
    err, events = await service.failed(
        "Refit",
        pb.RefitRequest(uri="/no/such/ckpt", version="2",
                        on_failure=pb.REFIT_FAILURE_POLICY_STAY_PAUSED),
        timeout=30,
    )  # fmt: skip
    assert err.code() == Code.NOT_FOUND
    left = events[-1].result
    assert left.state.paused is True and left.paused_ms > 0, "open window: up to the final probe"
    m = await scrape(port)
    assert m[("control_refit_pause_seconds_count", (("engine", "e0"),))] == 1, "no resume, none"


async def test_refit_that_never_paused_reports_no_window(
    start_service: StartService, stub: StubProcess, checkpoint: Checkpoint
) -> None:
    service = await start_service({"e0": stub.endpoint})
    uri, _ = checkpoint(1)
    stub.knob(hang_next="pause")
    err, events = await service.failed(
        "Refit",
        pb.RefitRequest(uri=uri, version="1", pause_timeout=Duration(nanos=300_000_000)),
        timeout=30,
    )  # fmt: skip
    assert err.code() == Code.DEADLINE_EXCEEDED
    assert events[-1].step == "refit" and events[-1].result.paused_ms == 0
