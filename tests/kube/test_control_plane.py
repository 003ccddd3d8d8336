"""Smoke tests of the test control plane itself: if these fail, no tests/kube result means much."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Any

import pytest

import harness.control_plane
from harness.control_plane import ControlPlane, ControlPlaneError
from harness.control_plane import ToolRunner as Kubectl

IMAGE = "registry.invalid/optionfeed/none:0"  # never pulled: kwok runs no containers


def expected_version(control_plane: ControlPlane) -> str:
    # The cache directory is named after the version the build script built: k8s-vX.Y.Z/bin.
    return control_plane.bin_dir.parent.name.removeprefix("k8s-")


def get_json(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json").stdout)
    return result


def deployment_manifest(name: str, replicas: int) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "main", "image": IMAGE}]},
                },
            },
        }
    )


def test_api_server_and_kubectl_report_the_built_version(
    control_plane: ControlPlane, kubectl: Kubectl
) -> None:
    version = expected_version(control_plane)
    assert re.fullmatch(r"v1\.34\.\d+", version)
    server = control_plane.server_version()
    assert server["gitVersion"] == version
    assert (server["major"], server["minor"]) == ("1", "34")
    client = json.loads(kubectl("version", "-o", "json").stdout)
    assert client["clientVersion"]["gitVersion"] == version
    assert client["serverVersion"]["gitVersion"] == version


def test_crd_with_cel_rule_rejects_a_bad_object(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    group = f"g{secrets.token_hex(4)}.test.optionfeed.io"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "min": {"type": "integer"},
                                        "max": {"type": "integer", "default": 10},
                                    },
                                    "x-kubernetes-validations": [
                                        {"rule": "self.min <= self.max", "message": "min > max"}
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(crd))
    try:
        kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s")

        def widget(name: str, spec: dict[str, int]) -> str:
            return json.dumps(
                {
                    "apiVersion": f"{group}/v1",
                    "kind": "Widget",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": spec,
                }
            )

        kubectl("apply", "-f", "-", input=widget("good", {"min": 3}))
        good = get_json(kubectl, f"widgets.{group}", "good", "-n", namespace)
        assert good["spec"] == {"min": 3, "max": 10}  # the schema default applied

        bad = kubectl("apply", "-f", "-", input=widget("bad", {"min": 5, "max": 2}), check=False)
        assert bad.returncode != 0
        assert "min > max" in bad.stderr
    finally:
        kubectl("delete", "crd", f"widgets.{group}", "--wait=false")


def test_deployment_pod_runs_on_a_kwok_node(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment_manifest("web", 2))
    kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s")
    pods = get_json(kubectl, "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"] in control_plane.node_names
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"
    deployment = get_json(kubectl, "deployment", "web", "-n", namespace)
    assert deployment["status"]["availableReplicas"] == 2


def test_deleting_the_owner_garbage_collects_its_children(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace)
    owner_uid = get_json(kubectl, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(child))
    kubectl("apply", "-n", namespace, "-f", "-", input=deployment_manifest("gc", 1))
    kubectl("rollout", "status", "deployment/gc", "-n", namespace, "--timeout=90s")
    assert get_json(kubectl, "replicasets", "-n", namespace)["items"]

    kubectl("delete", "configmap", "owner", "-n", namespace)
    kubectl("delete", "deployment", "gc", "-n", namespace, "--cascade=background")

    def all_collected() -> bool:
        left = get_json(kubectl, "configmaps,replicasets,pods", "-n", namespace)["items"]
        return not [o for o in left if o["metadata"]["name"] != "kube-root-ca.crt"]

    control_plane.wait_until("children of deleted owners collected", all_collected, timeout=60)


def write_chart(directory: Path) -> Path:
    chart = directory / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: {{ .Release.Name }}-tiny\n"
        "data:\n"
        "  greeting: {{ .Values.greeting | quote }}\n"
        "  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    return chart


def test_helm_version_template_and_install(
    control_plane: ControlPlane, helm: Kubectl, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    assert re.match(r"v3\.21\.\d+", helm("version", "--short").stdout.strip())
    chart = write_chart(tmp_path)

    # Offline rendering assumes the Kubernetes minor the binaries were built for, not 1.20.
    rendered = helm("template", "demo", str(chart), "--set", "greeting=hi").stdout
    assert "name: demo-tiny" in rendered
    assert 'greeting: "hi"' in rendered
    assert 'kubeVersion: "v1.34.0"' in rendered

    helm("install", "demo", str(chart), "-n", namespace, "--wait", "--timeout=60s")
    data = get_json(kubectl, "configmap", "demo-tiny", "-n", namespace)["data"]
    assert data["kubeVersion"] == expected_version(control_plane)


def test_service_account_token_with_a_narrow_role(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubectl(
        "create", "role", "read-configmaps", "-n", namespace,
        "--verb=get,list,watch", "--resource=configmaps",
    )  # fmt: skip
    kubectl(
        "create", "rolebinding", "reader", "-n", namespace,
        "--role=read-configmaps", f"--serviceaccount={namespace}:reader",
    )  # fmt: skip
    kubectl("create", "configmap", "visible", "-n", namespace, "--from-literal=k=v")
    as_reader = control_plane.service_account_kubeconfig(namespace, "reader")

    allowed = kubectl("get", "configmap", "visible", "-o", "name", kubeconfig=as_reader)
    assert allowed.stdout.strip() == "configmap/visible"

    for forbidden in (
        ("create", "configmap", "nope", "--from-literal=k=v"),
        ("get", "secrets"),
        ("get", "configmaps", "-n", "default"),
    ):
        result = kubectl(*forbidden, kubeconfig=as_reader, check=False)
        assert result.returncode != 0, forbidden
        assert "forbidden" in result.stderr.lower(), result.stderr
    whoami = kubectl("auth", "whoami", "-o", "json", kubeconfig=as_reader).stdout
    username = json.loads(whoami)["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{namespace}:reader"


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_tier1_starts_and_stops_without_leftovers(control_plane: ControlPlane) -> None:
    with ControlPlane(tier=1, bin_dir=control_plane.bin_dir) as cp:
        assert cp.server_version()["gitVersion"] == expected_version(control_plane)
        pids = cp.component_pids()
        assert set(pids) == {"etcd", "kube-apiserver"}
        assert all(os.getpgid(pid) == pid for pid in pids.values())
        workdir = cp.workdir
        nodes = cp.kubectl("get", "nodes", "-o", "name").stdout
        assert nodes.strip() == ""
    assert not workdir.exists()
    assert not [name for name, pid in pids.items() if group_alive(pid)]
    with pytest.raises(ControlPlaneError):
        _ = cp.workdir


def test_a_dead_component_is_reported_with_its_log(tmp_path: Path) -> None:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    etcd = fake_bin / "etcd"
    etcd.write_text("#!/bin/sh\necho 'etcd: simulated start-up failure' >&2\nexit 3\n")
    etcd.chmod(0o755)
    cp = ControlPlane(tier=1, bin_dir=fake_bin, startup_timeout=30)
    with pytest.raises(ControlPlaneError, match="simulated start-up failure") as err:
        cp.start()
    assert "etcd exited with 3" in str(err.value)
    with pytest.raises(ControlPlaneError):
        _ = cp.workdir


def test_a_port_taken_before_the_api_server_binds_it_is_retried(
    control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real_free_ports = harness.control_plane.free_ports
    calls: list[list[int]] = []

    def first_api_port_taken(count: int) -> list[int]:
        ports = real_free_ports(count)
        if not calls:
            ports[2] = taken.getsockname()[1]  # etcd client, etcd peer, then the API server
        calls.append(ports)
        return ports

    monkeypatch.setattr(harness.control_plane, "free_ports", first_api_port_taken)
    try:
        with ControlPlane(tier=1, bin_dir=control_plane.bin_dir) as cp:
            assert cp.server_version()["gitVersion"] == expected_version(control_plane)
    finally:
        taken.close()
    assert len(calls) == 2
