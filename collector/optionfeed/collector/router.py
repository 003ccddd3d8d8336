"""From notifications to rows: the sink every connection of a collector delivers into.

The hot path is one dict lookup: each channel name is parsed once into a handler bound to its
family and instrument, and later notifications on that channel go straight to it. Handlers
normalise the payload, buffer the rows in the writer (awaiting it is the backpressure that slows
the reader when the database falls behind), and feed the gap detectors.

Nothing is dropped silently. A payload that does not normalise, a frame that is not UTF-8, not
JSON or not JSON-RPC, a notification on a channel the connection did not subscribe to (the
connection knows what it holds and hands those to :meth:`Router.rejected`, naming the channel):
each becomes a ``rejected_messages`` row with its reason and raw text, and
``optionfeed_rejected_messages_total{reason}`` rises. The row's reason says what was wrong; the
metric's label is its short form (``not_utf8``, ``not_json``, ``not_jsonrpc``, ``binary_frame``,
``unexpected_notification``, ``unknown_response``, ``unsubscribed_channel``, or the normalisation
reason such as ``wrong_type``). Rejection is per
element (:mod:`optionfeed.collector.normalize` says what an element is for each family): the
good trades of a ``trades.*`` message are stored, and each bad one is a row of its own, holding
that element's JSON. A rejected trade is not seen by the sequence check either, so the next good
trade opens a gap and backfill asks the exchange for it again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from optionfeed.collector.normalize import FAMILIES as ONE_ROW_FAMILIES
from optionfeed.collector.normalize import BadElement, NormalizeError, book_row, split_trades
from optionfeed.collector.sequences import BookBreak, BookChains, SequenceGap, TradeSequences
from optionfeed.deribit.channels import FEED_CHANNELS, Channel, InvalidChannel, Kind, parse_channel
from optionfeed.store import tables
from optionfeed.store.records import rejected_row
from optionfeed.store.tables import Row, Table
from optionfeed.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[Any, bytes, float], Awaitable[None]]

# Positions in an option_trades row (optionfeed.store.tables.TRADES).
_TRADE_INSTRUMENT = tables.index_of(tables.TRADES, "instrument")
_TRADE_SEQ = tables.index_of(tables.TRADES, "trade_seq")


class RowSink(Protocol):
    """Where rows go: the writer (its ``put`` waits while its buffer is full)."""

    async def put(self, table: Table, row: Row) -> None: ...

    async def put_many(self, table: Table, rows: list[Row]) -> None: ...


class Events:
    """What the router reports besides rows; the collector acts on these. Every hook is optional."""

    def trade_gap(self, gap: SequenceGap, at: float) -> None:
        """Trades were skipped: fetch them."""

    def book_break(self, brk: BookBreak, channel: str, at: float) -> None:
        """A book lost continuity: resync that instrument only."""

    def book_resynced(self, instrument: str, at: float) -> None:
        """A snapshot restored the book of an instrument that had lost continuity."""

    def trade_seen(self, instrument: str, trade_seq: int, at: float) -> None:
        """A trade arrived on the stream (after the gap check)."""

    def seen(self, instrument: str, family: str, at: float) -> None:
        """A notification of ``family`` arrived for ``instrument`` (for staleness)."""

    def instrument_state(self, data: Any, at: float) -> None:
        """``instrument.state.*``: a listing, an expiry, a state change."""

    def platform_state(self, data: Any, at: float) -> None:
        """``platform_state``: maintenance or an index lock."""


class Counts:
    """Plain counters for the STATS line and progress displays (metrics carry the same): rows
    per channel family, and rejected frames."""

    __slots__ = ("by_family", "rejected")

    def __init__(self) -> None:
        self.by_family = dict.fromkeys(FEED_CHANNELS, 0)
        self.rejected = 0

    @property
    def tickers(self) -> int:
        return self.by_family["ticker"]

    @property
    def quotes(self) -> int:
        return self.by_family["quote"]

    @property
    def trades(self) -> int:
        return self.by_family["trades"]

    @property
    def books(self) -> int:
        return self.by_family["book"]


class Router:
    """Implements :class:`optionfeed.collector.connection.Sink`."""

    def __init__(
        self,
        rows: RowSink,
        metrics: Metrics,
        *,
        events: Events | None = None,
        lifecycle: Events | None = None,
        trades: TradeSequences | None = None,
        books: BookChains | None = None,
    ) -> None:
        self._rows = rows
        self._metrics = metrics
        self._events = events or Events()
        self._lifecycle = lifecycle or Events()
        self.trades = trades or TradeSequences()
        self.books = books or BookChains()
        self.counts = Counts()
        self.last_message_at = 0.0
        self._routes: dict[str, Handler] = {}
        self._count = {
            family: metrics.messages_total.labels(family)
            for family in (*FEED_CHANNELS, "instrument_state", "platform_state")
        }
        metrics.last_message_timestamp_seconds.set_function(lambda: self.last_message_at)

    def attach(self, *, events: Events | None = None, lifecycle: Events | None = None) -> None:
        """Set the listeners after construction (they need the router's sequence trackers).

        Call before the first notification: handlers bind their listener when first routed.
        """
        if events is not None:
            self._events = events
        if lifecycle is not None:
            self._lifecycle = lifecycle
        self._routes.clear()

    # ----------------------------------------------------------------- Sink

    async def notification(self, channel: str, data: Any, raw: bytes, recv_ts: float) -> None:
        self.last_message_at = recv_ts
        handler = self._routes.get(channel)
        if handler is None:
            handler = self._routes[channel] = self._route(channel)
        try:
            await handler(data, raw, recv_ts)
        except NormalizeError as exc:
            await self._reject(raw, exc.reason, f"{exc.reason}: {exc.detail}", recv_ts, channel)

    async def rejected(
        self, raw: bytes, reason: str, detail: str, recv_ts: float, channel: str | None = None
    ) -> None:
        await self._reject(raw, reason, detail, recv_ts, channel)

    async def reject_elements(
        self, bad: list[BadElement], of: int | None, recv_ts: float, channel: str
    ) -> None:
        """Store each bad element of a list payload of ``of`` elements as a rejection of its own.

        ``channel`` names where the list came from: a channel, or a REST method. ``of`` is None
        when the list is not the one that arrived (then no position is given).
        """
        for element in bad:
            error = element.error
            detail = f"{error.reason}: {error.detail}"
            if of is not None:
                detail = f"{detail} (element {element.position + 1} of {of})"
            await self._reject(_json_text(element.value), error.reason, detail, recv_ts, channel)

    async def _reject(
        self, raw: bytes | str, reason: str, detail: str, recv_ts: float, channel: str | None
    ) -> None:
        """``reason`` labels the metric; ``detail``, the whole why, is the row's reason."""
        self.counts.rejected += 1
        self._metrics.rejected_messages_total.labels(reason).inc()
        if self.counts.rejected <= 10 or self.counts.rejected % 1000 == 0:
            log.warning("rejected a frame (%s); %d so far", detail, self.counts.rejected)
        await self._rows.put(tables.REJECTED, rejected_row(detail, raw, recv_ts, channel))

    # ----------------------------------------------------------------- routing

    def _route(self, channel: str) -> Handler:
        try:
            parsed = parse_channel(channel)
        except InvalidChannel as exc:
            return self._unknown(str(exc))
        kind = parsed.kind
        if kind in (Kind.TRADES, Kind.CURRENCY_TRADES):
            return self._trades(channel)
        if kind is Kind.BOOK:
            return self._book(channel, parsed)
        if kind in ONE_ROW_FAMILIES:
            return self._one_row(parsed)
        if kind is Kind.INSTRUMENT_STATE:
            return self._instrument_state()
        if kind is Kind.PLATFORM_STATE:
            return self._platform_state()
        return self._unknown(f"no table for channel {channel!r}")

    def _unknown(self, detail: str) -> Handler:
        async def handle(data: Any, raw: bytes, recv_ts: float) -> None:
            raise NormalizeError("unknown_channel", detail)

        return handle

    def _one_row(self, channel: Channel) -> Handler:
        """A family whose notification is one row of its table, with nothing else to check
        (ticker, quote): the table and builder come from the normaliser's registry."""
        family = channel.kind.value
        table, build = ONE_ROW_FAMILIES[family]
        put, count = self._rows.put, self._count[family]
        counts, seen, instrument = (
            self.counts.by_family,
            self._events.seen,
            channel.instrument or "",
        )

        async def handle(data: Any, raw: bytes, recv_ts: float) -> None:
            row = build(data, recv_ts)
            count.inc()
            counts[family] += 1
            seen(instrument, family, recv_ts)
            await put(table, row)

        return handle

    def _trades(self, channel_name: str) -> Handler:
        put_many, table, count = self._rows.put_many, tables.TRADES, self._count["trades"]
        counts, observe, events = self.counts.by_family, self.trades.observe, self._events
        reject_elements = self.reject_elements

        async def handle(data: Any, raw: bytes, recv_ts: float) -> None:
            rows, bad = split_trades(data, recv_ts)
            count.inc()
            counts["trades"] += len(rows)
            # From the rows, not the payload: only trades that were checked (and will be stored)
            # move the sequence on, so a rejected one shows as a gap and is fetched again.
            for row in rows:
                instrument = row[_TRADE_INSTRUMENT]
                seq = row[_TRADE_SEQ]
                gap = observe(instrument, seq)
                if gap is not None:
                    events.trade_gap(gap, recv_ts)
                events.trade_seen(instrument, seq, recv_ts)
            if bad:
                await reject_elements(bad, len(data), recv_ts, channel_name)
            await put_many(table, rows)

        return handle

    def _book(self, channel_name: str, channel: Channel) -> Handler:
        put, table, count = self._rows.put, tables.BOOK, self._count["book"]
        counts, books, events = self.counts.by_family, self.books, self._events
        observe, resyncing = books.observe, books.resyncing
        instrument = channel.instrument or ""

        async def handle(data: Any, raw: bytes, recv_ts: float) -> None:
            row = book_row(data, recv_ts)
            count.inc()
            counts["book"] += 1
            was_resyncing = instrument in resyncing
            brk = observe(
                instrument, data.get("type"), data["change_id"], data.get("prev_change_id")
            )
            if brk is not None:
                events.book_break(brk, channel_name, recv_ts)
            elif was_resyncing and instrument not in resyncing:
                events.book_resynced(instrument, recv_ts)
            events.seen(instrument, "book", recv_ts)
            await put(table, row)

        return handle

    def _instrument_state(self) -> Handler:
        count, events = self._count["instrument_state"], self._lifecycle

        async def handle(data: Any, raw: bytes, recv_ts: float) -> None:
            if not isinstance(data, dict) or not isinstance(data.get("instrument_name"), str):
                raise NormalizeError("wrong_type", "instrument.state data is not an object")
            count.inc()
            events.instrument_state(data, recv_ts)

        return handle

    def _platform_state(self) -> Handler:
        count, events = self._count["platform_state"], self._lifecycle

        async def handle(data: Any, raw: bytes, recv_ts: float) -> None:
            if not isinstance(data, dict):
                raise NormalizeError("wrong_type", "platform_state data is not an object")
            count.inc()
            events.platform_state(data, recv_ts)

        return handle


def _json_text(value: Any) -> bytes | str:
    """An element as JSON for the ``raw`` column; ``repr`` for what orjson cannot encode
    (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return repr(value)
