"""A few bad replicas out of many: 8 engine_stub processes, two of them failing in different
ways (a bad checkpoint on one node: its load fails NOT_FOUND; another killed mid-call: its part
ends UNAVAILABLE). With max_failed_engines the call still succeeds on the others, says which
engines failed, where, why and what was done with them, and GetStatus flags them."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from control_service.client import ClientConfig, ControlClient, SyncControlClient
from control_service.errors import EngineFailure, from_rpc_error
from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import Service, StartService
from tests.stub_process import StubProcess

Code = grpc.StatusCode
NAMES = [f"e{i}" for i in range(8)]
BAD_CHECKPOINT = {"code": "NOT_FOUND", "message": "shard 3 missing on this node",
                  "method": "update_weights"}  # fmt: skip
HEALTHY = sorted(set(NAMES) - {"e3", "e5"})


@pytest.fixture
def stubs() -> Iterator[dict[str, StubProcess]]:
    procs = {name: StubProcess() for name in NAMES}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda item: item[1].start("--name", item[0]), procs.items()))
    yield procs
    for proc in procs.values():
        proc.__exit__(None, None, None)


@pytest.fixture
async def service(start_service: StartService, stubs: dict[str, StubProcess]) -> Service:
    return await start_service({name: stub.endpoint for name, stub in stubs.items()})


async def kill_on_receipt(stub: StubProcess, request_id: str) -> None:
    """Kill the engine once the request has reached it (it is silent: it never answers)."""
    await asyncio.to_thread(
        stub.wait_event,
        lambda e: e.get("event") == "request" and e.get("request_id") == request_id,
        10.0,
    )
    stub.kill()


def finals(events: list[pb.ControlEvent]) -> dict[str, pb.ControlEvent]:
    return {e.engine: e for e in events if e.step == "refit"}


def asked(stub: StubProcess, through: str) -> list[str]:
    """The request ids the engine received, once it has printed `through` (its stdout is read
    by a thread: a reply can reach the service before the line reaches the test)."""
    stub.wait_event(lambda e: e.get("event") == "request" and e.get("request_id") == through)
    return [r["request_id"] for r in stub.requests()]


def tolerated(service: Service, method: str) -> float:
    metrics = service.server.metrics
    assert metrics is not None
    value = metrics.registry.get_sample_value(
        "control_tolerated_engine_failures_total", {"method": method}
    )
    return value or 0.0


async def refit_with_two_bad(
    service: Service, stubs: dict[str, StubProcess], uri: str, **fields: object
) -> asyncio.Future[list[pb.ControlEvent]]:
    """Start a refit (request_id "tol") with e3's load bound to fail and e5 killed during the
    pause; return the call's events (a future)."""
    stubs["e3"].knob(fail_next=BAD_CHECKPOINT)
    stubs["e5"].knob(silent=True)
    request = pb.RefitRequest(request_id="tol", uri=uri, version="7", **fields)  # type: ignore[arg-type]
    call = asyncio.ensure_future(service.events("Refit", request, timeout=60))
    await kill_on_receipt(stubs["e5"], "tol/pause")
    return call


