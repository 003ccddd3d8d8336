"""End to end on a real node, nothing faked: the chart installs the operator as a pod, PostgreSQL
and the simulator run as pods, and an OptionFeed makes collector pods that record into the
database. Then the feed is re-sharded, rolled, runs under load, loses a pod, has a new pod held
out of readiness while the exchange refuses its subscriptions, and the chart is upgraded and
uninstalled.

The tests of this module run in order on one feed (each step starts from the state the previous
one left), as an operator of a real cluster would do them one after the other.
Figures (pods started, rows against the simulator's ledger, time to first row, the roll, the
pod deletion) are printed in the run's summary.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness.collector import fetch, sent_per_instrument, stored_per_instrument
from node.stack import (
    FIGURES,
    NodeCluster,
    backend_manifests,
    endpoint_ip,
    feed_manifest,
    http_json,
    is_ready,
    simulator_flag,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "optionfeed"
CRD_NAME = "optionfeeds.optionfeed.io"
RELEASE = "optionfeed"
OPERATOR_NAMESPACE = "optionfeed-system"
OPERATOR_SA = f"{RELEASE}-operator"
# The feed and its backends are the CI's (.github/kind/feed.yaml, backends.yaml): the ETH top 12 by
# open interest (slow to change, so re-ranks keep the selection) over 2 shards, from a simulator at
# 600 events/s, at which each of the top instruments gets tickers every second and trades every few.
FEED_MANIFEST = feed_manifest()
NAMESPACE = FEED_MANIFEST["metadata"]["namespace"]
FEED = FEED_MANIFEST["metadata"]["name"]
DB_SECRET = FEED_MANIFEST["spec"]["database"]["secretRef"]["name"]
TOP_N = FEED_MANIFEST["spec"]["topN"]
COLLECTOR_RESOURCES = FEED_MANIFEST["spec"]["collector"]["resources"]
SIMULATOR_PORT = int(simulator_flag("--port"))
SIMULATOR_RATE = int(simulator_flag("--rate"))
SIMULATOR_CLIENT_ID = "optionfeed-sim"
SIMULATOR_CLIENT_SECRET = "optionfeed-sim-secret"
RECORD_SECONDS = 10.0
# The load check: a second feed, the simulator's rate (market events/s; about two notifications
# each when every option is subscribed), how long, and the collector's memory limit.
LOAD_FEED = "load"
# The simulator's rate while a collector pod is deleted.
DELETION_RATE = 3000
# Subscribes the exchange may refuse while a new collector pod starts: more than the pod can try
# before the test lifts the refusal, and few enough that the simulator reports how many it used.
REFUSAL_BUDGET = 10_000
LOAD_RATE = 2000.0
LOAD_SECONDS = 30.0
LOAD_LIMIT_BYTES = 256 * 2**20

pytestmark = pytest.mark.slow


@dataclass
class Backends:
    """PostgreSQL and the simulator, running as pods; their addresses on the pod bridge."""

    database_url: str
    simulator_url: str
    figures: list[str] = field(default_factory=list)

    @property
    def exchange_url(self) -> str:
        return self.simulator_url.replace("http://", "ws://") + "/ws/api/v2"

    def ledger(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json(f"{self.simulator_url}/sim/ledger")
        return result

    def query(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in asyncio.run(fetch(self.database_url, sql, *args))]

    def stored(self, table: str) -> dict[str, int]:
        return asyncio.run(stored_per_instrument(self.database_url, table))

    def trades(self) -> dict[str, list[int]]:
        rows = self.query(
            "SELECT instrument, trade_seq FROM option_trades ORDER BY instrument, trade_seq"
        )
        out: dict[str, list[int]] = {}
        for row in rows:
            out.setdefault(row["instrument"], []).append(int(row["trade_seq"]))
        return out


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(node_cluster: NodeCluster) -> Iterator[NodeCluster]:
    node_cluster.kubectl("create", "namespace", NAMESPACE)
    node_cluster.kube.wait_for_service_account(NAMESPACE, "default")
    yield node_cluster
    node_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def backends(cluster: NodeCluster) -> Backends:
    """PostgreSQL and the simulator as Deployments with Services, Ready."""
    started = time.monotonic()
    cluster.apply(*backend_manifests(cluster.optionfeed_image, cluster.postgres_image))
    db_ip = endpoint_ip(cluster, NAMESPACE, "postgres")
    sim_ip = endpoint_ip(cluster, NAMESPACE, "simulator")
    found = Backends(
        database_url=f"postgresql://postgres@{db_ip}:5432/postgres",
        simulator_url=f"http://{sim_ip}:{SIMULATOR_PORT}",
    )
    FIGURES.append(
        f"PostgreSQL ({db_ip}) and simulator ({sim_ip}) pods Ready "
        f"{time.monotonic() - started:.1f}s after apply"
    )
    return found


@pytest.fixture(scope="module")
def operator(cluster: NodeCluster) -> Iterator[dict[str, Any]]:
    """`helm install` of the chart; yields the operator's pod once Ready."""
    values = cluster.node.workdir / "operator-values.json"
    values.write_text(json.dumps(operator_values(cluster)))
    started = time.monotonic()
    cluster.kube.helm(
        "install", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
        "--values", str(values), "--wait", "--timeout", "180s",
    )  # fmt: skip
    pod = wait_for("the operator pod Ready", lambda: ready_operator_pod(cluster), timeout=120)
    FIGURES.append(f"helm install: operator pod Ready {time.monotonic() - started:.1f}s after")
    yield pod
    cluster.kube.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, check=False)


