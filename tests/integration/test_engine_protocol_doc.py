"""docs/engine-protocol.md's minimal engine, run as written: the code block is taken from the page,
started as its own process, and driven with a real DEALER through control_service.protocol.wire.
Also: the engine library imports nothing of the service and nothing of grpc."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_service.protocol import wire
from tests.harness import free_port
from tests.stub_process import REPO, EngineClient

DOC = REPO / "docs" / "engine-protocol.md"


def minimal_engine_source() -> str:
    text = DOC.read_text()
    match = re.search(r"<!-- minimal-engine -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/engine-protocol.md lost its minimal-engine block"
    return match.group(1)


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], EngineClient]]:
    script = tmp_path / "toy_engine.py"
    script.write_text(minimal_engine_source())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, str(script), endpoint], cwd=tmp_path)
    client = EngineClient(endpoint)  # a DEALER queues until the engine has bound
    try:
        yield proc, client
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_the_docs_minimal_engine_is_complete_and_short() -> None:
    lines = [line for line in minimal_engine_source().splitlines() if line.strip()]
    assert len(lines) <= 40, f"the minimal engine grew to {len(lines)} lines"


def test_the_docs_minimal_engine_speaks_the_protocol(
    toy: tuple[subprocess.Popen[bytes], EngineClient],
) -> None:
    proc, client = toy
    status = client.result("status", timeout=15.0)
    assert status.data["state"]["paused"] is False
    assert status.data["capabilities"]["pause_modes"] == ["abort", "wait"]

    early = client.call("update_weights", {"uri": "/ckpt", "version": "1"})[-1]
    assert (early.kind, early.data["code"]) == (wire.ERROR, "FAILED_PRECONDITION")
    keep = client.call("pause", {"mode": "keep"})[-1]
    assert (keep.kind, keep.data["code"]) == (wire.ERROR, "UNIMPLEMENTED"), "not in capabilities"
    assert client.result("pause", {"mode": "wait"}).data["state"]["paused"]

    load = client.call("update_weights", {"uri": "/ckpt", "version": "1"})
    assert [r.kind for r in load] == ["accepted", "progress", "progress", "progress", "result"]
    assert [r.data["done"] for r in load if r.kind == wire.PROGRESS] == [1, 2, 3]
    assert load[-1].data["state"]["weight_version"] == "1", "final state read from status()"

    assert not client.result("resume").data["state"]["paused"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0


def test_the_engine_library_imports_neither_the_service_nor_grpc() -> None:
    code = (
        "import sys, control_service.engine, engine_stub.handler\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'"
        " or m.startswith(('control_service.server', 'control_service.client',"
        " 'control_service.cli', 'control_service.gen')))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.strip() == "", f"control_service.engine pulled in {done.stdout.strip()}"