async def test_refit_tolerates_two_failed_engines_and_says_what_it_did(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(7)
    events = await asyncio.wait_for(
        await refit_with_two_bad(service, stubs, uri, max_failed_engines=2), 30
    )
    final = finals(events)
    assert sorted(final) == NAMES and all(e.HasField("result") for e in final.values())
    for name in HEALTHY:
        result = final[name].result
        assert (result.state.weight_version, result.state.paused) == ("7", False), name
        assert not result.HasField("failure"), name
    bad_load = final["e3"].result
    assert (bad_load.failure.step, bad_load.failure.code) == ("update_weights", "NOT_FOUND")
    assert bad_load.failure.message == "shard 3 missing on this node"
    assert bad_load.failure.action == pb.FAILURE_ACTION_RESUMED_OLD_WEIGHTS
    assert bad_load.state.paused is False and bad_load.state.weight_version != "7"
    killed = final["e5"].result
    assert (killed.failure.step, killed.failure.code) == ("pause", "UNAVAILABLE")
    assert killed.failure.action == pb.FAILURE_ACTION_RESUME_FAILED
    assert not killed.HasField("state"), "nothing proven about an engine nobody can reach"
    # e3 left the refit at its failed load: the refit's own resume never reached it, the
    # policy's did (its old weights); no step after the pause was sent to e5.
    policy = "tol/policy-resume-1"
    assert asked(stubs["e3"], policy) == ["tol/pause", "tol/update_weights", policy]
    assert asked(stubs["e0"], "tol/resume")[-1] == "tol/resume"

    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    flagged = {s.engine: s.failure for s in status.engines if s.HasField("failure")}
    assert sorted(flagged) == ["e3", "e5"]
    assert (flagged["e3"].request_id, flagged["e3"].step) == ("tol", "update_weights")
    assert (flagged["e5"].request_id, flagged["e5"].code) == ("tol", "UNAVAILABLE")
    assert "e3" in status.skewed_engines
    assert tolerated(service, "refit") == 2

    # A retry with the same request_id replays the outcome; another budget is another call.
    replay = await service.events(
        "Refit", pb.RefitRequest(request_id="tol", uri=uri, version="7", max_failed_engines=2),
        timeout=10,
    )  # fmt: skip
    assert finals(replay) == final
    await service.events("Resume", pb.ResumeRequest(request_id="mark", engines=["e0"]), timeout=10)
    assert asked(stubs["e0"], "mark").count("tol/pause") == 1, "replayed, not run again"
    err, _ = await service.failed(
        "Refit", pb.RefitRequest(request_id="tol", uri=uri, version="7", max_failed_engines=3),
        timeout=10,
    )  # fmt: skip
    assert err.code() == Code.ALREADY_EXISTS


async def test_refit_with_too_small_a_budget_fails_as_before(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(7)
    call = await refit_with_two_bad(service, stubs, uri, max_failed_engines=1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(call, 30)
    assert info.value.code() == Code.NOT_FOUND, "the failing step's status"
    message = info.value.details()
    assert message.startswith("update_weights failed: 1 of 7 engines failed: e3: NOT_FOUND")
    assert "failed before: e5 (pause): UNAVAILABLE" in message
    assert "on_failure=RESUME_OLD_WEIGHTS" in message
    error = from_rpc_error(info.value)
    assert {(f.engine, f.step) for f in error.failures} == {
        ("e5", "pause"), ("e3", "update_weights")
    }  # fmt: skip
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    states = {s.engine: s.state for s in status.engines if s.reachable}
    assert not any(state.paused for state in states.values()), "the policy resumed every engine"
    assert states["e3"].weight_version != "7"
    assert tolerated(service, "refit") == 0


async def test_default_budget_is_every_engine(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(7)
    stubs["e3"].knob(fail_next=BAD_CHECKPOINT)
    err, events = await service.failed(
        "Refit", pb.RefitRequest(request_id="strict", uri=uri, version="7"), timeout=30
    )
    assert err.code() == Code.NOT_FOUND
    assert err.details().startswith("update_weights failed: 1 of 8 engines failed: e3: NOT_FOUND")
    final = finals(events)
    assert final["e3"].result.failure.action == pb.FAILURE_ACTION_RESUMED_OLD_WEIGHTS
    assert not any(final[n].result.HasField("failure") for n in set(NAMES) - {"e3"})
    assert not any(e.result.state.paused for e in final.values())
    seen = asked(stubs["e0"], "strict/policy-resume-1")
    assert "strict/resume" not in seen, "a failed refit stops at the failed step"


async def test_stay_paused_leaves_only_the_failed_engine_paused(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(7)
    stubs["e3"].knob(fail_next=BAD_CHECKPOINT)
    events = await service.events(
        "Refit",
        pb.RefitRequest(
            request_id="sp",
            uri=uri,
            version="7",
            max_failed_engines=1,
            on_failure=pb.REFIT_FAILURE_POLICY_STAY_PAUSED,
        ),  # fmt: skip
        timeout=30,
    )
    final = finals(events)
    assert final["e3"].result.failure.action == pb.FAILURE_ACTION_LEFT_PAUSED
    assert final["e3"].result.state.paused is True and final["e3"].result.paused_ms > 0
    others = [final[n].result.state for n in set(NAMES) - {"e3"}]
    assert all((s.weight_version, s.paused) == ("7", False) for s in others)


async def test_a_failed_stage_leaves_that_engine_serving_and_never_paused(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(7)
    stubs["e3"].knob(fail_next={"code": "RESOURCE_EXHAUSTED", "message": "no room to stage",
                                "method": "stage_weights"})  # fmt: skip
    events = await service.events(
        "Refit",
        pb.RefitRequest(request_id="st", uri=uri, version="7", stage=True, max_failed_engines=1),
        timeout=30,
    )
    e3 = finals(events)["e3"].result
    assert (e3.failure.step, e3.failure.code) == ("stage_weights", "RESOURCE_EXHAUSTED")
    assert e3.failure.action == pb.FAILURE_ACTION_NOT_PAUSED
    assert (e3.state.paused, e3.paused_ms) == (False, 0)
    await service.events("Resume", pb.ResumeRequest(request_id="mark", engines=["e3"]), timeout=9)
    assert asked(stubs["e3"], "mark") == ["st/stage_weights", "mark"], "nothing else was sent"
    others = [finals(events)[n].result.state for n in set(NAMES) - {"e3"}]
    assert all((s.weight_version, s.paused) == ("7", False) for s in others)


async def test_stage_weights_tolerates_two_failed_engines_the_rest_stay_staged(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    """StageWeights takes the same budget: e3 has no room to stage, e5 dies on receipt; the
    six others hold version 7 staged while serving, and the two are named and flagged."""
    uri, _ = checkpoint(7)
    stubs["e3"].knob(fail_next={"code": "RESOURCE_EXHAUSTED", "message": "no room to stage",
                                "method": "stage_weights"})  # fmt: skip
    stubs["e5"].knob(silent=True)
    async with ControlClient(ClientConfig(target=service.target)) as client:
        call = asyncio.ensure_future(
            client.stage_weights(uri, "7", request_id="s", max_failed_engines=2, timeout=30)
        )
        await kill_on_receipt(stubs["e5"], "s")
        outcome = await asyncio.wait_for(call, 30)
        status = await client.status()
    assert outcome.degraded
    assert {(f.engine, f.code, f.step, f.action) for f in outcome.failures} == {
        ("e3", Code.RESOURCE_EXHAUSTED, "stage_weights", "left_as_reported"),
        ("e5", Code.UNAVAILABLE, "stage_weights", "left_as_reported"),
    }
    staged = {name: r.state for name, r in outcome.results.items()}
    assert sorted(staged) == HEALTHY
    assert all((s.staged_version, s.paused) == ("7", False) for s in staged.values())
    assert sorted(status.failures()) == ["e3", "e5"], "GetStatus flags both"
    assert tolerated(service, "stage_weights") == 2


async def test_pause_update_resume_each_tolerate_and_status_flags_clear(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(7)
    stubs["e3"].knob(fail_next={"code": "INTERNAL", "message": "pause hook crashed"})
    stubs["e5"].knob(silent=True)
    call = asyncio.ensure_future(
        service.events("Pause", pb.PauseRequest(request_id="p", max_failed_engines=2), timeout=30)
    )
    await kill_on_receipt(stubs["e5"], "p")
    events = await asyncio.wait_for(call, 30)
    errors = {e.engine: e.error.code for e in events if e.HasField("error")}
    assert errors == {"e3": "INTERNAL", "e5": "UNAVAILABLE"}, "each failed engine says why"
    assert sorted(e.engine for e in events if e.HasField("result")) == HEALTHY

    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    flags = {s.engine: s.failure for s in status.engines if s.HasField("failure")}
    assert sorted(flags) == ["e3", "e5"]
    assert (flags["e3"].request_id, flags["e3"].step, flags["e3"].code) == (
        "p",
        "pause",
        "INTERNAL",
    )
    assert flags["e3"].action == pb.FAILURE_ACTION_LEFT_AS_REPORTED

    # e3 was not paused (its pause failed) and e5 is gone: the update fails on both.
    events = await service.events(
        "UpdateWeights",
        pb.UpdateWeightsRequest(request_id="u", uri=uri, version="7", max_failed_engines=2),
        timeout=30,
    )
    errors = {e.engine: e.error.code for e in events if e.HasField("error")}
    assert errors == {"e3": "FAILED_PRECONDITION", "e5": "UNAVAILABLE"}
    assert {e.result.state.weight_version for e in events if e.HasField("result")} == {"7"}

    events = await service.events(
        "Resume", pb.ResumeRequest(request_id="r", max_failed_engines=1), timeout=30
    )
    assert [e.engine for e in events if e.HasField("error")] == ["e5"]
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    flags = {s.engine: s.failure for s in status.engines if s.HasField("failure")}
    assert sorted(flags) == ["e5"], "e3's resume succeeded: its flag is cleared"
    assert (flags["e5"].request_id, flags["e5"].step) == ("r", "resume")
    assert [tolerated(service, m) for m in ("pause", "update_weights", "resume")] == [2, 2, 1]


@pytest.mark.parametrize(
    ("rpc", "request_", "why"),
    [
        ("Pause", pb.PauseRequest(request_id="b1", max_failed_engines=8), "has 8 engines"),
        ("UpdateWeights", pb.UpdateWeightsRequest(request_id="b2", uri="/x", version="1",
                                                  max_failed_engines=9), "has 8 engines"),
        ("StageWeights", pb.StageWeightsRequest(request_id="b5", uri="/x", version="1",
                                                max_failed_engines=8), "has 8 engines"),
        ("Resume", pb.ResumeRequest(request_id="b3", engines=["e1", "e2"], max_failed_engines=2),
         "has 2 engines, so at most 1 may fail"),
        ("Refit", pb.RefitRequest(request_id="b4", uri="/x", version="1", engines=["e4"],
                                  max_failed_engines=1), "has 1 engine, so at most 0 may fail"),
    ],
)  # fmt: skip
async def test_a_budget_that_cannot_be_met_is_refused_before_anything_is_sent(
    service: Service, stubs: dict[str, StubProcess], rpc: str, request_: object, why: str
) -> None:
    err, events = await service.failed(rpc, request_, timeout=10)
    assert err.code() == Code.INVALID_ARGUMENT and not events
    assert err.details().startswith("max_failed_engines ") and why in err.details()
    # A later call reaches every engine after the refused one would have (one DEALER each).
    await service.events("Pause", pb.PauseRequest(request_id="after"), timeout=10)
    for stub in stubs.values():
        assert asked(stub, "after") == ["after"]


async def test_clients_return_typed_failures(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(7)
    config = ClientConfig(target=service.target)
    stubs["e3"].knob(fail_next=BAD_CHECKPOINT)
    async with ControlClient(config) as client:
        outcome = await client.refit(uri, "7", max_failed_engines=1)
        status = await client.status()
    expected = EngineFailure(
        "e3", Code.NOT_FOUND, "shard 3 missing on this node", "update_weights",
        "resumed_old_weights",
    )  # fmt: skip
    assert outcome.degraded and outcome.failures == (expected,)
    assert outcome.failed_engines == ("e3",)
    assert status.failures() == {
        "e3": dataclasses.replace(expected, request_id=outcome.request_id)
    }, "GetStatus flags it, naming the call"

    stubs["e6"].knob(fail_next={"code": "UNAVAILABLE", "message": "GPU lost"})

    def sync_pause() -> object:
        with SyncControlClient(config) as control:
            return control.pause("abort", max_failed_engines=1)

    paused = await asyncio.to_thread(sync_pause)
    assert paused.failures == (  # type: ignore[attr-defined]
        EngineFailure("e6", Code.UNAVAILABLE, "GPU lost", "pause", "left_as_reported"),
    )
    assert set(paused.results) == set(NAMES) - {"e6"}  # type: ignore[attr-defined]
