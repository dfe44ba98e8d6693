"""A plaintext client against a TLS service: what the operator sees (issue 16 asked for a "TLS
required" line once per peer). grpcio gives Python no hook for a failed handshake: no RPC exists,
so no interceptor runs, and `dynamic_ssl_server_credentials`' fetcher is called before each
handshake, without the peer or the outcome. The only trace is gRPC core's own line on stderr,
once per connection attempt, without the client's address (grpc/grpc#32893). This test pins
that line, the one the README tells operators to look for; if a gRPC upgrade changes it, the
README must change with it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import grpc

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from tests.certs import make_ca, make_leaf
from tests.harness import free_port

START_TIMEOUT_S = 30.0


async def test_a_plaintext_client_shows_as_grpc_cores_handshake_line(tmp_path: Path) -> None:
    _pair, ca, ca_key = make_ca(tmp_path, "ca")
    server = make_leaf(tmp_path, "server", ca, ca_key, server=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTROL_SERVICE_", "GRPC_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", "serve", "--listen", f"127.0.0.1:{port}",
        "--engine", f"e0=tcp://127.0.0.1:{free_port()}", "--tls-cert", str(server.cert),
        "--tls-key", str(server.key), "--log-format", "json", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        lines: list[bytes] = []
        while not any(b'"event": "serving"' in line for line in lines):
            line = await asyncio.wait_for(proc.stderr.readline(), START_TIMEOUT_S)
            assert line, f"serve exited before serving: {b''.join(lines)!r}"
            lines.append(line)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = control_pb2_grpc.ControlServiceStub(channel)
            try:
                await stub.GetStatus(pb.GetStatusRequest(), timeout=3)
            except grpc.aio.AioRpcError as err:
                assert err.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ), err
            else:
                raise AssertionError("a plaintext call to a TLS service succeeded")
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), START_TIMEOUT_S)
        await asyncio.wait_for(proc.wait(), START_TIMEOUT_S)
    core = [line for line in rest.decode().splitlines() if "Handshake failed" in line]
    assert core, rest.decode()[-2000:]
    assert "ssl_transport_security" in core[0] and "WRONG_VERSION_NUMBER" in core[0], core[0]
    assert not core[0].startswith("{"), "gRPC core's line, not one of the service's JSON lines"
    assert "127.0.0.1" not in core[0], "the client's address is not in it (grpc/grpc#32893)"
