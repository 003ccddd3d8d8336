"""Replaying real captures: ``--replay FILE`` (and ``--replay-instruments FILE``).

The WebSocket capture has the format of ``tests/data/deribit/ws-options-2021-07-22.txt``: a
header ``<url> <-> <unix time>`` per connection, ``<url> <- <unix time>: <json>`` for frames the
client sent (skipped) and ``<unix time>: <json>`` for frames it received; only the subscription
notifications among them are replayed. The REST capture has the format of
``rest-get_instruments-2021-2022.txt``: ``<url> -> <unix time>: <json>`` per response, the
``currency`` in the URL's query; lines without a URL (such as a trailing ``configuration: ...``)
are skipped.

How a capture is served:

* **Start and timing.** The capture starts playing when the first client subscribes to anything,
  so a test or a demo sees it from its beginning. Each notification is sent when the time since
  the start reaches its capture time since the first notification, divided by
  ``--replay-speed``. The capture plays once; afterwards the server stays up and quiet.
* **Payloads.** Each notification goes out byte for byte as captured: the ``data`` text is cut
  out of the captured frame, never re-serialised.
* **Intervals.** A captured ``ticker.X.raw`` notification goes to the subscribers of
  ``ticker.X.raw``, ``ticker.X.100ms`` and ``ticker.X.agg2`` alike, each under the channel name
  it subscribed to; only that suffix differs from the capture. So a ``.100ms`` subscriber gets
  every captured notification at the capture's own cadence (thinning would drop book changes and
  break their ``change_id`` chain). Channels without an interval go to their own subscribers.
* **Late subscribers** get the notifications from the moment they subscribe; a book subscriber
  that missed the captured snapshot gets changes only (the capture holds no later snapshot).
* **REST.** ``get_instruments`` answers with the captured instruments of the currency (as
  captured, ``expired=true`` gives none); ``get_book_summary_by_currency`` with one summary per
  captured instrument, filled from its latest ticker (zeros and nulls for instruments the WS
  capture never mentions, so ranking by ``open_interest`` selects the captured ones);
  ``ticker``/``get_order_book`` with the state replayed so far (before an instrument's first
  notification is due, its first captured one); trade history with the replayed trades.

Timestamps are the capture's: a 2021 capture gives 2021 timestamps, and its instruments have
expired by today's clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from optionfeed.deribit import jsonrpc
from optionfeed.deribit.channels import InvalidChannel, parse_channel
from optionfeed.deribit.errors import ProtocolError
from optionfeed.deribit.instruments import InstrumentState
from optionfeed.simulator.clock import Clock
from optionfeed.simulator.faults import Faults
from optionfeed.simulator.ledger import Generated, Ledger
from optionfeed.simulator.publisher import Publisher
from optionfeed.simulator.server import ServerSettings, Simulator
from optionfeed.simulator.source import ORDER_BOOK_DEPTHS, TradePage

_RECEIVED = re.compile(rb"^(?P<t>\d+(?:\.\d+)?): (?P<json>.*)$")
_REST = re.compile(rb"^(?P<url>\S+://\S+) -> (?P<t>\d+(?:\.\d+)?): (?P<json>.*)$")
INTERVALS = ("raw", "100ms", "agg2")


class CaptureError(ValueError):
    """A capture file that cannot be read as one; says which line and why."""


@dataclass(frozen=True, slots=True)
class Captured:
    """One captured subscription notification."""

    time: float  # when it was received (Unix seconds, from the capture)
    channel: str
    data_json: bytes  # the captured ``data`` value, byte for byte
    data: Any  # the same, decoded


def parse_ws_capture(lines: Iterable[bytes]) -> list[Captured]:
    """The subscription notifications of a WebSocket capture, in capture order."""
    out: list[Captured] = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip(b"\r\n")
        match = _RECEIVED.match(line)
        if match is None:
            continue  # connection headers, frames the client sent, blank lines
        raw = match["json"]
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CaptureError(f"line {number}: not JSON: {exc}") from None
        try:
            frame = jsonrpc.parse_message(message, raw)
        except ProtocolError as exc:
            if isinstance(message, dict) and message.get("method") == "subscription":
                raise CaptureError(f"line {number}: {exc}") from None
            continue  # not a frame the replay serves
        if not isinstance(frame, jsonrpc.Subscription):
            continue  # responses, heartbeats
        data_json = jsonrpc.subscription_data_json(raw, frame.channel)
        if data_json is None:
            # Another envelope layout: keep the data's meaning, re-serialised.
            data_json = memoryview(orjson.dumps(frame.data)).tobytes()
        out.append(Captured(float(match["t"]), frame.channel, data_json, frame.data))
    return out


def parse_rest_capture(lines: Iterable[bytes]) -> dict[str, list[dict[str, Any]]]:
    """Captured get_instruments results by the ``currency`` of their URL."""
    found: dict[str, list[dict[str, Any]]] = {}
    for number, line in enumerate(lines, 1):
        match = _REST.match(line.rstrip(b"\r\n"))
        if match is None:
            continue  # e.g. the trailing "configuration: {...}" line
        url = match["url"].decode()
        currency = parse_qs(urlsplit(url).query).get("currency", [""])[0]
        if not currency:
            raise CaptureError(f"line {number}: {url} names no currency")
        try:
            body = orjson.loads(match["json"])
        except orjson.JSONDecodeError as exc:
            raise CaptureError(f"line {number}: not JSON: {exc}") from None
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, list):
            raise CaptureError(f"line {number}: the response has no result list")
        found.setdefault(currency, []).extend(i for i in result if isinstance(i, dict))
    return found


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from handle


@dataclass
class InstrumentReplay:
    """What has been replayed for one instrument so far."""

    name: str
    currency: str
    ticker: dict[str, Any] | None = None
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    change_id: int | None = None
    first_change_id: int | None = None
    trades: list[tuple[int, int, bytes]] = field(default_factory=list)  # (seq, ts, json)
    events: int = 0
    first_ts: int | None = None
    last_ts: int | None = None

    def apply(self, captured: Captured) -> None:
        family = captured.channel.split(".", 1)[0]
        data = captured.data
        self.events += 1
        ts: int | None = None
        if family == "ticker" and isinstance(data, dict):
            self.ticker = data
            ts = data.get("timestamp")
        elif family == "book" and isinstance(data, dict):
            if data.get("type") == "snapshot":
                self.bids.clear()
                self.asks.clear()
            for side, levels in (
                (self.bids, data.get("bids", [])),
                (self.asks, data.get("asks", [])),
            ):
                for action, price, amount in levels:
                    if action == "delete":
                        side.pop(price, None)
                    else:
                        side[price] = amount
            self.change_id = data.get("change_id")
            if self.first_change_id is None:
                self.first_change_id = self.change_id
            ts = data.get("timestamp")
        elif family == "trades" and isinstance(data, list):
            for trade in data:
                payload = memoryview(orjson.dumps(trade)).tobytes()  # exact size (see market)
                self.trades.append((trade["trade_seq"], trade["timestamp"], payload))
                ts = trade["timestamp"]
        if isinstance(ts, int):
            self.first_ts = ts if self.first_ts is None else self.first_ts
            self.last_ts = ts


class ReplaySource:
    """A capture as a :class:`~.source.Source`, played through the publisher by :meth:`pump`."""

    kind = "replay"

    def __init__(
        self,
        captured: list[Captured],
        instruments: dict[str, list[dict[str, Any]]],
        publisher: Publisher,
        clock: Clock,
        speed: float = 1.0,
    ) -> None:
        self.captured = captured
        self.catalogue = instruments
        self.publisher = publisher
        self.clock = clock
        self.speed = speed
        self._next = 0
        self._t0 = captured[0].time if captured else 0.0
        self._start: float | None = None
        self._created = int(clock.now() * 1000)
        self.state: dict[str, InstrumentReplay] = {}
        self._currency: dict[str, str] = {}
        for currency, items in instruments.items():
            for item in items:
                name = item.get("instrument_name")
                if isinstance(name, str):
                    self._currency[name] = currency
        self._first: dict[str, dict[str, Captured]] = {}
        for c in captured:
            name = self._instrument_of(c.channel)
            if name is not None:
                family = c.channel.split(".", 1)[0]
                self._first.setdefault(name, {}).setdefault(family, c)
        self.events_total = 0
        self.trades_total = 0

    @staticmethod
    def _instrument_of(channel: str) -> str | None:
        try:
            return parse_channel(channel).instrument
        except InvalidChannel:
            return None

    # ------------------------------------------------------------------ playing

    @property
    def started(self) -> bool:
        return self._start is not None

    @property
    def finished(self) -> bool:
        return self._next >= len(self.captured)

    def pump(self, now: float) -> None:
        if self._start is None:
            if not self.publisher.subscribed:
                return
            self._start = now
        elapsed = (now - self._start) * self.speed
        captured = self.captured
        while self._next < len(captured) and captured[self._next].time - self._t0 <= elapsed:
            self._publish(captured[self._next])
            self._next += 1

    def _publish(self, c: Captured) -> None:
        name = self._instrument_of(c.channel)
        if name is not None:
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = InstrumentReplay(name, self._currency.get(name, ""))
            state.apply(c)
        self.events_total += 1
        data = c.data
        first_ts = last_ts = 0
        seq = change_id = n = 0
        if isinstance(data, dict):
            first_ts = last_ts = int(data.get("timestamp") or 0)
            change_id = int(data.get("change_id") or 0)
        elif isinstance(data, list) and data and isinstance(data[0], dict):
            first_ts = int(data[0].get("timestamp") or 0)
            last_ts = int(data[-1].get("timestamp") or 0)
            seq = max(int(t.get("trade_seq") or 0) for t in data)
            n = len(data)
            self.trades_total += n
        subscribed = self.publisher.subscribed
        head, _, interval = c.channel.rpartition(".")
        targets = [f"{head}.{i}" for i in INTERVALS] if interval in INTERVALS else [c.channel]
        for target in targets:
            sub = subscribed.get(target)
            if sub is not None:
                sub.emit(c.data_json, first_ts, last_ts, seq, change_id, n)

    # ------------------------------------------------------------------ Source

    @property
    def started_ms(self) -> int:
        return int(self._start * 1000) if self._start is not None else self._created

    @property
    def rate(self) -> float | None:
        return None

    def advance(self) -> bool:
        self.pump(self.clock.now())
        return True

    def currencies(self) -> list[str]:
        return list(self.catalogue)

    def index_names(self) -> list[str]:
        names = set()
        for items in self.catalogue.values():
            for item in items:
                index = item.get("price_index")
                names.add(
                    index
                    if isinstance(index, str)
                    else f"{item.get('base_currency', '').lower()}_usd"
                )
        return sorted(names)

    def knows(self, instrument: str) -> bool:
        return instrument in self._currency or instrument in self._first

    def is_live(self, instrument: str) -> bool:
        return self.knows(instrument)

    def instruments(self, currency: str, kind: str | None, expired: bool) -> list[Any]:
        if expired:
            return []
        currencies = list(self.catalogue) if currency == "any" else [currency]
        return [
            item
            for c in currencies
            for item in self.catalogue.get(c, [])
            if kind is None or item.get("kind") == kind
        ]

    def instrument(self, name: str) -> Any | None:
        for items in self.catalogue.values():
            for item in items:
                if item.get("instrument_name") == name:
                    return item
        return None

    def _ticker(self, name: str) -> dict[str, Any] | None:
        state = self.state.get(name)
        if state is not None and state.ticker is not None:
            return state.ticker
        first = self._first.get(name, {}).get("ticker")
        return first.data if first is not None and isinstance(first.data, dict) else None

    def ticker(self, name: str) -> dict[str, Any] | None:
        ticker = self._ticker(name)
        return dict(ticker) if ticker is not None else None

    def book_summaries(self, currency: str, kind: str | None) -> list[Any]:
        now = int(self.clock.now() * 1000)
        out = []
        for item in self.instruments(currency, kind, False):
            name = item["instrument_name"]
            tk = self._ticker(name) or {}
            stats = tk.get("stats") or {}
            bid = tk.get("best_bid_price") or None
            ask = tk.get("best_ask_price") or None
            volume = stats.get("volume") or 0.0
            index = tk.get("index_price") or 0.0
            out.append(
                {
                    "volume_usd": round(volume * index, 2),
                    "volume": volume,
                    "underlying_price": tk.get("underlying_price", 0.0),
                    "underlying_index": tk.get("underlying_index", "index_price"),
                    "quote_currency": item.get("quote_currency"),
                    "price_change": stats.get("price_change"),
                    "open_interest": tk.get("open_interest", 0.0),
                    "mid_price": round((bid + ask) / 2, 8) if bid and ask else None,
                    "mark_price": tk.get("mark_price", 0.0),
                    "mark_iv": tk.get("mark_iv", 0.0),
                    "low": stats.get("low"),
                    "last": tk.get("last_price"),
                    "interest_rate": tk.get("interest_rate", 0.0),
                    "instrument_name": name,
                    "high": stats.get("high"),
                    "estimated_delivery_price": tk.get("estimated_delivery_price", 0.0),
                    "creation_timestamp": now,
                    "bid_price": bid,
                    "base_currency": item.get("base_currency"),
                    "ask_price": ask,
                }
            )
        return out

    def order_book(self, name: str, depth: int) -> dict[str, Any] | None:
        if depth not in ORDER_BOOK_DEPTHS:
            depth = 20
        result = self.ticker(name) or {"instrument_name": name}
        state = self.state.get(name)
        if state is None or state.change_id is None:
            first = self._first.get(name, {}).get("book")
            state = InstrumentReplay(name, "")
            if first is not None:
                state.apply(first)
        result["change_id"] = state.change_id
        result["bids"] = [[p, state.bids[p]] for p in sorted(state.bids, reverse=True)[:depth]]
        result["asks"] = [[p, state.asks[p]] for p in sorted(state.asks)[:depth]]
        return result

    def _trades(self, name: str) -> list[tuple[int, int, bytes]]:
        state = self.state.get(name)
        return state.trades if state is not None else []

    def trades_by_seq(
        self, name: str, start: int | None, end: int | None, count: int, ascending: bool
    ) -> TradePage | None:
        found = [
            t
            for t in self._trades(name)
            if (start is None or t[0] >= start) and (end is None or t[0] <= end)
        ]
        return _page(found, count, ascending)

    def trades_by_time(
        self, name: str, start: int | None, end: int | None, count: int, ascending: bool
    ) -> TradePage | None:
        found = [
            t
            for t in self._trades(name)
            if (start is None or t[1] >= start) and (end is None or t[1] <= end)
        ]
        return _page(found, count, ascending)

    def generated(self) -> Iterable[Generated]:
        for name, state in sorted(self.state.items()):
            seqs = [t[0] for t in state.trades]
            expiry = (self.instrument(name) or {}).get("expiration_timestamp", 0)
            yield Generated(
                instrument=name,
                currency=state.currency,
                state=InstrumentState.OPEN,
                expiration_timestamp=int(expiry),
                events=state.events,
                first_timestamp=state.first_ts,
                last_timestamp=state.last_ts,
                trades=len(seqs),
                first_trade_seq=min(seqs) if seqs else None,
                last_trade_seq=max(seqs) if seqs else None,
                first_change_id=state.first_change_id,
                last_change_id=state.change_id,
            )

    def totals(self) -> tuple[int, int]:
        return self.events_total, self.trades_total

    @property
    def skipped_ms(self) -> float:
        return 0.0


def _page(found: list[tuple[int, int, bytes]], count: int, ascending: bool) -> TradePage:
    if not ascending:
        found = found[::-1]
    return TradePage([t[2] for t in found[:count]], len(found) > count)


def build_replay(
    capture: Path,
    instruments: Path | None,
    speed: float,
    clock: Clock,
    settings: ServerSettings,
    faults: Faults,
) -> Simulator:
    captured = parse_ws_capture(_lines(capture))
    if not captured:
        raise CaptureError(f"{capture} holds no subscription notifications to replay")
    catalogue = parse_rest_capture(_lines(instruments)) if instruments is not None else {}
    ledger = Ledger()
    publisher = Publisher(ledger)
    source = ReplaySource(captured, catalogue, publisher, clock, speed)
    return Simulator(source, publisher, ledger, clock, settings, faults, replay=source)
