"""What the node tier's tests share: the running cluster, waiting on conditions, and the
manifests of the backends a feed records from and into (PostgreSQL and the simulator as pods) and
of the feed: the very files the CI's kind job applies (.github/kind/backends.yaml, feed.yaml).

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
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.control_plane import ControlPlane
from harness.node import Node

T = TypeVar("T")

KIND_MANIFESTS = Path(__file__).resolve().parents[2] / ".github" / "kind"
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


def _documents(name: str) -> list[dict[str, Any]]:
    with (KIND_MANIFESTS / name).open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def backend_manifests(optionfeed_image: str, postgres_image: str) -> list[dict[str, Any]]:
    """The CI's backends.yaml (namespace, PostgreSQL and the simulator with their Services), with
    this node's image names: both were imported into its containerd, nothing is pulled."""
    images = {"postgres": postgres_image, "simulator": optionfeed_image}
    documents = _documents("backends.yaml")
    for doc in documents:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container["image"] = images[container["name"]]
                container["imagePullPolicy"] = "Never"
    return documents


def feed_manifest(exchange_url: str | None = None) -> dict[str, Any]:
    """The CI's feed.yaml; with `exchange_url`, pointed at the simulator's pod address instead of
    its Service's name (no cluster DNS here)."""
    (feed,) = _documents("feed.yaml")
    if exchange_url is not None:
        feed["spec"]["exchange"]["url"] = exchange_url
    return feed


def simulator_args() -> list[str]:
    """The simulator's command-line arguments in backends.yaml."""
    for doc in _documents("backends.yaml"):
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "simulator":
            args: list[str] = doc["spec"]["template"]["spec"]["containers"][0]["args"]
            return [str(a) for a in args]
    raise AssertionError("backends.yaml has no simulator Deployment")


def simulator_flag(flag: str) -> str:
    args = simulator_args()
    return args[args.index(flag) + 1]


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
