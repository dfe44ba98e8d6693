"""Failure semantics against real engine processes: every fault gets the right status, fast, and
never harms the calls beside it, loses a reply, or leaks a slot."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import Service, StartService, eventually
from tests.stub_process import StubProcess

Code = grpc.StatusCode
Stubs = Callable[..., StubProcess]


async def wait_stub(stub: StubProcess, request_id: str, method: str, since: int = 0) -> None:
    """Wait (bounded) until the engine process has received that request."""
    await asyncio.to_thread(
        stub.wait_event,
        lambda e: e.get("request_id") == request_id and e.get("method") == method,
        10.0,
        since,
    )


def ipc(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/engine.sock"


# ------------------------------------------------------------------------------ 1. liveness


async def test_engine_killed_mid_call_fails_fast_then_recovers_on_restart(
    start_service: StartService, start_stub: Stubs, tmp_path: Path
) -> None:
    endpoint = ipc(tmp_path)
    stub = start_stub("--bind", endpoint, "--silent")
    service = await start_service([endpoint])
    loop = asyncio.get_running_loop()

    call = asyncio.ensure_future(
        service.failed("Pause", pb.PauseRequest(request_id="doomed", timeout=Duration(seconds=60)))
    )
    await wait_stub(stub, "doomed", "pause")
    killed_at = loop.time()
    stub.kill()
    err, _ = await asyncio.wait_for(call, 10)
    assert err.code() == Code.UNAVAILABLE and "e0" in err.details()
    assert loop.time() - killed_at < 3.0, "an in-flight call must fail within 3 s of the death"

    started = loop.time()
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="while-down"), timeout=10)
    assert err.code() == Code.UNAVAILABLE and loop.time() - started < 0.5, "fail at once"

    restarted = start_stub("--bind", endpoint)
    assert await service.server.wait_engines_up(10.0), "the service must reconnect by itself"
    events = await service.events("Pause", pb.PauseRequest(request_id="after"), timeout=10)
    assert events[-1].result.state.paused
    await wait_stub(restarted, "after", "pause")
    # ZMQ keeps order per connection: had "while-down" been queued, it would have come first.
    assert [e["request_id"] for e in restarted.requests()] == ["after"]
    assert service.server.open_slots == 0


async def test_frozen_engine_detected_by_heartbeat(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    loop = asyncio.get_running_loop()
    stub.knob(silent=True)
    call = asyncio.ensure_future(
        service.failed("Pause", pb.PauseRequest(request_id="frozen", timeout=Duration(seconds=60)))
    )
    await wait_stub(stub, "frozen", "pause")
    frozen_at = loop.time()
    stub.send_signal(signal.SIGSTOP)
    try:
        err, _ = await asyncio.wait_for(call, 10)
        assert err.code() == Code.UNAVAILABLE
        assert loop.time() - frozen_at < 3.0
        health = await _health(service)
        assert health == "NOT_SERVING"
    finally:
        stub.send_signal(signal.SIGCONT)
    assert await service.server.wait_engines_up(10.0)
    stub.knob(silent=False)
    events = await service.events("Pause", pb.PauseRequest(request_id="thawed"), timeout=10)
    assert events[-1].HasField("result")


# --------------------------------------------------------------------------- 2. silent engine


async def test_silent_engine_deadline_cancel_and_late_reply(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    stub.knob(reply_delay=1.0)
    mark = stub.mark()
    loop = asyncio.get_running_loop()
    started = loop.time()
    err, _ = await service.failed(
        "Pause",
        pb.PauseRequest(request_id="late-1", timeout=Duration(nanos=300_000_000)),
        timeout=10,
    )
    assert err.code() == Code.DEADLINE_EXCEEDED
    assert 0.3 <= loop.time() - started < 1.0, "at the deadline, not when the engine answers"
    assert service.server.open_slots == 0
    await wait_stub(stub, "late-1", "cancel", since=mark)
    link = service.server.links["e0"]
    await eventually(lambda: link.slots.counters.unmatched >= 1)
    # The late reply was dropped, and the link serves the next call normally.
    stub.knob(reply_delay=0.0)
    events = await service.events("Resume", pb.ResumeRequest(request_id="next"), timeout=10)
    assert events[-1].HasField("result")


# ----------------------------------------------------------------------- 6. idempotent retries


async def test_retry_attaches_to_running_operation(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    stub.knob(reply_delay=0.5)
    first = asyncio.ensure_future(
        service.events("Pause", pb.PauseRequest(request_id="r1"), timeout=10)
    )
    await wait_stub(stub, "r1", "pause")
    second = await service.events("Pause", pb.PauseRequest(request_id="r1"), timeout=10)
    first_events = await first
    assert first_events[-1].result == second[-1].result and second[-1].result.state.paused
    assert len(stub.requests("pause")) == 1, "the engine was asked once"


async def test_retry_after_finish_replays_without_asking_engine(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    original = await service.events("Pause", pb.PauseRequest(request_id="r2"), timeout=10)
    mark = stub.mark()
    await service.events("Resume", pb.ResumeRequest(request_id="r3"), timeout=10)
    await wait_stub(stub, "r3", "resume", since=mark)
    replay = await service.events("Pause", pb.PauseRequest(request_id="r2"), timeout=10)
    assert [e.result for e in replay] == [original[-1].result]
    assert [e["request_id"] for e in stub.requests(since=mark)] == ["r3"]
    # An engine-reported failure is an outcome too: replayed, not retried.
    stub.knob(fail_next={"code": "INTERNAL", "message": "boom"})
    err1, _ = await service.failed("Pause", pb.PauseRequest(request_id="r4"), timeout=10)
    err2, _ = await service.failed("Pause", pb.PauseRequest(request_id="r4"), timeout=10)
    await wait_stub(stub, "r4", "pause", since=mark)
    assert err1.code() == err2.code() == Code.INTERNAL and err1.details() == err2.details()
    assert len(stub.requests("pause", since=mark)) == 1


async def test_retry_after_service_imposed_failure_runs_again(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    stub.knob(silent=True)
    err, _ = await service.failed(
        "Pause", pb.PauseRequest(request_id="r5", timeout=Duration(nanos=200_000_000)), timeout=10
    )
    assert err.code() == Code.DEADLINE_EXCEEDED
    stub.knob(silent=False)
    events = await service.events("Pause", pb.PauseRequest(request_id="r5"), timeout=10)
    assert events[-1].HasField("result"), "an outcome the engine never gave is not replayed"


@pytest.mark.parametrize("ended_by", ["engine", "service"])
async def test_deadline_outcome_is_never_replayed_whichever_side_ended_it(
    start_service: StartService, start_stub: Stubs, ended_by: str
) -> None:
    """Engine a fails at once (an outcome that alone would be replayed); b's deadline ends the
    call on the engine's side (its own DEADLINE_EXCEEDED, here after a's failure) or on the
    service's (its timer; b answers too late). Either way a retry runs again on both engines."""
    a, b = start_stub(), start_stub()
    service = await start_service({"a": a.endpoint, "b": b.endpoint})
    a.knob(fail_next={"code": "INTERNAL", "message": "a failed"})
    if ended_by == "engine":
        b.knob(reply_delay=0.3, fail_next={"code": "DEADLINE_EXCEEDED", "message": "not in time"})
        timeout = Duration(seconds=10)
    else:
        b.knob(reply_delay=1.0)
        timeout = Duration(nanos=300_000_000)
    request = pb.PauseRequest(request_id="dl-1", timeout=timeout)
    err, _ = await service.failed("Pause", request, timeout=10)
    assert err.code() == Code.INTERNAL, "the first engine's failure is the call's status"
    assert f"b: DEADLINE_EXCEEDED: ended by the {ended_by}" in err.details()
    b.knob(reply_delay=0.0)
    marks = {stub: stub.mark() for stub in (a, b)}
    events = await service.events("Pause", pb.PauseRequest(request_id="dl-1"), timeout=10)
    assert {e.engine for e in events if e.HasField("result")} == {"a", "b"}, "it ran again"
    for stub, mark in marks.items():
        assert [r["request_id"] for r in stub.requests("pause", since=mark)] == ["dl-1"]


