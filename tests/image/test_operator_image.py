"""The operator from the image: ``optionfeed operator`` run by containerd as uid 65532 on a
read-only root, against a real kube-apiserver (etcd + kube-apiserver, tier 1). It ranks a feed
against the simulator and renders the shard Deployment, whose collectors run the same image."""

from __future__ import annotations

import contextlib
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.containerd import ContainerdError, PrivateContainerd
from harness.control_plane import ApiError, ControlPlane, ensure_binaries
from harness.oci import ROOT
from harness.ports import free_port
from harness.simulator import SimulatorProcess
from optionfeed_operator.manifests import DEFAULT_IMAGE, RUN_AS_USER

CRD_PATH = ROOT / "crds" / "optionfeed.io_optionfeeds.yaml"
NAMESPACE = "image-test"
FEED = "eth-top3"


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    ensure_binaries()  # built by `make k8s`; a no-op then
    with ControlPlane(tier=1) as cp:
        cp.kubectl("apply", "--server-side", "-f", str(CRD_PATH))
        cp.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/optionfeeds.optionfeed.io"
        )
        cp.kubectl("create", "namespace", NAMESPACE)
        cp.kubectl(
            "create", "secret", "generic", "optionfeed-db", "-n", NAMESPACE,
            "--from-literal=url=postgresql://collector@db.invalid/market",
        )  # fmt: skip
        yield cp


def wait_for(check: Callable[[], Any], what: str, log: Path, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}; the operator's log ends:\n{tail}")


@contextlib.contextmanager
def operator_container(
    containerd: PrivateContainerd, control_plane: ControlPlane, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """The operator in the image, watching NAMESPACE; yields its liveness URL and log file."""
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copyfile(control_plane.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)  # read by uid 65532
    log = tmp_path / "operator.log"
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    name = "image-test-operator"
    containerd.ctr(
        "run",
        "--detach",
        "--read-only",
        "--net-host",
        f"--log-uri=file://{log}",
        "--mount",
        f"type=bind,src={kubeconfig},dst=/etc/optionfeed/kubeconfig,options=rbind:ro",
        "--mount",
        "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev:mode=1777",
        "--env",
        "KUBECONFIG=/etc/optionfeed/kubeconfig",
        DEFAULT_IMAGE,
        name,
        "optionfeed",
        "operator",
        "--namespace",
        NAMESPACE,
        "--standalone",
        f"--liveness={liveness}",
        namespace="amd64",
    )
    try:
        yield liveness, log
    finally:
        with contextlib.suppress(ContainerdError):
            containerd.ctr("task", "kill", "--signal", "SIGTERM", name, namespace="amd64")
        for _ in range(60):
            try:
                containerd.ctr("task", "delete", name, namespace="amd64")
                break
            except ContainerdError:
                time.sleep(0.5)
        containerd.ctr("container", "delete", name, namespace="amd64")


def test_operator_from_the_image_renders_collectors_that_run_the_same_image(
    containerd: PrivateContainerd, control_plane: ControlPlane, tmp_path: Path
):
    with (
        SimulatorProcess("--rate", "0", "--currencies", "ETH", seed=7) as exchange,
        operator_container(containerd, control_plane, tmp_path) as (liveness, log),
    ):

        def alive() -> bool:
            try:
                with urllib.request.urlopen(liveness, timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_for(alive, "the operator's liveness endpoint", log)
        control_plane.api(
            "POST",
            f"/apis/optionfeed.io/v1alpha1/namespaces/{NAMESPACE}/optionfeeds",
            {
                "apiVersion": "optionfeed.io/v1alpha1",
                "kind": "OptionFeed",
                "metadata": {"name": FEED, "namespace": NAMESPACE},
                "spec": {
                    "currency": "ETH",
                    "topN": 3,
                    "exchange": {"url": exchange.ws_url},
                    "database": {"secretRef": {"name": "optionfeed-db", "key": "url"}},
                },
            },
        )

        def deployment() -> dict[str, Any] | None:
            path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{FEED}-shard-0"
            try:
                return control_plane.api("GET", path)
            except ApiError as exc:
                if exc.status == 404:
                    return None
                raise

        rendered = wait_for(deployment, f"Deployment {FEED}-shard-0", log)
        pod = rendered["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == DEFAULT_IMAGE
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["securityContext"]["runAsUser"] == RUN_AS_USER
        assert "Traceback" not in log.read_text(errors="replace")
