"""Gap rows from real message shapes: disconnects and their backfill range, trade_seq jumps,
broken book chains (the real 2021 capture), stale tickers (the capture's own timing)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from harness.capture import TRADE, notifications
from harness.sinks import MemorySink
from optionfeed.collector.connection import ExchangeConnection
from optionfeed.collector.gaps import GapRecorder, TradeRecovery, channel_key
from optionfeed.collector.router import Router
from optionfeed.collector.trade_pages import BySeq, ByTime, page_request
from optionfeed.deribit import channels
from optionfeed.store import tables
from optionfeed.telemetry.metrics import Metrics

CONN = cast(ExchangeConnection, object())  # the recorder does not look at the connection
INSTRUMENT = "BTC-24SEP21-8000-P"  # the capture's busiest book
TICKER = channels.feed_channel("ticker", INSTRUMENT, "raw")
BOOK = channels.feed_channel("book", INSTRUMENT, "raw")
TRADES = channels.feed_channel("trades", INSTRUMENT, "raw")
SUBSCRIBED = frozenset(
    {TICKER, BOOK, TRADES, channels.instrument_state("BTC"), channels.PLATFORM_STATE}
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A router delivering into a gap recorder, as the collector wires them."""

    stale_after: dict[str, float] | None = None
    sink: MemorySink = field(default_factory=MemorySink)
    clock: Clock = field(default_factory=Clock)
    recoveries: list[TradeRecovery] = field(default_factory=list)
    resyncs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        metrics = Metrics()
        self.router = Router(self.sink, metrics)
        self.gaps = GapRecorder(
            feed="options",
            shard=0,
            metrics=metrics,
            trades=self.router.trades,
            recover=self.recoveries.append,
            resync=self.resyncs.append,
            stale_after=self.stale_after,
            clock=self.clock,
        )
        self.router.attach(events=self.gaps)

    async def deliver(self, channel: str, data: Any, at: float) -> None:
        self.clock.now = at
        await self.router.notification(channel, data, b"{}", at)

    async def trades(self, at: float, *seqs: int) -> None:
        await self.deliver(TRADES, [trade(seq) for seq in seqs], at)

    async def gap_rows(self) -> list[dict[str, Any]]:
        await self.gaps.flush(self.sink)
        return self.sink.dicts(tables.GAPS)


def trade(seq: int, instrument: str = INSTRUMENT) -> dict[str, Any]:
    return dict(TRADE, trade_seq=seq, trade_id=str(48079000 + seq), instrument_name=instrument)


def ticker(after: float) -> dict[str, Any]:
    """The capture's first ticker of INSTRUMENT, as if sent ``after`` seconds later."""
    data = next(d for c, d, _ in notifications() if c == TICKER)
    return dict(data, timestamp=data["timestamp"] + int(after * 1000))


def bounds(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["channel"], row["reason"], row["gap_start"], row["gap_end"])


async def test_a_disconnect_is_a_gap_per_instrument_channel_from_the_last_frame_to_the_ack() -> (
    None
):
    rig = Rig()
    rig.clock.now = 101.0
    rig.gaps.disconnected(CONN, SUBSCRIBED, "closed", 100.0)
    assert rig.gaps.silent() == {"ticker": 1, "book": 1, "trades": 1}
    rig.gaps.connected(CONN, SUBSCRIBED, 107.5)

    rows = await rig.gap_rows()
    opened, closed = rows[:3], rows[3:]
    assert sorted(bounds(r) for r in opened) == [
        (family, "disconnect", 100.0, None) for family in ("book", "ticker", "trades")
    ]
    assert sorted(bounds(r) for r in closed) == [
        (family, "disconnect", 100.0, 107.5) for family in ("book", "ticker", "trades")
    ]
    assert [r["gap_id"] for r in opened] == [r["gap_id"] for r in closed]
    assert {(r["instrument"], r["feed"], r["shard"]) for r in rows} == {(INSTRUMENT, "options", 0)}
    assert rig.gaps.silent() == {}
    assert rig.gaps.open_gaps() == []
    # No trade was ever seen: the backfill asks by time, over the gap, its end millisecond included.
    [recovery] = rig.recoveries
    assert (recovery.after_seq, recovery.upto_seq, recovery.gap.seq_from) == (None, None, None)
    assert page_request(recovery, recovery.after_seq, 999.0) == ByTime(100_000, 107_501)


async def test_a_silent_session_is_a_stale_gap_and_a_second_drop_does_not_restart_it() -> None:
    rig = Rig()
    rig.gaps.disconnected(CONN, frozenset({TICKER}), "stale", 50.0)
    rig.gaps.disconnected(CONN, frozenset({TICKER}), "closed", 70.0)  # dropped again, still down
    rig.gaps.connected(CONN, frozenset({TICKER}), 80.0)
    assert [bounds(r) for r in await rig.gap_rows()] == [
        ("ticker", "stale", 50.0, None),
        ("ticker", "stale", 50.0, 80.0),
    ]
    assert rig.gaps.opened == 1


