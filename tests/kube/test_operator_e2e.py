"""End to end: the operator's live Deployments, run as local collectors against the simulator and
PostgreSQL.

The operator runs against the real control plane and ranks against a simulator with a moving
market. The test then reads the shard Deployments back from the API server and starts each pod's
container as a local process (:mod:`kube.pod_runner`: its command, args and env with the Secret
resolved, the assignment ConfigMap mounted as the kubelet lays it out, paths and the metrics port
mapped to the host), and checks what reached the database and what the simulator sent to whom.

The feeds rank by open interest: in the simulator the 24 h volume starts at zero and grows with
every trade, so a volume ranking is reshuffled within seconds, while open interest changes slowly.
A topN change then mostly adds or removes instruments, as it would on the exchange; the checks
still take the ConfigMap as the truth, whatever moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from harness.collector import fetch
from harness.control_plane import ControlPlane
from harness.simulator import SimulatorProcess
from kube.operator_fixtures import (  # noqa: F401
    Kube,
    OperatorProcess,
    is_condition,
    kube_fixture,
    operator_process_fixture,
    optionfeed_crd_fixture,
    shard_documents,
    wait_for,
)
from kube.pod_runner import ENTRYPOINTS, Kubelet, LocalPod, local_pod, stop_all
from optionfeed.collector.plan import lifecycle_channels
from optionfeed.deribit.channels import feed_channel
from optionfeed.telemetry.endpoints import DEFAULT_PORT
from optionfeed_operator.manifests import ASSIGNMENT_PATH, SPOOL_DIR

FEED = "eth"
DB_SECRET = "optionfeed-db"
# ETH only, so that its options get the whole event rate: at 1,000 events/s each of the top 40 by
# open interest gets a ticker every second or two.
MARKET_ARGS = ("--rate", "1000", "--currencies", "ETH")
INTERVAL = "100ms"
CHANNELS = ("ticker", "trades")
# How long the collectors record before the database is compared with the assignment.
RECORD_SECONDS = 15.0
# The window in which an instrument removed from a running collector must get nothing.
QUIET_SECONDS = 4.0


@pytest.fixture(name="market")
def market_fixture() -> Iterator[SimulatorProcess]:
    """A simulator of the test's own whose market moves: the operator ranks on it and the
    collectors record from it. Its ledger holds only this test's connections."""
    with SimulatorProcess(*MARKET_ARGS, seed=11) as simulator:
        yield simulator


# --- helpers -------------------------------------------------------------------------------------


def create_database_secret(control_plane: ControlPlane, namespace: str, url: str) -> None:
    control_plane.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": DB_SECRET, "namespace": namespace},
            "stringData": {"url": url},
        },
    )


