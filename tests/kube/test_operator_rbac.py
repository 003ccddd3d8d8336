"""Least privilege, tested for real: the operator runs with a ServiceAccount token bound to the
ClusterRole rules in deploy/rbac.yaml, and drives a feed through every action it has (create the
children, follow their readiness, restore a deleted child, delete an extra shard, post Events,
adopt the children an orphaning delete left behind, let the feed go). With the shipped rules every
step succeeds; without any single one of them, the step that needs it fails.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.control_plane import ControlPlane
from harness.simulator import SimulatorProcess
from kube.operator_fixtures import (  # noqa: F401
    Kube,
    OperatorProcess,
    exchange_fixture,
    is_condition,
    kube_fixture,
    optionfeed_crd_fixture,
    rbac_rules,
    wait_for,
)

SERVICE_ACCOUNT = "optionfeed-operator"
# How the API server words a refusal ("... is forbidden: User "system:serviceaccount:..." cannot
# ..."); kopf and the reconciler both log it.
REFUSAL = "forbidden: User"
# How the OwnerReferencesPermissionEnforcement admission plugin words its refusal of a child whose
# ownerReference blocks the owner's deletion ("... is forbidden: cannot set blockOwnerDeletion if
# an ownerReference refers to a resource you can't set finalizers on"): it names no user.
OWNER_REFUSAL = "cannot set blockOwnerDeletion"


def refusals(log: str) -> list[str]:
    return [line for line in log.splitlines() if REFUSAL in line or OWNER_REFUSAL in line]


# Which step of the scenario each permission is for. Every (group, resource, verb) of the shipped
# ClusterRole is listed, so a rule added to deploy/rbac.yaml without a reason here fails the test.
NEEDED_FOR: dict[tuple[str, str, str], str] = {
    # kopf lists and watches feeds and children from the start.
    ("optionfeed.io", "optionfeeds", "list"): "start",
    ("optionfeed.io", "optionfeeds", "watch"): "start",
    ("apps", "deployments", "list"): "start",
    ("apps", "deployments", "watch"): "start",
    ("", "configmaps", "list"): "start",
    ("", "configmaps", "watch"): "start",
    # The first pass of a new feed: kopf's finalizer and annotations, the reconciler's reads and
    # server-side applies (which create), the status, and the Events about it all.
    ("optionfeed.io", "optionfeeds", "get"): "ready",
    ("optionfeed.io", "optionfeeds", "patch"): "ready",
    ("optionfeed.io", "optionfeeds/status", "patch"): "ready",
    ("apps", "deployments", "create"): "ready",
    ("apps", "deployments", "patch"): "ready",
    ("", "configmaps", "get"): "ready",
    ("", "configmaps", "create"): "ready",
    ("", "configmaps", "patch"): "ready",
    ("", "events", "create"): "ready",
    # The children's ownerReference sets blockOwnerDeletion, which the API server's
    # OwnerReferencesPermissionEnforcement admission plugin allows only to who may update the
    # owner's finalizers: without it the first ConfigMap and Deployment are refused.
    ("optionfeed.io", "optionfeeds/finalizers", "update"): "ready",
    # Only a shard beyond spec.shards is ever deleted.
    ("apps", "deployments", "delete"): "scale down",
    # Adopting the children a feed deleted with --cascade=orphan left behind: the admission plugin
    # lets only who may delete an object set its ownerReferences.
    ("", "configmaps", "delete"): "adopt",
}


def shipped_permissions() -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rbac_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def rules_without(permission: tuple[str, str, str] | None) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for rule in copy.deepcopy(rbac_rules()):
        group_resource = (rule["apiGroups"][0], rule["resources"][0])
        if permission is not None and group_resource == permission[:2]:
            rule["verbs"] = [v for v in rule["verbs"] if v != permission[2]]
        if rule["verbs"]:
            rules.append(rule)
    return rules


@contextlib.contextmanager
def operator_account(
    control_plane: ControlPlane, namespace: str, rules: list[dict[str, Any]]
) -> Iterator[Path]:
    """A ServiceAccount bound (in the namespace) to a ClusterRole with ``rules``; yields a
    kubeconfig with a token minted for it."""
    role = f"optionfeed-operator-{namespace}"
    objects = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}
            ],
        },
    ]
    control_plane.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    try:
        yield control_plane.service_account_kubeconfig(namespace, SERVICE_ACCOUNT)
    finally:
        control_plane.kubectl("delete", "clusterrole", role, "--ignore-not-found", check=False)


class Refused(Exception):
    """The API server refused one of the operator's requests (it logs the server's message)."""


def run_scenario(
    control_plane: ControlPlane,
    kube: Kube,
    exchange: SimulatorProcess,
    kubeconfig: Path,
    log_dir: Path,
) -> tuple[str | None, OperatorProcess]:
    """Every action of the operator, one step at a time; returns the first step that failed
    (None when all succeeded) and the operator, for its log.

    A step fails when its outcome does not show in time, or as soon as the API server refuses
    any request of the operator. kopf retries a refused watch by listing again and again, which
    can hide a missing watch permission behind slow polling; a refusal is a failure regardless.
    """
    # Resync only every 5 minutes: readiness and restoring a deleted child must come from the
    # watches.
    operator = OperatorProcess(
        control_plane, kube.ns, log_dir, kubeconfig=kubeconfig, resync_interval=300
    )

    def guarded(check: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            refused = refusals(operator.log())
            if refused:
                raise Refused(refused[0])
            return check()

        return run

    def feed_ready(shards: int) -> Callable[[], bool]:
        def ready() -> bool:
            feed = kube.feed("eth")
            return is_condition(feed, "Ready", "True") and feed["status"]["readyShards"] == shards

        return ready

    def restored() -> bool:
        configmap = kube.configmap("eth-assignment")
        return configmap is not None and len(configmap.get("data") or {}) == 2

    def scaled_down() -> bool:
        return sorted(kube.deployments("eth")) == ["eth-shard-0"] and feed_ready(1)()

    def events_posted() -> bool:
        return bool(kube.events("ShardCreated")) and bool(kube.events("ShardDeleted"))

    def gone() -> bool:
        return not kube.exists(kube.feed_path("eth"))

    def orphaned() -> bool:
        configmap = kube.configmap("eth-assignment")
        return (
            not kube.exists(kube.feed_path("eth"))
            and configmap is not None
            and not configmap["metadata"].get("ownerReferences")
        )

    def adopted() -> bool:
        feed = kube.feed("eth")
        uid = feed["metadata"]["uid"]
        configmap = kube.configmap("eth-assignment") or {}
        children = [configmap, *kube.deployments("eth").values()]
        owned = all(
            any(ref.get("uid") == uid for ref in child["metadata"].get("ownerReferences", []))
            for child in children
        )
        return owned and feed_ready(2)()

    started = time.monotonic()
    steps: list[tuple[str, Callable[[], object], float]] = [
        # Up, and its watches established for a few seconds without a refusal.
        ("start", lambda: time.monotonic() - started > 4, 10),
        ("ready", feed_ready(2), 30),
        ("restore", restored, 15),
        ("scale down", scaled_down, 15),
        ("events", events_posted, 10),
        # Delete the feed but keep its children, then create it again: it adopts them. The garbage
        # collector watches a custom resource only from its next discovery sync (about every
        # 30 s) after the CRD appears, so orphaning may wait that long.
        ("orphan", orphaned, 60),
        ("adopt", adopted, 30),
        ("delete", gone, 20),
    ]
    try:
        operator.start()
    except AssertionError:
        return "start", operator
    started = time.monotonic()
    try:
        for name, check, timeout in steps:
            if name == "ready":
                kube.create_feed(
                    "eth", currency="ETH", topN=6, shards=2, exchange={"url": exchange.ws_url}
                )
            elif name == "restore":
                control_plane.kubectl("delete", "configmap", "-n", kube.ns, "eth-assignment")
            elif name == "scale down":
                control_plane.kubectl("scale", "-n", kube.ns, "of/eth", "--replicas=1")
            elif name == "orphan":
                control_plane.kubectl(
                    "delete", "-n", kube.ns, "of/eth", "--cascade=orphan", "--wait=false"
                )
            elif name == "adopt":
                kube.create_feed(
                    "eth", currency="ETH", topN=6, shards=2, exchange={"url": exchange.ws_url}
                )
            elif name == "delete":
                control_plane.kubectl("delete", "-n", kube.ns, "of/eth", "--wait=false")
            try:
                wait_for(guarded(check), name, timeout=timeout)
            except (AssertionError, Refused):
                return name, operator
        return None, operator
    finally:
        operator.stop()


def test_every_shipped_permission_is_accounted_for() -> None:
    assert shipped_permissions() == set(NEEDED_FOR)


def test_the_operator_does_everything_with_the_shipped_rules(
    control_plane: ControlPlane, kube: Kube, exchange: SimulatorProcess, tmp_path: Path
) -> None:
    with operator_account(control_plane, kube.ns, rules_without(None)) as kubeconfig:
        failed, operator = run_scenario(control_plane, kube, exchange, kubeconfig, tmp_path)
    assert failed is None, f"step {failed!r} failed\n--- operator log ---\n{operator.tail(80)}"
    assert refusals(operator.log()) == []


@pytest.mark.slow
@pytest.mark.parametrize("permission", sorted(NEEDED_FOR), ids=lambda p: f"{p[1]}-{p[2]}")
def test_taking_one_permission_away_breaks_the_step_that_needs_it(
    control_plane: ControlPlane,
    kube: Kube,
    exchange: SimulatorProcess,
    tmp_path: Path,
    permission: tuple[str, str, str],
) -> None:
    with operator_account(control_plane, kube.ns, rules_without(permission)) as kubeconfig:
        failed, operator = run_scenario(control_plane, kube, exchange, kubeconfig, tmp_path)
    assert failed == NEEDED_FOR[permission], (
        f"without {permission} the scenario failed at {failed!r}, "
        f"not {NEEDED_FOR[permission]!r}\n--- operator log ---\n{operator.tail(80)}"
    )
