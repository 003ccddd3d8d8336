"""Helpers and fixtures for the operator's tests on the real control plane.

The operator runs as a real process, ``python -m optionfeed operator --namespace <ns>``, with a
kubeconfig in its environment: the command line, kopf's startup, login and signal handling, and
(in the RBAC tests) a ServiceAccount token all take part, and a restart is a real restart. Each
test gets its own namespace and its own operator watching only that namespace, so tests cannot
see each other's feeds. kopf's liveness endpoint says when the operator is up.

Test modules import the fixtures by their function names (``kube_fixture``...); pytest knows them
by the names given in ``@pytest.fixture(name=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml

from harness.control_plane import ApiError, ControlPlane
from harness.ports import free_port
from harness.simulator import SimulatorProcess
from optionfeed.deribit.rest import RestClient, fetch_ranking

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "optionfeed.io_optionfeeds.yaml"
RBAC_PATH = ROOT / "deploy" / "rbac.yaml"
TEST_IMAGE = "registry.invalid/optionfeed/collector:test"  # never pulled: kwok runs no containers
GROUP_PATH = "/apis/optionfeed.io/v1alpha1"

T = TypeVar("T")


class OperatorProcess:
    """``optionfeed operator`` as a child process, with its output in a log file."""

    def __init__(
        self,
        control_plane: ControlPlane,
        namespace: str,
        log_dir: Path,
        *,
        kubeconfig: Path | None = None,
        resync_interval: float = 2.0,
        metrics_port: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.control_plane = control_plane
        self.metrics_port = metrics_port
        self.extra_env = dict(env or {})
        self.namespace = namespace
        self.kubeconfig = kubeconfig or control_plane.kubeconfig
        self.resync_interval = resync_interval
        self.log_path = log_dir / f"operator-{namespace}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        assert self.process is None, "already running"
        port = free_port()
        env = self.control_plane.env(self.kubeconfig)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        args = [
            sys.executable,
            "-m",
            "optionfeed",
            "--log-level",
            "DEBUG",
            "operator",
            "--namespace",
            self.namespace,
            "--standalone",
            f"--liveness=http://127.0.0.1:{port}/healthz",
            "--resync-interval",
            str(self.resync_interval),
            "--collector-image",
            TEST_IMAGE,
            "--metrics-port",
            str(self.metrics_port),
        ]
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(args)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        url = f"http://127.0.0.1:{port}/healthz"

        def alive() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the operator exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_for(alive, "the operator's liveness endpoint", timeout=timeout, log=self)
        return self

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return 0
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"the operator did not stop within {timeout}s") from None

    def restart(self) -> None:
        assert self.stop() == 0
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def wait_for(
    condition: Callable[[], T | None],
    what: str,
    *,
    timeout: float = 30.0,
    interval: float = 0.25,
    log: OperatorProcess | None = None,
) -> T:
    """Poll until ``condition`` returns something truthy, and return it; fail after ``timeout``
    with the operator's last log lines."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (ApiError, KeyError, IndexError, TypeError) as exc:
            last = exc
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:.0f}s waiting for {what}"
            if last is not None:
                message += f" (last error: {last!r})"
            if log is not None:
                message += f"\n--- operator log ---\n{log.tail()}"
            raise AssertionError(message)
        time.sleep(interval)


# --- the API -----------------------------------------------------------------------------------