def wait_ready(kube: Kube, op: OperatorProcess, shards: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        feed = kube.feed(FEED)
        done = (
            is_condition(feed, "Ready", "True")
            and feed["status"].get("readyShards") == shards
            and feed["status"].get("observedGeneration") == feed["metadata"]["generation"]
        )
        return feed if done else None

    return wait_for(ready, f"{FEED} to be Ready with {shards} shards", timeout=60, log=op)


def assignment(kube: Kube, generation: int | None = None) -> list[list[str]] | None:
    """Each shard's instruments from the live ConfigMap (None until all documents are of
    ``generation``)."""
    configmap = kube.configmap(f"{FEED}-assignment")
    if configmap is None:
        return None
    documents = shard_documents(configmap)
    if generation is not None and any(d["generation"] != generation for d in documents):
        return None
    return [list(d["instruments"]) for d in documents]


def assert_disjoint(shards: list[list[str]]) -> None:
    for i, names in enumerate(shards):
        assert len(set(names)) == len(names), f"shard {i} lists an instrument twice"
        for j in range(i + 1, len(shards)):
            both = set(names) & set(shards[j])
            assert not both, f"in shards {i} and {j}: {sorted(both)}"


def rows(url: str, table: str) -> dict[str, int]:
    """Rows per instrument in ``table`` (empty while the collectors have not created it)."""
    sql = f"SELECT instrument, count(*) AS n FROM {table} GROUP BY instrument"
    try:
        records = asyncio.run(fetch(url, sql))
    except asyncpg.UndefinedTableError:
        return {}
    return {r["instrument"]: int(r["n"]) for r in records}


def status_rows(url: str) -> list[dict[str, Any]]:
    sql = "SELECT feed, shard, pod, instruments FROM collector_status ORDER BY shard"
    return [dict(r) for r in asyncio.run(fetch(url, sql))]


def logs(pods: list[LocalPod], lines: int = 25) -> str:
    return "\n".join(f"--- {pod.name} (pid {pod.pid}) ---\n{pod.tail(lines)}" for pod in pods)


@dataclass(frozen=True)
class Connections:
    """The simulator's WebSocket connections, told apart by their client's local port."""

    owner: dict[str, int | None]  # connection id → shard whose process holds it (None: nobody)
    closed: set[str]
    ledger: dict[str, Any]

    def of(self, shard: int) -> set[str]:
        return {cid for cid, owner in self.owner.items() if owner == shard}


def connections(market: SimulatorProcess, pods: list[LocalPod]) -> Connections:
    ports = [pod.tcp_ports() for pod in pods]
    ledger = market.ledger()
    owner: dict[str, int | None] = {}
    closed: set[str] = set()
    for cid, record in ledger["connections"].items():
        if record["closed"] is not None:
            closed.add(cid)
            continue
        port = int(str(record["peer"]).rsplit(":", 1)[1])
        owner[cid] = next((i for i, held in enumerate(ports) if port in held), None)
    return Connections(owner, closed, ledger)


def shard_of(*assignments: list[list[str]]) -> dict[str, int]:
    """Instrument → shard over one or more versions of the assignment (an instrument never
    changes shard while the shard count stays, which :func:`change_top_n` checks)."""
    return {name: i for shards in assignments for i, names in enumerate(shards) for name in names}


def assert_each_channel_went_to_its_shard(seen: Connections, shard_of: dict[str, int]) -> None:
    """Every instrument channel the simulator sent went to one connection only, held by the
    collector of the shard the instrument is (or was, when the ledger's count predates a change)
    assigned to."""
    for channel, sent in seen.ledger["channels"].items():
        instrument = sent["instrument"]
        if instrument is None:
            continue  # instrument.state / platform_state: every collector holds them
        receivers = set(sent["connections"])
        assert len(receivers) == 1, f"{channel} was sent on connections {sorted(receivers)}"
        (receiver,) = receivers
        assert instrument in shard_of, f"{channel} was sent, but {instrument} is not assigned"
        assert seen.owner.get(receiver) == shard_of[instrument], (
            f"{channel} (shard {shard_of[instrument]}) went to connection {receiver}, "
            f"held by shard {seen.owner.get(receiver)}"
        )


def held_channels(seen: Connections, shards: int) -> list[int]:
    """How many channels each shard's connections hold at the simulator now (subscribed, whether
    or not anything was sent on them yet)."""
    records = seen.ledger["connections"]
    return [sum(int(records[c]["channels"]) for c in seen.of(i)) for i in range(shards)]


def expected_channels(shards: list[list[str]]) -> list[int]:
    """Each instrument's channel families, plus the currency-wide lifecycle channels that every
    collector holds."""
    return [len(CHANNELS) * len(names) + len(lifecycle_channels("ETH")) for names in shards]


def wait_subscribed(
    market: SimulatorProcess, pods: list[LocalPod], shards: list[list[str]]
) -> None:
    wait_for(
        lambda: held_channels(connections(market, pods), len(pods)) == expected_channels(shards),
        f"the collectors to hold {expected_channels(shards)} channels",
        timeout=10,
    )


@contextlib.contextmanager
def running_shards(
    control_plane: ControlPlane, kube: Kube, shards: int, root: Path
) -> Iterator[tuple[list[LocalPod], Kubelet]]:
    """Each shard's pod, from the live Deployment, as a running local process, with a kubelet
    keeping its assignment volume current; all stopped on exit (SIGTERM, as Kubernetes does)."""
    deployments = kube.deployments(FEED)  # read back from the API server, not rendered here
    assert sorted(deployments) == [f"{FEED}-shard-{i}" for i in range(shards)]
    pods = [
        local_pod(control_plane, deployments[f"{FEED}-shard-{i}"], root / f"shard-{i}")
        for i in range(shards)
    ]
    for i, pod in enumerate(pods):
        assert pod.labels["optionfeed.io/shard"] == str(i)
    kubelet = Kubelet(control_plane, pods)
    kubelet.mount()
    try:
        for pod in pods:
            pod.start()
        kubelet.start()
        yield pods, kubelet
    finally:
        kubelet.stop()
        stop_all(pods, grace=30)


def start_feed(
    control_plane: ControlPlane,
    kube: Kube,
    op: OperatorProcess,
    market: SimulatorProcess,
    database_url: str,
    *,
    top_n: int,
    shards: int,
) -> dict[str, Any]:
    create_database_secret(control_plane, kube.ns, database_url)
    op.start()
    kube.create_feed(
        FEED,
        currency="ETH",
        topN=top_n,
        shards=shards,
        rankBy="open_interest",
        channels=list(CHANNELS),
        exchange={"url": market.ws_url},
    )
    return wait_ready(kube, op, shards)


def check_pods_as_built(
    pods: list[LocalPod], shards: list[list[str]], kube: Kube, database_url: str
) -> None:
    """The processes got what the pod specs say, mapped to this machine."""
    configmap = kube.configmap(f"{FEED}-assignment")
    assert configmap is not None
    for i, pod in enumerate(pods):
        assignment_file = pod.local_path(ASSIGNMENT_PATH)
        spool = pod.local_path(SPOOL_DIR)
        port = pod.ports["metrics"]
        # The container's command line, with only the documented rewrites.
        assert pod.argv == [
            *ENTRYPOINTS[("optionfeed",)],
            "collect",
            "--assignment",
            str(assignment_file),
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ]
        assert pod.rewrites == [
            f"env OPTIONFEED_SPOOL_DIR: {SPOOL_DIR} -> {spool}",
            f"env TMPDIR (unset in the container) -> {pod.local_path('/tmp')}",
            f"arg: {ASSIGNMENT_PATH} -> {assignment_file}",
            f"arg: --metrics-port {DEFAULT_PORT} -> {port} (loopback)",
            "arg: --metrics-host 127.0.0.1 (added)",
        ]
        # Through the per-key symlink and ..data, the shard's own ConfigMap key.
        assert assignment_file.is_symlink()
        assert assignment_file.read_text() == configmap["data"][f"shard-{i}.json"]
        assert json.loads(assignment_file.read_text())["instruments"] == shards[i]
        # From the Secret the feed names, read from the API server.
        assert pod.env["DATABASE_URL"] == database_url
        assert pod.env["OPTIONFEED_SPOOL_DIR"] == str(spool)


def wait_until_recording(
    pods: list[LocalPod], url: str, shards: list[list[str]], timeout: float
) -> None:
    """Every pod Ready by its own readiness probe, and ticker rows for every assigned instrument."""
    wanted = {name for names in shards for name in names}

    def recording() -> bool:
        for pod in pods:
            if not pod.running():
                raise AssertionError(f"{pod.name} exited with {pod.process and pod.process.poll()}")
        return all(pod.probe("readinessProbe") for pod in pods) and wanted <= set(
            rows(url, "option_tickers")
        )

    try:
        wait_for(recording, "ticker rows for every assigned instrument", timeout=timeout)
    except AssertionError as exc:
        missing = sorted(wanted - set(rows(url, "option_tickers")))
        raise AssertionError(f"{exc}; missing {missing}\n{logs(pods)}") from None


# --- the tests -----------------------------------------------------------------------------------


def test_local_collectors_record_every_assigned_instrument_exactly_once(
    control_plane: ControlPlane,
    kube: Kube,
    operator_process: OperatorProcess,
    market: SimulatorProcess,
    database_url: str,
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    feed = start_feed(
        control_plane, kube, operator_process, market, database_url, top_n=30, shards=3
    )
    shards = assignment(kube, feed["metadata"]["generation"])
    assert shards is not None
    assigned = {name for names in shards for name in names}
    assert len(assigned) == sum(len(names) for names in shards) == 30
    assert_disjoint(shards)
    assert all(shards), f"a shard has no instrument: {[len(s) for s in shards]}"

    with running_shards(control_plane, kube, 3, tmp_path / "pods") as (pods, kubelet):
        check_pods_as_built(pods, shards, kube, database_url)
        started = time.monotonic()
        wait_until_recording(pods, database_url, shards, timeout=45)
        for pod in pods:  # the rewritten spool directory reached the collector
            assert f"(spool: {pod.local_path(SPOOL_DIR)})" in pod.log()
        time.sleep(max(0.0, RECORD_SECONDS - (time.monotonic() - started)))

        tickers = rows(database_url, "option_tickers")
        trades = rows(database_url, "option_trades")
        seen = connections(market, pods)
        statuses = status_rows(database_url)
        assert all(pod.running() for pod in pods), logs(pods)
        pids = [pod.pid for pod in pods]

    assert kubelet.swaps == [], "the ConfigMap changed although the feed did not"
    assert kubelet.errors == []
    # Stopped as Kubernetes stops a pod: each drained and exited cleanly.
    assert [pod.exit_code for pod in pods] == [0, 0, 0], logs(pods)

    # The database holds every assigned instrument, and nothing else.
    assert set(tickers) == assigned, (
        f"missing {sorted(assigned - set(tickers))}, extra {sorted(set(tickers) - assigned)}"
    )
    assert set(trades) <= assigned, f"trades of unassigned {sorted(set(trades) - assigned)}"
    # Each collector reported itself as its shard, with its shard's instruments.
    assert [(s["feed"], s["shard"], s["instruments"]) for s in statuses] == [
        (FEED, i, len(names)) for i, names in enumerate(shards)
    ]

    # What the simulator sent: each instrument's channels to exactly one connection, held by the
    # collector of its shard; one or more connections per collector, none closed, none stray.
    assert seen.closed == set(), f"connections closed: {seen.closed}"
    assert None not in seen.owner.values(), f"connections of no collector: {seen.owner}"
    assert all(seen.of(i) for i in range(3)), seen.owner
    assert_each_channel_went_to_its_shard(seen, shard_of(shards))
    assert held_channels(seen, 3) == expected_channels(shards)
    sent = seen.ledger["channels"]
    for name in sorted(assigned):
        assert feed_channel("ticker", name, INTERVAL) in sent, f"no ticker sent for {name}"

    for i, names in enumerate(shards):
        stored = sum(tickers[name] for name in names)
        figure(
            f"shard {i} (pid {pids[i]}): {len(names)} assigned, {len(set(names) & set(tickers))} "
            f"with ticker rows ({stored} rows), {len(set(names) & set(trades))} with trades, "
            f"{held_channels(seen, 3)[i]} channels held on connection {sorted(seen.of(i))}"
        )


@dataclass
class Step:
    """One topN change and how long each stage of its propagation took (seconds from the patch)."""

    top_n: int
    generation: int
    before: list[list[str]]
    after: list[list[str]]
    configmap: float = 0.0
    swapped: float = 0.0
    reloaded: float = 0.0
    rows: float = 0.0

    @property
    def added(self) -> list[set[str]]:
        return [set(new) - set(old) for old, new in zip(self.before, self.after, strict=True)]

    @property
    def removed(self) -> list[set[str]]:
        return [set(old) - set(new) for old, new in zip(self.before, self.after, strict=True)]


def change_top_n(
    control_plane: ControlPlane,
    kube: Kube,
    op: OperatorProcess,
    pods: list[LocalPod],
    kubelet: Kubelet,
    url: str,
    top_n: int,
) -> Step:
    """``kubectl patch`` the feed's topN and follow the change to the database."""
    before = assignment(kube)
    assert before is not None
    t0 = time.monotonic()
    patched = json.loads(
        control_plane.kubectl(
            "patch", "-n", kube.ns, f"of/{FEED}", "--type=merge",
            "-p", json.dumps({"spec": {"topN": top_n}}), "-o", "json",
        ).stdout
    )  # fmt: skip
    generation = int(patched["metadata"]["generation"])

    # The operator re-ranks and rewrites the ConfigMap (the Deployments stay as they are).
    after = wait_for(
        lambda: assignment(kube, generation), f"the ConfigMap of generation {generation}", log=op
    )
    step = Step(top_n, generation, before, after, configmap=time.monotonic() - t0)
    assert sum(len(names) for names in after) == top_n
    assert_disjoint(after)
    moved = {
        name: (i, j)
        for i, old in enumerate(before)
        for j, new in enumerate(after)
        if i != j
        for name in set(old) & set(new)
    }
    assert moved == {}, f"instruments changed shard: {moved}"

    # The kubelet swaps each pod's ..data; each collector reloads it in place.
    def swapped() -> bool:
        on_disk = [json.loads(pod.local_path(ASSIGNMENT_PATH).read_text()) for pod in pods]
        return [(d["generation"], d["instruments"]) for d in on_disk] == [
            (generation, names) for names in after
        ]

    # The kubelet records a swap just after it makes the new content visible: wait for both.
    wait_for(
        lambda: swapped() and all(kubelet.swaps_of(pod, since=t0) for pod in pods),
        "every pod's assignment volume to be updated",
        timeout=15,
    )
    step.swapped = max(kubelet.swaps_of(pod, since=t0)[-1].at for pod in pods) - t0

    line = f"assignment generation {generation}: "
    wait_for(
        lambda: all(line in pod.log() for pod in pods),
        f"every collector to log {line!r}",
        timeout=15,
        interval=0.1,
    )
    step.reloaded = time.monotonic() - t0
    for i, pod in enumerate(pods):
        reload = next(x for x in pod.log().splitlines() if line in x)
        assert f": {len(after[i])} instruments; " in reload, reload

    added = set().union(*step.added)
    if added:
        try:
            wait_for(
                lambda: added <= set(rows(url, "option_tickers")),
                "ticker rows for every added instrument",
                timeout=30,
            )
        except AssertionError as exc:
            missing = sorted(added - set(rows(url, "option_tickers")))
            raise AssertionError(f"{exc}; missing {missing}\n{logs(pods)}") from None
        step.rows = time.monotonic() - t0
    return step


def assert_removed_are_silent(
    market: SimulatorProcess, url: str, step: Step, pods: list[LocalPod]
) -> None:
    """After the unsubscribe, a removed instrument gets no notification and no row, while the
    instruments that stay keep getting both."""
    removed = set().union(*step.removed)
    kept = {name for names in step.after for name in names}
    assert removed, "the step removed nothing"

    def snapshot() -> tuple[dict[str, int], dict[str, int]]:
        tickers = rows(url, "option_tickers")
        sent = market.ledger(instrument=sorted(removed | kept))["channels"]
        notifications = {
            name: sent.get(feed_channel("ticker", name, INTERVAL), {}).get("notifications", 0)
            for name in removed | kept
        }
        return {n: tickers.get(n, 0) for n in removed | kept}, notifications

    def written() -> bool:
        stored, sent = snapshot()
        return all(stored[n] == sent[n] for n in removed)

    # The exchange took the unsubscribes, and every ticker it sent a removed instrument before
    # that is a row: the quiet window starts with nothing in flight.
    wait_subscribed(market, pods, step.after)
    try:
        wait_for(written, "a row for every ticker sent to the removed instruments", timeout=15)
    except AssertionError as exc:
        stored, sent = snapshot()
        differ = {n: (stored[n], sent[n]) for n in removed if stored[n] != sent[n]}
        raise AssertionError(f"{exc}; (rows, sent): {differ}\n{logs(pods)}") from None
    rows_before, sent_before = snapshot()
    time.sleep(QUIET_SECONDS)
    rows_after, sent_after = snapshot()
    still = {n: rows_after[n] - rows_before[n] for n in removed if rows_after[n] != rows_before[n]}
    assert still == {}, f"removed instruments still got rows: {still}\n{logs(pods)}"
    still_sent = {n for n in removed if sent_after[n] != sent_before[n]}
    assert still_sent == set(), f"still sent after the unsubscribe: {sorted(still_sent)}"
    # The window was long enough to see rows at all: what stays kept arriving.
    assert sum(rows_after[n] for n in kept) > sum(rows_before[n] for n in kept)
    assert sum(sent_after[n] for n in kept) > sum(sent_before[n] for n in kept)


def test_changing_top_n_reaches_running_collectors_without_a_restart(
    control_plane: ControlPlane,
    kube: Kube,
    operator_process: OperatorProcess,
    market: SimulatorProcess,
    database_url: str,
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    feed = start_feed(
        control_plane, kube, operator_process, market, database_url, top_n=30, shards=3
    )
    shards = assignment(kube, feed["metadata"]["generation"])
    assert shards is not None
    deployments = {n: d["metadata"]["generation"] for n, d in kube.deployments(FEED).items()}

    with running_shards(control_plane, kube, 3, tmp_path / "pods") as (pods, kubelet):
        wait_until_recording(pods, database_url, shards, timeout=45)
        pids = [pod.pid for pod in pods]
        first = connections(market, pods)
        assert None not in first.owner.values(), first.owner
        assert not first.closed, first.closed
        held = [first.of(i) for i in range(3)]
        assert all(held), first.owner

        steps = []
        for top_n in (40, 20):
            step = change_top_n(
                control_plane, kube, operator_process, pods, kubelet, database_url, top_n
            )
            steps.append(step)
            if any(step.removed):
                assert_removed_are_silent(market, database_url, step, pods)
            # Each connection holds exactly its shard's channels now: the difference was
            # subscribed and unsubscribed on it.
            wait_subscribed(market, pods, step.after)

            # Same processes, same connections: nothing restarted or reconnected.
            assert [pod.pid for pod in pods] == pids
            assert all(pod.running() for pod in pods), logs(pods)
            seen = connections(market, pods)
            assert seen.closed == set(), f"connections closed: {seen.closed}\n{logs(pods)}"
            assert [seen.of(i) for i in range(3)] == held, (seen.owner, held)
            history = [shards, *(s.after for s in steps)]
            assert_each_channel_went_to_its_shard(seen, shard_of(*history))

        assert kubelet.errors == []
        # The Deployments were never touched: a topN change rolls no pod.
        now = {n: d["metadata"]["generation"] for n, d in kube.deployments(FEED).items()}
        assert now == deployments

    assert [pod.exit_code for pod in pods] == [0, 0, 0], logs(pods)

    for step in steps:
        figure(
            f"topN -> {step.top_n} (generation {step.generation}): "
            f"+{[len(a) for a in step.added]} -{[len(r) for r in step.removed]} per shard; "
            f"ConfigMap at {step.configmap:.1f}s, volumes swapped by {step.swapped:.1f}s, "
            f"collectors reloaded by {step.reloaded:.1f}s"
            + (f", rows for every added instrument by {step.rows:.1f}s" if step.rows else "")
        )
