"""One bad engine frame never harms the calls beside it: a purpose-built ZMQ peer answers every
request with each kind of broken frame first (naming no open request), then the real reply, then
a second terminal. A broken frame that names an open request fails that engine's part at once."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import pytest
import structlog
import zmq

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import wire
from tests.harness import StartService, eventually
from tests.scripted_engine import ScriptedEngine, healthy


def bad_frames(rid: str) -> list[list[bytes]]:
    def body(obj: object) -> bytes:
        return json.dumps(obj).encode()

    return [
        [b"", b"not json at all"],
        [b"", b"\xff\xfe\xfd"],
        [b"", body([1, 2, 3])],
        [b"", body({"v": 1, "request_id": rid, "kind": "progress", "data": {"done": "many"}})],
        [b"", body({"v": 1, "request_id": rid, "kind": "result", "data": {"state": []}})],
        [b"", body({"v": 1, "kind": "result", "data": {}})],
        [b"", body({"v": 1, "request_id": rid, "kind": "telepathy", "data": {}})],
        [b"", body({"v": 99, "request_id": rid, "kind": "result", "data": {}})],
        [b"", body({"v": 1, "request_id": rid, "kind": "error", "data": {"code": "OK"}})],
        [b"", body({"v": 1, "request_id": rid, "kind": ["result"], "data": {}})],  # unhashable
        [b"", body({"v": 1, "request_id": rid, "kind": "error", "data": {"code": {"x": 1}}})],
        [b"", b" " * (wire.MAX_FRAME_BYTES + 1)],
        [b"extra", b"", body({})],
        [b"only-one-frame"],
    ]


BAD_PER_REQUEST = len(bad_frames("x"))


@pytest.fixture
def hostile_engine() -> Iterator[str]:
    """A ROUTER that precedes every real reply with every bad frame (for a request nobody has
    open: one that names an open request ends it, see below), and repeats the terminal."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not stop.is_set():
            if not poller.poll(50):
                continue
            identity, _, body = sock.recv_multipart()
            request = wire.decode_request(body)
            if request.method == "cancel":
                continue
            for frames in bad_frames("nobody-asked"):
                sock.send_multipart([identity, *frames])
            good = wire.result(request.request_id, wire.state(True, "good", 0))
            sock.send_multipart([identity, b"", wire.encode_reply(good)])
            sock.send_multipart([identity, b"", wire.encode_reply(good)])  # a second terminal

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{port}"
    stop.set()
    thread.join(5)
    sock.close()
    ctx.term()


async def test_bad_frames_are_dropped_and_counted_and_harm_nothing(
    start_service: StartService, hostile_engine: str
) -> None:
    engines = {f"e{i}": hostile_engine for i in range(8)}
    service = await start_service(engines)

    async def call(i: int) -> pb.ControlEvent:
        engine = f"e{i % 8}"
        events = await service.events(
            "Pause", pb.PauseRequest(request_id=f"b-{i}", engines=[engine]), timeout=10
        )
        assert [e.WhichOneof("event") for e in events] == ["result"]
        return events[-1]

    for batch in range(4):
        finals = await asyncio.gather(*(call(batch * 8 + i) for i in range(8)))
        assert all(e.result.state.weight_version == "good" for e in finals)

    links = service.server.links.values()
    await eventually(lambda: sum(link.slots.counters.unmatched for link in links) == 32)
    await eventually(lambda: sum(link.counters.malformed for link in links) == 32 * BAD_PER_REQUEST)
    assert sum(link.counters.malformed for link in links) == 32 * BAD_PER_REQUEST
    assert all(link.up for link in links), "bad frames never take the link down"
    assert service.server.open_slots == 0


