"""The shipped manifests under deploy/ on a real API server: the namespace enforces the
"restricted" Pod Security Standard, the operator's Deployment is admitted there and its pod runs
(under kwok), one replica with the Recreate strategy, as the ServiceAccount the RBAC binds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.control_plane import ControlPlane
from kube.operator_fixtures import optionfeed_crd_fixture, wait_for  # noqa: F401

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAMESPACE = "optionfeed-system"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


@pytest.fixture(scope="module")
def deployed(control_plane: ControlPlane, optionfeed_crd: str) -> Iterator[None]:
    for name in ("namespace.yaml", "rbac.yaml", "operator.yaml"):
        control_plane.kubectl("apply", "--server-side", "-f", str(DEPLOY / name))
    try:
        yield
    finally:
        control_plane.kubectl(
            "delete", "-f", str(DEPLOY / "rbac.yaml"), "--wait=false", check=False
        )
        control_plane.kubectl("delete", "namespace", NAMESPACE, "--timeout=120s", check=False)


def test_the_operator_deployment_runs_restricted_as_its_service_account(
    control_plane: ControlPlane, deployed: None
) -> None:
    namespace = control_plane.api("GET", f"/api/v1/namespaces/{NAMESPACE}")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    def running_pod() -> dict[str, Any] | None:
        pods = control_plane.api(
            "GET",
            f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=app.kubernetes.io/name=optionfeed-operator",
        )["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running[0] if len(pods) == 1 and running else None

    # Admitted by Pod Security admission (restricted) and started on a kwok node.
    pod = wait_for(running_pod, "the operator pod to run", timeout=60)
    assert pod["spec"]["serviceAccountName"] == "optionfeed-operator"
    args = pod["spec"]["containers"][0]["args"]
    assert args[:3] == ["operator", "--all-namespaces", "--standalone"]
    deployment = control_plane.api(
        "GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/optionfeed-operator"
    )
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    events = control_plane.api("GET", f"/api/v1/namespaces/{NAMESPACE}/events")["items"]
    assert not [e for e in events if e.get("reason") == "FailedCreate"], json.dumps(events)


def test_the_cluster_role_binding_grants_the_shipped_rules_to_the_operator(
    control_plane: ControlPlane, deployed: None
) -> None:
    service_account = f"system:serviceaccount:{NAMESPACE}:optionfeed-operator"

    def can(verb: str, resource: str, namespace: str = "default") -> bool:
        result = control_plane.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, "--as", service_account, check=False
        )
        return result.stdout.strip() == "yes"

    wait_for(lambda: can("watch", "optionfeeds.optionfeed.io"), "the binding to take effect")
    assert can("patch", "optionfeeds.optionfeed.io/status", "any-namespace")
    assert can("delete", "deployments.apps")
    assert can("create", "events")
    # And nothing beyond them.
    assert not can("get", "secrets")
    assert not can("delete", "optionfeeds.optionfeed.io")
    assert not can("create", "pods")
    assert not can("update", "deployments.apps")
    cluster_role = next(d for d in documents("rbac.yaml") if d["kind"] == "ClusterRole")
    assert not any(
        "*" in rule["verbs"] or "*" in rule["resources"] for rule in cluster_role["rules"]
    )
