"""The floors' servers, each run as its own process: `python -m bench.floors grpc|zmq`.

- grpc: a raw grpc.aio server with one server-streaming method, /bench.Echo/Echo, that answers
  a request with one message: the request's bytes (128 in the benchmark). No protobuf, no
  servicer class: the least a grpc.aio server-streaming call can cost.
- zmq: a raw pyzmq ROUTER (zmq.asyncio, like engine_stub's) that sends every message back to
  the DEALER that sent it.

Both run on the same event loop as the service (control_service.aio: uvloop when installed),
print one ready line, `{"port": ...}` or `{"endpoint": ...}`, and run until SIGTERM.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import grpc
import zmq
import zmq.asyncio

from bench.procs import die_with_parent, emit
from control_service.aio import run

ECHO_METHOD = "/bench.Echo/Echo"
PAYLOAD = b"x" * 128


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield request


async def grpc_echo() -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_stream_rpc_method_handler(_echo)}
    )  # no (de)serializers: bytes in, bytes out
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    emit(port=port, pid=os.getpid())
    await server.wait_for_termination()


async def zmq_echo() -> None:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    emit(endpoint=f"tcp://127.0.0.1:{port}", pid=os.getpid())
    recv, send = sock.recv_multipart, sock.send_multipart
    while True:
        await send(await recv())


if __name__ == "__main__":
    die_with_parent()
    roles = {"grpc": grpc_echo, "zmq": zmq_echo}
    if len(sys.argv) != 2 or sys.argv[1] not in roles:
        sys.exit("usage: python -m bench.floors grpc|zmq")
    run(roles[sys.argv[1]]())
