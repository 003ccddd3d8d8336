import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from harness.placement import moved
from optionfeed.shard_document import parse_shard_document
from optionfeed_operator.api import parse_feed
from optionfeed_operator.assignment import (
    assign,
    build_assignment,
    document_key,
    read_documents,
    shard_document,
    shard_of,
    stored_traceparent,
    verified_selection,
    weight,
)


def option_names(count: int, currency: str = "ETH") -> list[str]:
    """Realistic, distinct option names: strikes x expiries x call/put."""
    expiries = ["28NOV25", "5DEC25", "26DEC25", "30JAN26", "27MAR26", "26JUN26", "25DEC26"]
    names: list[str] = []
    strike = 1000
    while len(names) < count:
        for expiry in expiries:
            for kind in "CP":
                names.append(f"{currency}-{expiry}-{strike}-{kind}")
        strike += 25
    return names[:count]


def feed_body(**spec: object) -> dict[str, object]:
    return {
        "apiVersion": "optionfeed.io/v1alpha1",
        "kind": "OptionFeed",
        "metadata": {"name": "eth-top50", "namespace": "md", "uid": "u-1", "generation": 7},
        "spec": {
            "currency": "ETH",
            "database": {"secretRef": {"name": "db", "key": "url"}},
            **spec,
        },
    }


def test_weights_are_stable_across_processes_and_hash_seeds() -> None:
    names = option_names(20)
    here = [shard_of(name, 5) for name in names]
    script = (
        "import json,sys; from optionfeed_operator.assignment import shard_of;"
        "print(json.dumps([shard_of(n, 5) for n in json.loads(sys.argv[1])]))"
    )
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script, json.dumps(names)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(out.stdout) == here


def test_weights_are_pinned_blake2b_values() -> None:
    # Pinned: a different weight function would move the instruments of every running feed.
    assert f"{weight('ETH-28NOV25-3000-C', 0):016x}" == "054af883e321dc81"
    assert f"{weight('ETH-28NOV25-3000-C', 1):016x}" == "38a06b2959f14450"
    assert [shard_of("ETH-28NOV25-3000-C", n) for n in (1, 2, 3, 4, 8)] == [0, 1, 1, 3, 4]


def test_assignment_is_deterministic_and_independent_of_input_order() -> None:
    names = option_names(300)
    first = assign(names, 4)
    assert assign(list(reversed(names)), 4) == first
    assert assign(names + names[:10], 4) == first  # duplicates collapse
    assert sorted(n for shard in first for n in shard) == sorted(names)
    assert all(list(shard) == sorted(shard) for shard in first)


@pytest.mark.parametrize(("count", "shards"), [(2000, 8), (500, 4), (60, 3)])
def test_every_instrument_lands_on_exactly_one_shard_and_shards_are_balanced(
    count: int, shards: int
) -> None:
    plan = assign(option_names(count), shards)
    placed = Counter(n for shard in plan for n in shard)
    assert len(placed) == count
    assert set(placed.values()) == {1}
    mean = count / shards
    sizes = [len(shard) for shard in plan]
    # Rendezvous hashing is balanced in expectation; allow about four standard deviations.
    slack = 4 * (mean * (1 - 1 / shards)) ** 0.5
    assert all(abs(size - mean) <= slack for size in sizes), sizes


@pytest.mark.parametrize("shards", [1, 2, 3, 4, 7])
def test_adding_a_shard_moves_only_the_instruments_the_new_shard_takes(shards: int) -> None:
    names = option_names(1000)
    before, after = assign(names, shards), assign(names, shards + 1)
    moves = moved(before, after)
    # Every move goes to the new shard, and everything on the new shard came from the others.
    assert {new for _, new in moves.values()} == {shards}
    assert set(moves) == set(after[shards])
    # Nothing else moved: the old shards only lost instruments.
    for i in range(shards):
        assert set(after[i]) <= set(before[i])
    # About 1/(N+1) of them.
    expected = len(names) / (shards + 1)
    assert abs(len(moves) - expected) <= 4 * expected**0.5, len(moves)


def test_removing_a_shard_moves_only_that_shards_instruments() -> None:
    names = option_names(600)
    before, after = assign(names, 4), assign(names, 3)
    moves = moved(before, after)
    assert set(moves) == set(before[3])
    assert all(old == 3 for old, _ in moves.values())


def test_a_changed_selection_never_moves_the_instruments_that_stay() -> None:
    names = option_names(400)
    before = assign(names[:300], 4)
    after = assign(names[50:350], 4)  # 50 out, 50 in
    assert moved(before, after) == {}