def operator_values(cluster: NodeCluster) -> dict[str, Any]:
    repository, tag = cluster.optionfeed_image.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "resyncInterval": 10,
        # No kube-proxy routes the `kubernetes` Service's ClusterIP here: the in-cluster client
        # is pointed at the API server's address on the pod bridge (see node/stack.py).
        "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": cluster.node.gateway},
            {"name": "KUBERNETES_SERVICE_PORT", "value": str(cluster.kube.port)},
        ],
    }


def ready_operator_pod(cluster: NodeCluster) -> dict[str, Any] | None:
    pods = cluster.pods(OPERATOR_NAMESPACE, "app.kubernetes.io/component=operator")
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if len(live) == 1 and is_ready(live[0]) else None


# --- helpers --------------------------------------------------------------------------------


def feed(cluster: NodeCluster, name: str = FEED) -> dict[str, Any]:
    return cluster.get("optionfeed", name, "-n", NAMESPACE)


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for c in obj.get("status", {}).get("conditions", []):
        if (
            c["type"] == kind
            and c.get("observedGeneration", obj["metadata"]["generation"])
            == obj["metadata"]["generation"]
        ):
            return str(c["status"])
    return None


def collector_pods(cluster: NodeCluster, name: str = FEED) -> list[dict[str, Any]]:
    return cluster.pods(NAMESPACE, f"optionfeed.io/feed={name}")


def shard_deployments(cluster: NodeCluster, name: str = FEED) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get(
        "deployments", "-n", NAMESPACE, "-l", f"optionfeed.io/feed={name}"
    )["items"]
    return sorted(items, key=lambda d: d["metadata"]["name"])


def rolled_out(deployment: dict[str, Any]) -> bool:
    spec, status = deployment["spec"], deployment.get("status", {})
    want = spec.get("replicas", 1)
    return bool(
        status.get("observedGeneration") == deployment["metadata"]["generation"]
        and status.get("updatedReplicas", 0) == want
        and status.get("readyReplicas", 0) == want
        and status.get("replicas", 0) == want
    )


def feed_settled(cluster: NodeCluster, shards: int, name: str = FEED) -> bool:
    """Every shard Deployment rolled out and Ready, the feed's status says so, no extra pods."""
    deployments = shard_deployments(cluster, name)
    if len(deployments) != shards or not all(rolled_out(d) for d in deployments):
        return False
    live = [p for p in collector_pods(cluster, name) if not p["metadata"].get("deletionTimestamp")]
    if len(live) != shards or not all(is_ready(p) for p in live):
        return False
    current = feed(cluster, name)
    ready = current.get("status", {}).get("readyShards") == shards
    return ready and condition(current, "Ready") == "True"