class Kube:
    """Small JSON helpers over the control plane's admin API."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.cp = control_plane
        self.ns = namespace

    def feed_path(self, name: str = "") -> str:
        return f"{GROUP_PATH}/namespaces/{self.ns}/optionfeeds" + (f"/{name}" if name else "")

    def feed(self, name: str) -> dict[str, Any]:
        return self.cp.api("GET", self.feed_path(name))

    def create_feed(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "optionfeed.io/v1alpha1",
            "kind": "OptionFeed",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"database": {"secretRef": {"name": "optionfeed-db", "key": "url"}}, **spec},
        }
        return self.cp.api("POST", self.feed_path(), body)

    def patch_feed(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.cp.api(
            "PATCH",
            self.feed_path(name),
            {"spec": spec},
            content_type="application/merge-patch+json",
        )

    def deployments(self, feed: str) -> dict[str, dict[str, Any]]:
        selector = f"optionfeed.io/feed={feed}"
        items = self.cp.api(
            "GET", f"/apis/apps/v1/namespaces/{self.ns}/deployments?labelSelector={selector}"
        )["items"]
        return {d["metadata"]["name"]: d for d in items}

    def all_deployments(self) -> dict[str, dict[str, Any]]:
        items = self.cp.api("GET", f"/apis/apps/v1/namespaces/{self.ns}/deployments")["items"]
        return {d["metadata"]["name"]: d for d in items}

    def configmap(self, name: str) -> dict[str, Any] | None:
        try:
            return self.cp.api("GET", f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def pods(self, feed: str) -> list[dict[str, Any]]:
        selector = f"optionfeed.io/feed={feed}"
        items: list[dict[str, Any]] = self.cp.api(
            "GET", f"/api/v1/namespaces/{self.ns}/pods?labelSelector={selector}"
        )["items"]
        return items

    def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.cp.api("GET", f"/api/v1/namespaces/{self.ns}/events")[
            "items"
        ]
        return [e for e in items if reason is None or e.get("reason") == reason]

    def exists(self, path: str) -> bool:
        try:
            self.cp.api("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


def condition(feed: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for item in feed.get("status", {}).get("conditions", []):
        if item.get("type") == kind:
            return dict(item)
    return None


def is_condition(feed: dict[str, Any], kind: str, status: str, reason: str | None = None) -> bool:
    """The condition holds for the feed's current generation."""
    found = condition(feed, kind)
    return (
        found is not None
        and found["status"] == status
        and (reason is None or found.get("reason") == reason)
        and found.get("observedGeneration") == feed["metadata"]["generation"]
    )


def shard_documents(configmap: dict[str, Any]) -> list[dict[str, Any]]:
    data = configmap.get("data") or {}
    return [json.loads(data[f"shard-{i}.json"]) for i in range(len(data))]


def shard_instruments(configmap: dict[str, Any]) -> list[list[str]]:
    return [doc["instruments"] for doc in shard_documents(configmap)]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session", name="optionfeed_crd")
def optionfeed_crd_fixture(control_plane: ControlPlane) -> str:
    """The project's CRD, installed once and Established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(CRD_PATH))
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/optionfeeds.optionfeed.io"
    )
    return "optionfeeds.optionfeed.io"


@pytest.fixture(name="kube")
def kube_fixture(control_plane: ControlPlane, namespace: str, optionfeed_crd: str) -> Kube:
    return Kube(control_plane, namespace)


@pytest.fixture(name="operator_process")
def operator_process_fixture(
    control_plane: ControlPlane, namespace: str, optionfeed_crd: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """An operator (as admin) watching the test's namespace; the test starts it. Its log is in
    the test's tmp_path, and its last lines are in every wait_for failure."""
    process = OperatorProcess(control_plane, namespace, tmp_path)
    try:
        yield process
    finally:
        with contextlib.suppress(AssertionError):
            process.stop()
        if os.environ.get("OPTIONFEED_SHOW_OPERATOR_LOG"):
            sys.stderr.write(f"\n--- operator log ({process.log_path}) ---\n{process.tail(200)}\n")


def rbac_rules() -> list[dict[str, Any]]:
    """The ClusterRole rules the project ships."""
    for doc in yaml.safe_load_all(RBAC_PATH.read_text()):
        if doc and doc.get("kind") == "ClusterRole":
            rules: list[dict[str, Any]] = doc["rules"]
            return rules
    raise AssertionError(f"{RBAC_PATH} has no ClusterRole")


# The simulator for these tests: no market events, so volumes and open interest stay as seeded and
# every ranking of the session gives the same answer, which a test can compute itself.
SIMULATOR_ARGS = ("--rate", "0", "--currencies", "BTC,ETH,USDC")


@pytest.fixture(scope="session", name="exchange")
def exchange_fixture() -> Iterator[SimulatorProcess]:
    """One simulator for the session; the operator ranks against its REST API."""
    with SimulatorProcess(*SIMULATOR_ARGS, seed=7) as simulator:
        yield simulator


def ranked(
    exchange: SimulatorProcess, currency: str, top_n: int | None, rank_by: str = "volume_usd"
) -> list[str]:
    """What the operator should select: the shared ranking, asked of the same exchange."""

    async def rank() -> list[str]:
        async with aiohttp.ClientSession() as session:
            names, _ = await fetch_ranking(
                RestClient(exchange.ws_url, session), currency, top_n=top_n, rank_by=rank_by
            )
            return names

    return asyncio.run(rank())
