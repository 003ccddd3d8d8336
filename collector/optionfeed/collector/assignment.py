"""The assignment file: what the operator tells one shard to record (docs/design.md, "Assignment").

::

    {"feed": "eth-top50", "namespace": "md", "shard": 0, "shards": 2, "generation": 7,
     "currency": "ETH", "interval": "100ms", "channels": ["ticker", "trades"],
     "instruments": ["ETH-9NOV25-3375-P", ...], "exchangeUrl": "wss://www.deribit.com/ws/api/v2"}

With tracing on, the operator adds ``"traceparent"``: the W3C trace context of the reconcile pass
that wrote this version, which the collector's reload span links to.

In a pod the file is a ConfigMap key mounted in a directory. The kubelet replaces it by swapping a
symlink, never by writing in place, so the watcher compares the content it reads through the path
rather than relying on inotify events or modification times of the link itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from optionfeed.deribit.channels import FEED_CHANNELS, Interval, feed_channel
from optionfeed.deribit.exchange import OPTION_CURRENCIES
from optionfeed.deribit.instruments import is_option_name

log = logging.getLogger(__name__)


class InvalidAssignment(ValueError):
    """The assignment file is missing, unreadable, or not the documented shape."""


@dataclass(frozen=True, slots=True)
class Assignment:
    feed: str
    namespace: str
    shard: int
    shards: int
    generation: int
    currency: str
    interval: str
    channels: tuple[str, ...]
    instruments: tuple[str, ...]
    exchange_url: str | None
    traceparent: str | None = None

    def channel_names(self) -> frozenset[str]:
        """Every channel this shard subscribes: each family for each instrument."""
        return frozenset(
            feed_channel(family, instrument, self.interval)
            for instrument in self.instruments
            for family in self.channels
        )


def _field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in doc:
        raise InvalidAssignment(f"{where}: missing field {name!r}")
    value = doc[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InvalidAssignment(
            f"{where}: field {name!r} must be {expected}, not {type(value).__name__}"
        )
    return value


def parse_assignment(text: str | bytes, where: str = "assignment") -> Assignment:
    """Parse and validate an assignment document; raise :class:`InvalidAssignment` with detail."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidAssignment(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidAssignment(f"{where}: expected a JSON object")
    currency = _field(doc, "currency", str, where)
    if currency not in OPTION_CURRENCIES:
        raise InvalidAssignment(f"{where}: currency must be one of {', '.join(OPTION_CURRENCIES)}")
    interval = _field(doc, "interval", str, where)
    if interval not in {i.value for i in Interval}:
        raise InvalidAssignment(f"{where}: interval must be raw, 100ms or agg2, not {interval!r}")
    channels = _field(doc, "channels", list, where)
    unknown = [c for c in channels if c not in FEED_CHANNELS]
    if unknown or not channels:
        raise InvalidAssignment(
            f"{where}: channels must be a non-empty subset of {list(FEED_CHANNELS)}"
            + (f"; unknown: {unknown}" if unknown else "")
        )
    instruments = _field(doc, "instruments", list, where)
    bad = [i for i in instruments if not isinstance(i, str) or not is_option_name(i)]
    if bad:
        raise InvalidAssignment(f"{where}: not option names: {bad[:5]}")
    shard = _field(doc, "shard", int, where)
    shards = _field(doc, "shards", int, where)
    if not 0 <= shard < shards:
        raise InvalidAssignment(f"{where}: shard {shard} is not in 0..{shards - 1}")
    exchange_url = doc.get("exchangeUrl")
    if exchange_url is not None and not isinstance(exchange_url, str):
        raise InvalidAssignment(f"{where}: field 'exchangeUrl' must be str")
    traceparent = doc.get("traceparent")
    if not isinstance(traceparent, str):
        traceparent = None  # only ever a link between traces: never worth refusing a file over
    return Assignment(
        feed=_field(doc, "feed", str, where),
        namespace=str(doc.get("namespace", "")),
        shard=shard,
        shards=shards,
        generation=int(doc.get("generation", 0)),
        currency=currency,
        interval=interval,
        channels=tuple(dict.fromkeys(channels)),
        instruments=tuple(dict.fromkeys(instruments)),
        exchange_url=exchange_url,
        traceparent=traceparent,
    )


def read_assignment(path: Path) -> Assignment:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidAssignment(f"cannot read assignment file {path}: {exc.strerror}") from None
    return parse_assignment(text, where=str(path))


async def watch_assignment(
    path: Path, current: Assignment, *, poll_interval: float = 1.0
) -> AsyncIterator[Assignment]:
    """Yield each new valid assignment found at ``path``; invalid versions are logged and skipped.

    Polling the content is deliberate: it sees the kubelet's symlink swap, an editor's
    write-then-rename and an in-place write alike, for the cost of reading a small file each second.
    """
    digest: str | None = None  # the first read compares as changed; equal content yields nothing
    while True:
        await asyncio.sleep(poll_interval)
        try:
            text = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            log.warning("assignment file %s unreadable (%s); keeping the current one", path, exc)
            continue
        seen = hashlib.blake2b(text).hexdigest()
        if seen == digest:
            continue
        digest = seen  # a bad version is reported once, not every second
        try:
            new = parse_assignment(text, where=str(path))
        except InvalidAssignment as exc:
            log.error("%s; keeping the current assignment", exc)
            continue
        if new != current:
            current = new
            yield new
