"""Embedded engines: against a scripted engine program, so that slow, dying and stubborn engines
can be provoked; then once with the real engine_stub and the real server."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import grpc
import pytest

from control_service.cli.embedded import EmbeddedEngines
from control_service.errors import ControlError
from control_service.server.config import ServiceConfig

FAKE_ENGINE = textwrap.dedent(
    """
    import json, os, signal, sys
    args = sys.argv[1:]
    bind, name = args[args.index("--bind") + 1], args[args.index("--name") + 1]
    mode = args[args.index("--mode") + 1] if "--mode" in args else "ok"
    if mode == "exit" or f"fail={name}" in args:
        print("boom: cannot bind", file=sys.stderr, flush=True)
        sys.exit(3)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("starting up (not json)", flush=True)
    if mode != "silent":
        endpoint = bind.replace(":0", ":5555")
        print(json.dumps({"event": "ready", "endpoint": endpoint, "pid": os.getpid()}), flush=True)
        print(json.dumps({"event": "argv", "argv": args}), flush=True)
        for i in range(3000):  # ~200 KB: more than a pipe holds, so someone must drain it
            print(json.dumps({"event": "request", "i": i, "pad": "x" * 48}))
        print(json.dumps({"event": "done"}), flush=True)
    signal.sigwait({signal.SIGUSR1} if mode == "stubborn" else {signal.SIGTERM})
    sys.exit(0)
    """
)


@pytest.fixture
def fake_engine(tmp_path: Path) -> tuple[str, ...]:
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return (sys.executable, str(script))


async def test_embedded_engines_report_actual_endpoints_drain_and_stop(
    fake_engine: tuple[str, ...],
) -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    done = asyncio.Event()

    def on_line(name: str, event: dict[str, Any]) -> None:
        lines.append((name, event))
        if event.get("event") == "done" and sum(e.get("event") == "done" for _, e in lines) == 2:
            done.set()

    engines = EmbeddedEngines(
        2, transport="tcp", extra_args=["--mode", "ok"], on_line=on_line, command=fake_engine
    )
    async with engines as configs:
        assert [(c.name, c.endpoint) for c in configs] == [
            ("engine-0", "tcp://127.0.0.1:5555"),
            ("engine-1", "tcp://127.0.0.1:5555"),
        ]
        await asyncio.wait_for(done.wait(), 30)
    argv = next(e["argv"] for _, e in lines if e.get("event") == "argv")
    assert argv[-2:] == ["--mode", "ok"]
    assert engines.returncodes == (0, 0)  # exited by their SIGTERM handling, not killed


async def test_embedded_ipc_endpoints_live_in_a_private_dir_removed_on_exit(
    fake_engine: tuple[str, ...],
) -> None:
    async with EmbeddedEngines(1, command=fake_engine) as configs:
        path = Path(configs[0].endpoint.removeprefix("ipc://"))
        assert configs[0].endpoint.startswith("ipc://") and path.name == "engine-0.sock"
        assert path.parent.is_dir() and path.parent.name.startswith("control-service-")
    assert not path.parent.exists()


async def test_embedded_engine_that_dies_explains_why_and_takes_the_others_down(
    fake_engine: tuple[str, ...],
) -> None:
    engines = EmbeddedEngines(2, extra_args=["fail=engine-1"], command=fake_engine)
    with pytest.raises(ControlError) as info:
        await engines.start()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "engine-1 exited with code 3" in info.value.message
    assert "boom: cannot bind" in info.value.message
    assert all(code is not None for code in engines.returncodes)


async def test_embedded_engine_never_ready_times_out(fake_engine: tuple[str, ...]) -> None:
    engines = EmbeddedEngines(
        1, extra_args=["--mode", "silent"], ready_timeout_s=0.5, command=fake_engine
    )
    with pytest.raises(ControlError, match=r"not ready within 0\.5s"):
        await engines.start()
    assert engines.returncodes == (0,)  # stopped with SIGTERM after the timeout


async def test_embedded_engine_ignoring_sigterm_is_killed(fake_engine: tuple[str, ...]) -> None:
    engines = EmbeddedEngines(
        1, extra_args=["--mode", "stubborn"], stop_timeout_s=0.5, command=fake_engine
    )
    async with engines:
        pass
    assert engines.returncodes == (-9,)


async def test_real_engine_stub_serves_over_ipc_and_exits_cleanly_on_sigterm() -> None:
    pytest.importorskip("engine_stub")
    from control_service.server import ControlServer

    engines = EmbeddedEngines(1, forward_stderr=False)
    async with engines as configs:
        assert configs[0].endpoint.startswith("ipc://")
        assert configs[0].endpoint.endswith("/engine-0.sock")
        # Up means heartbeats flow, so the stub is past its start-up (signal handlers included).
        server = ControlServer(ServiceConfig(engines=configs, listen="127.0.0.1:0"))
        await server.start()
        try:
            assert await server.wait_engines_up(10.0)
        finally:
            await server.stop(grace=0.5)
    assert engines.returncodes == (0,)