def assignment(cluster: NodeCluster) -> list[list[str]]:
    cm = cluster.get("configmap", f"{FEED}-assignment", "-n", NAMESPACE)
    docs = sorted(
        (json.loads(v) for k, v in cm["data"].items() if k.startswith("shard-")),
        key=lambda d: d["shard"],
    )
    return [list(d["instruments"]) for d in docs]


def suspend(cluster: NodeCluster, value: bool) -> None:
    patch = json.dumps({"spec": {"suspend": value}})
    cluster.kubectl("patch", "optionfeed", FEED, "-n", NAMESPACE, "--type=merge", "-p", patch)


def wait_collectors_gone(cluster: NodeCluster) -> None:
    wait_for("every collector pod gone", lambda: not collector_pods(cluster), timeout=120)


def restarts(cluster: NodeCluster, name: str = FEED) -> dict[str, tuple[int, str | None]]:
    """restartCount and the last termination reason of each collector pod."""
    out = {}
    for pod in collector_pods(cluster, name):
        for status in pod.get("status", {}).get("containerStatuses", []):
            last = status.get("lastState", {}).get("terminated", {}).get("reason")
            out[pod["metadata"]["name"]] = (int(status.get("restartCount", 0)), last)
    return out


def started_at(pod: dict[str, Any]) -> datetime | None:
    for status in pod.get("status", {}).get("containerStatuses", []):
        running = status.get("state", {}).get("running")
        if running:
            return datetime.fromisoformat(running["startedAt"].replace("Z", "+00:00"))
    return None


def assert_trades_complete(
    backends: Backends, ledger: dict[str, Any], instruments: set[str]
) -> int:
    """Every trade from the first one stored to (at least) the last one sent is stored once
    per instrument: no hole from a reconnect, a moved shard, a roll or a lost pod."""
    trades = backends.trades()
    checked = 0
    for instrument in sorted(instruments):
        channel = ledger["channels"].get(f"trades.{instrument}.100ms")
        if not channel or not channel["trades"]:
            continue
        seqs = trades.get(instrument, [])
        assert seqs, f"{instrument}: the simulator sent trades, none stored"
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"{instrument}: trade_seq holes"
        # Backfill (REST) may reach trades the stream had not sent yet, never past the market.
        generated = ledger["generated"][instrument]["last_trade_seq"]
        assert channel["last_trade_seq"] <= seqs[-1] <= generated, (
            f"{instrument}: last stored trade_seq {seqs[-1]}, last sent "
            f"{channel['last_trade_seq']}, last generated {generated}"
        )
        checked += len(seqs)
    return checked


# --- the tests, in order ------------------------------------------------------------------------


def test_helm_install_runs_the_operator_as_a_pod_under_its_own_service_account(
    cluster: NodeCluster, operator: dict[str, Any]
) -> None:
    spec = operator["spec"]
    assert spec["serviceAccountName"] == OPERATOR_SA
    container = spec["containers"][0]
    assert container["image"] == cluster.optionfeed_image
    # The in-cluster login: the projected ServiceAccount token, not a kubeconfig.
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts
    assert cluster.get("crd", CRD_NAME)["metadata"]["name"] == CRD_NAME

    as_operator = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"

    def can(*args: str) -> bool:
        result = cluster.kubectl("auth", "can-i", *args, f"--as={as_operator}", check=False)
        return result.stdout.strip() == "yes"

    # Least privilege: what it needs, and nothing like reading Secrets or touching pods.
    assert can("patch", "deployments.apps", "-n", NAMESPACE)
    assert can("watch", "optionfeeds.optionfeed.io", "--all-namespaces")
    assert not can("get", "secrets", "-n", NAMESPACE)
    assert not can("delete", "pods", "-n", NAMESPACE)
    assert not can("create", "clusterroles.rbac.authorization.k8s.io")


