"""The rendered children, against golden files in tests/golden/operator/.

Regenerate them after an intended change with ``OPTIONFEED_UPDATE_GOLDEN=1 pytest <this file>``
and review the diff like any other code change.
"""

import copy
import os
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
import yaml

from optionfeed_operator.api import Annotations, parse_feed
from optionfeed_operator.assignment import build_assignment
from optionfeed_operator.manifests import (
    DEFAULT_RESOURCES,
    CollectorTracing,
    feed_selector,
    input_hash,
    owner_reference,
    render_configmap,
    render_deployment,
    shard_names,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "operator"
UPDATE = os.environ.get("OPTIONFEED_UPDATE_GOLDEN") == "1"
IMAGE = "ghcr.io/optionfeed/optionfeed:test"
INSTRUMENTS = [
    "ETH-26DEC25-3000-C",
    "ETH-26DEC25-3000-P",
    "ETH-26DEC25-3500-C",
    "ETH-26DEC25-4000-C",
    "ETH-27MAR26-5000-C",
    "ETH-28NOV25-2800-P",
    "ETH-28NOV25-3200-C",
    "ETH-5DEC25-3100-C",
    "ETH-5DEC25-3300-P",
    "ETH-26DEC25-2500-P",
    "ETH-27MAR26-3000-P",
    "ETH-28NOV25-3000-C",
]


def full_body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "optionfeed.io/v1alpha1",
        "kind": "OptionFeed",
        "metadata": {"name": "eth-top50", "namespace": "md", "uid": "0f0e-uid", "generation": 7},
        "spec": {
            "currency": "ETH",
            "topN": 50,
            "shards": 2,
            "replicasPerShard": 2,
            "channels": ["ticker", "trades", "book"],
            "interval": "raw",
            "credentialsSecretRef": {"name": "deribit-keys"},
            "database": {"secretRef": {"name": "optionfeed-db", "key": "url"}, "retention": "90d"},
            "exchange": {"url": "wss://test.deribit.com/ws/api/v2"},
            "collector": {
                "image": "registry.example/optionfeed:1.2.3",
                "imagePullPolicy": "IfNotPresent",
                "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
                "nodeSelector": {"pool": "market-data"},
                "tolerations": [{"key": "md", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {
                    "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": {
                                        "matchLabels": {"optionfeed.io/feed": "eth-top50"}
                                    },
                                },
                            }
                        ]
                    }
                },
                "env": [
                    {"name": "OPTIONFEED_LOG_LEVEL", "value": "DEBUG"},
                    {"name": "DATABASE_URL", "value": "postgresql://sneaky"},
                ],
            },
            **spec,
        },
    }


def minimal_body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "optionfeed.io/v1alpha1",
        "kind": "OptionFeed",
        "metadata": {"name": "btc", "namespace": "md", "uid": "1a1b-uid", "generation": 1},
        "spec": {
            "currency": "BTC",
            "database": {"secretRef": {"name": "optionfeed-db", "key": "url"}},
            **spec,
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the shard documents) as literal blocks, so diffs read line by line."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def check_golden(name: str, rendered: dict[str, Any]) -> None:
    path = GOLDEN / name
    text = yaml.dump(rendered, Dumper=_Dumper, sort_keys=False, width=100)
    assert yaml.safe_load(text) == rendered
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with OPTIONFEED_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} differs from the golden file"


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def test_deployment_of_a_full_feed_matches_the_golden_file() -> None:
    check_golden("deployment-full.yaml", render_deployment(parse_feed(full_body()), 1, image=IMAGE))


def test_deployment_of_a_minimal_feed_matches_the_golden_file() -> None:
    check_golden(
        "deployment-minimal.yaml", render_deployment(parse_feed(minimal_body()), 0, image=IMAGE)
    )


def test_configmap_matches_the_golden_file() -> None:
    feed = parse_feed(full_body())
    plan = build_assignment(feed, INSTRUMENTS)
    check_golden(
        "configmap.yaml",
        render_configmap(
            feed, plan, ranking_key="0123456789abcdef", ranked_at="2025-11-21T13:00:00Z"
        ),
    )


