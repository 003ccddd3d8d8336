"""Fan-out: from market events to subscribers' outboxes, once per channel, at each interval.

The publisher is the market's :class:`~.market.Listener`. A channel with subscribers is a
:class:`SubscribedChannel`; each notification is serialised and framed once and the same bytes
are queued on every subscriber's :class:`~.session.Session`.

Intervals (docs/deribit-protocol.md §6):

* ``raw``: one notification per market event that touches the channel. An event always moves the
  ticker; it moves the book when levels changed (most events), ``quote`` when the best bid or
  ask changed, ``trades`` when it was a trade. ``quote.{instrument}`` has no interval and is sent
  event by event like ``raw``.
* ``100ms``: at each 100 ms boundary of market time, one notification per instrument and channel
  that had events in the window: the ticker as of its last event; the book changes of the window
  merged into one change (``prev_change_id`` is the previous notification's ``change_id`` on that
  interval, so the chain holds for the stream the subscriber actually gets); the window's trades
  in one array. So a channel never sends two notifications for an instrument within 100 ms, and
  ticker timestamps strictly increase.
* ``agg2``: the same with a 1-second window (Deribit documents both "1 s" and "2 s"; the
  simulator uses 1 s, aligned to whole seconds).

Book snapshots: a new ``book`` subscriber first gets a snapshot that its stream continues from:
on ``raw`` the current book; on ``100ms``/``agg2`` the book as of the stream's last notification
(with that notification's ``change_id``), so the next aggregated change applies on top of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from optionfeed.deribit import jsonrpc
from optionfeed.deribit.channels import FEED_FAMILIES, Channel, InvalidChannel, Kind, parse_channel
from optionfeed.simulator import frames
from optionfeed.simulator.book import BookEntry
from optionfeed.simulator.ledger import ChannelStats, Ledger
from optionfeed.simulator.market import Market
from optionfeed.simulator.option import Option, TradeRecord
from optionfeed.simulator.session import Session
from optionfeed.simulator.ticker import settled

AGGREGATED = {"100ms": 100, "agg2": 1000}
CURRENCY_ANY = "any"
_dumps = orjson.dumps
_frame = frames.notification_frame
_header = frames.text_header
_SUFFIX = jsonrpc.SUBSCRIPTION_SUFFIX


class SubscribedChannel:
    """A channel with subscribers: its frame prefix and each subscriber's ledger counters."""

    __slots__ = ("channel", "instrument", "name", "prefix", "subscribers")

    def __init__(self, name: str, channel: Channel) -> None:
        self.name = name
        self.channel = channel
        self.instrument = channel.instrument
        self.prefix = jsonrpc.subscription_prefix(name)
        self.subscribers: dict[Session, ChannelStats] = {}

    def emit(
        self, data: bytes, first_ts: int, last_ts: int, seq: int, change_id: int, n: int
    ) -> None:
        """Frame ``data`` once and queue the frame on every subscriber."""
        prefix = self.prefix
        size = len(prefix) + len(data) + len(_SUFFIX)
        frame = b"".join((_header(size), prefix, data, _SUFFIX))
        size = len(frame)
        for session, stats in self.subscribers.items():
            if session.plain:
                # Session.push, inlined for the usual case (no stale or malformed fault).
                session.out.append(frame)
                session.meta.append((stats, first_ts, last_ts, seq, change_id, n))
                session.out_bytes += size
            else:
                session.push(frame, (stats, first_ts, last_ts, seq, change_id, n))


class Window:
    """One option's aggregated stream at one interval (100ms or agg2)."""

    __slots__ = ("book", "book_change_id", "book_ts", "dirty", "orig", "trades")

    def __init__(self) -> None:
        self.dirty = False
        self.book = False  # tracking the book (someone subscribed to book at this interval)
        self.orig: dict[tuple[bool, int], float | None] = {}  # level -> amount at window start
        self.book_change_id = 0  # change_id of the stream's last notification
        self.book_ts = 0
        self.trades: list[TradeRecord] | None = None  # collecting trades when someone wants them


class OptionChannels:
    """The publisher's state for one option (``option.pub``)."""

    __slots__ = ("subscribed", "windows")

    def __init__(self) -> None:
        self.subscribed: dict[
            str, SubscribedChannel
        ] = {}  # "ticker.raw", "book.100ms", "quote", "trades.agg2"...
        self.windows: dict[str, Window] = {}  # "100ms", "agg2"