def test_a_feed_makes_collector_pods_that_record_what_the_simulator_sent(
    cluster: NodeCluster, operator: dict[str, Any], backends: Backends
) -> None:
    cluster.kubectl(
        "create", "secret", "generic", DB_SECRET, "-n", NAMESPACE,
        f"--from-literal=url={backends.database_url}",
    )  # fmt: skip
    manifest = feed_manifest(backends.exchange_url)
    applied = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for("two Ready shards", lambda: feed_settled(cluster, 2), timeout=180)
    ready_after = time.monotonic() - applied

    def first_row() -> datetime | None:
        rows = backends.query("SELECT min(recv_ts) AS t FROM option_tickers")
        return rows[0]["t"] if rows and rows[0]["t"] else None

    first = wait_for("the first row", first_row, timeout=60)
    pods = collector_pods(cluster)
    starts = [s for s in (started_at(p) for p in pods) if s is not None]
    first_after_start = (first - min(starts)).total_seconds()
    shards = assignment(cluster)
    instruments = {i for s in shards for i in s}
    assert len(instruments) == TOP_N
    assert sum(len(s) for s in shards) == TOP_N, "each instrument on one shard"

    # Record a while, then stop every collector (a clean stop flushes what was received) and
    # compare the database with what the simulator says it sent.
    wait_for(
        f"{RECORD_SECONDS:.0f}s of recording",
        lambda: (datetime.now(first.tzinfo) - first).total_seconds() > RECORD_SECONDS,
        timeout=RECORD_SECONDS + 30,
    )
    suspend(cluster, True)
    wait_collectors_gone(cluster)
    ledger = backends.ledger()
    totals = {}
    for family, table in (("ticker", "option_tickers"), ("trades", "option_trades")):
        sent = sent_per_instrument(ledger, family)
        stored = backends.stored(table)
        assert set(sent) <= instruments
        assert stored == sent, f"{family}: stored rows differ from what the simulator sent"
        totals[family] = (sum(stored.values()), len(stored))
    FIGURES.append(
        f"feed applied -> 2 collector pods Ready in {ready_after:.1f}s; first row "
        f"{first_after_start:.1f}s after the first collector container started"
    )
    FIGURES.append(
        f"rows vs ledger after {RECORD_SECONDS:.0f}s: tickers {totals['ticker'][0]} rows over "
        f"{totals['ticker'][1]} instruments, trades {totals['trades'][0]} over "
        f"{totals['trades'][1]} instruments: equal to the ledger per instrument"
    )
    suspend(cluster, False)
    wait_for("two Ready shards again", lambda: feed_settled(cluster, 2), timeout=180)


def test_kubectl_scale_reshards_onto_three_collector_pods(
    cluster: NodeCluster, operator: dict[str, Any], backends: Backends
) -> None:
    before = {i for s in assignment(cluster) for i in s}
    started = time.monotonic()
    cluster.kubectl("scale", f"optionfeed/{FEED}", "-n", NAMESPACE, "--replicas=3")
    wait_for("three Ready shards", lambda: feed_settled(cluster, 3), timeout=180)
    shards = assignment(cluster)
    assert len(shards) == 3
    assert all(shards)
    assert sum(len(s) for s in shards) == len({i for s in shards for i in s}), "disjoint"
    assert {i for s in shards for i in s} == before
    # `kubectl get of`, as the README shows it: the CRD's printer columns.
    header, row = cluster.kubectl("get", "of", FEED, "-n", NAMESPACE).stdout.splitlines()
    assert header.split() == ["NAME", "CURRENCY", "TOPN", "SHARDS", "READY", "AGE"], header
    assert row.split()[:5] == [FEED, "ETH", str(TOP_N), "3", "3"], row
    FIGURES.append(
        f"kubectl scale --replicas=3: 3 shards Ready {time.monotonic() - started:.1f}s later, "
        f"{[len(s) for s in shards]} instruments"
    )