def test_the_collector_runs_the_documented_command_with_its_shard_file_mounted() -> None:
    feed = parse_feed(full_body())
    deployment = render_deployment(feed, 1, image=IMAGE)
    main = container(deployment)
    assert main["command"] == ["optionfeed"]
    assert main["args"][:3] == ["collect", "--assignment", "/etc/optionfeed/assignment.json"]
    assert main["args"][3:] == ["--metrics-port", "9464"]
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    assert mounts["assignment"]["mountPath"] == "/etc/optionfeed"
    assert "subPath" not in mounts["assignment"]
    assert mounts["spool"]["mountPath"] == "/var/lib/optionfeed/spool"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["assignment"]["configMap"] == {
        "name": "eth-top50-assignment",
        "items": [{"key": "shard-1.json", "path": "assignment.json"}],
        "defaultMode": 0o444,
    }
    assert volumes["spool"] == {"name": "spool", "emptyDir": {}}


def test_the_collector_gets_secrets_from_secret_references_only() -> None:
    main = container(render_deployment(parse_feed(full_body()), 0, image=IMAGE))
    env = {e["name"]: e for e in main["env"]}
    assert env["DATABASE_URL"] == {
        "name": "DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "optionfeed-db", "key": "url"}},
    }
    assert env["OPTIONFEED_CLIENT_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "deribit-keys",
        "key": "client_id",
    }
    assert env["OPTIONFEED_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "deribit-keys",
        "key": "client_secret",
    }
    assert env["OPTIONFEED_LOG_LEVEL"]["value"] == "DEBUG"
    # The user's DATABASE_URL cannot shadow the Secret, and no name appears twice.
    assert [e["name"] for e in main["env"]].count("DATABASE_URL") == 1
    minimal = container(render_deployment(parse_feed(minimal_body()), 0, image=IMAGE))
    assert "OPTIONFEED_CLIENT_ID" not in {e["name"] for e in minimal["env"]}


