"""The full RL cycle through the service to a real engine_stub process: pause (each mode) ->
update weights -> resume -> status, with each mode's observable difference."""

from __future__ import annotations

from collections.abc import Callable

from control_service.gen.control.v1 import control_pb2 as pb
from tests.harness import StartService
from tests.stub_process import StubProcess


def kinds(events: list[pb.ControlEvent]) -> list[str]:
    return [e.WhichOneof("event") for e in events]


async def test_pause_modes_differ_observably(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub("--requests", "4", "--tokens", "20", "--token-interval", "0.005")
    service = await start_service([stub.endpoint])

    abort = await service.events("Pause", pb.PauseRequest(mode=pb.PAUSE_MODE_ABORT), timeout=10)
    result = abort[-1].result
    assert (result.aborted, result.state.in_flight, result.state.paused) == (4, 0, True)
    await service.events("Resume", pb.ResumeRequest(), timeout=10)

    wait = await service.events("Pause", pb.PauseRequest(mode=pb.PAUSE_MODE_WAIT), timeout=10)
    drain = [e.progress for e in wait if e.HasField("progress")]
    assert [p.done for p in drain] == [1, 2, 3, 4] and {p.stage for p in drain} == {"drain"}
    result = wait[-1].result
    assert (result.aborted, result.drained, result.state.in_flight) == (0, 4, 0)
    await service.events("Resume", pb.ResumeRequest(), timeout=10)

    keep = await service.events("Pause", pb.PauseRequest(mode=pb.PAUSE_MODE_KEEP), timeout=10)
    result = keep[-1].result
    assert (result.aborted, result.state.in_flight, result.state.paused) == (0, 4, True)
    resumed = await service.events("Resume", pb.ResumeRequest(), timeout=10)
    assert (resumed[-1].result.state.paused, resumed[-1].result.state.in_flight) == (False, 4)

    # seq numbers run 1, 2, 3 ... per call and engine: nothing skipped.
    for events in (abort, wait, keep, resumed):
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert {e.engine for e in events} == {"e0"}


async def test_unspecified_mode_takes_configured_default(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub("--requests", "3", "--tokens", "8")
    service = await start_service([stub.endpoint], default_pause_mode="keep")
    events = await service.events("Pause", pb.PauseRequest(), timeout=10)
    assert (events[-1].result.aborted, events[-1].result.state.in_flight) == (0, 3)


async def test_update_weights_streams_progress_and_changes_version_and_digest(
    start_service: StartService,
    start_stub: Callable[..., StubProcess],
    checkpoint: Callable[[int], tuple[str, int]],
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    first, first_bytes = checkpoint(1)
    second, _ = checkpoint(2)

    await service.events("Pause", pb.PauseRequest(), timeout=10)
    events = await service.events(
        "UpdateWeights", pb.UpdateWeightsRequest(uri=first, version="1"), timeout=30
    )
    assert kinds(events)[0] == "accepted" and kinds(events)[-1] == "result"
    progress = [e.progress for e in events if e.HasField("progress")]
    assert len(progress) == 2, "one progress event per safetensors file"
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert progress[-1].done == progress[-1].total == first_bytes
    v1 = events[-1].result
    assert v1.state.weight_version == "1" and v1.bytes_loaded == first_bytes
    assert v1.state.weight_digest.startswith("sha256:")

    events = await service.events(
        "UpdateWeights", pb.UpdateWeightsRequest(uri=second, version="2"), timeout=30
    )
    v2 = events[-1].result
    assert v2.state.weight_version == "2"
    assert v2.state.weight_digest != v1.state.weight_digest

    resumed = await service.events("Resume", pb.ResumeRequest(), timeout=10)
    assert resumed[-1].result.state.paused is False

    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    (engine,) = status.engines
    assert engine.engine == "e0" and engine.reachable and not engine.error
    assert engine.state.weight_version == "2"
    assert engine.state.weight_digest == v2.state.weight_digest
    assert engine.state.paused is False
