"""Long names and long engine messages never turn a precise status into RESOURCE_EXHAUSTED; nor
do status probes, which have their own bound."""

from __future__ import annotations

import asyncio

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import wire
from tests.harness import StartService, eventually
from tests.scripted_engine import ScriptedEngine, healthy


async def test_a_long_unknown_engine_name_gets_a_precise_clipped_status(
    start_service: StartService,
) -> None:
    with ScriptedEngine() as engine:
        service = await start_service({"e0": engine.endpoint})
        for name in ("n" * 20_000, "n" * 129, "bad name\x1b[31m"):
            err, _ = await service.failed("Pause", pb.PauseRequest(engines=[name]), timeout=10)
            assert err.code().name == "INVALID_ARGUMENT", name[:20]
            assert len(err.details()) < 200 and "engine name" in err.details()
        many = [f"unknown-{i}" for i in range(2_000)]
        err, _ = await service.failed("Pause", pb.PauseRequest(engines=many), timeout=10)
        assert err.code().name == "NOT_FOUND" and "and 1992 more" in err.details()
        status = await service.stub.GetStatus(pb.GetStatusRequest(engines=["e0"]), timeout=10)
        assert status.engines[0].reachable


async def test_long_engine_messages_from_many_engines_keep_their_status(
    start_service: StartService,
) -> None:
    """16 engines each failing with a 4,000-character message (the protocol's limit is 4,096):
    the summary would be 64 KB; the caller still gets the engines' code, clipped."""
    text = "\u00e9" * 4000

    def failing(request: wire.Request) -> list[bytes]:
        if request.method == "cancel":
            return []
        return [wire.encode_reply(wire.error(request.request_id, "NOT_FOUND", text))]

    with ScriptedEngine(failing) as engine:
        service = await start_service({f"e{i}": engine.endpoint for i in range(16)})
        err, _ = await service.failed("Pause", pb.PauseRequest(request_id="long-1"), timeout=10)
        assert err.code().name == "NOT_FOUND", err.details()[:200]
        assert err.details().startswith("16 of 16 engines failed: e")
        assert "characters clipped" in err.details()


async def test_status_probes_never_take_the_calls_slots(start_service: StartService) -> None:
    """40 GetStatus against an engine that is slow to answer status (here: never answers it)
    while the calls' slot budget is 8: a Pause still gets its slot."""

    def no_status(request: wire.Request) -> list[bytes]:
        return [] if request.method == "status" else healthy(request)

    with ScriptedEngine(no_status) as engine:
        service = await start_service({"e0": engine.endpoint}, max_open_slots=8)
        probes = [
            asyncio.ensure_future(service.stub.GetStatus(pb.GetStatusRequest(), timeout=10))
            for _ in range(40)
        ]
        await eventually(lambda: sum(r.method == "status" for r in engine.requests) == 40)
        events = await service.events("Pause", pb.PauseRequest(request_id="p-1"), timeout=10)
        assert events[-1].result.state.paused
        reports = await asyncio.gather(*probes)
        assert all("no status reply" in r.engines[0].error for r in reports)