def channel_key(channel: Channel) -> str:
    if channel.interval is None:
        return channel.kind.value
    return f"{channel.kind.value}.{channel.interval}"


def _wire_levels(option: Option, entries: Iterable[BookEntry]) -> tuple[list[Any], list[Any]]:
    bids: list[Any] = []
    asks: list[Any] = []
    price_of = option.price_of
    for is_bid, ticks, old, new in entries:
        price = price_of(ticks)
        if new is None:
            level: list[Any] = ["delete", price, 0.0]
        else:
            level = ["new" if old is None else "change", price, new]
        (bids if is_bid else asks).append(level)
    return bids, asks


def quote_payload(option: Option) -> dict[str, Any]:
    tk = option.ticker
    return {
        "timestamp": tk["timestamp"],
        "instrument_name": option.name,
        "best_bid_price": tk["best_bid_price"],
        "best_bid_amount": tk["best_bid_amount"],
        "best_ask_price": tk["best_ask_price"],
        "best_ask_amount": tk["best_ask_amount"],
    }


class Publisher:
    """Subscriptions, aggregation windows and fan-out for the synthetic market."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.market: Market | None = None
        # Currency-wide and global channels, by name.
        self.subscribed: dict[str, SubscribedChannel] = {}
        # Options with events in the current window of each interval, in event order.
        self._dirty: dict[str, list[Option]] = {interval: [] for interval in AGGREGATED}
        # trades.option.{currency}.{interval}: (currency, interval) -> its channel, and the
        # window's trades
        self._currency_trades: dict[tuple[str, str], SubscribedChannel] = {}
        self._currency_windows: dict[tuple[str, str], list[TradeRecord]] = {}

    # ------------------------------------------------------------------ subscriptions

    def resolve(self, name: str, is_live: Callable[[str], bool]) -> Channel | None:
        """The parsed channel if the simulator serves it, else None (left out of the result)."""
        try:
            channel = parse_channel(name)
        except InvalidChannel:
            return None
        if channel.name != name:
            return None
        kind = channel.kind
        if kind in FEED_FAMILIES:
            assert channel.instrument is not None
            return channel if is_live(channel.instrument) else None
        if kind is Kind.CURRENCY_TRADES:
            return channel if channel.instrument_kind == "option" else None
        if kind is Kind.INSTRUMENT_STATE:
            return channel if channel.instrument_kind in ("option", "any") else None
        if kind is Kind.PLATFORM_STATE:
            return channel
        return None

    def subscribe(self, session: Session, name: str, channel: Channel) -> None:
        if name in session.subscribed:
            return
        sub = self._subscribed_channel(name, channel)
        if sub is None:
            return
        sub.subscribers[session] = self.ledger.stats(name, channel.instrument, session.record)
        session.subscribed[name] = sub

    def unsubscribe(self, session: Session, name: str) -> bool:
        sub = session.subscribed.pop(name, None)
        if sub is None:
            return False
        sub.subscribers.pop(session, None)
        if not sub.subscribers:
            self._drop_channel(sub)
        return True

    def unsubscribe_all(self, session: Session) -> None:
        for name in list(session.subscribed):
            self.unsubscribe(session, name)

    def _subscribed_channel(self, name: str, channel: Channel) -> SubscribedChannel | None:
        kind = channel.kind
        if channel.instrument is not None:
            market = self.market
            option = market.option(channel.instrument) if market is not None else None
            if option is None:
                return self.subscribed.setdefault(name, SubscribedChannel(name, channel))
            pub: OptionChannels | None = option.pub
            if pub is None:
                pub = option.pub = OptionChannels()
            key = channel_key(channel)
            sub: SubscribedChannel | None = pub.subscribed.get(key)
            if sub is None:
                sub = pub.subscribed[key] = SubscribedChannel(name, channel)
                interval = str(channel.interval) if channel.interval is not None else None
                if interval in AGGREGATED:
                    window = pub.windows.get(interval)
                    if window is None:
                        window = pub.windows[interval] = Window()
                    if kind is Kind.BOOK:
                        window.book = True
                        window.orig = {}
                        window.book_change_id = option.change_id
                        window.book_ts = option.book_ts
                    elif kind is Kind.TRADES:
                        window.trades = []
            return sub
        sub = self.subscribed.get(name)
        if sub is None:
            sub = self.subscribed[name] = SubscribedChannel(name, channel)
            if kind is Kind.CURRENCY_TRADES:
                key2 = (str(channel.currency), str(channel.interval))
                self._currency_trades[key2] = sub
                self._currency_windows[key2] = []
        return sub

    def _drop_channel(self, sub: SubscribedChannel) -> None:
        channel = sub.channel
        if channel.instrument is not None and self.market is not None:
            option = self.market.option(channel.instrument)
            pub = option.pub if option is not None else None
            if pub is not None:
                key = channel_key(channel)
                if pub.subscribed.get(key) is sub:
                    del pub.subscribed[key]
                interval = str(channel.interval)
                window = pub.windows.get(interval)
                if window is not None:
                    if channel.kind is Kind.BOOK:
                        window.book = False
                        window.orig = {}
                    elif channel.kind is Kind.TRADES:
                        window.trades = None
                    if not any(k.endswith("." + interval) for k in pub.subscribed):
                        del pub.windows[interval]
                if not pub.subscribed:
                    option.pub = None  # type: ignore[union-attr]
                return
        if self.subscribed.get(sub.name) is sub:
            del self.subscribed[sub.name]
        if channel.kind is Kind.CURRENCY_TRADES:
            key2 = (str(channel.currency), str(channel.interval))
            self._currency_trades.pop(key2, None)
            self._currency_windows.pop(key2, None)

    def snapshot(self, session: Session, name: str) -> None:
        """Send a new book subscriber the snapshot its stream continues from."""
        sub = session.subscribed.get(name)
        market = self.market
        if sub is None or sub.channel.kind is not Kind.BOOK or market is None:
            return
        option = market.option(sub.channel.instrument or "")
        if option is None or option.pub is None:
            return
        bids = dict(option.book.bids)
        asks = dict(option.book.asks)
        change_id, ts = option.change_id, option.book_ts
        window = option.pub.windows.get(str(sub.channel.interval))
        if window is not None and window.book:
            for (is_bid, price), amount in window.orig.items():
                levels = bids if is_bid else asks
                if amount is None:
                    levels.pop(price, None)
                else:
                    levels[price] = amount
            change_id, ts = window.book_change_id, window.book_ts
        tick, dec = option.tick, option.price_decimals
        data = _dumps(
            {
                "type": "snapshot",
                "timestamp": ts,
                "instrument_name": option.name,
                "change_id": change_id,
                "bids": [
                    ["new", round(p * tick, dec), bids[p]] for p in sorted(bids, reverse=True)
                ],
                "asks": [["new", round(p * tick, dec), asks[p]] for p in sorted(asks)],
            }
        )
        stats = sub.subscribers[session]
        session.push(_frame(sub.prefix, data), (stats, ts, ts, 0, change_id, 0))

    # ------------------------------------------------------------------ market listener

    def on_event(
        self,
        option: Option,
        changes: list[BookEntry],
        quote_changed: bool,
        trade: TradeRecord | None,
    ) -> None:
        if trade is not None and self._currency_trades:
            self._currency_trade(option, trade)
        pub = option.pub
        if pub is None:
            return
        subscribed = pub.subscribed
        ts = option.last_ts
        sub = subscribed.get("ticker.raw")
        if sub is not None:
            sub.emit(_dumps(settled(option)), ts, ts, 0, 0, 0)
        if changes:
            sub = subscribed.get("book.raw")
            if sub is not None:
                bids, asks = _wire_levels(option, changes)
                data = _dumps(
                    {
                        "type": "change",
                        "timestamp": ts,
                        "prev_change_id": option.prev_change_id,
                        "instrument_name": option.name,
                        "change_id": option.change_id,
                        "bids": bids,
                        "asks": asks,
                    }
                )
                sub.emit(data, ts, ts, 0, option.change_id, 0)
        if quote_changed:
            sub = subscribed.get("quote")
            if sub is not None:
                sub.emit(_dumps(quote_payload(option)), ts, ts, 0, 0, 0)
        if trade is not None:
            sub = subscribed.get("trades.raw")
            if sub is not None:
                sub.emit(b"[" + trade.payload + b"]", ts, ts, trade.seq, 0, 1)
        windows = pub.windows
        if windows:
            dirty = self._dirty
            for interval, window in windows.items():
                if not window.dirty:
                    window.dirty = True
                    dirty[interval].append(option)
                if changes and window.book:
                    orig = window.orig
                    for is_bid, price, old, _new in changes:
                        key = (is_bid, price)
                        if key not in orig:
                            orig[key] = old
                if trade is not None and window.trades is not None:
                    window.trades.append(trade)

    def _currency_trade(self, option: Option, trade: TradeRecord) -> None:
        for currency in (option.currency, CURRENCY_ANY):
            sub = self._currency_trades.get((currency, "raw"))
            if sub is not None:
                sub.emit(b"[" + trade.payload + b"]", trade.ts, trade.ts, 0, 0, 1)
            for interval in AGGREGATED:
                window = self._currency_windows.get((currency, interval))
                if window is not None:
                    window.append(trade)

    def on_boundary(self, t_ms: int) -> None:
        for interval, period in AGGREGATED.items():
            if t_ms % period:
                continue
            dirty = self._dirty[interval]
            if dirty:
                for option in dirty:
                    self._flush_window(option, interval)
                dirty.clear()
            for currency in (*self._currencies(), CURRENCY_ANY):
                trades = self._currency_windows.get((currency, interval))
                if trades:
                    sub = self._currency_trades[(currency, interval)]
                    data = b"[" + b",".join(t.payload for t in trades) + b"]"
                    sub.emit(data, trades[0].ts, trades[-1].ts, 0, 0, len(trades))
                    trades.clear()

    def _currencies(self) -> tuple[str, ...]:
        return self.market.currencies if self.market is not None else ()

    def _flush_window(self, option: Option, interval: str) -> None:
        pub = option.pub
        if pub is None:
            return
        window = pub.windows.get(interval)
        if window is None or not window.dirty:
            return
        window.dirty = False
        subscribed = pub.subscribed
        ts = option.last_ts
        sub = subscribed.get("ticker." + interval)
        if sub is not None:
            sub.emit(_dumps(settled(option)), ts, ts, 0, 0, 0)
        if window.book:
            sub = subscribed.get("book." + interval)
            orig = window.orig
            if sub is not None and orig:
                book = option.book
                entries: list[BookEntry] = []
                for (is_bid, price), before in sorted(orig.items(), key=_level_order):
                    now = (book.bids if is_bid else book.asks).get(price)
                    if before != now:
                        entries.append((is_bid, price, before, now))
                orig.clear()
                if entries:
                    bids, asks = _wire_levels(option, entries)
                    change_id = option.change_id
                    data = _dumps(
                        {
                            "type": "change",
                            "timestamp": option.book_ts,
                            "prev_change_id": window.book_change_id,
                            "instrument_name": option.name,
                            "change_id": change_id,
                            "bids": bids,
                            "asks": asks,
                        }
                    )
                    sub.emit(data, option.book_ts, option.book_ts, 0, change_id, 0)
                    window.book_change_id = change_id
                    window.book_ts = option.book_ts
        trades = window.trades
        if trades:
            sub = subscribed.get("trades." + interval)
            if sub is not None:
                data = b"[" + b",".join(t.payload for t in trades) + b"]"
                sub.emit(data, trades[0].ts, trades[-1].ts, trades[-1].seq, 0, len(trades))
            trades.clear()

    def on_instrument_state(self, option: Option, state: str, t_ms: int) -> None:
        if not self.subscribed:
            return
        data = _dumps({"timestamp": t_ms, "state": state, "instrument_name": option.name})
        for kind in ("option", "any"):
            for currency in (option.currency, CURRENCY_ANY):
                sub = self.subscribed.get(f"instrument.state.{kind}.{currency}")
                if sub is not None:
                    sub.emit(data, t_ms, t_ms, 0, 0, 0)

    def platform_state(self, data: dict[str, Any], t_ms: int) -> None:
        sub = self.subscribed.get("platform_state")
        if sub is not None:
            sub.emit(_dumps(data), t_ms, t_ms, 0, 0, 0)


def _level_order(item: tuple[tuple[bool, int], float | None]) -> tuple[bool, int]:
    (is_bid, price), _ = item
    return (not is_bid, -price if is_bid else price)
