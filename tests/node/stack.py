"""What the node tier's tests share: the running cluster, waiting on conditions, and the
manifests of the backends a feed records from and into (PostgreSQL and the simulator as pods).

Networking, as a kind cluster without a service mesh would see it, minus kube-proxy and DNS:
the backends get Services, and the feed is pointed at the Services' endpoints (the pods' IPs on
the node's bridge), read back from the API. A kind cluster would use the Service names; here no
kube-proxy rewrites ClusterIPs and no cluster DNS answers names, because both would write rules
or run servers outside the network namespaces and bridge the test run made. The operator, the
one pod that talks to the API server, is told the API server's address on the bridge through
KUBERNETES_SERVICE_HOST/PORT (a chart value), instead of the `kubernetes` Service's ClusterIP.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from harness.control_plane import ControlPlane
from harness.node import Node

T = TypeVar("T")

POSTGRES_PORT = 5432
SIMULATOR_PORT = 8765
SIMULATOR_SEED = 20240601
# Figures of the run (times, counts), printed in the terminal summary.
FIGURES: list[str] = []


@dataclass
class NodeCluster:
    """The running node and its control plane, with the images' names."""

    node: Node
    kube: ControlPlane
    optionfeed_image: str
    postgres_image: str

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.kube.kubectl(*args, check=check, input=input, timeout=timeout)

    def get(self, *args: str) -> dict[str, Any]:
        """`kubectl get ... -o json`, parsed."""
        result: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result

    def apply(self, *objects: dict[str, Any]) -> None:
        doc = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-n", namespace, "-l", selector)["items"]
        return items


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 120.0) -> T:
    """Poll `check` until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except (OSError, RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {last})"
            )
        time.sleep(0.25)


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method="POST" if data else "GET",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _restricted(run_as: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as,
        "runAsGroup": run_as,
        "fsGroup": run_as,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _deployment(name: str, namespace: str, pod: dict[str, Any], port: int) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": name}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"selector": labels, "ports": [{"port": port, "targetPort": port}]},
        },
    ]


def postgres_manifests(namespace: str, image: str) -> list[dict[str, Any]]:
    """PostgreSQL in a pod: a throwaway cluster in an emptyDir, trust auth on the pod network."""
    pod = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "securityContext": _restricted(999),
        "containers": [
            {
                "name": "postgres",
                "image": image,
                "imagePullPolicy": "Never",
                "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data"}],
                "ports": [{"containerPort": POSTGRES_PORT}],
                "readinessProbe": {
                    "exec": {"command": ["pg_isready", "-q", "-h", "127.0.0.1"]},
                    "periodSeconds": 1,
                },
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "securityContext": _CONTAINER_SECURITY,
                "volumeMounts": [
                    {"name": "data", "mountPath": "/var/lib/postgresql"},
                    {"name": "run", "mountPath": "/var/run/postgresql"},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
        "volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "run", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    return _deployment("postgres", namespace, pod, POSTGRES_PORT)


def simulator_manifests(namespace: str, image: str, *args: str) -> list[dict[str, Any]]:
    """`optionfeed simulate` in a pod, listening on the pod's address."""
    pod = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "securityContext": _restricted(65532),
        "containers": [
            {
                "name": "simulator",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["optionfeed"],
                "args": [
                    "simulate",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(SIMULATOR_PORT),
                    "--seed",
                    str(SIMULATOR_SEED),
                    *args,
                ],
                "ports": [{"containerPort": SIMULATOR_PORT}],
                "readinessProbe": {
                    "httpGet": {"path": "/sim/ledger?totals=true", "port": SIMULATOR_PORT},
                    "periodSeconds": 1,
                },
                "resources": {"requests": {"cpu": "200m", "memory": "128Mi"}},
                "securityContext": _CONTAINER_SECURITY,
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    return _deployment("simulator", namespace, pod, SIMULATOR_PORT)


def endpoint_ip(cluster: NodeCluster, namespace: str, service: str) -> str:
    """The ready address behind a Service, from its EndpointSlices."""

    def address() -> str | None:
        slices = cluster.get(
            "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}"
        )["items"]
        for s in slices:
            for endpoint in s.get("endpoints") or []:
                if endpoint.get("conditions", {}).get("ready"):
                    return str(endpoint["addresses"][0])
        return None

    return wait_for(f"a ready endpoint of Service {namespace}/{service}", address, timeout=120)
