"""Many engines: every call fans out to each data-parallel replica (8 engine_stub processes on
their own loopback addresses), each engine's events are tagged, and the final status names
exactly which engines failed and how."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from control_service.errors import from_rpc_error
from control_service.gen.control.v1 import control_pb2 as pb
from engine_stub.checkpoint import write_checkpoint
from tests.harness import Service, StartService
from tests.stub_process import StubProcess

Code = grpc.StatusCode
NAMES = [f"e{i}" for i in range(8)]


@pytest.fixture
def stubs() -> Iterator[dict[str, StubProcess]]:
    procs = {name: StubProcess() for name in NAMES}
    try:  # one start that times out must not leave the other seven running
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda item: item[1].start(
                        "--bind", f"tcp://127.0.0.{item[0] + 2}:0", "--name", NAMES[item[0]]
                    ),
                    enumerate(procs.values()),
                )
            )
        yield procs
    finally:
        for proc in procs.values():
            proc.__exit__(None, None, None)


@pytest.fixture
async def service(start_service: StartService, stubs: dict[str, StubProcess]) -> Service:
    return await start_service({name: stub.endpoint for name, stub in stubs.items()})


def results(events: list[pb.ControlEvent]) -> dict[str, pb.Result]:
    return {e.engine: e.result for e in events if e.HasField("result")}


async def test_every_engine_paused_updated_resumed(service: Service, tmp_path: Path) -> None:
    hosts = {link.endpoint.rsplit(":", 1)[0] for link in service.server.links.values()}
    assert hosts == {f"tcp://127.0.0.{i}" for i in range(2, 10)}
    events = await service.events("Pause", pb.PauseRequest(), timeout=10)
    assert set(results(events)) == set(NAMES)
    for name in NAMES:  # per-engine seq numbering
        seqs = [e.seq for e in events if e.engine == name]
        assert seqs == list(range(1, len(seqs) + 1))
    write_checkpoint(tmp_path / "ck", seed=3)
    events = await service.events(
        "UpdateWeights", pb.UpdateWeightsRequest(uri=str(tmp_path / "ck"), version="3"), timeout=30
    )
    finals = results(events)
    assert {r.state.weight_version for r in finals.values()} == {"3"} and len(finals) == 8
    assert len({r.state.weight_digest for r in finals.values()}) == 1
    events = await service.events("Resume", pb.ResumeRequest(), timeout=10)
    assert not any(r.state.paused for r in results(events).values())
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert [s.engine for s in status.engines] == NAMES and not status.skewed_engines


async def test_one_engine_failing_update_is_named_and_skew_reported(
    service: Service, stubs: dict[str, StubProcess], tmp_path: Path
) -> None:
    write_checkpoint(tmp_path / "ck", seed=4)
    await service.events("Pause", pb.PauseRequest(), timeout=10)
    stubs["e3"].knob(fail_next={"code": "NOT_FOUND", "message": "no such checkpoint here"})
    err, events = await service.failed(
        "UpdateWeights", pb.UpdateWeightsRequest(uri=str(tmp_path / "ck"), version="4"), timeout=30
    )
    assert err.code() == Code.NOT_FOUND
    assert err.details().startswith("1 of 8 engines failed: e3: NOT_FOUND: no such checkpoint")
    assert set(results(events)) == set(NAMES) - {"e3"}
    assert [(e.engine, e.error.code) for e in events if e.HasField("error")] == [
        ("e3", "NOT_FOUND")
    ]
    error = from_rpc_error(err)
    assert [(f.engine, f.code) for f in error.failures] == [("e3", Code.NOT_FOUND)]
    status = await service.stub.GetStatus(pb.GetStatusRequest(), timeout=10)
    assert list(status.skewed_engines) == ["e3"]
    by_name = {s.engine: s for s in status.engines}
    assert by_name["e3"].expected_version == "4" and by_name["e3"].state.weight_version != "4"


async def test_killed_engine_reported_unavailable_others_unaffected(
    service: Service, stubs: dict[str, StubProcess]
) -> None:
    stubs["e5"].knob(silent=True)
    loop = asyncio.get_running_loop()
    call = service.stub.Pause(
        pb.PauseRequest(request_id="fan-1", timeout=Duration(seconds=60)), timeout=30
    )
    events: list[pb.ControlEvent] = []
    live_done = asyncio.Event()

    async def read() -> None:
        async for event in call:
            events.append(event)
            if len(results(events)) == 7:
                live_done.set()

    reader = asyncio.ensure_future(read())
    await asyncio.to_thread(stubs["e5"].wait_event, lambda e: e.get("request_id") == "fan-1", 10.0)
    # The seven live engines' results arrive while e5 is still silent: nobody waits for it.
    await asyncio.wait_for(live_done.wait(), 5)
    killed_at = loop.time()
    stubs["e5"].kill()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(reader, 10)
    assert loop.time() - killed_at < 3.0, "reported within the liveness bound, not the deadline"
    assert info.value.code() == Code.UNAVAILABLE
    assert info.value.details().startswith("1 of 8 engines failed: e5: UNAVAILABLE")
    assert set(results(events)) == set(NAMES) - {"e5"}
    assert events[-1].engine == "e5" and events[-1].error.code == "UNAVAILABLE"


async def test_subset_call_touches_only_named_engines(
    service: Service, stubs: dict[str, StubProcess]
) -> None:
    events = await service.events(
        "Pause", pb.PauseRequest(request_id="sub-1", engines=["e6", "e1"]), timeout=10
    )
    assert set(results(events)) == {"e1", "e6"}
    for name in ("e1", "e6"):
        await asyncio.to_thread(
            stubs[name].wait_event, lambda e: e.get("request_id") == "sub-1", 10.0
        )
    asked = {
        name
        for name, stub in stubs.items()
        if any(r["request_id"] == "sub-1" for r in stub.requests())
    }
    assert asked == {"e1", "e6"}
    status = await service.stub.GetStatus(pb.GetStatusRequest(engines=["e1", "e2"]), timeout=10)
    assert [(s.engine, s.state.paused) for s in status.engines] == [("e1", True), ("e2", False)]
