"""Every Kubernetes manifest under deploy/ is valid against the Kubernetes schemas, offline.

kubernetes-validate ships the schemas of each Kubernetes release, so a misspelt field or a wrong
type fails here (strict: unknown fields too), not in `kubectl apply` on a cluster at 3 a.m.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The oldest release the manifests promise to work on (gRPC probes are GA since 1.27) and the
# newest the installed schemas know.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
MANIFESTS = sorted((ROOT / "deploy").rglob("*.yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_the_deploy_folder_has_the_manifests_we_document() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"sidecar.yaml", "vllm-adapter.yaml", "fleet.yaml"} <= names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_wrong_field_is_caught() -> None:
    """The check itself: the same validation refuses a typo and a wrong type."""
    fleet = documents(ROOT / "deploy/k8s/fleet.yaml")
    (deployment,) = [d for d in fleet if d["kind"] == "Deployment"]
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[-1], strict=True)
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_fleet_control_service_arguments_are_accepted_by_serve() -> None:
    """The Deployment's args and CONTROL_SERVICE_* variables, through the real `serve` parser:
    a typo'd flag or variable cannot ship. Variables naming files that only exist in the pod
    (keys, token) are checked by name; the others are parsed with the args."""
    from control_service.cli import app, serve

    fleet = documents(ROOT / "deploy/k8s/fleet.yaml")
    (deployment,) = [d for d in fleet if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    options = {opt: param for param in serve.command.params for opt in param.opts}
    variables = {
        "CONTROL_SERVICE_" + opt.removeprefix("--").replace("-", "_").upper(): param
        for opt, param in options.items()
        if opt.startswith("--")
    }
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    assert set(env) <= set(variables), f"not serve variables: {set(env) - set(variables)}"
    flags: list[str] = []
    for name, value in env.items():
        if not isinstance(variables[name].type, click.Path):
            flags += [f"--{name.removeprefix('CONTROL_SERVICE_').lower().replace('_', '-')}", value]
    plan = app.parse(["serve", *flags, *container["args"]])
    assert isinstance(plan, serve.Serve)
    assert plan.config.engines_dns == "vllm-engines.rl.svc.cluster.local:5560"
    assert (plan.config.engines_dns_interval_s, plan.config.ready_min_engines) == (5.0, 1)
    assert plan.config.listen == "0.0.0.0:50051" and plan.log_format == "json"
