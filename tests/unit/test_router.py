"""Routing notifications to rows and events: the real 2021 capture, every channel family, and
what the router refuses (unknown channels, malformed payloads), each kept as a rejection."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from harness.capture import TRADE, notifications
from harness.sinks import MemorySink
from optionfeed.collector.router import Events, Router
from optionfeed.collector.sequences import BookBreak, SequenceGap
from optionfeed.store import tables
from optionfeed.telemetry.metrics import Metrics

# docs/deribit-protocol.md §6: a real quote (2025), the documented lifecycle payloads.
QUOTE = {
    "timestamp": 1765541767174,
    "instrument_name": "BTC-PERPETUAL",
    "best_ask_price": 92288.5,
    "best_bid_price": None,
    "best_ask_amount": 99470.0,
    "best_bid_amount": None,
}
INSTRUMENT_STATE = {"timestamp": 1553080940000, "state": "open", "instrument_name": "BTC-22MAR19"}
PLATFORM_STATE = {"locked": False, "price_index": "eth_usdc"}


class Recorder(Events):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def trade_gap(self, gap: SequenceGap, at: float) -> None:
        self.calls.append(("trade_gap", gap, at))

    def book_break(self, brk: BookBreak, channel: str, at: float) -> None:
        self.calls.append(("book_break", brk, channel, at))

    def book_resynced(self, instrument: str, at: float) -> None:
        self.calls.append(("book_resynced", instrument, at))

    def trade_seen(self, instrument: str, trade_seq: int, at: float) -> None:
        self.calls.append(("trade_seen", instrument, trade_seq, at))

    def seen(self, instrument: str, family: str, at: float) -> None:
        self.calls.append(("seen", instrument, family, at))

    def instrument_state(self, data: Any, at: float) -> None:
        self.calls.append(("instrument_state", data, at))

    def platform_state(self, data: Any, at: float) -> None:
        self.calls.append(("platform_state", data, at))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == name]


class Rig:
    def __init__(self) -> None:
        self.sink = MemorySink()
        self.metrics = Metrics()
        self.events, self.lifecycle = Recorder(), Recorder()
        self.router = Router(self.sink, self.metrics)
        self.router.attach(events=self.events, lifecycle=self.lifecycle)

    async def send(self, channel: str, data: Any, at: float = 1.0) -> None:
        await self.router.notification(channel, data, orjson.dumps(data), at)

    def sample(self, metric: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(metric, labels)
        return 0.0 if value is None else value

    def rejected(self) -> list[dict[str, Any]]:
        return self.sink.dicts(tables.REJECTED)


def trade(seq: int, instrument: str = TRADE["instrument_name"]) -> dict[str, Any]:
    return dict(TRADE, trade_seq=seq, trade_id=str(48079000 + seq), instrument_name=instrument)


async def test_the_real_capture_becomes_one_row_and_one_seen_event_per_notification() -> None:
    rig = Rig()
    capture = notifications()
    for channel, data, at in capture:
        await rig.send(channel, data, at)

    families = Counter(channel.split(".")[0] for channel, _, _ in capture)
    assert len(rig.sink.rows[tables.TICKERS.name]) == families["ticker"] == 89
    assert len(rig.sink.rows[tables.BOOK.name]) == families["book"] == 46
    assert (rig.router.counts.tickers, rig.router.counts.books) == (89, 46)
    assert rig.rejected() == []
    assert rig.events.named("seen") == [
        (data["instrument_name"], channel.split(".")[0], at) for channel, data, at in capture
    ]
    assert [e for e in rig.events.calls if e[0] != "seen"] == []  # an unbroken book chain
    assert rig.router.last_message_at == capture[-1][2]
    ticker_rows = rig.sink.dicts(tables.TICKERS)
    assert [r["instrument"] for r in ticker_rows] == [
        d["instrument_name"] for c, d, _ in capture if c.startswith("ticker.")
    ]
    assert rig.sample("optionfeed_messages_total", channel="book") == 46


@pytest.mark.parametrize(
    ("channel", "data", "table", "event"),
    [
        ("quote.BTC-PERPETUAL", QUOTE, tables.QUOTES, ("seen", "BTC-PERPETUAL", "quote")),
        (
            "trades.BTC-27MAY20-9000-C.100ms",
            [TRADE],
            tables.TRADES,
            ("trade_seen", "BTC-27MAY20-9000-C", 2),
        ),
        (
            "trades.option.BTC.100ms",
            [TRADE],
            tables.TRADES,
            ("trade_seen", "BTC-27MAY20-9000-C", 2),
        ),
    ],
)
async def test_each_data_family_is_stored_in_its_table_and_reported_seen(
    channel: str, data: Any, table: tables.Table, event: tuple[Any, ...]
) -> None:
    rig = Rig()
    await rig.send(channel, data, 5.0)
    assert len(rig.sink.rows[table.name]) == 1
    assert sum(len(rows) for rows in rig.sink.rows.values()) == 1
    assert [call[:-1] for call in rig.events.calls] == [event]
    assert rig.lifecycle.calls == []


@pytest.mark.parametrize(
    ("channel", "data", "hook"),
    [
        ("instrument.state.option.BTC", INSTRUMENT_STATE, "instrument_state"),
        ("instrument.state.any.any", INSTRUMENT_STATE, "instrument_state"),
        ("platform_state", PLATFORM_STATE, "platform_state"),
        ("platform_state", {"maintenance": True}, "platform_state"),
    ],
)
async def test_lifecycle_channels_go_to_the_lifecycle_listener_and_store_nothing(
    channel: str, data: Any, hook: str
) -> None:
    rig = Rig()
    await rig.send(channel, data, 5.0)
    assert rig.lifecycle.calls == [(hook, data, 5.0)]
    assert rig.events.calls == []
    assert dict(rig.sink.rows) == {}
    assert rig.sample("optionfeed_messages_total", channel=hook) == 1


@pytest.mark.parametrize(
    ("channel", "data", "reason"),
    [
        ("book.BTC-PERPETUAL.none.10.100ms", {"change_id": 1}, "unknown_channel"),  # grouped book
        ("deribit_price_index.btc_usd", {"price": 6521.17}, "unknown_channel"),
        ("nonsense.BTC", {}, "unknown_channel"),
        ("ticker.BTC-PERPETUAL", {}, "unknown_channel"),  # no interval: not a channel
        (
            "ticker.ETH-30JUL21-2800-C.raw",
            {"instrument_name": "ETH-30JUL21-2800-C"},
            "missing_field",
        ),
        ("quote.BTC-PERPETUAL", dict(QUOTE, best_ask_price="92288.5"), "wrong_type"),
        ("book.ETH-30JUL21-2800-C.raw", [], "wrong_type"),
        ("trades.option.BTC.100ms", TRADE, "wrong_type"),  # not an array
        ("instrument.state.option.BTC", {"state": "open"}, "wrong_type"),
        ("platform_state", [True], "wrong_type"),
    ],
)
async def test_an_unknown_channel_or_malformed_payload_is_kept_as_a_rejection(
    channel: str, data: Any, reason: str
) -> None:
    rig = Rig()
    await rig.send(channel, data, 7.0)
    [row] = rig.rejected()
    assert row["reason"].split(":")[0] == reason
    assert (row["channel"], row["raw"], row["recv_ts"]) == (
        channel,
        orjson.dumps(data).decode(),
        7.0,
    )
    assert rig.sample("optionfeed_rejected_messages_total", reason=reason) == 1
    assert rig.router.counts.rejected == 1
    assert [name for name, rows in rig.sink.rows.items() if rows] == [tables.REJECTED.name]
    assert rig.events.calls == rig.lifecycle.calls == []

    # The channel stays routed: the same refusal again.
    await rig.send(channel, data, 8.0)
    assert len(rig.rejected()) == 2


async def test_a_good_ticker_after_a_malformed_one_on_the_same_channel_is_stored() -> None:
    rig = Rig()
    channel, data, at = next(n for n in notifications() if n[0].startswith("ticker."))
    await rig.send(channel, dict(data, mark_price="0.5"), at)
    await rig.send(channel, data, at + 1)
    assert len(rig.rejected()) == 1
    assert len(rig.sink.rows[tables.TICKERS.name]) == 1
    assert rig.events.named("seen") == [(data["instrument_name"], "ticker", at + 1)]


async def test_trade_seq_jumps_are_gaps_and_repeated_or_late_ones_are_not() -> None:
    rig = Rig()
    await rig.send("trades.BTC-27MAY20-9000-C.raw", [trade(2), trade(3)], 1.0)
    await rig.send("trades.BTC-27MAY20-9000-C.raw", [trade(3), trade(1)], 2.0)  # repeat, late
    await rig.send("trades.BTC-27MAY20-9000-C.raw", [trade(6)], 3.0)
    assert rig.events.named("trade_gap") == [(SequenceGap("BTC-27MAY20-9000-C", 4, 5), 3.0)]
    seen = [seq for _, seq, _ in rig.events.named("trade_seen")]
    assert seen == [2, 3, 3, 1, 6]
    # Every trade that arrived is stored; the table merges repeats on (instrument, trade_id).
    assert [r["trade_seq"] for r in rig.sink.dicts(tables.TRADES)] == [2, 3, 3, 1, 6]
    assert rig.router.trades.last["BTC-27MAY20-9000-C"] == 6


async def test_currency_trades_track_each_instrument_on_its_own() -> None:
    rig = Rig()
    other = "BTC-27MAY20-10000-P"
    await rig.send("trades.option.BTC.100ms", [trade(10), trade(500, other)], 1.0)
    await rig.send("trades.option.BTC.100ms", [trade(501, other), trade(12)], 2.0)
    assert rig.events.named("trade_gap") == [(SequenceGap(TRADE["instrument_name"], 11, 11), 2.0)]


async def test_a_rejected_trade_in_a_message_is_a_gap_so_it_is_fetched_again() -> None:
    rig = Rig()
    bad = dict(trade(3), amount="3")
    await rig.send("trades.BTC-27MAY20-9000-C.raw", [trade(2), bad, trade(4)], 1.0)
    assert [r["trade_seq"] for r in rig.sink.dicts(tables.TRADES)] == [2, 4]
    [row] = rig.rejected()
    assert row["reason"].startswith("wrong_type")
    assert "(element 2 of 3)" in row["reason"]
    assert orjson.loads(row["raw"]) == bad
    assert rig.events.named("trade_gap") == [(SequenceGap("BTC-27MAY20-9000-C", 3, 3), 1.0)]


async def test_a_book_break_names_its_channel_and_the_next_snapshot_resyncs_it() -> None:
    rig = Rig()
    channel = "book.BTC-24SEP21-8000-P.raw"
    book = [(d, t) for c, d, t in notifications() if c == channel]
    await rig.send(channel, book[0][0], book[0][1])
    await rig.send(channel, book[2][0], book[2][1])  # book[1] lost
    await rig.send(channel, book[3][0], book[3][1])
    [(brk, named, at)] = rig.events.named("book_break")
    assert brk == BookBreak(
        "BTC-24SEP21-8000-P",
        book[0][0]["change_id"],
        book[1][0]["change_id"],
        book[2][0]["change_id"],
    )
    assert (named, at) == (channel, book[2][1])
    snapshot = dict(book[0][0], change_id=book[3][0]["change_id"] + 1)
    await rig.send(channel, snapshot, 99.0)
    assert rig.events.named("book_resynced") == [("BTC-24SEP21-8000-P", 99.0)]
    assert len(rig.sink.rows[tables.BOOK.name]) == 4  # a broken book's rows are still kept


async def test_listeners_attached_after_routing_receive_what_follows() -> None:
    rig = Rig()
    channel, data, at = next(n for n in notifications() if n[0].startswith("ticker."))
    await rig.send(channel, data, at)
    later = Recorder()
    rig.router.attach(events=later)
    await rig.send(channel, data, at + 1)
    assert len(rig.events.named("seen")) == 1
    assert later.named("seen") == [(data["instrument_name"], "ticker", at + 1)]
