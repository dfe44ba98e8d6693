"""A link whose fresh socket cannot be made (issue 16: `Too many open files` from
`EngineLink._recreate` at 4,096 flapping links) stays down, retries with backoff, says so once
per streak, never leaves an exception to the event loop, and comes back when room is made.

Real libzmq throughout: a context with a small MAX_SOCKETS, filled by other sockets while the
link waits to recreate its socket after a protocol error (a peer speaking another ZMTP security
mechanism), so that libzmq itself refuses the link's socket with EMFILE."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
import zmq

from control_service.protocol import wire
from control_service.server.config import EngineConfig, LinkConfig
from control_service.server.engine_link import EngineLink
from control_service.server.slots import SlotBudget
from tests.harness import eventually, free_port
from tests.stub_process import StubProcess
from tests.zmtp_peers import WrongMechanismPeer

MAX_SOCKETS = 8


class _Sink:
    def __init__(self) -> None:
        self.reply: asyncio.Future[wire.Reply | None] = asyncio.get_running_loop().create_future()

    def on_reply(self, reply: wire.Reply) -> None:
        if reply.kind in ("result", "error") and not self.reply.done():
            self.reply.set_result(reply)

    def on_lost(self, error: object) -> None:
        if not self.reply.done():
            self.reply.set_result(None)


@pytest.fixture
def small_context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    context.set(zmq.MAX_SOCKETS, MAX_SOCKETS)
    yield context
    context.destroy(linger=0)


def _take_every_slot(context: zmq.Context, held: list[zmq.Socket]) -> bool:
    """One more socket if libzmq has a slot free (slots of closed sockets come back when its
    reaper gets to them); True once every slot is held here."""
    try:
        held.append(context.socket(zmq.PAIR))
    except zmq.ZMQError as err:
        assert err.errno == zmq.EMFILE
    return len(held) == MAX_SOCKETS


async def test_a_link_without_room_for_a_socket_retries_until_there_is_room(
    small_context: zmq.Context, start_stub: Callable[..., StubProcess]
) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    config = LinkConfig(reconnect_ivl_s=0.05, reconnect_ivl_max_s=0.2)
    link = EngineLink(EngineConfig("e0", endpoint), config, SlotBudget(8))
    wrong = WrongMechanismPeer(port)
    held: list[zmq.Socket] = []
    try:
        with structlog.testing.capture_logs() as logs:
            link.start(small_context)
            # The protocol error ends the connection for good: the link closes its socket...
            await eventually(lambda: link.counters.disconnects >= 1 and link.socket is None)
            # ...and, before its fresh one, every socket slot of the context is taken.
            await eventually(lambda: _take_every_slot(small_context, held))
            await eventually(lambda: link.counters.recreated >= 4, timeout=5)
            assert not link.up
            assert link.down_reason.startswith("cannot open a socket to the engine")
            assert "Too many open files" in link.down_reason
            assert link.socket is None
        refused = [
            e
            for e in logs
            if e["event"] == "engine link cannot open a socket: retrying with backoff"
        ]
        assert len(refused) == 1, "said once for the whole streak of failures"
        assert "Too many open files" in refused[0]["error"]
    finally:
        wrong.close()
    # Room again, and a good engine on the endpoint: the link comes back by itself.
    start_stub("--instant", "--bind", endpoint)
    for sock in held:
        sock.close(linger=0)
    await eventually(lambda: link.up, timeout=5)
    sink = _Sink()
    link.open("after", sink)
    link.send(wire.Request("after", "pause", {"mode": "abort"}, 5.0))
    reply = await asyncio.wait_for(sink.reply, 5)
    assert reply is not None and reply.kind == "result", reply
    link.close()
    assert unhandled == [], "no exception was left to the event loop"
