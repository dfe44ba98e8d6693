"""Version skew without false alarms: a version becomes the one expected of the engines only when
an update to it succeeded on at least one of them; an update that failed everywhere (the engines
kept their old weights) changes nothing. Two real engine_stub processes."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import Service, StartService
from tests.stub_process import StubProcess

Code = grpc.StatusCode


@pytest.fixture
def stubs(start_stub: Callable[..., StubProcess]) -> dict[str, StubProcess]:
    return {"a": start_stub(), "b": start_stub()}


@pytest.fixture
async def service(start_service: StartService, stubs: dict[str, StubProcess]) -> Service:
    return await start_service({name: stub.endpoint for name, stub in stubs.items()})


async def status(service: Service) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """engine -> (expected_version, serving version), and the skewed engines."""
    reply = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    versions = {e.engine: (e.expected_version, e.state.weight_version) for e in reply.engines}
    return versions, list(reply.skewed_engines)


async def update(service: Service, uri: str, version: str, **kw: object) -> Code:
    try:
        request = pb.UpdateWeightsRequest(uri=uri, version=version, **kw)
        await service.events("UpdateWeights", request, timeout=30)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return Code.OK


async def test_failed_updates_leave_expected_version_alone(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(1)
    # Not paused: both engines refuse, keeping what they serve. Nothing is expected yet.
    assert await update(service, uri, "1") == Code.FAILED_PRECONDITION
    versions, skewed = await status(service)
    assert skewed == [] and {v[0] for v in versions.values()} == {""}

    await service.events("Pause", pb.PauseRequest(), timeout=10)
    assert await update(service, uri, "1") == Code.OK
    # Missing checkpoint on every engine: NOT_FOUND, old weights kept.
    assert await update(service, "/no/such/checkpoint", "2") == Code.NOT_FOUND
    # The engines' own deadline on every engine.
    for stub in stubs.values():
        stub.knob(fail_next={"code": "DEADLINE_EXCEEDED", "message": "not done within 1s"})
    assert await update(service, uri, "3") == Code.DEADLINE_EXCEEDED
    # The service's deadline, engines stuck (then cancelled by the service, weights untouched).
    for stub in stubs.values():
        stub.knob(hang_next="update_weights")
    assert await update(service, uri, "4", timeout=Duration(nanos=300_000_000)) == (
        Code.DEADLINE_EXCEEDED
    )
    versions, skewed = await status(service)
    assert versions == {"a": ("1", "1"), "b": ("1", "1")} and skewed == [], "no false alarm"


async def test_update_that_succeeded_somewhere_sets_expected_and_names_the_rest(
    service: Service, stubs: dict[str, StubProcess], checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(2)
    await service.events("Pause", pb.PauseRequest(), timeout=10)
    stubs["b"].knob(fail_next={"code": "FAILED_PRECONDITION", "message": "not today"})
    assert await update(service, uri, "5") == Code.FAILED_PRECONDITION
    versions, skewed = await status(service)
    assert versions["a"] == ("5", "5") and versions["b"][0] == "5" and versions["b"][1] != "5"
    assert skewed == ["b"]


async def test_refit_failing_everywhere_raises_no_skew(
    service: Service, checkpoint: Callable[[int], tuple[str, int]]
) -> None:
    uri, _ = checkpoint(3)
    await service.events("Refit", pb.RefitRequest(uri=uri, version="7"), timeout=30)
    err, _ = await service.failed(
        "Refit", pb.RefitRequest(uri="/no/such/checkpoint", version="8"), timeout=30
    )
    assert err.code() == Code.NOT_FOUND
    versions, skewed = await status(service)
    assert versions == {"a": ("7", "7"), "b": ("7", "7")} and skewed == []
