"""Placing instruments on shards, and the ``shard-<i>.json`` documents the collectors read. Pure.

Rendezvous (highest random weight) hashing: each instrument goes to the shard whose
``weight(instrument, shard)`` is highest. It needs no state and no coordination, every operator
computes the same answer, and when the shard count or the selection changes only the instruments
that must move do: going from N to N+1 shards moves exactly the instruments whose new highest
weight is shard N (about 1/(N+1) of them, all onto the new shard), and an instrument that stays
selected never moves between the shards that remain.

The weight is BLAKE2b of the pair, never Python's ``hash()``, which is salted per process and
would reshuffle every instrument on each operator restart.

The documents themselves, their fields, rendering and parsing, are
:mod:`optionfeed.shard_document`, which the collector reads them with.

Callers: :mod:`optionfeed_operator.reconcile` (to write the ConfigMap) and
:mod:`optionfeed_operator.manifests` (to read it back).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optionfeed.shard_document import (
    InvalidShardDocument,
    ShardDocument,
    parse_shard_document,
    render_shard_document,
)
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


# --- the documents ----------------------------------------------------------------------------


def document_key(shard: int) -> str:
    """The ConfigMap key of a shard's document."""
    return f"shard-{shard}.json"


def shard_document(
    feed: OptionFeedSpec, shard: int, instruments: Sequence[str], *, traceparent: str | None = None
) -> ShardDocument:
    return ShardDocument(
        feed=feed.name,
        namespace=feed.namespace,
        shard=shard,
        shards=feed.shards,
        generation=feed.generation,
        currency=feed.currency,
        interval=feed.interval,
        channels=feed.channels,
        instruments=tuple(instruments),
        exchange_url=feed.exchange_url,
        traceparent=traceparent,
    )


@dataclass(frozen=True, slots=True)
class Assignment:
    """Where every selected instrument of a feed goes, and the documents that say so."""

    shards: tuple[tuple[str, ...], ...]
    documents: Mapping[str, str]
    hash: str

    @property
    def instruments(self) -> int:
        return sum(len(names) for names in self.shards)


def _hashed_facts(document: ShardDocument) -> dict[str, Any]:
    """What every shard's document says alike and the collectors act on; the generation, the
    feed's name and the trace context are left out."""
    return {
        "currency": document.currency,
        "interval": document.interval.value,
        "channels": list(document.channels),
        "exchangeUrl": document.exchange_url,
    }


def assignment_hash(documents: Sequence[ShardDocument]) -> str:
    """A short hash of what the collectors do: each shard's instruments, plus the channels,
    interval, currency and exchange. The feed's generation is left out, so an edit that changes
    none of these (say, the collector's resources) keeps the hash."""
    canonical = json.dumps(
        {**_hashed_facts(documents[0]), "shards": [list(d.instruments) for d in documents]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def build_assignment(
    feed: OptionFeedSpec, selection: Iterable[str], *, traceparent: str | None = None
) -> Assignment:
    """Assign ``selection`` to ``feed.shards`` shards and render every shard's document."""
    shards = assign(selection, feed.shards)
    documents = [
        shard_document(feed, i, names, traceparent=traceparent) for i, names in enumerate(shards)
    ]
    return Assignment(
        shards=shards,
        documents={document_key(d.shard): render_shard_document(d) for d in documents},
        hash=assignment_hash(documents),
    )


def _parsed(data: Mapping[str, str], shard: int) -> ShardDocument | None:
    key = document_key(shard)
    try:
        document = parse_shard_document(data[key], where=key)
    except (KeyError, InvalidShardDocument):
        return None
    return document if document.shard == shard else None


def read_documents(data: Mapping[str, str]) -> tuple[ShardDocument, ...] | None:
    """Every shard's document from a ConfigMap's ``data``; None unless ``shard-0.json`` …
    ``shard-<n-1>.json`` (n from the documents' ``shards``) are all there, each is a valid
    document of its shard, and all agree on the shard count and the hashed facts. Other keys
    are ignored."""
    first = _parsed(data, 0)
    if first is None:
        return None
    documents = [first]
    for shard in range(1, first.shards):
        document = _parsed(data, shard)
        if (
            document is None
            or document.shards != first.shards
            or _hashed_facts(document) != _hashed_facts(first)
        ):
            return None
        documents.append(document)
    return tuple(documents)


def stored_traceparent(data: Mapping[str, str] | None) -> str | None:
    """The trace context the documents in a ConfigMap's ``data`` carry, if any (from shard 0's:
    every shard's document carries the same)."""
    document = _parsed(data or {}, 0)
    return document.traceparent if document is not None else None


def verified_selection(data: Mapping[str, str], expected_hash: str | None) -> frozenset[str] | None:
    """The selection stored in a ConfigMap's ``data``, if its documents are intact: they parse,
    and their assignment hash is the one the operator recorded beside them. A hand-edited
    document fails the check."""
    documents = read_documents(data)
    if documents is None or expected_hash is None or assignment_hash(documents) != expected_hash:
        return None
    return frozenset(name for d in documents for name in d.instruments)
