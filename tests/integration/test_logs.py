"""Logs: one JSON line per call at its end, with request_id, method, engine, status, duration;
JSON off a terminal, console lines on one; --log-level filters."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import Callable

import grpc
import pytest
import structlog

from control_service import log
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


async def test_default_format_is_json_off_a_terminal_and_level_filters(
    start_stub: Callable[..., StubProcess],
) -> None:
    """No --log-format: stderr is a pipe, so JSON. --log-level warning: a successful call writes
    no line, a failed one still does."""
    stub = start_stub()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_SERVICE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service", "serve", "--listen", f"127.0.0.1:{port}",
        "--engine", f"e0={stub.endpoint}", "--log-level", "warning", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 15)
            rpc = control_pb2_grpc.ControlServiceStub(channel)
            await _until_reachable(rpc)
            [e async for e in rpc.Pause(pb.PauseRequest(request_id="quiet-1"), timeout=10)]
            try:
                [e async for e in rpc.Pause(pb.PauseRequest(request_id="bad id"), timeout=10)]
            except grpc.aio.AioRpcError:
                pass
            lines = await _lines_until(proc.stderr, lambda e: e.get("event") == "call ended")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
    assert all(e["level"] in ("warning", "error") for e in lines), lines
    assert [e["status"] for e in lines if e.get("event") == "call ended"] == ["INVALID_ARGUMENT"]
    assert not any(e.get("request_id") == "quiet-1" for e in lines), "OK calls are INFO"


async def _until_reachable(rpc: control_pb2_grpc.ControlServiceStub) -> None:
    """GetStatus until the engine is reachable (bounded): the service logs nothing at WARNING
    when the link comes up, so there is no line to wait for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not (await rpc.GetStatus(pb.GetStatusRequest(), timeout=5)).engines[0].reachable:
        assert loop.time() < deadline, "the engine never came up"
        await asyncio.sleep(0.01)


def test_console_lines_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    try:
        log.configure("info")
        assert isinstance(structlog.get_config()["processors"][-1], structlog.dev.ConsoleRenderer)
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        log.configure("info")
        assert isinstance(
            structlog.get_config()["processors"][-1], structlog.processors.JSONRenderer
        )
    finally:
        structlog.reset_defaults()
