"""The engine link's own guarantees, on real ZMQ sockets, below the service."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator

import pytest
import zmq

from control_service.protocol import wire
from control_service.server.config import EngineConfig, LinkConfig
from control_service.server.engine_link import EngineLink
from control_service.server.slots import SlotBudget


@pytest.fixture
def events() -> Iterator[tuple[zmq.Socket, zmq.Socket]]:
    """(writer, reader): an inproc PAIR the test writes monitor-format events into."""
    ctx = zmq.Context()
    reader, writer = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    reader.bind("inproc://link-events")
    writer.connect("inproc://link-events")
    yield writer, reader
    writer.close(linger=0)
    reader.close(linger=0)
    ctx.term()


class _BuggyOnAuthFailure(EngineLink):
    """A link whose handling of a refused handshake raises (a bug of ours, simulated)."""

    def on_link_event(self, event: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise RuntimeError("a bug in our code")
        super().on_link_event(event)


def test_a_bug_handling_one_link_event_does_not_leave_the_next_unread(
    events: tuple[zmq.Socket, zmq.Socket],
) -> None:
    """Two events queued at once, as on a failed handshake followed by a good one: a bug
    handling the first costs that event only; the second still brings the link up. Without
    that, the edge-triggered FD would not fire for the second."""
    writer, reader = events
    config = EngineConfig.parse("e0=tcp://127.0.0.1:9")
    link = _BuggyOnAuthFailure(config, LinkConfig(), SlotBudget(8))
    for event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_SUCCEEDED):
        writer.send_multipart([struct.pack("=hi", event, 0), b"tcp://127.0.0.1:9"])
    assert not link.up
    link.read_link_events(reader)  # as the loop calls it when the monitor socket is readable
    assert link.up, "the event queued behind the failing one was handled"
    assert reader.poll(0) == 0, "and both were read"


class _Sink:
    """A slot owner whose future resolves with its first reply, or None if its slot is lost."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.reply: asyncio.Future[wire.Reply | None] = loop.create_future()

    def on_reply(self, reply: wire.Reply) -> None:
        if not self.reply.done():
            self.reply.set_result(reply)

    def on_lost(self, error: object) -> None:
        if not self.reply.done():
            self.reply.set_result(None)


async def test_a_reply_whose_fd_edge_was_taken_is_read_after_the_next_send() -> None:
    """ZMQ's FD is edge-triggered, and libzmq may process the command that announces a reply
    inside some other call on the socket (a send, an EVENTS query), taking the FD's edge with
    it: the loop's reader then never fires for that reply. The link looks again after every
    send. Here the edge is made to be taken for certain: the reader is removed and the test
    polls the socket itself, so only that look can deliver the reply."""
    ctx = zmq.Context()
    engine = ctx.socket(zmq.ROUTER)
    engine.bind("inproc://edge-engine")
    link = EngineLink(EngineConfig.parse("e0=inproc://edge-engine"), LinkConfig(), SlotBudget(8))
    try:
        link.start(ctx)
        assert link.up, "an inproc link is up once connected (inproc has no handshake)"
        sock = link.socket
        assert sock is not None
        asyncio.get_running_loop().remove_reader(sock.FD)  # the FD will not tell us of the reply
        first = _Sink()
        link.open("first", first)
        link.send(wire.Request("first", "status", {}, 1.0))
        assert engine.poll(2000), "the engine got the first request"
        identity, _, _ = engine.recv_multipart()
        reply = wire.result("first", wire.state(True, "v1", 0))
        engine.send_multipart([identity, b"", wire.encode_reply(reply)])
        assert sock.poll(2000), "the reply is queued at the link (its edge is now taken)"
        link.open("second", _Sink())
        link.send(wire.Request("second", "status", {}, 1.0))
        got = await asyncio.wait_for(first.reply, 2.0)
        assert got is not None and got.request_id == "first" and got.kind == wire.RESULT
    finally:
        link.close()
        engine.close(linger=0)
        ctx.term()
