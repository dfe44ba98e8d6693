"""The floors' servers, each run as its own process: `python -m bench.floors grpc|zmq`.

- grpc: a raw grpc.aio server with one server-streaming method, /bench.Echo/Echo, that answers
  a request with one message: the request's bytes (128 in the benchmark). No protobuf, no
  servicer class: the least a grpc.aio server-streaming call can cost.
- zmq: a raw pyzmq ROUTER (read like engine_stub's: a plain socket on `loop.add_reader`) that
  sends every message back to the DEALER that sent it.

Both run on the same event loop as the service (control_service.cli.aio: uvloop when installed),
print one ready line, `{"port": ...}` or `{"endpoint": ...}`, and run until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import cast

import grpc
import zmq

from bench.procs import die_with_parent, emit
from control_service.cli.aio import run

ECHO_METHOD = "/bench.Echo/Echo"
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
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
    """The echo reads and sends the way engine_stub does (a plain socket, `loop.add_reader`,
    drained until EVENTS shows nothing), so the bridge's engine and the naive bridge's engine
    cost the same per message and the comparison is of the bridges alone."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    recv, send = sock.recv_multipart, sock.send_multipart

    def drain() -> None:
        while cast(int, sock.getsockopt(_EVENTS)) & _POLLIN:
            send(recv(_NOBLOCK), _NOBLOCK)

    loop = asyncio.get_running_loop()
    loop.add_reader(sock.FD, drain)
    loop.call_soon(drain)
    emit(endpoint=f"tcp://127.0.0.1:{port}", pid=os.getpid())
    await loop.create_future()  # until SIGTERM


if __name__ == "__main__":
    die_with_parent()
    roles = {"grpc": grpc_echo, "zmq": zmq_echo}
    if len(sys.argv) != 2 or sys.argv[1] not in roles:
        sys.exit("usage: python -m bench.floors grpc|zmq")
    run(roles[sys.argv[1]]())