def test_documents_follow_the_design_format_and_parse_in_the_collector() -> None:
    feed = parse_feed(feed_body(topN=50, shards=2))
    plan = build_assignment(feed, option_names(50))
    assert set(plan.documents) == {"shard-0.json", "shard-1.json"}
    assert plan.instruments == 50
    for i in range(2):
        text = plan.documents[document_key(i)]
        doc = json.loads(text)
        assert list(doc) == [
            "feed",
            "namespace",
            "shard",
            "shards",
            "generation",
            "currency",
            "interval",
            "channels",
            "instruments",
            "exchangeUrl",
        ]
        assert doc["feed"] == "eth-top50"
        assert doc["namespace"] == "md"
        assert (doc["shard"], doc["shards"], doc["generation"]) == (i, 2, 7)
        assert doc["channels"] == ["ticker", "trades"]
        assert doc["exchangeUrl"] == "wss://www.deribit.com/ws/api/v2"
        parsed = parse_shard_document(text)
        assert parsed.shard == i
        assert list(parsed.instruments) == list(plan.shards[i])


def test_the_rendered_documents_parse_back_to_the_same_shards_and_feed() -> None:
    feed = parse_feed(feed_body(shards=3, channels=["quote", "book"], interval="agg2"))
    plan = build_assignment(feed, option_names(90), traceparent=TRACEPARENT)
    documents = read_documents(plan.documents)
    assert documents is not None
    assert tuple(d.instruments for d in documents) == plan.shards
    assert documents == tuple(
        shard_document(feed, i, names, traceparent=TRACEPARENT)
        for i, names in enumerate(plan.shards)
    )


def test_documents_that_do_not_belong_together_are_not_read_back() -> None:
    plan = build_assignment(parse_feed(feed_body(shards=2)), option_names(20))
    other = build_assignment(parse_feed(feed_body(shards=3)), option_names(20))
    btc = build_assignment(parse_feed(feed_body(shards=2, currency="BTC")), [])
    swapped = {
        "shard-0.json": plan.documents["shard-1.json"],
        "shard-1.json": plan.documents["shard-0.json"],
    }
    invalid = dict(plan.documents)
    invalid["shard-1.json"] = json.dumps({**json.loads(invalid["shard-1.json"]), "shard": True})
    assert read_documents(plan.documents) is not None
    assert (
        read_documents({**plan.documents, "shard-1.json": other.documents["shard-1.json"]}) is None
    )
    assert read_documents({**plan.documents, "shard-1.json": btc.documents["shard-1.json"]}) is None
    assert read_documents(swapped) is None
    assert read_documents(invalid) is None


def test_the_assignment_hash_ignores_the_generation_but_not_the_placement() -> None:
    names = option_names(40)
    base = build_assignment(parse_feed(feed_body(shards=2)), names)
    body = feed_body(shards=2)
    body["metadata"] = {"name": "eth-top50", "namespace": "md", "uid": "u-1", "generation": 8}
    edited = parse_feed(body)
    assert build_assignment(edited, names).hash == base.hash
    assert build_assignment(parse_feed(feed_body(shards=3)), names).hash != base.hash
    assert build_assignment(parse_feed(feed_body(shards=2)), names[:39]).hash != base.hash
    channels = parse_feed(feed_body(shards=2, channels=["ticker", "book"]))
    assert build_assignment(channels, names).hash != base.hash


def test_a_stored_selection_is_trusted_only_while_its_documents_are_intact() -> None:
    names = option_names(30)
    plan = build_assignment(parse_feed(feed_body(shards=3)), names)
    assert verified_selection(plan.documents, plan.hash) == frozenset(names)
    assert verified_selection(plan.documents, None) is None
    assert verified_selection(plan.documents, "0" * 16) is None

    edited = dict(plan.documents)
    doc = json.loads(edited["shard-1.json"])
    doc["instruments"] = doc["instruments"][1:]
    edited["shard-1.json"] = json.dumps(doc)
    assert verified_selection(edited, plan.hash) is None

    missing = {k: v for k, v in plan.documents.items() if k != "shard-1.json"}
    assert read_documents(missing) is None
    assert read_documents({**plan.documents, "shard-0.json": "not json"}) is None


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_trace_context_rides_in_every_document_but_not_in_the_hash() -> None:
    feed = parse_feed(feed_body(shards=2))
    names = option_names(20)
    plain = build_assignment(feed, names)
    traced = build_assignment(feed, names, traceparent=TRACEPARENT)
    assert traced.hash == plain.hash
    assert stored_traceparent(plain.documents) is None
    assert stored_traceparent(traced.documents) == TRACEPARENT
    assert verified_selection(traced.documents, plain.hash) == frozenset(names)
    for text in traced.documents.values():
        assert json.loads(text)["traceparent"] == TRACEPARENT
        assert parse_shard_document(text).traceparent == TRACEPARENT
    assert all(parse_shard_document(t).traceparent is None for t in plain.documents.values())


def test_a_stored_trace_context_is_none_when_the_documents_say_nothing_usable() -> None:
    assert stored_traceparent(None) is None
    assert stored_traceparent({}) is None
    assert stored_traceparent({"shard-0.json": "not json"}) is None
    assert stored_traceparent({"shard-0.json": json.dumps({"traceparent": 7})}) is None