async def test_a_disconnect_of_trades_is_backfilled_from_the_last_seq_to_the_first_live_one() -> (
    None
):
    rig = Rig()
    await rig.trades(10.0, 40, 41)
    rig.gaps.disconnected(CONN, SUBSCRIBED, "closed", 11.0)
    rig.gaps.connected(CONN, SUBSCRIBED, 20.0)
    [recovery] = rig.recoveries
    assert (recovery.gap.seq_from, recovery.after_seq, recovery.upto_seq) == (42, 41, None)

    # The stream resumes at 57: the jump is the disconnect's, not a gap of its own.
    await rig.trades(20.5, 57, 58)
    assert (recovery.upto_seq, recovery.first_live_seq) == (56, 57)
    assert page_request(recovery, recovery.after_seq, 21.0) == BySeq(42, 56)
    assert [r["reason"] for r in await rig.gap_rows()] == ["disconnect"] * 6
    assert len(rig.recoveries) == 1

    rig.gaps.recovered(recovery, 15, (42, 56))
    rows = await rig.gap_rows()
    trades = [r for r in rows if r["channel"] == "trades"]
    assert len({r["gap_id"] for r in trades}) == 1
    last = trades[-1]
    assert (last["seq_from"], last["seq_to"], last["rows_recovered"]) == (42, 56, 15)
    assert (last["gap_start"], last["gap_end"]) == (11.0, 20.0)
    assert rig.gaps.recovered_trades == 15

    # Once that recovery is done, a later jump is a sequence gap of its own.
    await rig.trades(30.0, 60)
    assert (await rig.gap_rows())[-1]["reason"] == "sequence"


async def test_a_trade_seq_jump_is_a_sequence_gap_between_the_two_trades_around_it() -> None:
    rig = Rig()
    await rig.trades(1.0, 2, 3)
    await rig.trades(2.0, 7, 8)
    [row] = await rig.gap_rows()
    assert bounds(row) == ("trades", "sequence", 1.0, 2.0)
    assert (row["seq_from"], row["seq_to"], row["rows_recovered"]) == (4, 6, 0)
    [recovery] = rig.recoveries
    assert (recovery.after_seq, recovery.upto_seq) == (3, 6)
    assert page_request(recovery, recovery.after_seq, 3.0) == BySeq(4, 6)

    # Repeated and late trades are neither gaps nor recoveries.
    await rig.trades(3.0, 8, 5, 7)
    await rig.trades(3.5, 9)
    assert len(await rig.gap_rows()) == 1
    assert len(rig.recoveries) == 1


async def test_a_broken_book_chain_in_the_real_capture_is_a_gap_until_the_next_snapshot() -> None:
    rig = Rig()
    capture = notifications()
    book = [(d, t) for c, d, t in capture if c == BOOK]
    dropped = book[2][0]
    for channel, data, at in capture:
        if data is not dropped:
            await rig.deliver(channel, data, at)

    [row] = await rig.gap_rows()
    # The change after the dropped one names it as its predecessor.
    after_drop = book[3][0]
    assert after_drop["prev_change_id"] == dropped["change_id"]
    assert bounds(row) == ("book", "sequence", book[1][1], None)
    assert (row["seq_from"], row["seq_to"]) == (book[1][0]["change_id"], dropped["change_id"])
    assert rig.resyncs == [BOOK]  # once: the later changes of the broken book wait quietly
    assert [g.instrument for g in rig.gaps.open_gaps()] == [INSTRUMENT]

    snapshot = dict(book[0][0], change_id=book[-1][0]["change_id"] + 1)
    await rig.deliver(BOOK, snapshot, book[-1][1] + 1.0)
    closed = (await rig.gap_rows())[-1]
    assert closed["gap_id"] == row["gap_id"]
    assert closed["gap_end"] == book[-1][1] + 1.0
    assert rig.gaps.open_gaps() == []


async def test_the_whole_capture_without_a_drop_has_no_gap() -> None:
    rig = Rig(stale_after={"ticker": 60.0})
    for channel, data, at in notifications():
        rig.gaps.sweep(at)
        await rig.deliver(channel, data, at)
    assert await rig.gap_rows() == []
    assert rig.resyncs == []


async def test_tickers_silent_past_the_threshold_in_the_capture_are_stale_until_they_speak() -> (
    None
):
    threshold = 8.0
    last: dict[str, float] = {}
    want: list[tuple[str, float, float]] = []
    for channel, data, at in notifications():
        if channel.startswith("ticker."):
            name = data["instrument_name"]
            if name in last and at - last[name] >= threshold:
                want.append((name, last[name], at))
            last[name] = at
    assert len(want) >= 3  # the capture has such silences: the test is not vacuous

    rig = Rig(stale_after={"ticker": threshold})
    for channel, data, at in notifications():
        rig.gaps.sweep(at)
        await rig.deliver(channel, data, at)

    rows = await rig.gap_rows()
    assert {r["reason"] for r in rows} == {"stale"}
    closed = [r for r in rows if r["gap_end"] is not None]
    assert sorted((r["instrument"], r["gap_start"], r["gap_end"]) for r in closed) == sorted(want)
    assert len(rows) == 2 * len(want)  # each opened once, then closed once
    assert rig.gaps.open_gaps() == []