async def test_disconnected_caller_retry_attaches_within_grace(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint], detach_grace_s=5.0)
    stub.knob(reply_delay=0.7)
    call = service.stub.Pause(pb.PauseRequest(request_id="r6"), timeout=10)
    await wait_stub(stub, "r6", "pause")
    call.cancel()  # the trainer's connection dropped
    events = await service.events("Pause", pb.PauseRequest(request_id="r6"), timeout=10)
    assert events[-1].result.state.paused
    assert len(stub.requests("pause")) == 1 and not stub.requests("cancel")


# ----------------------------------------------------------------------- 7. client cancellation


async def test_client_cancel_closes_slot_and_cancels_at_engine(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint], detach_grace_s=0.0)
    stub.knob(silent=True)
    call = service.stub.Pause(pb.PauseRequest(request_id="c1"), timeout=30)
    await wait_stub(stub, "c1", "pause")
    assert service.server.open_slots == 1
    call.cancel()
    await wait_stub(stub, "c1", "cancel")
    await eventually(
        lambda: service.server.open_slots == 0 and not service.server.dispatcher.running
    )
    stub.knob(silent=False)
    events = await service.events("Resume", pb.ResumeRequest(request_id="c2"), timeout=10)
    assert events[-1].HasField("result"), "the engine is free for the next mutation"


# --------------------------------------------------------------------------------- 4. bounds


async def test_oversized_request_refused_by_grpc(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    err, _ = await service.failed(
        "UpdateWeights", pb.UpdateWeightsRequest(uri="u" * 100_000, version="1"), timeout=10
    )
    assert err.code() == Code.RESOURCE_EXHAUSTED
    assert not stub.requests()


async def _health(service: Service, name: str = "control.v1.ControlService") -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(service.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def test_status_caller_cancelled_while_engine_silent_leaks_no_slot(
    start_service: StartService, start_stub: Stubs
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint], status_timeout_s=5.0)
    stub.knob(silent=True)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.GetStatus(pb.GetStatusRequest(), timeout=0.3)
    assert info.value.code() == Code.DEADLINE_EXCEEDED
    await eventually(lambda: service.server.open_slots == 0)


async def test_engine_reported_aborted_is_never_replayed(
    start_service: StartService, start_stub: Stubs
) -> None:
    """ABORTED means "busy, try again later": a retry with the same request_id asks the engine
    again instead of getting the recorded ABORTED for the next 10 minutes."""
    stub = start_stub()
    service = await start_service([stub.endpoint])
    mark = stub.mark()
    stub.knob(fail_next={"code": "ABORTED", "message": "busy loading"})
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="busy-1"), timeout=10)
    assert err.code() == Code.ABORTED
    events = await service.events("Pause", pb.PauseRequest(request_id="busy-1"), timeout=10)
    assert events[-1].result.state.paused, "the retry ran on the engine"
    assert len(stub.requests("pause", since=mark)) == 2