def test_pods_are_locked_down() -> None:
    deployment = render_deployment(parse_feed(minimal_body()), 0, image=IMAGE)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(deployment)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_probes_and_metrics_port() -> None:
    main = container(render_deployment(parse_feed(minimal_body()), 0, image=IMAGE))
    assert main["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert main["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["startupProbe"]["httpGet"]["path"] == "/livez"
    assert main["resources"] == DEFAULT_RESOURCES


def test_rollout_surges_one_pod_and_never_drops_one() -> None:
    spec = render_deployment(parse_feed(minimal_body()), 0, image=IMAGE)["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }


def test_labels_follow_the_design_and_the_selector_finds_the_pods() -> None:
    deployment = render_deployment(parse_feed(full_body()), 1, image=IMAGE)
    expected = {
        "app.kubernetes.io/name": "optionfeed-collector",
        "app.kubernetes.io/instance": "eth-top50",
        "app.kubernetes.io/managed-by": "optionfeed-operator",
        "optionfeed.io/feed": "eth-top50",
        "optionfeed.io/shard": "1",
    }
    assert deployment["metadata"]["labels"] == expected
    assert deployment["spec"]["template"]["metadata"]["labels"] == expected
    match = deployment["spec"]["selector"]["matchLabels"]
    assert match.items() <= expected.items()
    pairs = dict(term.split("=") for term in feed_selector("eth-top50").split(","))
    assert pairs.items() <= expected.items()


def test_the_owner_reference_is_what_kopf_would_build() -> None:
    body = full_body()
    feed = parse_feed(body)
    ours = owner_reference(feed)
    assert ours == dict(kopf.build_owner_reference(kopf.Body(cast(kopf.RawBody, body))))
    assert render_deployment(feed, 0, image=IMAGE)["metadata"]["ownerReferences"] == [ours]


def test_the_input_hash_covers_the_rendering_but_not_itself() -> None:
    deployment = render_deployment(parse_feed(minimal_body()), 0, image=IMAGE)
    stamped = deployment["metadata"]["annotations"][Annotations.INPUT_HASH]
    assert stamped == input_hash(deployment)
    changed = copy.deepcopy(deployment)
    container(changed)["image"] = "other"
    assert input_hash(changed) != stamped


def test_what_the_collector_reloads_live_never_changes_a_deployment() -> None:
    # Generation, topN, rankBy, refreshInterval and the instruments only reach the ConfigMap.
    base = render_deployment(parse_feed(full_body()), 0, image=IMAGE)
    edited = full_body(topN=60, rankBy="open_interest", refreshInterval="1m")
    edited["metadata"]["generation"] = 12
    assert render_deployment(parse_feed(edited), 0, image=IMAGE) == base


def test_suspend_changes_replicas_and_the_hash_but_not_the_pod_template() -> None:
    running = render_deployment(parse_feed(full_body()), 0, image=IMAGE)
    suspended = render_deployment(parse_feed(full_body(suspend=True)), 0, image=IMAGE)
    assert (running["spec"]["replicas"], suspended["spec"]["replicas"]) == (2, 0)
    assert running["spec"]["template"] == suspended["spec"]["template"]
    key = Annotations.INPUT_HASH
    assert running["metadata"]["annotations"][key] != suspended["metadata"]["annotations"][key]


def test_one_function_names_the_shards() -> None:
    assert shard_names("eth", 3) == ["eth-shard-0", "eth-shard-1", "eth-shard-2"]
    feed = parse_feed(full_body(shards=3, topN=50))
    assert [render_deployment(feed, i)["metadata"]["name"] for i in range(3)] == shard_names(
        "eth-top50", 3
    )
    with pytest.raises(ValueError, match="outside"):
        render_deployment(feed, 3)


def test_the_operators_default_image_is_used_unless_the_feed_names_one() -> None:
    assert (
        container(render_deployment(parse_feed(minimal_body()), 0, image=IMAGE))["image"] == IMAGE
    )
    named = container(render_deployment(parse_feed(full_body()), 0, image=IMAGE))
    assert named["image"] == "registry.example/optionfeed:1.2.3"


TRACING = CollectorTracing(
    {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    }
)


def test_deployment_with_tracing_matches_the_golden_file() -> None:
    check_golden(
        "deployment-tracing.yaml",
        render_deployment(parse_feed(minimal_body()), 0, image=IMAGE, tracing=TRACING),
    )


def test_tracing_gives_the_collector_the_operators_exporter_and_its_identity() -> None:
    env = {
        e["name"]: e
        for e in container(render_deployment(parse_feed(full_body()), 1, tracing=TRACING))["env"]
    }
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://otel-collector.observability:4318"
    assert env["OTEL_TRACES_SAMPLER_ARG"]["value"] == "0.1"
    assert env["OTEL_SERVICE_NAME"]["value"] == "optionfeed-collector"
    assert env["K8S_POD_NAME"]["valueFrom"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}
    }
    assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == (
        "optionfeed.feed=eth-top50,optionfeed.shard=1,k8s.namespace.name=md,"
        "k8s.pod.name=$(K8S_POD_NAME)"
    )
    names = [
        e["name"]
        for e in container(render_deployment(parse_feed(full_body()), 1, tracing=TRACING))["env"]
    ]
    assert names.index("K8S_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")


def test_without_tracing_no_otel_variable_is_set() -> None:
    env = container(render_deployment(parse_feed(full_body()), 1))["env"]
    assert not [e for e in env if e["name"].startswith("OTEL_") or e["name"] == "K8S_POD_NAME"]


def test_the_feeds_own_otel_settings_win_over_the_operators() -> None:
    body = minimal_body(collector={"env": [{"name": "OTEL_TRACES_SAMPLER", "value": "always_off"}]})
    env = container(render_deployment(parse_feed(body), 0, tracing=TRACING))["env"]
    samplers = [e for e in env if e["name"] == "OTEL_TRACES_SAMPLER"]
    assert samplers == [{"name": "OTEL_TRACES_SAMPLER", "value": "always_off"}]


def test_tracing_settings_come_from_the_operators_environment_only_with_an_endpoint() -> None:
    assert CollectorTracing.from_environment({}) is None
    assert CollectorTracing.from_environment({"OTEL_TRACES_SAMPLER": "always_on"}) is None
    endpoint = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}
    assert CollectorTracing.from_environment({**endpoint, "OTEL_SDK_DISABLED": "true"}) is None
    found = CollectorTracing.from_environment(
        {**endpoint, "OTEL_EXPORTER_OTLP_HEADERS": "authorization=secret", "PATH": "/bin"}
    )
    # Headers may hold credentials: they are not copied into every pod spec.
    assert found == CollectorTracing(endpoint)
