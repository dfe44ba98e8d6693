"""The control service with its Pause reduced to the transport: `python -m bench._bare ...`.

`bench._service` itself (same engine links, same gRPC server, same arguments and ready line),
except that Pause is a bare relay over the service's own EngineLink: open a slot, send, wait for
the terminal reply, write one prebuilt ControlEvent. No validation, admission, deadline, retry
record, event built from the reply, metrics or log line. bench/split.py measures it beside the
real service and the naive bridge, to tell what the transport costs from what the guarantees
cost. Not a product path: nothing but the benchmark runs it.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from typing import Any

import bench._service as service
from bench.procs import die_with_parent
from control_service.cli.aio import run
from control_service.errors import ControlError
from control_service.gen.control.v1 import control_pb2 as pb
from control_service.protocol import names, wire
from control_service.server.commands import Commands
from control_service.server.dispatcher import Dispatcher
from control_service.server.metrics import Metrics
from control_service.server.servicer import ControlServicer

_IDS = itertools.count()
_EVENT = pb.ControlEvent(
    request_id="0123456789ab-1", engine="l0", seq=1,
    result=pb.Result(state=pb.EngineState(paused=True, weight_version="v0"), message="instant"),
)  # fmt: skip
_ARGS = {"mode": names.ABORT, "clear_cache": False}


class _Terminal:
    """A slot sink that resolves a future with the terminal reply."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[wire.Reply]) -> None:
        self.future = future

    def on_reply(self, reply: wire.Reply) -> None:
        if reply.kind in wire.TERMINAL_KINDS and not self.future.done():
            self.future.set_result(reply)

    def on_lost(self, error: ControlError) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class BareServicer(ControlServicer):
    """The service's servicer with Pause reduced to its transport, built by ControlServer
    through its `servicer_factory` seam."""

    def __init__(self, dispatcher: Dispatcher, commands: Commands, metrics: Metrics) -> None:
        super().__init__(dispatcher, commands, metrics)
        self._links = dispatcher.links

    async def Pause(self, request: pb.PauseRequest, context: Any) -> None:
        link = self._links[request.engines[0]]
        rid = f"bare-{next(_IDS)}"
        future: asyncio.Future[wire.Reply] = asyncio.get_running_loop().create_future()
        link.open(rid, _Terminal(future))  # the slot first, then the send
        try:
            link.send_encoded(wire.encode_request(wire.Request(rid, names.PAUSE, _ARGS, 10.0)))
            await future
            await context.write(_EVENT)
        finally:
            link.slots.close(rid)


if __name__ == "__main__":
    die_with_parent()
    sys.exit(run(service.serve(sys.argv[1:], servicer_factory=BareServicer)))
