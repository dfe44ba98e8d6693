"""The naive bridge, the reference our bridge must beat: `python -m bench.naive NAME=ENDPOINT ...`.

What a first version of this service would be, as `../shared/notes/grpc-zmq-facts.md` measured
it: a grpc.aio server-streaming method; per call, a future in a dict keyed by a request id (the
slot), opened before the send; a zmq.asyncio DEALER per engine entry and one receive task per
DEALER that resolves the futures; one message yielded per call. No validation, no deadlines, no
metrics, no JSON, no retry records: only the transport. Its engine is floor B's ROUTER echo
(`bench.floors zmq`), which sends each request back as its reply.

It serves `/control.v1.ControlService/Pause` (bytes in, bytes out: the request is a serialized
PauseRequest whose first engine name picks the DEALER; the reply is what the echo returned: a
serialized ControlEvent with a Result, built once at start, the same size as the bridge's), so
the load generator calls it exactly as it calls the service (same requests, same parsing and
check of the reply), with the same engine-entry layout. Prints `{"port", "pid", "engines"}`
and runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator

import grpc
import zmq
import zmq.asyncio

from bench.procs import die_with_parent, emit
from control_service.cli.aio import run
from control_service.gen.control.v1 import control_pb2 as pb

# What the instant engine's Result becomes in the bridge, serialized once: no per-call protobuf.
REPLY = pb.ControlEvent(
    request_id="0123456789ab-1", engine="l0", seq=1,
    result=pb.Result(state=pb.EngineState(paused=True, weight_version="v0"), message="instant"),
).SerializeToString()  # fmt: skip


async def serve(entries: list[str]) -> None:
    ctx = zmq.asyncio.Context()
    sockets: dict[str, zmq.asyncio.Socket] = {}
    for entry in entries:
        name, _, endpoint = entry.partition("=")
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sockets[name] = sock
    slots: dict[bytes, asyncio.Future[bytes]] = {}
    ids = itertools.count()

    async def receive(sock: zmq.asyncio.Socket) -> None:
        while True:
            _, rid, body = await sock.recv_multipart()
            future = slots.pop(rid, None)
            if future is not None and not future.done():
                future.set_result(body)

    async def pause(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        sock = sockets[pb.PauseRequest.FromString(request).engines[0]]
        rid = b"%d" % next(ids)
        future = asyncio.get_running_loop().create_future()
        slots[rid] = future  # the slot first, then the send
        try:
            await sock.send_multipart((b"", rid, REPLY))
            yield await future
        finally:
            slots.pop(rid, None)

    receivers = [asyncio.create_task(receive(sock)) for sock in sockets.values()]
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        "control.v1.ControlService", {"Pause": grpc.unary_stream_rpc_method_handler(pause)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    emit(port=port, pid=os.getpid(), engines=list(sockets))
    try:
        await server.wait_for_termination()
    finally:
        for task in receivers:
            task.cancel()


if __name__ == "__main__":
    die_with_parent()
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.naive NAME=ENDPOINT [NAME=ENDPOINT ...]")
    run(serve(sys.argv[1:]))
