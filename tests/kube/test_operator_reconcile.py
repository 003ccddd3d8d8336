"""The operator against a real control plane (tier 2: pods run under kwok, garbage collection
works) and the project's simulator as the exchange.

Each test starts ``optionfeed operator`` for its own namespace, drives a feed the way a user
would (the API, ``kubectl scale``), and checks the children and the status the operator wrote.
"""

from __future__ import annotations

import json
from typing import Any

from harness.control_plane import ControlPlane
from harness.placement import moved
from harness.ports import free_port
from harness.simulator import SimulatorProcess
from kube.operator_fixtures import (  # noqa: F401
    TEST_IMAGE,
    Kube,
    OperatorProcess,
    condition,
    exchange_fixture,
    is_condition,
    kube_fixture,
    operator_process_fixture,
    optionfeed_crd_fixture,
    ranked,
    shard_documents,
    shard_instruments,
    wait_for,
)
from optionfeed.shard_document import parse_shard_document
from optionfeed_operator.api import parse_time
from optionfeed_operator.assignment import assign

LABELS = {
    "app.kubernetes.io/name": "optionfeed-collector",
    "app.kubernetes.io/managed-by": "optionfeed-operator",
}


def wait_ready(kube: Kube, op: OperatorProcess, name: str, shards: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        feed = kube.feed(name)
        done = (
            is_condition(feed, "Ready", "True")
            and is_condition(feed, "Progressing", "False")
            and feed["status"].get("readyShards") == shards
            and feed["status"].get("observedGeneration") == feed["metadata"]["generation"]
        )
        return feed if done else None

    return wait_for(ready, f"{name} to be Ready with {shards} shards", timeout=60, log=op)


def flatten(shards: list[list[str]]) -> list[str]:
    return sorted(name for names in shards for name in names)


def resource_versions(kube: Kube, feed: str) -> dict[str, str]:
    versions = {n: d["metadata"]["resourceVersion"] for n, d in kube.deployments(feed).items()}
    configmap = kube.configmap(f"{feed}-assignment")
    if configmap is not None:
        versions[f"{feed}-assignment"] = configmap["metadata"]["resourceVersion"]
    return versions


def template_generations(kube: Kube, feed: str) -> dict[str, int]:
    return {n: d["metadata"]["generation"] for n, d in kube.deployments(feed).items()}


def test_a_new_feed_gets_its_assignment_and_shard_deployments(
    kube: Kube, operator_process: OperatorProcess, exchange: SimulatorProcess
) -> None:
    operator_process.start()
    created = kube.create_feed(
        "eth",
        currency="ETH",
        topN=30,
        shards=3,
        channels=["ticker", "trades", "book"],
        interval="raw",
        credentialsSecretRef={"name": "deribit-keys"},
        exchange={"url": exchange.ws_url},
        collector={"env": [{"name": "OPTIONFEED_LOG_LEVEL", "value": "DEBUG"}]},
    )
    uid = created["metadata"]["uid"]
    feed = wait_ready(kube, operator_process, "eth", 3)

    expected = ranked(exchange, "ETH", 30)
    assert len(expected) == 30
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None
    assert (
        configmap["metadata"]["labels"].items() >= {**LABELS, "optionfeed.io/feed": "eth"}.items()
    )
    owner = {
        "apiVersion": "optionfeed.io/v1alpha1",
        "kind": "OptionFeed",
        "name": "eth",
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert configmap["metadata"]["ownerReferences"] == [owner]
    assert sorted(configmap["data"]) == ["shard-0.json", "shard-1.json", "shard-2.json"]
    # The top 30, each on the shard rendezvous hashing picks, in documents the collector reads.
    assert shard_instruments(configmap) == [list(s) for s in assign(expected, 3)]
    for i, text in enumerate(configmap["data"][f"shard-{i}.json"] for i in range(3)):
        parsed = parse_shard_document(text)
        assert (parsed.feed, parsed.namespace, parsed.shard, parsed.shards) == (
            "eth",
            kube.ns,
            i,
            3,
        )
        assert parsed.generation == feed["metadata"]["generation"]
        assert (parsed.currency, parsed.interval) == ("ETH", "raw")
        assert parsed.channels == ("ticker", "trades", "book")
        assert parsed.exchange_url == exchange.ws_url

    deployments = kube.deployments("eth")
    assert sorted(deployments) == ["eth-shard-0", "eth-shard-1", "eth-shard-2"]
    for i in range(3):
        deployment = deployments[f"eth-shard-{i}"]
        labels = {**LABELS, "app.kubernetes.io/instance": "eth", "optionfeed.io/feed": "eth"}
        labels["optionfeed.io/shard"] = str(i)
        assert deployment["metadata"]["labels"] == labels
        assert deployment["metadata"]["ownerReferences"] == [owner]
        spec = deployment["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        pod = spec["template"]["spec"]
        assert spec["template"]["metadata"]["labels"] == labels
        (container,) = pod["containers"]
        assert container["image"] == TEST_IMAGE
        assert container["command"] == ["optionfeed"]
        assert container["args"] == [
            "collect",
            "--assignment",
            "/etc/optionfeed/assignment.json",
            "--metrics-port",
            "9464",
        ]
        env = {e["name"]: e for e in container["env"]}
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "optionfeed-db",
            "key": "url",
        }
        assert env["OPTIONFEED_CLIENT_ID"]["valueFrom"]["secretKeyRef"]["name"] == "deribit-keys"
        assert (
            env["OPTIONFEED_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "deribit-keys"
        )
        assert env["OPTIONFEED_LOG_LEVEL"]["value"] == "DEBUG"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["assignment"]["mountPath"] == "/etc/optionfeed"
        assert "subPath" not in mounts["assignment"]
        assert mounts["spool"]["mountPath"] == "/var/lib/optionfeed/spool"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["assignment"]["configMap"]["name"] == "eth-assignment"
        assert volumes["assignment"]["configMap"]["items"] == [
            {"key": f"shard-{i}.json", "path": "assignment.json"}
        ]
        assert "emptyDir" in volumes["spool"]
        assert container["ports"][0]["containerPort"] == 9464
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    status = feed["status"]
    assert status["shards"] == 3
    assert status["readyShards"] == 3
    assert status["instruments"] == 30
    assert (
        status["selector"] == "app.kubernetes.io/name=optionfeed-collector,optionfeed.io/feed=eth"
    )
    assert (
        status["assignmentHash"]
        == configmap["metadata"]["annotations"]["optionfeed.io/assignment-hash"]
    )
    assert status["lastRankedAt"]
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}
    assert is_condition(feed, "Degraded", "False", "AsExpected")

    # What it did is in the namespace's events, pointed at the feed.
    reasons = {
        e["reason"] for e in kube.events() if e["involvedObject"].get("kind") == "OptionFeed"
    }
    assert {"Ranked", "AssignmentCreated", "ShardCreated"} <= reasons


def test_kubectl_scale_reshards_with_minimal_movement(
    control_plane: ControlPlane,
    kube: Kube,
    operator_process: OperatorProcess,
    exchange: SimulatorProcess,
) -> None:
    operator_process.start()
    kube.create_feed("eth", currency="ETH", topN=120, shards=2, exchange={"url": exchange.ws_url})
    wait_ready(kube, operator_process, "eth", 2)
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None
    before = shard_instruments(configmap)
    generations = template_generations(kube, "eth")

    control_plane.kubectl("scale", "-n", kube.ns, "of/eth", "--replicas=3")
    feed = wait_ready(kube, operator_process, "eth", 3)
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None
    after = shard_instruments(configmap)
    moves = moved(before, after)
    # Only what the new shard takes moves, and nothing moves between the shards that stay.
    assert set(moves) == set(after[2])
    assert all(new == 2 for _, new in moves.values())
    assert flatten(after) == flatten(before)
    # About a third: 120/3 = 40 expected; rendezvous hashing's spread is about ±5 here.
    print(f"\nscale 2 -> 3 over 120 instruments: {len(moves)} moved (ideal 40)")
    assert 25 <= len(moves) <= 55
    # The existing shards were not rolled: their pods keep running and reload the file.
    now = template_generations(kube, "eth")
    assert {n: now[n] for n in generations} == generations
    assert feed["status"]["shards"] == 3
    scale = control_plane.api("GET", kube.feed_path("eth") + "/scale")
    assert scale["status"]["replicas"] == 3

    control_plane.kubectl("scale", "-n", kube.ns, "of/eth", "--replicas=2")
    wait_ready(kube, operator_process, "eth", 2)
    wait_for(
        lambda: sorted(kube.deployments("eth")) == ["eth-shard-0", "eth-shard-1"],
        "the third shard to be deleted",
        log=operator_process,
    )
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None
    assert shard_instruments(configmap) == before
    assert kube.events("ShardDeleted")


def test_changing_top_n_changes_only_the_assignment(
    kube: Kube, operator_process: OperatorProcess, exchange: SimulatorProcess
) -> None:
    operator_process.start()
    kube.create_feed("eth", currency="ETH", topN=20, shards=2, exchange={"url": exchange.ws_url})
    wait_ready(kube, operator_process, "eth", 2)
    generations = template_generations(kube, "eth")
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None
    before = shard_instruments(configmap)

    kube.patch_feed("eth", {"topN": 35})
    feed = wait_ready(kube, operator_process, "eth", 2)
    wait_for(lambda: kube.feed("eth")["status"].get("instruments") == 35, "35 instruments")
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None
    after = shard_instruments(configmap)
    assert flatten(after) == sorted(ranked(exchange, "ETH", 35))
    assert moved(before, after) == {}  # the 20 that stay keep their shard
    assert all(
        doc["generation"] == feed["metadata"]["generation"] for doc in shard_documents(configmap)
    )
    # No Deployment changed: the collectors pick the new file up without a restart.
    assert template_generations(kube, "eth") == generations


def test_suspend_scales_every_shard_to_zero_and_resume_brings_them_back(
    kube: Kube, operator_process: OperatorProcess, exchange: SimulatorProcess
) -> None:
    operator_process.start()
    kube.create_feed(
        "eth",
        currency="ETH",
        topN=10,
        shards=2,
        replicasPerShard=2,
        exchange={"url": exchange.ws_url},
    )
    wait_ready(kube, operator_process, "eth", 2)
    assert len(kube.pods("eth")) == 4
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None

    kube.patch_feed("eth", {"suspend": True})

    def suspended() -> bool:
        feed = kube.feed("eth")
        return (
            is_condition(feed, "Ready", "False", "Suspended")
            and is_condition(feed, "Progressing", "False", "Suspended")
            and not kube.pods("eth")
        )

    wait_for(suspended, "the feed to be suspended with no pods", timeout=60, log=operator_process)
    deployments = kube.deployments("eth")
    assert sorted(deployments) == ["eth-shard-0", "eth-shard-1"]  # nothing deleted
    assert all(d["spec"]["replicas"] == 0 for d in deployments.values())
    kept = kube.configmap("eth-assignment")
    assert kept is not None
    assert shard_instruments(kept) == shard_instruments(configmap)  # nothing re-assigned
    assert kube.feed("eth")["status"]["readyShards"] == 0

    kube.patch_feed("eth", {"suspend": False})
    wait_ready(kube, operator_process, "eth", 2)
    assert all(d["spec"]["replicas"] == 2 for d in kube.deployments("eth").values())
    assert len(kube.pods("eth")) == 4


def test_children_edited_or_deleted_by_hand_are_restored(
    control_plane: ControlPlane,
    kube: Kube,
    operator_process: OperatorProcess,
    exchange: SimulatorProcess,
) -> None:
    # A long resync interval: what restores the children here are the watch events.
    operator_process.resync_interval = 300
    operator_process.start()
    kube.create_feed("eth", currency="ETH", topN=10, shards=2, exchange={"url": exchange.ws_url})
    wait_ready(kube, operator_process, "eth", 2)
    original = kube.deployments("eth")["eth-shard-0"]
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None

    control_plane.kubectl("delete", "deployment", "-n", kube.ns, "eth-shard-1", "--wait=false")
    control_plane.kubectl(
        "set", "image", "-n", kube.ns, "deployment/eth-shard-0", "collector=evil:latest"
    )
    control_plane.kubectl("scale", "-n", kube.ns, "deployment/eth-shard-0", "--replicas=5")
    control_plane.kubectl(
        "patch", "-n", kube.ns, "configmap/eth-assignment", "--type=merge",
        "-p", json.dumps({"data": {"shard-0.json": "{}"}}),
    )  # fmt: skip

    def restored() -> bool:
        deployments = kube.deployments("eth")
        shard0 = deployments.get("eth-shard-0")
        current = kube.configmap("eth-assignment")
        return (
            "eth-shard-1" in deployments
            and shard0 is not None
            and shard0["spec"]["template"]["spec"]["containers"][0]["image"] == TEST_IMAGE
            and shard0["spec"]["replicas"] == 1
            and current is not None
            and current["data"].get("shard-0.json") == configmap["data"]["shard-0.json"]
        )

    wait_for(restored, "the children to be restored", timeout=30, log=operator_process)
    assert kube.deployments("eth")["eth-shard-0"]["metadata"]["uid"] == original["metadata"]["uid"]
    current = kube.configmap("eth-assignment")
    assert current is not None
    assert current["data"] == configmap["data"]
    assert kube.events("DriftCorrected")
    wait_ready(kube, operator_process, "eth", 2)


def test_an_unreachable_exchange_degrades_the_feed_and_leaves_running_shards_alone(
    kube: Kube, operator_process: OperatorProcess, exchange: SimulatorProcess
) -> None:
    operator_process.start()
    kube.create_feed("eth", currency="ETH", topN=10, shards=2, exchange={"url": exchange.ws_url})
    wait_ready(kube, operator_process, "eth", 2)
    versions = resource_versions(kube, "eth")

    dead = f"ws://127.0.0.1:{free_port()}/ws/api/v2"
    kube.patch_feed("eth", {"exchange": {"url": dead}})

    def degraded() -> dict[str, Any] | None:
        feed = kube.feed("eth")
        return feed if is_condition(feed, "Degraded", "True", "ExchangeUnreachable") else None

    feed = wait_for(degraded, "Degraded=True ExchangeUnreachable", log=operator_process)
    found = condition(feed, "Degraded")
    assert found is not None
    assert "cannot reach the exchange at http://127.0.0.1:" in found["message"]
    assert "running shards are left as they are" in found["message"]
    # The collectors keep running what they ran: nothing was rewritten, nothing rolled.
    assert resource_versions(kube, "eth") == versions
    assert is_condition(feed, "Ready", "True")
    assert kube.events("ExchangeUnreachable")

    kube.patch_feed("eth", {"exchange": {"url": exchange.ws_url}})
    wait_for(
        lambda: is_condition(kube.feed("eth"), "Degraded", "False", "AsExpected"),
        "the feed to recover",
        log=operator_process,
    )
    assert kube.events("Recovered")


def test_a_feed_whose_exchange_was_never_reachable_gets_no_children(
    kube: Kube, operator_process: OperatorProcess
) -> None:
    operator_process.start()
    kube.create_feed("eth", currency="ETH", exchange={"url": f"ws://127.0.0.1:{free_port()}"})

    def degraded() -> dict[str, Any] | None:
        feed = kube.feed("eth")
        return feed if is_condition(feed, "Degraded", "True", "ExchangeUnreachable") else None

    feed = wait_for(degraded, "Degraded=True", log=operator_process)
    assert is_condition(feed, "Ready", "False", "ShardsNotReady")
    assert kube.deployments("eth") == {}
    assert kube.configmap("eth-assignment") is None


def test_restarting_the_operator_creates_no_duplicates_and_no_flapping(
    kube: Kube, operator_process: OperatorProcess, exchange: SimulatorProcess
) -> None:
    operator_process.start()
    kube.create_feed("eth", currency="ETH", topN=25, shards=3, exchange={"url": exchange.ws_url})
    feed = wait_ready(kube, operator_process, "eth", 3)
    versions = resource_versions(kube, "eth")
    conditions = feed["status"]["conditions"]
    events = {e["metadata"]["uid"] for e in kube.events()}

    for _ in range(2):
        operator_process.restart()
        # The resume handler and several resync passes (every 2 s) run meanwhile.
        wait_for(
            lambda: operator_process.log().split("===== start")[-1].count("resync_feed") >= 3,
            "three resync passes",
            timeout=30,
            log=operator_process,
        )
        # What the restarted operator wrote: one apply per shard, to learn that each was as
        # rendered (it keeps no state across restarts); nothing else, and no status at all.
        writes = [
            line.split("optionfeed_operator.cluster: ", 1)[-1]
            for line in operator_process.log().split("===== start")[-1].splitlines()
            if "optionfeed_operator.cluster" in line
            and any(f": {verb}" in line for verb in ("apply", "delete", "patch status"))
        ]
        assert sorted(writes) == [f"{kube.ns}/eth-shard-{i}: apply Deployment" for i in range(3)], (
            writes
        )

    assert sorted(kube.all_deployments()) == ["eth-shard-0", "eth-shard-1", "eth-shard-2"]
    assert resource_versions(kube, "eth") == versions
    after = kube.feed("eth")
    assert after["status"]["conditions"] == conditions
    assert is_condition(after, "Ready", "True")
    # Nothing happened, so nothing was announced.
    new = [
        f"{e['reason']}: {e['message']}"
        for e in kube.events()
        if e["metadata"]["uid"] not in events and e["involvedObject"].get("kind") == "OptionFeed"
    ]
    assert new == []


def test_deleting_the_feed_deletes_its_children(
    control_plane: ControlPlane,
    kube: Kube,
    operator_process: OperatorProcess,
    exchange: SimulatorProcess,
) -> None:
    operator_process.start()
    kube.create_feed("eth", currency="ETH", topN=10, shards=2, exchange={"url": exchange.ws_url})
    wait_ready(kube, operator_process, "eth", 2)
    assert kube.pods("eth")

    control_plane.kubectl("delete", "-n", kube.ns, "of/eth", "--wait=true", timeout=60)

    def gone() -> bool:
        return (
            not kube.deployments("eth")
            and kube.configmap("eth-assignment") is None
            and not kube.pods("eth")
        )

    wait_for(gone, "the garbage collector to remove the children", timeout=60, log=operator_process)


def test_pods_run_under_kwok_and_the_feed_turns_ready(
    control_plane: ControlPlane,
    kube: Kube,
    operator_process: OperatorProcess,
    exchange: SimulatorProcess,
) -> None:
    # Pod Security admission checks every collector pod against the "restricted" standard.
    control_plane.kubectl(
        "label", "namespace", kube.ns, "pod-security.kubernetes.io/enforce=restricted"
    )
    operator_process.start()
    kube.create_feed(
        "btc",
        currency="BTC",
        topN=8,
        shards=2,
        replicasPerShard=2,
        exchange={"url": exchange.ws_url},
    )
    feed = wait_ready(kube, operator_process, "btc", 2)
    pods = kube.pods("btc")
    assert len(pods) == 4
    assert all(p["status"]["phase"] == "Running" for p in pods)
    assert all(p["spec"].get("nodeName", "").startswith("kwok-node-") for p in pods)
    assert sorted(p["metadata"]["labels"]["optionfeed.io/shard"] for p in pods) == [
        "0",
        "0",
        "1",
        "1",
    ]
    ready = condition(feed, "Ready")
    assert ready is not None
    assert ready["message"] == "2 of 2 shards ready"


def test_the_feed_is_re_ranked_every_refresh_interval(
    kube: Kube, operator_process: OperatorProcess, exchange: SimulatorProcess
) -> None:
    operator_process.start()
    kube.create_feed(
        "eth",
        currency="ETH",
        topN=12,
        shards=2,
        refreshInterval="10s",
        exchange={"url": exchange.ws_url},
    )
    first = wait_ready(kube, operator_process, "eth", 2)["status"]["lastRankedAt"]
    generations = template_generations(kube, "eth")
    configmap = kube.configmap("eth-assignment")
    assert configmap is not None

    def re_ranked() -> str | None:
        last: str | None = kube.feed("eth")["status"].get("lastRankedAt")
        return last if last and last > first else None

    second = wait_for(re_ranked, "a second ranking", timeout=30, log=operator_process)
    seconds = (parse_time(second) - parse_time(first)).total_seconds()
    assert 10 <= seconds <= 10 + 2 * operator_process.resync_interval + 3, seconds
    # The market did not move, so neither did any instrument, and no collector restarted.
    after = kube.configmap("eth-assignment")
    assert after is not None
    assert after["data"] == configmap["data"]
    assert after["metadata"]["annotations"]["optionfeed.io/ranked-at"] == second
    assert template_generations(kube, "eth") == generations
