"""Subscription channel names (docs/deribit-protocol.md §6): build them, and parse them back.

The simulator parses what clients ask for; the collector builds what it asks for and parses the
``channel`` of each notification to route it. Instrument names never contain a dot (linear strikes
write the decimal point as ``d``), so a channel splits cleanly on ``.``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Interval(StrEnum):
    RAW = "raw"
    MS100 = "100ms"
    AGG2 = "agg2"


class Kind(StrEnum):
    """The channel families optionfeed speaks; the first four are what a feed records."""

    TICKER = "ticker"
    QUOTE = "quote"
    TRADES = "trades"
    BOOK = "book"
    CURRENCY_TRADES = "currency_trades"
    GROUPED_BOOK = "grouped_book"
    INSTRUMENT_STATE = "instrument.state"
    PLATFORM_STATE = "platform_state"
    PRICE_INDEX = "deribit_price_index"


# The per-instrument data families a feed may record (docs/design.md: spec.channels), each with
# whether its channel name ends with an interval: ``ticker.{instrument}.{interval}`` but
# ``quote.{instrument}``. Parsing, formatting and :func:`feed_channel` all follow this table;
# docs/design.md ("Adding a channel family") lists what else a new family takes.
FEED_FAMILIES: dict[Kind, bool] = {
    Kind.TICKER: True,
    Kind.QUOTE: False,
    Kind.TRADES: True,
    Kind.BOOK: True,
}
FEED_CHANNELS: tuple[str, ...] = tuple(kind.value for kind in FEED_FAMILIES)
_FEED_KIND: dict[str, Kind] = {kind.value: kind for kind in FEED_FAMILIES}
INSTRUMENT_KINDS = frozenset({"future", "option", "spot", "future_combo", "option_combo"})
TRADE_CURRENCIES = frozenset({"BTC", "ETH", "USDC", "USDT", "EURR", "any"})
BOOK_GROUPS = frozenset({"none", "1", "2", "5", "10", "25", "100", "250"})
BOOK_DEPTHS = frozenset({"1", "10", "20"})


class InvalidChannel(ValueError):
    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(f"invalid channel {channel!r}: {reason}")
        self.channel = channel


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel name. Fields that do not apply to the family are ``None``."""

    kind: Kind
    instrument: str | None = None
    interval: Interval | None = None
    currency: str | None = None
    instrument_kind: str | None = None
    group: str | None = None
    depth: str | None = None
    index_name: str | None = None

    @property
    def name(self) -> str:
        return format_channel(self)

    @property
    def is_raw(self) -> bool:
        return self.interval is Interval.RAW


def instrument_state(currency: str, kind: str = "option") -> str:
    return f"instrument.state.{kind}.{currency}"


PLATFORM_STATE = "platform_state"


def feed_channel(family: str, instrument: str, interval: str = "100ms") -> str:
    """The channel of ``family`` (ticker, quote, trades or book) for one instrument."""
    kind = _FEED_KIND.get(family)
    if kind is None:
        raise ValueError(f"unknown channel family {family!r}; expected one of {FEED_CHANNELS}")
    return format_channel(
        Channel(kind, instrument, Interval(interval) if FEED_FAMILIES[kind] else None)
    )


def _interval(channel: str, text: str) -> Interval:
    try:
        return Interval(text)
    except ValueError:
        raise InvalidChannel(
            channel, f"interval must be raw, 100ms or agg2, not {text!r}"
        ) from None


def parse_channel(channel: str) -> Channel:
    """Parse a channel name; raise :class:`InvalidChannel` for anything Deribit would not serve."""
    parts = channel.split(".")
    head, n = parts[0], len(parts)
    if not all(parts):
        raise InvalidChannel(channel, "empty segment")
    family = _FEED_KIND.get(head)
    if family is not None and n == (3 if FEED_FAMILIES[family] else 2):
        interval = _interval(channel, parts[2]) if n == 3 else None
        return Channel(family, instrument=parts[1], interval=interval)
    if head == "trades" and n == 4:
        kind, currency = parts[1], parts[2]
        if kind not in INSTRUMENT_KINDS or currency not in TRADE_CURRENCIES:
            raise InvalidChannel(channel, "expected trades.{kind}.{currency}.{interval}")
        return Channel(
            Kind.CURRENCY_TRADES,
            instrument_kind=kind,
            currency=currency,
            interval=_interval(channel, parts[3]),
        )
    if head == "book" and n == 5:
        group, depth, interval = parts[2], parts[3], _interval(channel, parts[4])
        if group not in BOOK_GROUPS or depth not in BOOK_DEPTHS or interval is Interval.RAW:
            raise InvalidChannel(channel, "expected book.{instrument}.{group}.{depth}.{100ms|agg2}")
        return Channel(
            Kind.GROUPED_BOOK, instrument=parts[1], group=group, depth=depth, interval=interval
        )
    if head == "instrument" and n == 4 and parts[1] == "state":
        kind, currency = parts[2], parts[3]
        if kind not in INSTRUMENT_KINDS and kind != "any":
            raise InvalidChannel(channel, f"unknown instrument kind {kind!r}")
        return Channel(Kind.INSTRUMENT_STATE, instrument_kind=kind, currency=currency)
    if channel == PLATFORM_STATE:
        return Channel(Kind.PLATFORM_STATE)
    if head == "deribit_price_index" and n == 2:
        return Channel(Kind.PRICE_INDEX, index_name=parts[1])
    raise InvalidChannel(channel, "unknown channel")


def format_channel(c: Channel) -> str:
    if c.kind in FEED_FAMILIES:
        tail = f".{c.interval}" if FEED_FAMILIES[c.kind] else ""
        return f"{c.kind}.{c.instrument}{tail}"
    if c.kind is Kind.CURRENCY_TRADES:
        return f"trades.{c.instrument_kind}.{c.currency}.{c.interval}"
    if c.kind is Kind.GROUPED_BOOK:
        return f"book.{c.instrument}.{c.group}.{c.depth}.{c.interval}"
    if c.kind is Kind.INSTRUMENT_STATE:
        return f"instrument.state.{c.instrument_kind}.{c.currency}"
    if c.kind is Kind.PRICE_INDEX:
        return f"deribit_price_index.{c.index_name}"
    return PLATFORM_STATE