async def test_a_bug_handling_one_frame_does_not_stall_the_frames_queued_behind_it(
    start_service: StartService, hostile_engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug of ours (simulated: the decoder raises RuntimeError on the first frame of each
    burst) costs that frame, logged and counted as malformed; the link goes on reading, so the
    real reply queued behind it reaches its caller. Without that, the edge-triggered FD would
    not fire again for frames already queued, and the call would wait for its deadline."""
    decode = wire.decode_reply

    def buggy(body: bytes, max_bytes: int = wire.MAX_FRAME_BYTES) -> wire.Reply:
        if body == b"not json at all":  # the first of the hostile engine's bad frames
            raise RuntimeError("a bug in our code")
        return decode(body, max_bytes)

    monkeypatch.setattr("control_service.server.engine_link.wire.decode_reply", buggy)
    service = await start_service({"e0": hostile_engine})
    events = await service.events("Pause", pb.PauseRequest(request_id="bug-1"), timeout=5)
    assert events[-1].result.state.weight_version == "good"
    link = service.server.links["e0"]
    await eventually(lambda: link.slots.counters.unmatched == 1)
    assert link.counters.malformed == BAD_PER_REQUEST  # the frame the bug cost is counted too


async def test_a_malformed_reply_naming_a_call_fails_that_engines_part_at_once(
    start_service: StartService,
) -> None:
    """Not its whole deadline (120 s by default): INTERNAL at once, naming the engine and the
    rule it broke; the engine is told to cancel; the engine beside it is unharmed."""

    def broken(request: wire.Request) -> list[bytes]:
        if request.method != "pause":
            return healthy(request)
        bad = {"v": 1, "request_id": request.request_id, "kind": "result", "data": {"aborted": -1}}
        return [json.dumps(bad).encode()]

    with ScriptedEngine(broken) as bad, ScriptedEngine() as good:
        service = await start_service({"bad": bad.endpoint, "good": good.endpoint})
        loop = asyncio.get_running_loop()
        started = loop.time()
        err, _ = await service.failed("Pause", pb.PauseRequest(request_id="m-1"), timeout=30)
        assert loop.time() - started < 2.0, "failed at once, not at the deadline"
        assert err.code().name == "INTERNAL"
        assert "engine bad" in err.details() and "aborted must be an integer" in err.details()
        await eventually(lambda: any(r.method == "cancel" for r in bad.requests))
        events = await service.events(
            "Pause", pb.PauseRequest(request_id="m-2", engines=["good"]), timeout=10
        )
        assert events[-1].result.state.paused, "the engine beside it is unharmed"
        assert service.server.open_slots == 0


async def test_a_burst_of_stray_and_huge_frames_writes_few_short_log_lines(
    start_service: StartService,
) -> None:
    """2,000 replies for calls nobody made and a malformed frame with a 60 KB field, in one
    burst: one line per kind (the next one says how many were held back), every value clipped."""
    huge_kind = "k" * 60_000

    def noisy(request: wire.Request) -> list[bytes]:
        if request.method != "pause":
            return healthy(request)
        strays = [
            wire.encode_reply(wire.result(f"ghost-{i}", wire.state(True, "x", 0)))
            for i in range(2_000)
        ]
        bad = {"v": 1, "request_id": "r" * 200, "kind": huge_kind, "data": {}}
        return [*strays, json.dumps(bad).encode(), *healthy(request)]

    with ScriptedEngine(noisy) as engine, structlog.testing.capture_logs() as logs:
        service = await start_service({"e0": engine.endpoint})
        events = await service.events("Pause", pb.PauseRequest(request_id="n-1"), timeout=10)
        assert events[-1].result.state.paused
        link = service.server.links["e0"]
        await eventually(lambda: link.slots.counters.unmatched == 2_000)
    link_lines = [e for e in logs if e.get("engine") == "e0" and "dropped" in e["event"]]
    assert {e["event"] for e in link_lines} == {
        "reply dropped: no open slot",
        "malformed engine frame dropped",
    }
    assert len(link_lines) <= 3, [e["event"] for e in link_lines][:10]
    assert all(len(repr(e)) < 2_000 for e in link_lines), "every value clipped"
