"""The engine link's own guarantees, on real ZMQ sockets, below the service."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
import zmq

from control_service.config import EngineConfig, LinkConfig
from control_service.engine_link import EngineLink
from control_service.slots import SlotBudget


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


def test_a_bug_handling_one_link_event_does_not_leave_the_next_unread(
    events: tuple[zmq.Socket, zmq.Socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two events queued at once, as on a failed handshake followed by a good one: a bug
    handling the first (simulated: its handler raises) costs that event only; the second still
    brings the link up. Without that, the edge-triggered FD would not fire for the second."""
    writer, reader = events
    link = EngineLink(EngineConfig.parse("e0=tcp://127.0.0.1:9"), LinkConfig(), SlotBudget(8))
    link._monitor = reader  # what start() would set: the link's monitor socket
    for event in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_SUCCEEDED):
        writer.send_multipart([struct.pack("=hi", event, 0), b"tcp://127.0.0.1:9"])

    def buggy(reason: str) -> None:
        raise RuntimeError("a bug in our code")

    monkeypatch.setattr(link, "_handshake_failed", buggy)
    assert not link.up
    link._drain_monitor()
    assert link.up, "the event queued behind the failing one was handled"
    assert reader.poll(0) == 0, "and both were read"
