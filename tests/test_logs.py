"""Logs: one JSON line per call at its end, with request_id, method, engine, status, duration."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable

import grpc

from control_service.gen.control.v1 import control_pb2 as pb
from control_service.gen.control.v1 import control_pb2_grpc
from tests.harness import free_port
from tests.stub_process import StubProcess


async def test_call_end_lines_are_json_with_their_fields(
    start_stub: Callable[..., StubProcess],
) -> None:
    stub = start_stub()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", "serve", "--listen", f"127.0.0.1:{port}",
        "--engine", f"e0={stub.endpoint}", "--log-format", "json", "--log-level", "info",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 15)
            rpc = control_pb2_grpc.ControlServiceStub(channel)
            lines = await _lines_until(proc.stderr, lambda e: e.get("event") == "engine up")
            [e async for e in rpc.Pause(pb.PauseRequest(request_id="log-1"), timeout=10)]
            with_error = rpc.UpdateWeights(
                pb.UpdateWeightsRequest(request_id="log-2", uri="/x", version="1")
            )
            try:
                [e async for e in with_error]
            except grpc.aio.AioRpcError:
                pass
            lines = await _lines_until(proc.stderr, lambda e: e.get("request_id") == "log-2")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
    ended = {e["request_id"]: e for e in lines if e.get("event") == "call ended"}
    ok, failed = ended["log-1"], ended["log-2"]
    assert (ok["method"], ok["engine"], ok["status"], ok["level"]) == ("Pause", "e0", "OK", "info")
    assert isinstance(ok["duration_ms"], float) and "timestamp" in ok
    assert (failed["status"], failed["level"]) == ("NOT_FOUND", "warning")
    assert "e0: NOT_FOUND" in failed["error"]
    assert sum(1 for e in lines if e.get("request_id") == "log-2") == 1, "logged once"


async def _lines_until(stream: asyncio.StreamReader, done: Callable[[dict], bool]) -> list[dict]:
    """JSON log lines up to the first that satisfies `done` (bounded; every line must parse)."""
    lines: list[dict] = []
    while True:
        raw = await asyncio.wait_for(stream.readline(), 15)
        assert raw, "the service exited"
        lines.append(json.loads(raw))
        if done(lines[-1]):
            return lines
