from pathlib import Path
from typing import Any

import pytest
import yaml

from optionfeed.deribit.channels import FEED_CHANNELS, Interval
from optionfeed.deribit.ranking import RankBy
from optionfeed.store import tables
from optionfeed_operator.api import (
    ConditionType,
    InvalidOptionFeed,
    OptionFeedSpec,
    parse_duration,
    parse_feed,
)

ROOT = Path(__file__).resolve().parents[2]


def body(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "optionfeed.io/v1alpha1",
        "kind": "OptionFeed",
        "metadata": {"name": "eth", "namespace": "md", "uid": "u-1", "generation": 3, **meta},
        "spec": {
            "currency": "ETH",
            "database": {"secretRef": {"name": "db", "key": "url"}},
            **(spec or {}),
        },
    }


def test_a_minimal_feed_gets_the_documented_defaults() -> None:
    feed = parse_feed(body())
    assert feed == OptionFeedSpec(
        name="eth",
        namespace="md",
        uid="u-1",
        generation=3,
        currency="ETH",
        database=feed.database,
    )
    assert (feed.database.name, feed.database.key) == ("db", "url")
    assert feed.top_n is None
    assert feed.rank_by is RankBy.VOLUME_USD
    assert feed.channels == ("ticker", "trades")
    assert feed.interval is Interval.MS100
    assert (feed.shards, feed.replicas_per_shard, feed.replicas) == (1, 1, 1)
    assert feed.refresh_seconds == 300
    assert feed.exchange_url == "wss://www.deribit.com/ws/api/v2"
    assert feed.suspend is False


def test_suspend_means_zero_replicas() -> None:
    assert parse_feed(body({"replicasPerShard": 3})).replicas == 3
    assert parse_feed(body({"replicasPerShard": 3, "suspend": True})).replicas == 0


def test_channels_come_out_in_canonical_order() -> None:
    assert parse_feed(body({"channels": ["book", "ticker", "quote"]})).channels == (
        "ticker",
        "quote",
        "book",
    )


def test_the_parsed_spec_does_not_share_state_with_the_body() -> None:
    raw = body({"collector": {"env": [{"name": "A", "value": "1"}], "nodeSelector": {"x": "y"}}})
    feed = parse_feed(raw)
    raw["spec"]["collector"]["env"][0]["value"] = "2"
    assert feed.collector.env[0]["value"] == "1"
    with pytest.raises(AttributeError):
        feed.shards = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"currency": "DOGE"}, "spec.currency"),
        ({"shards": 0}, "spec.shards"),
        ({"shards": 5, "topN": 4}, "spec.shards"),
        ({"shards": True}, "spec.shards"),
        ({"interval": "raw"}, "spec.interval"),
        ({"channels": ["ticker", "candles"]}, "spec.channels"),
        ({"refreshInterval": "soon"}, "spec.refreshInterval"),
        ({"rankBy": "volume"}, "spec.rankBy"),
        ({"database": {"secretRef": {"name": "db"}}}, "spec.database.secretRef.key"),
        (
            {"database": {"secretRef": {"name": "db", "key": "url"}, "retention": "90 days"}},
            "spec.database.retention",
        ),
        (
            {"database": {"secretRef": {"name": "db", "key": "url"}, "retention": 90}},
            "spec.database.retention",
        ),
    ],
)
def test_an_unusable_spec_names_the_field(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidOptionFeed) as caught:
        parse_feed(body(spec))
    assert caught.value.path == path


def test_a_long_name_is_refused_because_it_goes_into_labels() -> None:
    with pytest.raises(InvalidOptionFeed, match=r"metadata\.name"):
        parse_feed(body(name="x" * 53))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("30s", 30), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 0.5), ("2h0m5s", 7205)],
)
def test_durations_parse_like_go(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "5d", "-5m", "5m "])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_every_condition_type_documents_true_false_and_unknown() -> None:
    doc = ConditionType.__doc__ or ""
    headers = [f"``{kind.value}``\n" for kind in ConditionType]
    for i, header in enumerate(headers):
        start = doc.index(header)
        end = doc.index(headers[i + 1]) if i + 1 < len(headers) else len(doc)
        section = doc[start:end]
        for word in ("True:", "False:", "Unknown (or absent):"):
            assert word in section, (header, word)


def test_the_shipped_example_feed_parses() -> None:
    example = yaml.safe_load((ROOT / "deploy/examples/feed.yaml").read_text())
    example["metadata"].update(namespace="md", uid="u-1", generation=1)
    feed = parse_feed(example)
    assert (feed.currency, feed.top_n, feed.shards) == ("ETH", 50, 2)


def test_the_crd_offers_every_family_a_feed_records_and_each_has_a_table() -> None:
    crd = yaml.safe_load((ROOT / "crds/optionfeed.io_optionfeeds.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    offered = spec["properties"]["channels"]
    assert offered["items"]["enum"] == list(FEED_CHANNELS)
    assert offered["maxItems"] == len(FEED_CHANNELS)
    assert set(FEED_CHANNELS) == set(tables.FAMILIES)
