"""The bug this service exists to make impossible: a reply that arrives before its slot.

In the engine that inspired this service, the control request was sent first and the reply
channel registered second; a fast engine answered in between and the caller hung for 600 s.
Here the slot is opened before the send, so even a reply delivered *inside* send is routed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import wire
from control_service.server.engine_link import EngineLink
from tests.harness import Service, StartService
from tests.stub_process import StubProcess


class ReplyInsideSendLink(EngineLink):
    """An engine link whose send delivers the engine's reply before send returns (its engine
    endpoint is an inproc:// one nobody binds: the link is up once connected, and nothing is
    ever put on its socket)."""

    def transmit(self, body: bytes) -> None:
        request = wire.decode_request(body)
        if request.method == "cancel":
            return
        reply = wire.result(request.request_id, wire.state(True, "v-instant", 0), "instant")
        self.receive([b"", wire.encode_reply(reply)])


async def test_reply_delivered_inside_send_reaches_its_caller(start_service: StartService) -> None:
    service = await start_service(["inproc://unused"], link_factory=ReplyInsideSendLink)
    link = service.server.links["e0"]
    for i in range(200):
        events = await service.events("Pause", pb.PauseRequest(request_id=f"fast-{i}"), timeout=2.0)
        assert [e.WhichOneof("event") for e in events] == ["result"]
        assert events[0].result.state.weight_version == "v-instant"
    assert link.slots.counters.unmatched == 0, "a reply found no slot: it was sent before opening"
    assert link.slots.counters.delivered == 200
    assert service.server.open_slots == 0


async def test_concurrent_calls_with_reply_inside_send(start_service: StartService) -> None:
    service = await start_service(["inproc://unused"], link_factory=ReplyInsideSendLink)

    async def one(i: int) -> pb.ControlEvent:
        events = await service.events("Resume", pb.ResumeRequest(request_id=f"c-{i}"), timeout=2.0)
        return events[-1]

    finals = await asyncio.gather(*(one(i) for i in range(256)))
    assert {e.request_id for e in finals} == {f"c-{i}" for i in range(256)}
    assert all(e.HasField("result") for e in finals)
    assert service.server.links["e0"].slots.counters.unmatched == 0
    assert service.server.open_slots == 0


async def test_generated_request_id_is_returned_in_every_event(start_service: StartService) -> None:
    service = await start_service(["inproc://unused"], link_factory=ReplyInsideSendLink)
    events = await service.events("Pause", pb.PauseRequest(), timeout=2.0)
    assert events and events[0].request_id
    assert {e.request_id for e in events} == {events[0].request_id}


async def test_unknown_request_id_reply_is_dropped_not_cached(start_service: StartService) -> None:
    service = await start_service(["inproc://unused"], link_factory=ReplyInsideSendLink)
    link = service.server.links["e0"]
    stray = wire.result("never-asked", wire.state(True, "x", 0))
    link.receive([b"", wire.encode_reply(stray)])
    assert link.slots.counters.unmatched == 1
    # A later call with that very request_id must not receive the stray reply's payload.
    events = await service.events("Pause", pb.PauseRequest(request_id="never-asked"), timeout=2.0)
    assert [e.result.state.weight_version for e in events] == ["v-instant"]


async def _pause_ok(service: Service, request_id: str) -> None:
    events = await service.events("Pause", pb.PauseRequest(request_id=request_id), timeout=10)
    assert events[-1].HasField("result") and events[-1].request_id == request_id


@pytest.mark.slow
async def test_10000_sequential_calls_to_an_instant_engine(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub("--instant")
    service = await start_service([stub.endpoint])
    for i in range(10_000):
        await _pause_ok(service, f"seq-{i}")
    link = service.server.links["e0"]
    assert link.slots.counters.delivered == 10_000 and link.slots.counters.unmatched == 0
    assert service.server.open_slots == 0


@pytest.mark.slow
async def test_10000_concurrent_calls_64_in_flight_to_an_instant_engine(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    # One mutation per engine at a time is the rule, so 64 in flight need 64 engine links;
    # they all connect to the same instant engine process.
    stub = start_stub("--instant")
    service = await start_service({f"l{i}": stub.endpoint for i in range(64)})
    pending = iter(range(10_000))
    done: list[str] = []

    async def worker(lane: int) -> None:
        for i in pending:
            rid = f"con-{i}"
            events = await service.events(
                "Pause", pb.PauseRequest(request_id=rid, engines=[f"l{lane}"]), timeout=10
            )
            assert events[-1].HasField("result") and events[-1].request_id == rid
            done.append(rid)

    await asyncio.gather(*(worker(lane) for lane in range(64)))
    assert len(done) == len(set(done)) == 10_000
    assert sum(link.slots.counters.unmatched for link in service.server.links.values()) == 0
    assert service.server.open_slots == 0
