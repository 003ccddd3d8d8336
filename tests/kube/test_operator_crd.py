"""The OptionFeed CRD on a real API server: defaults, validation with the CRD's own messages, the
scale subresource and the printer columns. No operator runs here: this is what the API server
alone enforces."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.control_plane import ControlPlane
from kube.operator_fixtures import ROOT, Kube, kube_fixture, optionfeed_crd_fixture  # noqa: F401

DB = {"secretRef": {"name": "optionfeed-db", "key": "url"}}


def manifest(name: str, namespace: str, **spec: Any) -> str:
    spec.setdefault("database", DB)
    return json.dumps(
        {
            "apiVersion": "optionfeed.io/v1alpha1",
            "kind": "OptionFeed",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def apply(control_plane: ControlPlane, text: str) -> tuple[int, str]:
    result = control_plane.kubectl("apply", "-f", "-", input=text, check=False)
    return result.returncode, result.stdout + result.stderr


def test_defaults_appear_on_a_minimal_feed(kube: Kube) -> None:
    kube.create_feed("eth", currency="ETH")
    spec = kube.feed("eth")["spec"]
    assert spec == {
        "currency": "ETH",
        "database": DB,
        "rankBy": "volume_usd",
        "channels": ["ticker", "trades"],
        "interval": "100ms",
        "shards": 1,
        "replicasPerShard": 1,
        "refreshInterval": "5m",
        "exchange": {"url": "wss://www.deribit.com/ws/api/v2"},
        "suspend": False,
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"currency": "ETH", "topN": 2, "shards": 3},
            "spec.shards must not exceed spec.topN (every shard needs at least one instrument)",
        ),
        (
            {"currency": "ETH", "interval": "raw"},
            "spec.interval raw needs spec.credentialsSecretRef: Deribit serves raw channels only "
            "to authenticated clients",
        ),
        (
            {"currency": "BTC", "underlyings": ["SOL"]},
            "spec.underlyings filters USDC (linear) options only",
        ),
        ({"currency": "ETH", "refreshInterval": "5s"}, "spec.refreshInterval must be at least 10s"),
        (
            {"currency": "ETH", "collector": {"env": [{"name": "DATABASE_URL", "value": "x"}]}},
            "spec.collector.env may not set DATABASE_URL",
        ),
        ({"currency": "DOGE"}, 'spec.currency: Unsupported value: "DOGE"'),
        ({"currency": "ETH", "channels": ["candles"]}, 'Unsupported value: "candles"'),
        (
            {"currency": "ETH", "shards": 0},
            "spec.shards in body should be greater than or equal to 1",
        ),
        (
            {"currency": "ETH", "shards": 65},
            "spec.shards in body should be less than or equal to 64",
        ),
        ({"currency": "ETH", "topN": 0}, "spec.topN in body should be greater than or equal to 1"),
        (
            {"currency": "ETH", "refreshInterval": "often"},
            "spec.refreshInterval in body should match",
        ),
        (
            {"currency": "ETH", "exchange": {"url": "ftp://x"}},
            "spec.exchange.url in body should match",
        ),
        (
            {"currency": "ETH", "database": {"secretRef": {"name": "db"}}},
            "spec.database.secretRef.key: Required value",
        ),
        (
            {
                "currency": "ETH",
                "database": {"secretRef": {"name": "db", "key": "url"}, "retention": "90 days"},
            },
            "spec.database.retention in body should match",
        ),
    ],
)
def test_invalid_feeds_are_rejected_with_the_crds_message(
    control_plane: ControlPlane,
    kube: Kube,
    spec: dict[str, Any],
    message: str,
) -> None:
    code, output = apply(control_plane, manifest("bad", kube.ns, **spec))
    assert code != 0
    assert message in output, output
    assert not kube.exists(kube.feed_path("bad"))


def test_a_name_too_long_for_labels_is_rejected(control_plane: ControlPlane, kube: Kube) -> None:
    code, output = apply(control_plane, manifest("x" * 53, kube.ns, currency="ETH"))
    assert code != 0
    assert "metadata.name must be at most 52 characters" in output


def test_the_currency_cannot_change(control_plane: ControlPlane, kube: Kube) -> None:
    assert apply(control_plane, manifest("eth", kube.ns, currency="ETH"))[0] == 0
    code, output = apply(control_plane, manifest("eth", kube.ns, currency="BTC"))
    assert code != 0
    assert "spec.currency is immutable" in output
    assert kube.feed("eth")["spec"]["currency"] == "ETH"


def test_raw_is_accepted_with_credentials(control_plane: ControlPlane, kube: Kube) -> None:
    text = manifest(
        "raw", kube.ns, currency="ETH", interval="raw", credentialsSecretRef={"name": "keys"}
    )
    code, output = apply(control_plane, text)
    assert code == 0, output


def test_scale_sets_shards_within_the_same_rules(control_plane: ControlPlane, kube: Kube) -> None:
    kube.create_feed("eth", currency="ETH", topN=4)
    control_plane.kubectl("scale", "-n", kube.ns, "of/eth", "--replicas=3")
    assert kube.feed("eth")["spec"]["shards"] == 3
    scale = control_plane.api("GET", kube.feed_path("eth") + "/scale")
    assert scale["spec"]["replicas"] == 3
    refused = control_plane.kubectl("scale", "-n", kube.ns, "of/eth", "--replicas=5", check=False)
    assert refused.returncode != 0
    assert "spec.shards must not exceed spec.topN" in refused.stderr
    assert kube.feed("eth")["spec"]["shards"] == 3


def test_kubectl_get_shows_the_printer_columns(control_plane: ControlPlane, kube: Kube) -> None:
    kube.create_feed("eth", currency="ETH", topN=50, shards=2)
    table = control_plane.kubectl("get", "-n", kube.ns, "of").stdout.splitlines()
    assert table[0].split() == ["NAME", "CURRENCY", "TOPN", "SHARDS", "READY", "AGE"]
    assert table[1].split()[:4] == ["eth", "ETH", "50", "2"]
    wide = control_plane.kubectl("get", "-n", kube.ns, "of", "-o", "wide").stdout.splitlines()
    assert {"INSTRUMENTS", "SUSPENDED", "DEGRADED"} <= set(wide[0].split())


def test_status_is_a_subresource(control_plane: ControlPlane, kube: Kube) -> None:
    kube.create_feed("eth", currency="ETH")
    # A write to the main resource cannot set status...
    kube.cp.api(
        "PATCH",
        kube.feed_path("eth"),
        {"status": {"readyShards": 9}},
        content_type="application/merge-patch+json",
    )
    assert "status" not in kube.feed("eth")
    # ...only one to /status can, and it leaves the generation alone.
    kube.cp.api(
        "PATCH",
        kube.feed_path("eth") + "/status",
        {"status": {"readyShards": 1, "selector": "a=b", "shards": 1}},
        content_type="application/merge-patch+json",
    )
    feed = kube.feed("eth")
    assert feed["status"]["readyShards"] == 1
    assert feed["metadata"]["generation"] == 1
    scale = control_plane.api("GET", kube.feed_path("eth") + "/scale")
    assert scale["status"] == {"replicas": 1, "selector": "a=b"}


def test_the_example_feed_is_accepted_as_written(control_plane: ControlPlane, kube: Kube) -> None:
    example = ROOT / "deploy" / "examples" / "feed.yaml"
    control_plane.kubectl("apply", "-n", kube.ns, "-f", str(example))
    feed = kube.feed("eth-top50")
    assert (feed["spec"]["currency"], feed["spec"]["topN"], feed["spec"]["shards"]) == (
        "ETH",
        50,
        2,
    )
