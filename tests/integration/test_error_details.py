"""Every non-OK status carries a google.rpc.ErrorInfo a client of any gRPC implementation can act
on: read here from the raw `grpc-status-details-bin` trailer of real calls (not through our own
client), for each failure the service raises itself and for engine failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from control_service.errors import ERROR_DOMAIN, REASONS, from_rpc_error
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.server.config import SecurityConfig
from tests.harness import Service, StartService, eventually
from tests.stub_process import StubProcess

Code = grpc.StatusCode
ROOT = Path(__file__).resolve().parents[2]


def details(err: grpc.aio.AioRpcError) -> list[error_details_pb2.ErrorInfo]:
    """The ErrorInfos of the status trailer, decoded by hand as a Node or Go client would."""
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"{err.code()} has no grpc-status-details-bin"
    status = status_pb2.Status.FromString(raw)
    assert status.code == err.code().value[0] and status.message == err.details()
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        assert detail.Unpack(info), detail.type_url
        assert info.domain == ERROR_DOMAIN
        infos.append(info)
    return infos


def call_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The call's own ErrorInfo: the first, with a documented reason."""
    info = details(err)[0]
    assert info.reason in REASONS, info.reason
    return info


@pytest.fixture
def stub(start_stub: Callable[..., StubProcess]) -> StubProcess:
    return start_stub()


@pytest.fixture
async def service(start_service: StartService, stub: StubProcess) -> Service:
    return await start_service([stub.endpoint], default_timeout_s=30.0, max_timeout_s=60.0)


@pytest.mark.parametrize(
    ("request_", "reason", "request_id"),
    [
        (pb.PauseRequest(request_id="has space"), "INVALID_REQUEST_ID", None),
        (pb.PauseRequest(request_id="p-1", mode=9), "INVALID_REQUEST", "p-1"),
        (pb.PauseRequest(request_id="p-2", timeout=Duration(seconds=61)), "INVALID_REQUEST", "p-2"),
    ],
)
async def test_invalid_argument(
    service: Service, request_: pb.PauseRequest, reason: str, request_id: str | None
) -> None:
    err, _ = await service.failed("Pause", request_, timeout=10)
    info = call_info(err)
    assert err.code() == Code.INVALID_ARGUMENT and info.reason == reason
    assert info.metadata.get("request_id") == request_id, "a bad request_id is never echoed"


async def test_unknown_engine_names_it(service: Service) -> None:
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="u-1", engines=["nope"]))
    info = call_info(err)
    assert (err.code(), info.reason) == (Code.NOT_FOUND, "UNKNOWN_ENGINE")
    assert dict(info.metadata) == {"request_id": "u-1", "engines": "nope"}
    with pytest.raises(grpc.aio.AioRpcError) as status_err:
        await service.stub.GetStatus(pb.GetStatusRequest(engines=["e0", "gone"]), timeout=10)
    info = call_info(status_err.value)
    assert (info.reason, info.metadata["engines"]) == ("UNKNOWN_ENGINE", "gone")


async def test_request_id_reused(service: Service) -> None:
    await service.events("Pause", pb.PauseRequest(request_id="op-1"), timeout=10)
    err, _ = await service.failed("Resume", pb.ResumeRequest(request_id="op-1"), timeout=10)
    info = call_info(err)
    assert (err.code(), info.reason) == (Code.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert dict(info.metadata) == {"request_id": "op-1", "engines": "e0"}


async def test_engine_busy_names_the_engine(service: Service, stub: StubProcess) -> None:
    stub.knob(silent=True)
    first = asyncio.ensure_future(
        service.failed("Pause", pb.PauseRequest(request_id="slow", timeout=Duration(seconds=2)))
    )
    await eventually(lambda: "slow" in service.server.dispatcher.running)
    err, _ = await service.failed("Resume", pb.ResumeRequest(request_id="next"), timeout=10)
    info = call_info(err)
    assert (err.code(), info.reason) == (Code.ABORTED, "ENGINE_BUSY")
    assert dict(info.metadata) == {"request_id": "next", "engines": "e0"}
    await first


async def test_slot_limit(start_service: StartService, stub: StubProcess) -> None:
    service = await start_service({"a": stub.endpoint, "b": stub.endpoint}, max_open_slots=1)
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="s-1"), timeout=10)
    info = call_info(err)
    assert (err.code(), info.reason) == (Code.RESOURCE_EXHAUSTED, "SLOT_LIMIT")
    assert dict(info.metadata) == {"request_id": "s-1", "engines": "a,b"}


async def test_engine_unreachable_with_no_engine_reply(service: Service, stub: StubProcess) -> None:
    stub.kill()
    await eventually(lambda: not service.server.links["e0"].up)
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="d-1"), timeout=10)
    info = call_info(err)
    assert (err.code(), info.reason) == (Code.UNAVAILABLE, "ENGINE_UNREACHABLE")
    assert (info.metadata["request_id"], info.metadata["engines"]) == ("d-1", "e0")


async def test_deadline_ended_by_the_service(service: Service, stub: StubProcess) -> None:
    stub.knob(silent=True)
    err, _ = await service.failed(
        "Pause", pb.PauseRequest(request_id="t-1", timeout=Duration(nanos=200_000_000)), timeout=10
    )
    info = call_info(err)
    assert (err.code(), info.reason) == (Code.DEADLINE_EXCEEDED, "DEADLINE")
    assert dict(info.metadata) == {"request_id": "t-1", "engines": "e0", "ended_by": "service"}
    assert "ended by the service" in err.details()


async def test_deadline_ended_by_the_engine(service: Service, stub: StubProcess) -> None:
    stub.knob(fail_next={"code": "DEADLINE_EXCEEDED", "message": "pause not done within 0.2s"})
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="t-2"), timeout=10)
    info = call_info(err)
    assert (err.code(), info.reason) == (Code.DEADLINE_EXCEEDED, "DEADLINE")
    assert info.metadata["ended_by"] == "engine"
    assert "e0: DEADLINE_EXCEEDED: ended by the engine: pause not done" in err.details()


async def test_engine_error_keeps_one_error_info_per_engine(
    service: Service, stub: StubProcess
) -> None:
    stub.knob(fail_next={"code": "INTERNAL", "message": "engine says no"})
    err, _ = await service.failed("Pause", pb.PauseRequest(request_id="x-1"), timeout=10)
    call, *engines = details(err)
    assert (call.reason, dict(call.metadata)) == (
        "ENGINE_ERROR", {"request_id": "x-1", "engines": "e0"}
    )  # fmt: skip
    assert [(i.reason, dict(i.metadata)) for i in engines] == [
        ("INTERNAL", {"engine": "e0", "message": "engine says no"})
    ]
    failures = from_rpc_error(err).failures
    assert [(f.engine, f.code, f.message) for f in failures] == [
        ("e0", Code.INTERNAL, "engine says no")
    ], "the client sees exactly the engine failures, not the call's own ErrorInfo"


async def test_unauthenticated(
    start_service: StartService, stub: StubProcess, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("a-token-of-at-least-16-chars\n")
    service = await start_service(
        [stub.endpoint], security=SecurityConfig(auth_token_file=token), wait_up=False
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert call_info(info.value).reason == "UNAUTHENTICATED"


def test_every_reason_is_in_the_readme_status_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [reason for reason in REASONS if f"`{reason}`" not in readme]
    assert not missing, f"README's status table lacks {missing}"
