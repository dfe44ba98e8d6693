"""Each gRPC status the service promises, reached by the input that should reach it, with a
message precise enough to act on at 3 a.m."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from control_service.errors import from_rpc_error
from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import Service, StartService, eventually
from tests.stub_process import StubProcess

Code = grpc.StatusCode


@pytest.fixture
def stub(start_stub: Callable[..., StubProcess]) -> StubProcess:
    return start_stub()


@pytest.fixture
async def service(start_service: StartService, stub: StubProcess) -> Service:
    return await start_service([stub.endpoint], default_timeout_s=30.0, max_timeout_s=60.0)


@pytest.mark.parametrize(
    ("rpc", "request_", "needle"),
    [
        ("Pause", pb.PauseRequest(request_id="has space"), "request_id"),
        ("Pause", pb.PauseRequest(request_id="x" * 129), "request_id"),
        ("Pause", pb.PauseRequest(request_id="slash/id"), "request_id"),
        ("Pause", pb.PauseRequest(mode=9), "mode 9"),
        ("Pause", pb.PauseRequest(timeout=Duration(seconds=0)), "timeout"),
        ("Pause", pb.PauseRequest(timeout=Duration(seconds=-1)), "timeout"),
        ("Resume", pb.ResumeRequest(timeout=Duration(seconds=61)), "<= 60s"),
        ("UpdateWeights", pb.UpdateWeightsRequest(version="1"), "uri"),
        ("UpdateWeights", pb.UpdateWeightsRequest(uri="/x"), "version"),
        ("UpdateWeights", pb.UpdateWeightsRequest(uri="/x" * 3000, version="1"), "uri exceeds"),
        ("Pause", pb.PauseRequest(engines=["e0", "e0"]), "twice"),
    ],
)
async def test_invalid_argument(service: Service, rpc: str, request_: object, needle: str) -> None:
    err, events = await service.failed(rpc, request_, timeout=10)
    assert err.code() == Code.INVALID_ARGUMENT and needle in err.details()
    assert events == []


async def test_not_found_unknown_engine(service: Service) -> None:
    err, _ = await service.failed("Pause", pb.PauseRequest(engines=["nope"]), timeout=10)
    assert err.code() == Code.NOT_FOUND and "nope" in err.details() and "e0" in err.details()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.GetStatus(pb.GetStatusRequest(engines=["nope"]), timeout=10)
    assert info.value.code() == Code.NOT_FOUND


async def test_not_found_missing_checkpoint_carries_engine_details(service: Service) -> None:
    await service.events("Pause", pb.PauseRequest(), timeout=10)
    err, events = await service.failed(
        "UpdateWeights", pb.UpdateWeightsRequest(uri="/no/such/dir", version="9"), timeout=10
    )
    assert err.code() == Code.NOT_FOUND and err.details().startswith("e0: NOT_FOUND")
    assert events[-1].HasField("error") and events[-1].error.code == "NOT_FOUND"
    error = from_rpc_error(err)
    assert [(f.engine, f.code) for f in error.failures] == [("e0", Code.NOT_FOUND)]


async def test_failed_precondition_update_while_serving(service: Service) -> None:
    err, _ = await service.failed(
        "UpdateWeights", pb.UpdateWeightsRequest(uri="/x", version="2"), timeout=10
    )
    assert err.code() == Code.FAILED_PRECONDITION and "paused" in err.details()


async def test_already_exists_same_id_other_arguments(service: Service) -> None:
    await service.events("Pause", pb.PauseRequest(request_id="op-1"), timeout=10)
    err, _ = await service.failed("Resume", pb.ResumeRequest(request_id="op-1"), timeout=10)
    assert err.code() == Code.ALREADY_EXISTS and "op-1" in err.details()
    err, _ = await service.failed(
        "Pause", pb.PauseRequest(request_id="op-1", mode=pb.PAUSE_MODE_KEEP), timeout=10
    )
    assert err.code() == Code.ALREADY_EXISTS


@pytest.mark.parametrize("code", ["CANCELLED", "INTERNAL", "RESOURCE_EXHAUSTED", "UNAVAILABLE"])
async def test_engine_reported_codes_pass_through(
    service: Service, stub: StubProcess, code: str
) -> None:
    stub.knob(fail_next={"code": code, "message": f"engine says {code}"})
    err, _ = await service.failed("Pause", pb.PauseRequest(), timeout=10)
    assert err.code() == Code[code] and f"engine says {code}" in err.details()


async def test_deadline_exceeded_silent_engine(service: Service, stub: StubProcess) -> None:
    stub.knob(silent=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    err, _ = await service.failed(
        "Pause", pb.PauseRequest(timeout=Duration(nanos=300_000_000)), timeout=10
    )
    assert err.code() == Code.DEADLINE_EXCEEDED and "deadline" in err.details()
    assert 0.3 <= loop.time() - started < 2.0


async def test_client_deadline_is_the_effective_deadline(
    service: Service, stub: StubProcess
) -> None:
    stub.knob(silent=True)
    mark = stub.mark()
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="short"), timeout=1.0)
    assert err.code() == Code.DEADLINE_EXCEEDED
    request = await asyncio.to_thread(
        stub.wait_event, lambda e: e.get("request_id") == "short", 5.0, mark
    )
    assert request["method"] == "pause"
    # The server default here is 30 s: the engine must be sent what is left of the client 1 s.
    assert 0.5 < request["timeout_s"] <= 1.05, request["timeout_s"]  # grpc-timeout rounds up


async def test_aborted_while_another_mutation_runs(service: Service, stub: StubProcess) -> None:
    stub.knob(silent=True)
    first = asyncio.ensure_future(
        service.failed("Pause", pb.PauseRequest(request_id="slow-1", timeout=Duration(seconds=2)))
    )
    await eventually(lambda: "slow-1" in service.server.dispatcher.running)
    err, _ = await service.failed("Resume", pb.ResumeRequest(request_id="next-1"), timeout=10)
    assert err.code() == Code.ABORTED and "slow-1" in err.details() and "pause" in err.details()
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert status.engines[0].reachable is False or status.engines[0].error, "status still answers"
    first.cancel()


async def test_resource_exhausted_past_slot_limit(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub()
    service = await start_service({"a": stub.endpoint, "b": stub.endpoint}, max_open_slots=1)
    err, _ = await service.failed("Pause", pb.PauseRequest(), timeout=10)
    assert err.code() == Code.RESOURCE_EXHAUSTED and "limit is 1" in err.details()
    assert service.server.open_slots == 0
    events = await service.events("Pause", pb.PauseRequest(engines=["a"]), timeout=10)
    assert events[-1].result.state.paused


async def test_unavailable_when_engine_is_gone(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    stub.kill()
    await eventually(lambda: not service.server.links["e0"].up)
    err, _ = await service.failed("Pause", pb.PauseRequest(), timeout=10)
    assert err.code() == Code.UNAVAILABLE and "e0" in err.details()
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert status.engines[0].reachable is False and status.engines[0].error
