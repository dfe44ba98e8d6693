"""Every Kubernetes manifest under deploy/ is valid against the Kubernetes schemas, offline.

kubernetes-validate ships the schemas of each Kubernetes release, so a misspelt field or a wrong
type fails here (strict: unknown fields too), not in `kubectl apply` on a cluster at 3 a.m.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
