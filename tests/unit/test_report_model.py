"""The report's conclusions from facts: coverage of holes and breaks by gaps, verdicts, totals."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from optionfeed.report.model import (
    ALIVE_WITHIN,
    BookSpan,
    Break,
    Facts,
    Gap,
    GapSummary,
    Heartbeat,
    Hole,
    Span,
    TradeSpan,
    Verdict,
    build,
    collector_lines,
    covered_seconds,
    family_of,
    instrument_order,
    line_verdict,
    uncovered_count,
    unrecorded_breaks,
    unrecorded_trades,
    worst,
)
from optionfeed.report.window import Window

T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
WINDOW = Window(T0, T0 + timedelta(hours=1))
CALL = "ETH-28JUN24-3000-C"
PUT = "ETH-28JUN24-3500-P"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def gap(
    start: float,
    end: float | None,
    *,
    instrument: str | None = CALL,
    channel: str = "trades",
    reason: str = "sequence",
    seq: tuple[int, int] | None = None,
    recovered: int = 0,
    gap_id: str = "g",
) -> Gap:
    return Gap(
        gap_id=gap_id,
        feed="eth-top50",
        shard=0,
        instrument=instrument,
        channel=channel,
        start=at(start),
        end=None if end is None else at(end),
        reason=reason,
        seq_from=None if seq is None else seq[0],
        seq_to=None if seq is None else seq[1],
        rows_recovered=recovered,
    )


def test_channel_families_come_from_the_first_part_of_the_name() -> None:
    assert family_of("trades") == "trades"
    assert family_of(f"trades.{CALL}.100ms") == "trades"
    assert family_of("trades.option.ETH.100ms") == "trades"
    assert family_of(f"book.{CALL}.100ms") == "book"
    assert family_of("platform_state") is None
    assert family_of("connection") is None


def test_options_sort_by_expiry_and_strike_not_by_spelling() -> None:
    names = ["ETH-4JUL24-2000-C", "ETH-28JUN24-3500-P", "ETH-28JUN24-3500-C", "weird", CALL]
    assert sorted(names, key=instrument_order) == [
        CALL,
        "ETH-28JUN24-3500-C",
        "ETH-28JUN24-3500-P",
        "ETH-4JUL24-2000-C",
        "weird",
    ]


def test_covered_seconds_counts_overlapping_gaps_once_and_clips_to_the_window() -> None:
    intervals = [
        (at(-60), at(10)),  # starts before the window: 10 s inside
        (at(5), at(20)),  # overlaps the first: adds 10 s
        (at(100), at(101)),
        (at(3590), None),  # open: runs to now (window end here), 10 s
    ]
    assert covered_seconds(intervals, WINDOW, now=at(7200)) == 31.0
    # An open gap runs to "now" when now is inside the window.
    assert covered_seconds([(at(3590), None)], WINDOW, now=at(3595)) == 5.0
    assert covered_seconds([], WINDOW, now=at(0)) == 0.0


@pytest.mark.parametrize(
    ("low", "high", "ranges", "left"),
    [
        (10, 19, [], 10),
        (10, 19, [(10, 19)], 0),
        (10, 19, [(0, 12), (18, 30)], 5),
        (10, 19, [(12, 14), (13, 15)], 6),
        (10, 19, [(20, 30)], 10),
        (10, 9, [], 0),
    ],
)
def test_uncovered_count_subtracts_the_union_of_ranges(
    low: int, high: int, ranges: list[tuple[int, int]], left: int
) -> None:
    assert uncovered_count(low, high, ranges) == left


def test_a_hole_is_recorded_by_a_gap_of_its_sequence_numbers_or_of_its_time() -> None:
    # Trades 104..105 missing between trade 103 (t=103) and 106 (t=106).
    hole = Hole(103, 106, at(103), at(106))
    assert hole.size == 2
    assert unrecorded_trades([hole], []) == 2
    # By sequence, even at another time (gap bounds are the collector's clock).
    assert unrecorded_trades([hole], [gap(900, 901, seq=(104, 105))]) == 0
    # Partly by sequence: one of the two is left.
    assert unrecorded_trades([hole], [gap(900, 901, seq=(105, 120))]) == 1
    # By time: a disconnect overlapping the interval between the stored neighbours.
    assert unrecorded_trades([hole], [gap(104, 105, reason="disconnect")]) == 0
    # Within the slack of 2 s, but not beyond it.
    assert unrecorded_trades([hole], [gap(107.5, 110)]) == 0
    assert unrecorded_trades([hole], [gap(108.5, 110)]) == 2
    # An open gap that began before the hole covers it.
    assert unrecorded_trades([hole], [gap(50, None)]) == 0


def test_a_book_break_is_recorded_by_a_gap_over_its_time_or_its_change_ids() -> None:
    brk = Break(
        change_id=1005, prev_change_id=1003, stored_prev=1002, ts=at(40), stored_prev_ts=at(30)
    )
    assert unrecorded_breaks([brk], []) == 1
    assert unrecorded_breaks([brk], [gap(35, 36, channel="book")]) == 0
    assert unrecorded_breaks([brk], [gap(900, 901, channel="book", seq=(1003, 1003))]) == 0
    assert unrecorded_breaks([brk], [gap(900, 901, channel="book", seq=(1006, 1010))]) == 1


@pytest.mark.parametrize(
    ("channel", "rows", "missing", "unrecorded", "gaps", "verdict"),
    [
        ("ticker", 10, 0, 0, GapSummary(), Verdict.COMPLETE),
        ("trades", 10, 0, 0, GapSummary(count=1), Verdict.RECOVERED),
        ("ticker", 10, 0, 0, GapSummary(count=1), Verdict.GAPS_RECORDED),
        ("book", 10, 1, 0, GapSummary(count=1), Verdict.GAPS_RECORDED),
        ("trades", 10, 2, 0, GapSummary(count=1), Verdict.GAPS_RECORDED),
        ("trades", 0, 0, 0, GapSummary(), Verdict.NO_DATA),
        ("trades", 10, 0, 0, GapSummary(count=1, open=1), Verdict.GAP_OPEN),
        ("trades", 10, 2, 1, GapSummary(count=1, open=1), Verdict.UNRECORDED_LOSS),
    ],
)
def test_verdicts_put_loss_without_a_trace_above_everything(
    channel: str, rows: int, missing: int, unrecorded: int, gaps: GapSummary, verdict: Verdict
) -> None:
    assert line_verdict(channel, rows, missing=missing, unrecorded=unrecorded, gaps=gaps) is verdict


def test_the_worst_verdict_wins() -> None:
    assert worst([Verdict.COMPLETE, Verdict.GAP_OPEN, Verdict.RECOVERED]) is Verdict.GAP_OPEN
    assert worst([]) is Verdict.COMPLETE
    assert [v.label for v in Verdict][-1] == "unrecorded loss"


def heartbeat(feed: str, shard: int, pod: str, last_seen: datetime) -> Heartbeat:
    return Heartbeat(feed, shard, pod, last_seen - timedelta(hours=1), last_seen, "0.1.0", 50, 1)


def test_heartbeats_show_each_shards_pods_of_the_window_or_else_its_last_one() -> None:
    now = at(3600)
    beats = [
        heartbeat("eth", 0, "b", now - timedelta(seconds=5)),
        heartbeat("eth", 0, "a", now - timedelta(minutes=30)),
        heartbeat("eth", 0, "old", now - timedelta(hours=3)),  # before the window: hidden
        heartbeat("btc", 1, "x", now - timedelta(hours=2)),  # only one: shown although old
        heartbeat("btc", 1, "y", now - timedelta(hours=5)),
    ]
    lines = collector_lines(beats, WINDOW, now)
    shown = [(c.heartbeat.feed, c.heartbeat.pod, c.alive, c.age) for c in lines]
    assert shown == [
        ("btc", "x", False, 7200.0),
        ("eth", "a", False, 1800.0),
        ("eth", "b", True, 5.0),
    ]
    assert ALIVE_WITHIN == 60.0


def seeded_facts(**changes: Any) -> Facts:
    trades = TradeSpan(
        instrument=CALL,
        rows=11,
        first_ts=at(100),
        last_ts=at(113),
        first_seq=100,
        last_seq=113,
        distinct_seqs=11,
        holes=(Hole(103, 106, at(103), at(106)), Hole(109, 111, at(109), at(111))),
    )
    book = BookSpan(
        instrument=PUT,
        rows=7,
        first_ts=at(200),
        last_ts=at(260),
        snapshots=2,
        checked=5,
        breaks=(Break(1005, 1003, 1002, at(230), at(220)),),
    )
    facts = Facts(
        window=WINDOW,
        taken_at=at(4000),
        tickers=(Span(CALL, 5, at(1), at(50)), Span(PUT, 3, at(1), at(2))),
        quotes=(Span(CALL, 4, at(1), at(50)),),
        trades=(trades,),
        books=(book,),
        gaps=(
            gap(103.5, 105.5, seq=(104, 105), gap_id="g1"),
            gap(225, 226, instrument=PUT, channel=f"book.{PUT}.100ms", gap_id="g2"),
            gap(300, None, instrument=PUT, channel="ticker", reason="stale", gap_id="g3"),
            gap(
                1800,
                1830,
                instrument=None,
                channel="connection",
                reason="disconnect",
                gap_id="g4",
                recovered=3,
            ),
            gap(
                10,
                20,
                instrument="ETH-28JUN24-4000-C",
                channel="trades",
                reason="disconnect",
                gap_id="g5",
                recovered=2,
            ),
        ),
        rejected=4,
    )
    return replace(facts, **changes)


def test_build_reports_every_instrument_and_channel_with_its_figures() -> None:
    report = build(seeded_facts())
    table = [(line.instrument, line.channel, line.rows, line.verdict) for line in report.lines]
    assert table == [
        (CALL, "ticker", 5, Verdict.COMPLETE),
        (CALL, "quote", 4, Verdict.COMPLETE),
        (CALL, "trades", 11, Verdict.UNRECORDED_LOSS),
        (PUT, "ticker", 3, Verdict.GAP_OPEN),
        (PUT, "book", 7, Verdict.GAPS_RECORDED),
        ("ETH-28JUN24-4000-C", "trades", 0, Verdict.NO_DATA),
    ]
    trades = report.lines[2]
    assert trades.sequence is not None
    assert (trades.sequence.expected, trades.sequence.seen, trades.sequence.missing) == (14, 11, 3)
    assert (trades.sequence.holes, trades.sequence.unrecorded) == (2, 1)
    assert trades.gaps == GapSummary(1, 0, 2.0, 0, ("sequence",))
    book = report.lines[4]
    assert book.chain is not None
    assert (book.chain.checked, book.chain.snapshots, book.chain.breaks) == (5, 2, 1)
    assert book.chain.unrecorded == 0
    # The stale ticker gap is open: it runs to the end of the window (now is past it).
    assert report.lines[3].gaps == GapSummary(1, 1, 3300.0, 0, ("stale",))
    assert [g.gap_id for g in report.connection_gaps] == ["g4"]
    t = report.totals
    assert t.rows == {
        "option_tickers": 8,
        "option_quotes": 4,
        "option_trades": 11,
        "option_book": 7,
    }
    assert (t.instruments, t.gaps, t.open_gaps, t.rows_recovered) == (2, 5, 1, 5)
    assert (t.missing_trades, t.book_breaks, t.unrecorded, t.rejected) == (3, 1, 1, 4)
    assert report.verdict is Verdict.UNRECORDED_LOSS


def test_a_gap_of_a_whole_connection_accounts_for_the_holes_it_spans() -> None:
    facts = seeded_facts()
    connection = gap(108, 112, instrument=None, channel="connection", reason="disconnect")
    report = build(replace(facts, gaps=(*facts.gaps, connection)))
    trades = report.lines[2]
    assert trades.sequence is not None
    assert trades.sequence.unrecorded == 0
    assert trades.verdict is Verdict.GAPS_RECORDED
    # It is listed with the connection gaps, not counted on the instrument's line.
    assert trades.gaps.count == 1
    assert report.verdict is Verdict.GAP_OPEN


def test_a_gap_naming_no_family_counts_on_every_line_of_its_instrument() -> None:
    facts = seeded_facts(
        gaps=(gap(10, 20, instrument=PUT, channel="connection", reason="disconnect"),)
    )
    report = build(facts)
    put_lines = [line for line in report.lines if line.instrument == PUT]
    assert [(line.channel, line.gaps.count) for line in put_lines] == [("ticker", 1), ("book", 1)]
    # An instrument with nothing but such a gap gets one line under the gap's channel name.
    lonely = build(seeded_facts(gaps=(gap(10, 20, instrument="X", channel="connection"),)))
    assert [(line.instrument, line.channel) for line in lonely.lines][-1] == ("X", "connection")


def test_instruments_asked_for_by_name_with_nothing_stored_say_no_data() -> None:
    report = build(Facts(window=WINDOW, taken_at=at(4000), instruments=("ETH-28JUN24-9000-C",)))
    assert [(line.instrument, line.channel, line.verdict) for line in report.lines] == [
        ("ETH-28JUN24-9000-C", "-", Verdict.NO_DATA)
    ]
    assert report.verdict is Verdict.NO_DATA


def test_an_empty_window_has_no_data_and_a_quiet_one_is_complete() -> None:
    assert build(Facts(window=WINDOW, taken_at=at(4000))).verdict is Verdict.NO_DATA
    quiet = Facts(window=WINDOW, taken_at=at(4000), tickers=(Span(CALL, 1, at(1), at(1)),))
    assert build(quiet).verdict is Verdict.COMPLETE
