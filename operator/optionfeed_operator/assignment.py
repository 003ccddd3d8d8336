"""Placing instruments on shards, and the ``shard-<i>.json`` documents the collectors read. Pure.

Rendezvous (highest random weight) hashing: each instrument goes to the shard whose
``weight(instrument, shard)`` is highest. It needs no state and no coordination, every operator
computes the same answer, and when the shard count or the selection changes only the instruments
that must move do: going from N to N+1 shards moves exactly the instruments whose new highest
weight is shard N (about 1/(N+1) of them, all onto the new shard), and an instrument that stays
selected never moves between the shards that remain.

The weight is BLAKE2b of the pair, never Python's ``hash()``, which is salted per process and
would reshuffle every instrument on each operator restart.

Callers: :mod:`optionfeed_operator.reconcile` (to write the ConfigMap) and the tests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, cast

from optionfeed_operator.api import OptionFeedSpec

_PERSON = b"optionfeed-hrw"  # BLAKE2b personalisation: these weights mean nothing elsewhere.


def weight(instrument: str, shard: int) -> int:
    """The rendezvous weight of ``instrument`` on ``shard``: a stable 64-bit number."""
    digest = hashlib.blake2b(
        f"{shard}\x00{instrument}".encode(), digest_size=8, person=_PERSON
    ).digest()
    return int.from_bytes(digest, "big")


def shard_of(instrument: str, shards: int) -> int:
    """The shard (0 … shards-1) that holds ``instrument``; ties go to the lower index."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return max(range(shards), key=lambda shard: (weight(instrument, shard), -shard))


def assign(instruments: Iterable[str], shards: int) -> tuple[tuple[str, ...], ...]:
    """Each shard's instruments, sorted by name; every instrument lands on exactly one shard."""
    buckets: list[list[str]] = [[] for _ in range(shards)]
    for instrument in sorted(set(instruments)):
        buckets[shard_of(instrument, shards)].append(instrument)
    return tuple(tuple(bucket) for bucket in buckets)


def moved(
    before: Sequence[Iterable[str]], after: Sequence[Iterable[str]]
) -> dict[str, tuple[int, int]]:
    """Instruments present in both assignments that changed shard: name -> (old, new)."""
    old = {name: shard for shard, names in enumerate(before) for name in names}
    new = {name: shard for shard, names in enumerate(after) for name in names}
    return {
        name: (old[name], new[name])
        for name in sorted(old.keys() & new.keys())
        if old[name] != new[name]
    }


# --- the documents ----------------------------------------------------------------------------


class ShardDocument(TypedDict):
    """The content of ``shard-<i>.json`` (docs/design.md: "Assignment: operator → collector")."""

    feed: str
    namespace: str
    shard: int
    shards: int
    generation: int
    currency: str
    interval: str
    channels: list[str]
    instruments: list[str]
    exchangeUrl: str
    # With tracing on: the W3C trace context of the reconcile pass that wrote this version, for
    # the collector's reload span to link to. Not part of the assignment hash.
    traceparent: NotRequired[str]


def document_key(shard: int) -> str:
    """The ConfigMap key of a shard's document."""
    return f"shard-{shard}.json"


def shard_document(
    feed: OptionFeedSpec, shard: int, instruments: Sequence[str], *, traceparent: str | None = None
) -> ShardDocument:
    document: ShardDocument = {
        "feed": feed.name,
        "namespace": feed.namespace,
        "shard": shard,
        "shards": feed.shards,
        "generation": feed.generation,
        "currency": feed.currency,
        "interval": str(feed.interval),
        "channels": list(feed.channels),
        "instruments": list(instruments),
        "exchangeUrl": feed.exchange_url,
    }
    if traceparent is not None:
        document["traceparent"] = traceparent
    return document


def encode_document(document: ShardDocument) -> str:
    """Deterministic JSON, one instrument a line, so ``kubectl get -o yaml`` stays readable."""
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where every selected instrument of a feed goes, and the documents that say so."""

    shards: tuple[tuple[str, ...], ...]
    documents: Mapping[str, str]
    hash: str

    @property
    def instruments(self) -> int:
        return sum(len(names) for names in self.shards)

    def selection(self) -> frozenset[str]:
        return frozenset(name for names in self.shards for name in names)


def assignment_hash(feed_facts: Mapping[str, Any], shards: Sequence[Sequence[str]]) -> str:
    """A short hash of what the collectors do: each shard's instruments, plus the channels,
    interval, currency and exchange. The feed's generation is left out, so an edit that changes
    none of these (say, the collector's resources) keeps the hash."""
    canonical = json.dumps(
        {**feed_facts, "shards": [list(names) for names in shards]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


_FACT_KEYS = ("currency", "interval", "channels", "exchangeUrl")


def _hashed_facts(feed: OptionFeedSpec) -> dict[str, Any]:
    return {
        "currency": feed.currency,
        "interval": str(feed.interval),
        "channels": list(feed.channels),
        "exchangeUrl": feed.exchange_url,
    }


def build_assignment(
    feed: OptionFeedSpec, selection: Iterable[str], *, traceparent: str | None = None
) -> Assignment:
    """Assign ``selection`` to ``feed.shards`` shards and render every shard's document."""
    shards = assign(selection, feed.shards)
    documents = {
        document_key(i): encode_document(shard_document(feed, i, names, traceparent=traceparent))
        for i, names in enumerate(shards)
    }
    return Assignment(
        shards=shards, documents=documents, hash=assignment_hash(_hashed_facts(feed), shards)
    )


def read_documents(
    data: Mapping[str, str],
) -> tuple[dict[str, Any], tuple[tuple[str, ...], ...]] | None:
    """The hashed facts and each shard's instruments from a ConfigMap's ``data``; None unless
    ``shard-0.json`` … ``shard-<n-1>.json`` (n from the documents' ``shards``) are all there, each
    parses as the document of its shard, and all agree on the facts. Other keys are ignored."""
    facts: dict[str, Any] | None = None
    shards: list[tuple[str, ...]] = []
    count = 1
    i = 0
    while i < count:
        try:
            document = json.loads(data[document_key(i)])
        except (KeyError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("shard") != i:
            return None
        names = document.get("instruments")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return None
        these = {key: document.get(key) for key in (*_FACT_KEYS, "shards")}
        if facts is None:
            facts = these
            total = these["shards"]
            if not isinstance(total, int) or isinstance(total, bool) or total < 1:
                return None
            count = total
        elif these != facts:
            return None
        shards.append(tuple(cast(list[str], names)))
        i += 1
    assert facts is not None
    facts.pop("shards")
    return facts, tuple(shards)


def stored_traceparent(data: Mapping[str, str] | None) -> str | None:
    """The trace context the documents in a ConfigMap's ``data`` carry, if any (from shard 0's:
    every shard's document carries the same)."""
    try:
        document = json.loads((data or {})[document_key(0)])
    except (KeyError, ValueError):
        return None
    value = document.get("traceparent") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def verified_selection(data: Mapping[str, str], expected_hash: str | None) -> frozenset[str] | None:
    """The selection stored in a ConfigMap's ``data``, if its documents are intact: they parse,
    and their assignment hash is the one the operator recorded beside them. A hand-edited
    document fails the check."""
    stored = read_documents(data)
    if stored is None or expected_hash is None:
        return None
    facts, shards = stored
    if assignment_hash(facts, shards) != expected_hash:
        return None
    return frozenset(name for names in shards for name in names)
