"""The shard document: what the operator tells one collector shard to record.

The operator renders one per shard into the feed's assignment ConfigMap (key ``shard-<i>.json``);
the collector reads it from the mounted file and re-reads it when it changes (docs/design.md,
"Assignment: operator → collector")::

    {"feed": "eth-top50", "namespace": "md", "shard": 0, "shards": 2, "generation": 7,
     "currency": "ETH", "interval": "100ms", "channels": ["ticker", "trades"],
     "instruments": ["ETH-9NOV25-3375-P", ...], "exchangeUrl": "wss://www.deribit.com/ws/api/v2"}

With tracing on, the operator adds ``"traceparent"``: the W3C trace context of the reconcile pass
that wrote this version, which the collector's reload span links to.

:class:`ShardDocument` is the one definition of the fields, and a value of it is always valid.
:func:`render_shard_document` and :func:`parse_shard_document` are inverses; parsing refuses
anything that is not such a document with an :class:`InvalidShardDocument` saying what is wrong.
Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from optionfeed.deribit.channels import FEED_CHANNELS, Interval
from optionfeed.deribit.exchange import OPTION_CURRENCIES
from optionfeed.deribit.instruments import is_option_name


class InvalidShardDocument(ValueError):
    """A shard document that is not JSON, or not the documented shape."""


@dataclass(frozen=True, slots=True)
class ShardDocument:
    """One shard's document. Field order is the JSON key order; ``None`` fields are left out."""

    feed: str
    namespace: str
    shard: int
    shards: int
    generation: int
    currency: str
    interval: Interval
    channels: tuple[str, ...]
    instruments: tuple[str, ...]
    exchange_url: str | None = None  # None: the collector's own --exchange-url
    traceparent: str | None = None  # not part of what the shard records

    def __post_init__(self) -> None:
        if self.currency not in OPTION_CURRENCIES:
            raise InvalidShardDocument(
                f"currency must be one of {', '.join(OPTION_CURRENCIES)}, not {self.currency!r}"
            )
        unknown = [c for c in self.channels if c not in FEED_CHANNELS]
        if unknown or not self.channels:
            raise InvalidShardDocument(
                f"channels must be a non-empty subset of {list(FEED_CHANNELS)}"
                + (f"; unknown: {unknown}" if unknown else "")
            )
        bad = [name for name in self.instruments if not is_option_name(name)]
        if bad:
            raise InvalidShardDocument(f"not option names: {bad[:5]}")
        if self.shards < 1:
            raise InvalidShardDocument(f"shards must be at least 1, not {self.shards}")
        if not 0 <= self.shard < self.shards:
            raise InvalidShardDocument(f"shard {self.shard} is not in 0..{self.shards - 1}")
        if self.generation < 0:
            raise InvalidShardDocument(f"generation must not be negative, not {self.generation}")


# The JSON name of each field, where it is not the field's own name.
_JSON_NAMES = {"exchange_url": "exchangeUrl"}


def _json_name(field: str) -> str:
    return _JSON_NAMES.get(field, field)


def render_shard_document(document: ShardDocument) -> str:
    """Deterministic JSON, one instrument a line, so ``kubectl get -o yaml`` stays readable."""
    content: dict[str, Any] = {}
    for field in fields(document):
        value = getattr(document, field.name)
        if value is not None:
            content[_json_name(field.name)] = list(value) if isinstance(value, tuple) else value
    return json.dumps(content, indent=1, ensure_ascii=False) + "\n"


def _field(content: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    key = _json_name(name)
    if key not in content:
        if required:
            raise InvalidShardDocument(f"missing field {key!r}")
        return None
    value = content[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidShardDocument(
            f"field {key!r} must be {kind.__name__}, not {type(value).__name__}"
        )
    return value


def _names(content: dict[str, Any], name: str) -> tuple[str, ...]:
    """A list of strings, duplicates dropped, order kept."""
    items = _field(content, name, list)
    odd = [item for item in items if not isinstance(item, str)]
    if odd:
        raise InvalidShardDocument(f"field {name!r} must list strings, not {odd[:5]}")
    return tuple(dict.fromkeys(items))


def _interval(content: dict[str, Any]) -> Interval:
    text = _field(content, "interval", str)
    try:
        return Interval(text)
    except ValueError:
        allowed = ", ".join(i.value for i in Interval)
        raise InvalidShardDocument(f"interval must be one of {allowed}, not {text!r}") from None


def parse_shard_document(text: str | bytes, where: str = "shard document") -> ShardDocument:
    """The document in ``text``; raises :class:`InvalidShardDocument`, its message prefixed with
    ``where`` (a path or a ConfigMap key). A ``traceparent`` that is not a string is ignored: it
    only links traces, and is never worth refusing a document over."""
    try:
        content = json.loads(text)
    except ValueError as exc:
        raise InvalidShardDocument(f"{where}: not JSON ({exc})") from None
    if not isinstance(content, dict):
        raise InvalidShardDocument(f"{where}: expected a JSON object")
    traceparent = content.get("traceparent")
    try:
        return ShardDocument(
            feed=_field(content, "feed", str),
            namespace=_field(content, "namespace", str),
            shard=_field(content, "shard", int),
            shards=_field(content, "shards", int),
            generation=_field(content, "generation", int),
            currency=_field(content, "currency", str),
            interval=_interval(content),
            channels=_names(content, "channels"),
            instruments=_names(content, "instruments"),
            exchange_url=_field(content, "exchange_url", str, required=False),
            traceparent=traceparent if isinstance(traceparent, str) else None,
        )
    except InvalidShardDocument as exc:
        raise InvalidShardDocument(f"{where}: {exc}") from None