def test_a_pod_template_change_rolls_each_shard_with_one_surge_pod(
    cluster: NodeCluster, operator: dict[str, Any], backends: Backends
) -> None:
    old = {p["metadata"]["name"] for p in collector_pods(cluster)}
    resources = {"requests": {"cpu": "60m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}}
    patch = json.dumps({"spec": {"collector": {"resources": resources}}})
    started = time.monotonic()
    cluster.kubectl("patch", "optionfeed", FEED, "-n", NAMESPACE, "--type=merge", "-p", patch)
    most: dict[str, int] = {}
    fewest_ready: dict[str, int] = {}
    # Per shard, the observation at which its new pod was first seen Ready and its old pod first
    # seen terminating: readiness gates the roll when the first comes no later than the second.
    new_ready: dict[str, int] = {}
    old_stopping: dict[str, int] = {}
    polls = 0

    def observe() -> bool:
        nonlocal polls
        polls += 1
        per_shard: dict[str, list[dict[str, Any]]] = {}
        for pod in collector_pods(cluster):
            if pod["status"].get("phase") in ("Succeeded", "Failed"):
                continue
            per_shard.setdefault(pod["metadata"]["labels"]["optionfeed.io/shard"], []).append(pod)
        for shard, pods in per_shard.items():
            most[shard] = max(most.get(shard, 0), len(pods))
            ready = sum(
                1 for p in pods if is_ready(p) and not p["metadata"].get("deletionTimestamp")
            )
            fewest_ready[shard] = min(fewest_ready.get(shard, 9), ready)
            for pod in pods:
                if pod["metadata"]["name"] in old:
                    if pod["metadata"].get("deletionTimestamp"):
                        old_stopping.setdefault(shard, polls)
                elif is_ready(pod):
                    new_ready.setdefault(shard, polls)
        current = {p["metadata"]["name"] for p in collector_pods(cluster)}
        return not (current & old) and feed_settled(cluster, 3)

    wait_for("every shard rolled", observe, timeout=240)
    elapsed = time.monotonic() - started
    assert max(most.values()) <= 2, f"more than one surge pod per shard: {most}"
    assert min(fewest_ready.values()) >= 1, (
        f"a shard had no Ready pod during the roll: {fewest_ready}"
    )
    for shard, stopping in old_stopping.items():
        assert new_ready.get(shard, polls + 1) <= stopping, (
            f"shard {shard}: the old pod stopped before the new one was Ready"
        )
    for pod in collector_pods(cluster):
        assert pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "60m"
    FIGURES.append(
        f"roll of 3 shards (maxSurge 1, maxUnavailable 0): {elapsed:.1f}s, at most "
        f"{max(most.values())} pods per shard, never fewer than {min(fewest_ready.values())} "
        "Ready, each old pod stopped only once its successor was Ready"
    )


def test_the_memory_limit_holds_under_load(
    cluster: NodeCluster, operator: dict[str, Any], backends: Backends
) -> None:
    # A feed of its own, into a database of its own: every ETH option, three channels, raw
    # (one notification per market event, on authenticated connections) as the benchmark runs.
    backends.query(f"CREATE DATABASE {LOAD_FEED}")
    database_url = backends.database_url.rsplit("/", 1)[0] + f"/{LOAD_FEED}"
    cluster.kubectl(
        "create", "secret", "generic", f"{LOAD_FEED}-db", "-n", NAMESPACE,
        f"--from-literal=url={database_url}",
    )  # fmt: skip
    cluster.kubectl(
        "create", "secret", "generic", f"{LOAD_FEED}-credentials", "-n", NAMESPACE,
        f"--from-literal=client_id={SIMULATOR_CLIENT_ID}",
        f"--from-literal=client_secret={SIMULATOR_CLIENT_SECRET}",
    )  # fmt: skip
    manifest = {
        "apiVersion": "optionfeed.io/v1alpha1",
        "kind": "OptionFeed",
        "metadata": {"name": LOAD_FEED, "namespace": NAMESPACE},
        "spec": {
            "currency": "ETH",
            "channels": ["ticker", "trades", "book"],
            "interval": "raw",
            "credentialsSecretRef": {"name": f"{LOAD_FEED}-credentials"},
            "database": {"secretRef": {"name": f"{LOAD_FEED}-db", "key": "url"}},
            "exchange": {"url": backends.exchange_url},
            "collector": {"resources": COLLECTOR_RESOURCES},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for(
        "the load feed's shard Ready", lambda: feed_settled(cluster, 1, LOAD_FEED), timeout=180
    )
    (pod,) = collector_pods(cluster, LOAD_FEED)
    metrics_url = f"http://{pod['status']['podIP']}:9464/metrics"
    http_json(f"{backends.simulator_url}/sim/market", {"rate": LOAD_RATE})
    before = received(metrics_url)
    started = time.monotonic()
    peak = 0

    def load_done() -> bool:
        # The pod's memory high-water mark (its cgroup's, what the limit applies to) and its
        # restarts, all along.
        nonlocal peak
        peak = max(peak, cluster.node.pod_memory_peak(pod["metadata"]["uid"]) or 0)
        state = restarts(cluster, LOAD_FEED)
        assert all(n == 0 for n, _ in state.values()), state
        return time.monotonic() - started > LOAD_SECONDS

    try:
        wait_for(f"{LOAD_SECONDS:.0f}s of load", load_done, timeout=LOAD_SECONDS + 30)
        rate = (received(metrics_url) - before) / (time.monotonic() - started)
    finally:
        http_json(f"{backends.simulator_url}/sim/market", {"rate": SIMULATOR_RATE})
    state = restarts(cluster, LOAD_FEED)
    assert all(n == 0 and reason != "OOMKilled" for n, reason in state.values()), state
    assert rate > 1000, f"the load reached only {rate:.0f} msg/s"
    assert 0 < peak < LOAD_LIMIT_BYTES
    cluster.kubectl("delete", "optionfeed", LOAD_FEED, "-n", NAMESPACE, "--wait=true")
    wait_for(
        "the load feed's pods gone", lambda: not collector_pods(cluster, LOAD_FEED), timeout=120
    )
    FIGURES.append(
        f"load: {rate:.0f} msg/s received for {LOAD_SECONDS:.0f}s (every ETH option, ticker + "
        f"trades + book, raw), collector pod memory peak {peak / 2**20:.0f} MiB of a "
        f"{LOAD_LIMIT_BYTES // 2**20} MiB limit, 0 restarts, no OOMKill"
    )


def received(metrics_url: str) -> float:
    """The collector's optionfeed_messages_total, summed over channels."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("optionfeed_messages_total{")
    )


def test_deleting_a_collector_pod_loses_no_trade_and_no_stored_row(
    cluster: NodeCluster, operator: dict[str, Any], backends: Backends
) -> None:
    # The shard with the most instruments loses its pod.
    shards = assignment(cluster)
    busiest = max(range(len(shards)), key=lambda i: len(shards[i]))
    victim = next(
        p
        for p in collector_pods(cluster)
        if p["metadata"]["labels"]["optionfeed.io/shard"] == str(busiest)
    )
    name = victim["metadata"]["name"]
    shard0 = shards[busiest]
    # More trades, so that some are made while the shard has no pod reading.
    http_json(f"{backends.simulator_url}/sim/market", {"rate": DELETION_RATE})
    before = backends.query("SELECT instrument, trade_id FROM option_trades")
    tickers_before = backends.query("SELECT count(*) AS n FROM option_tickers")[0]["n"]
    started = time.monotonic()
    deleted_at = datetime.now(UTC)
    cluster.kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=false")

    def replaced() -> bool:
        pods = [p for p in collector_pods(cluster) if p["metadata"]["name"] != name]
        return len(pods) == 3 and all(is_ready(p) for p in pods) and feed_settled(cluster, 3)

    wait_for("the shard's new pod Ready", replaced, timeout=180)
    back_after = time.monotonic() - started
    replaced_at = datetime.now(UTC)
    # Let the new pod record, then stop everything cleanly and check against the ledger.
    mark = backends.query("SELECT now() AS t")[0]["t"]
    wait_for(
        "rows from after the replacement",
        lambda: (
            backends.query("SELECT count(*) AS n FROM option_tickers WHERE recv_ts > $1", mark)[0][
                "n"
            ]
            > 20
        ),
        timeout=60,
    )
    instruments = {i for s in assignment(cluster) for i in s}
    suspend(cluster, True)
    try:
        wait_collectors_gone(cluster)
        http_json(f"{backends.simulator_url}/sim/market", {"rate": SIMULATOR_RATE})
        check_after_deletion(
            backends,
            instruments,
            shard0,
            before,
            tickers_before,
            (name, back_after, deleted_at, replaced_at),
        )
    finally:
        suspend(cluster, False)
    wait_for("three Ready shards again", lambda: feed_settled(cluster, 3), timeout=180)


def check_after_deletion(
    backends: Backends,
    instruments: set[str],
    shard0: list[str],
    before: list[dict[str, Any]],
    tickers_before: int,
    deletion: tuple[str, float, datetime, datetime],
) -> None:
    name, back_after, deleted_at, replaced_at = deletion
    ledger = backends.ledger()
    in_gap = backends.query(
        "SELECT count(*) AS n FROM option_trades"
        " WHERE instrument = ANY($1) AND ts BETWEEN $2 AND $3",
        shard0,
        deleted_at,
        replaced_at,
    )[0]["n"]
    after = {(r["instrument"], r["trade_id"]) for r in backends.query(
        "SELECT instrument, trade_id FROM option_trades"
    )}  # fmt: skip
    lost = [
        (r["instrument"], r["trade_id"])
        for r in before
        if (r["instrument"], r["trade_id"]) not in after
    ]
    assert not lost, f"stored trades gone after the pod deletion: {lost[:5]}"
    tickers_after = backends.query("SELECT count(*) AS n FROM option_tickers")[0]["n"]
    assert tickers_after >= tickers_before
    checked = assert_trades_complete(backends, ledger, instruments)
    FIGURES.append(
        f"kubectl delete pod {name}: replacement Ready {back_after:.1f}s later; "
        f"{in_gap} trades of its {len(shard0)} instruments made between the deletion and the "
        f"replacement's readiness are stored; {len(before)} trades stored before, all kept; "
        f"{checked} trades over the whole run checked: trade_seq complete up to the last one "
        "sent, per instrument"
    )


def test_readiness_keeps_a_collector_out_until_the_exchange_accepts_its_subscriptions(
    cluster: NodeCluster, operator: dict[str, Any], backends: Backends
) -> None:
    # The exchange refuses every subscribe (rate limited, as Deribit does) until the test lifts
    # the refusal; a shard's new pod meanwhile runs but must not count as Ready, and the feed with
    # it. The refusal stays until that state has been seen, however long the polls take.
    rule = {"code": 10028, "methods": ["public/subscribe"], "count": REFUSAL_BUDGET}
    http_json(f"{backends.simulator_url}/sim/faults", {"errors": [rule]})
    (victim,) = [
        p for p in collector_pods(cluster) if p["metadata"]["labels"]["optionfeed.io/shard"] == "0"
    ]
    name = victim["metadata"]["name"]
    started = time.monotonic()
    cluster.kubectl("delete", "pod", name, "-n", NAMESPACE, "--wait=false")

    def successor() -> dict[str, Any] | None:
        pods = [
            p
            for p in collector_pods(cluster)
            if p["metadata"]["labels"]["optionfeed.io/shard"] == "0"
            and p["metadata"]["name"] != name
        ]
        return pods[0] if pods else None

    def held_out() -> str | None:
        pod = successor()
        if pod is None or started_at(pod) is None or is_ready(pod):
            return None
        status = feed(cluster).get("status", {})
        if status.get("readyShards", 3) >= 3 or condition(feed(cluster), "Ready") != "False":
            return None
        try:
            _get(f"http://{pod['status']['podIP']}:9464/readyz")
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
            return body if exc.code == 503 and "[-] subscribed" in body else None
        return None

    try:
        reason = wait_for("the new pod Running but not Ready, the feed not Ready", held_out, 120)
        held_at = time.monotonic() - started
        # Still held out two probe periods later: readiness follows the subscriptions, not time.
        pod = successor()
        assert pod is not None
        time.sleep(2 * pod["spec"]["containers"][0]["readinessProbe"]["periodSeconds"])
        pod = successor()
        assert pod is not None
        assert not is_ready(pod), "the new pod became Ready while its subscribes were refused"
        (left,) = http_json(f"{backends.simulator_url}/sim/faults")["errors"]
        refused = REFUSAL_BUDGET - left["count"]
        assert refused > 0, "the new pod was held out without a subscribe being refused"
    finally:
        http_json(f"{backends.simulator_url}/sim/faults", {"errors": []})
    lifted_at = time.monotonic() - started
    wait_for("the new pod Ready once subscribed", lambda: feed_settled(cluster, 3), timeout=180)
    ready_at = time.monotonic() - started
    first_line = reason.splitlines()[0]
    FIGURES.append(
        f"readiness: with every subscribe refused ({refused} refused), shard 0's new pod ran but "
        f"was held NotReady ({first_line.strip()!r}, feed Ready=False) from {held_at:.1f}s after "
        f"the old pod's deletion; refusals lifted at {lifted_at:.1f}s, Ready at {ready_at:.1f}s"
    )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_helm_upgrade_replaces_the_operator_and_leaves_the_feed_running(
    cluster: NodeCluster, operator: dict[str, Any], backends: Backends
) -> None:
    old = operator["metadata"]["name"]
    generations = {
        d["metadata"]["name"]: d["metadata"]["generation"] for d in shard_deployments(cluster)
    }
    values = cluster.node.workdir / "operator-values.json"
    started = time.monotonic()
    cluster.kube.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE,
        "--values", str(values), "--set", "resyncInterval=15", "--wait", "--timeout", "180s",
    )  # fmt: skip

    def new_pod() -> dict[str, Any] | None:
        pod = ready_operator_pod(cluster)
        return pod if pod and pod["metadata"]["name"] != old else None

    pod = wait_for("the upgraded operator pod", new_pod, timeout=120)
    assert "--resync-interval=15" in pod["spec"]["containers"][0]["args"]
    # The new operator takes the feed over: a spec change still reaches the shards.
    patch = json.dumps({"spec": {"collector": {"resources": COLLECTOR_RESOURCES}}})
    cluster.kubectl("patch", "optionfeed", FEED, "-n", NAMESPACE, "--type=merge", "-p", patch)
    wait_for(
        "the shards rolled by the upgraded operator",
        lambda: (
            all(
                d["metadata"]["generation"] > generations[d["metadata"]["name"]]
                for d in shard_deployments(cluster)
            )
            and feed_settled(cluster, 3)
        ),
        timeout=240,
    )
    FIGURES.append(
        "helm upgrade: new operator pod Ready and the feed rolled by it "
        f"{time.monotonic() - started:.1f}s after"
    )


def test_helm_uninstall_removes_the_operator_and_keeps_the_crd_and_feeds(
    cluster: NodeCluster, operator: dict[str, Any], backends: Backends
) -> None:
    cluster.kube.helm("uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--wait")
    wait_for(
        "the operator pod gone",
        lambda: not cluster.pods(OPERATOR_NAMESPACE, "app.kubernetes.io/component=operator"),
        timeout=120,
    )
    assert not cluster.kube.exists(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{OPERATOR_SA}")
    assert cluster.kube.exists(
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
    )
    assert feed(cluster)["metadata"]["name"] == FEED
    # The collectors belong to the feed, not to the release: they keep recording.
    assert len(shard_deployments(cluster)) == 3
    FIGURES.append("helm uninstall: operator, RBAC gone; CRD, feed and its 3 shards kept")
    started = kubelet_counters(cluster)
    FIGURES.append(
        f"the kubelet has started {started['kubelet_started_pods_total']:.0f} pods and "
        f"{started['kubelet_started_containers_total']:.0f} containers so far (its own counters)"
    )


def kubelet_counters(cluster: NodeCluster) -> dict[str, float]:
    """The kubelet's own counters of started pods and containers (its /metrics, through the API
    server's node proxy)."""
    text = cluster.kubectl(
        "get", "--raw", f"/api/v1/nodes/{cluster.node.name}/proxy/metrics"
    ).stdout
    wanted = ("kubelet_started_pods_total", "kubelet_started_containers_total")
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        if metric in wanted:
            out[metric] += float(line.rsplit(" ", 1)[1])
    return out