async def test_a_stale_ticker_whose_session_then_drops_hands_over_to_the_disconnect_gap() -> None:
    rig = Rig(stale_after={"ticker": 5.0})
    rig.gaps.connected(CONN, SUBSCRIBED, 0.0)
    await rig.deliver(TICKER, ticker(1.0), 1.0)
    rig.gaps.sweep(10.0)
    assert rig.gaps.silent() == {"ticker": 1}

    rig.gaps.disconnected(CONN, SUBSCRIBED, "stale", 12.0)
    rig.gaps.connected(CONN, SUBSCRIBED, 15.0)
    await rig.deliver(TICKER, ticker(16.0), 16.0)

    rows = [r for r in await rig.gap_rows() if r["channel"] == "ticker"]
    stale = [r for r in rows if r["gap_id"] == rows[0]["gap_id"]]
    assert bounds(stale[-1]) == ("ticker", "stale", 1.0, 12.0)  # ends where the drop begins
    assert bounds(rows[-1]) == ("ticker", "stale", 12.0, 15.0)  # the session's own gap
    assert rig.gaps.open_gaps() == []
    assert rig.gaps.silent() == {}


async def test_channels_down_with_their_session_are_not_also_reported_stale() -> None:
    rig = Rig(stale_after={"ticker": 5.0})
    rig.gaps.connected(CONN, SUBSCRIBED, 0.0)
    rig.gaps.disconnected(CONN, SUBSCRIBED, "closed", 1.0)
    rig.gaps.sweep(100.0)
    assert {r["reason"] for r in await rig.gap_rows()} == {"disconnect"}


async def test_an_instrument_that_leaves_the_feed_closes_its_open_gaps() -> None:
    rig = Rig(stale_after={"ticker": 5.0})
    rig.gaps.connected(CONN, SUBSCRIBED, 0.0)
    await rig.deliver(TICKER, ticker(1.0), 1.0)
    book = [d for c, d, _ in notifications() if c == BOOK]
    await rig.deliver(BOOK, book[0], 1.0)
    await rig.deliver(BOOK, book[2], 2.0)  # skips book[1]: broken
    rig.gaps.sweep(10.0)
    assert len(rig.gaps.open_gaps()) == 2

    rig.clock.now = 30.0
    rig.gaps.forget(INSTRUMENT)
    rows = await rig.gap_rows()
    last = {r["gap_id"]: r for r in rows}
    assert sorted(bounds(r) for r in last.values()) == [
        ("book", "sequence", 1.0, 30.0),
        ("ticker", "stale", 1.0, 30.0),
    ]
    assert rig.gaps.open_gaps() == []
    assert rig.gaps.silent() == {}


async def test_a_restart_that_missed_nothing_writes_no_gap_and_one_that_did_writes_an_outage() -> (
    None
):
    rig = Rig()
    rig.gaps.restarted(INSTRUMENT, 100, 5.0, 60.0)
    rig.gaps.restarted("ETH-30JUL21-2800-C", 7, 6.0, 60.0)
    quiet, missed = rig.recoveries
    assert page_request(quiet, quiet.after_seq, 61.0) == BySeq(101, None)
    rig.gaps.recovered(quiet, 0, None)
    assert await rig.gap_rows() == []

    rig.gaps.recovered(missed, 3, (8, 10))
    [row] = await rig.gap_rows()
    assert bounds(row) == ("trades", "outage", 6.0, 60.0)
    assert (row["seq_from"], row["seq_to"], row["rows_recovered"]) == (8, 10, 3)
    assert rig.gaps.opened == 1

    # The seed makes the first live trade after a restart a gap if it skips.
    await rig.trades(61.0, 103)
    assert (await rig.gap_rows())[-1]["seq_from"] == 101


def test_only_market_data_channels_of_one_instrument_have_gaps() -> None:
    assert channel_key(TICKER) == (INSTRUMENT, "ticker")
    assert channel_key(channels.feed_channel("quote", INSTRUMENT)) == (INSTRUMENT, "quote")
    assert channel_key(BOOK) == (INSTRUMENT, "book")
    assert channel_key(TRADES) == (INSTRUMENT, "trades")
    assert channel_key(channels.PLATFORM_STATE) is None
    assert channel_key(channels.instrument_state("BTC")) is None
    assert channel_key("trades.option.BTC.100ms") is None
    assert channel_key("not a channel") is None


@pytest.mark.parametrize("turns", range(4))
async def test_the_gap_writer_stops_when_cancelled_in_the_turns_after_a_gap_is_queued(
    turns: int,
) -> None:
    rig = Rig()
    writer = asyncio.create_task(rig.gaps.run(rig.sink))
    try:
        await asyncio.sleep(0.01)  # waiting for gap rows
        rig.gaps.disconnected(CONN, SUBSCRIBED, "stale", 100.0)
        for _ in range(turns):
            await asyncio.sleep(0)  # one turn of the loop each
        writer.cancel()
        done, _ = await asyncio.wait({writer}, timeout=2)
        assert done, "the cancelled gap writer kept running"
        assert writer.cancelled()
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
