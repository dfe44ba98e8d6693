"""deploy/k8s/vllm-adapter.yaml: the vLLM + adapter pod and the service pointing at it, checked
against the real command lines (the adapter's and the service's parsers read them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from control_service.adapters.__main__ import config_from, parser
from control_service.cli.serve import engine_configs
from control_service.server import LIVENESS

ROOT = Path(__file__).resolve().parents[2]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    docs = yaml.safe_load_all((ROOT / "deploy/k8s/vllm-adapter.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_vllm_is_reachable_only_through_its_adapter() -> None:
    pod = manifests()[("Pod", "vllm-0")]
    vllm, adapter = pod["spec"]["containers"]
    assert {"name": "VLLM_SERVER_DEV_MODE", "value": "1"} in vllm["env"]
    args = vllm["args"]
    host, port = args[args.index("--host") + 1], args[args.index("--port") + 1]
    assert host == "127.0.0.1", "vLLM's admin routes have no auth: localhost only"
    assert "ports" not in vllm, "no vLLM port is published"

    assert adapter["command"][:3] == ["control-service", "adapt", "vllm"]
    config = config_from(parser().parse_args(adapter["command"][2:]))
    assert config.url == f"http://127.0.0.1:{port}"
    assert config.curve_secret_key is not None and config.curve_allowed_clients is not None
    bind_port = int(config.bind.rsplit(":", 1)[1])
    assert adapter["ports"] == [{"name": "zmq", "containerPort": bind_port}]
    assert adapter["livenessProbe"]["tcpSocket"]["port"] == bind_port
    assert adapter["securityContext"]["runAsNonRoot"] is True


def test_the_service_points_at_the_adapter() -> None:
    m = manifests()
    adapter_service = m[("Service", "vllm-0-adapter")]
    pod = m[("Pod", "vllm-0")]
    assert adapter_service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = adapter_service["spec"]["ports"]
    container = m[("Deployment", "control-service")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    (engine,) = engine_configs(env["CONTROL_SERVICE_ENGINE"].split(","))
    assert (engine.name, engine.endpoint) == ("vllm-0", f"tcp://vllm-0-adapter:{port['port']}")
    assert port["targetPort"] == "zmq"
    assert env["CONTROL_SERVICE_ENGINE_CURVE_SERVER_KEY"].endswith("adapter.key")
    assert container["readinessProbe"]["grpc"]["service"] == "control.v1.ControlService"
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS
