"""The decisions of trade backfill, from plain values: which page to ask for, where paging
stops, which stored trades count as recovered (the requests themselves are integration-tested)."""

from __future__ import annotations

from typing import Any

import pytest

from harness.capture import TRADE
from optionfeed.collector.gaps import Gap, TradeRecovery
from optionfeed.collector.normalize import split_trades
from optionfeed.collector.trade_pages import (
    BY_SEQ,
    BY_TIME,
    PAGE,
    BySeq,
    ByTime,
    page_of,
    page_request,
    recovered,
    resume_after,
    rows_after,
)
from optionfeed.deribit.errors import ProtocolError
from optionfeed.store import tables

RECV = 1_626_993_723.804855
SEQ = tables.index_of(tables.TRADES, "trade_seq")


def trade(seq: int) -> dict[str, Any]:
    return dict(TRADE, trade_seq=seq, trade_id=str(48079000 + seq))


def recovery(
    after: int | None,
    upto: int | None = None,
    first_live: int | None = None,
    *,
    start: float = 100.25,
    end: float | None = 107.5,
) -> TradeRecovery:
    gap = Gap("trades", TRADE["instrument_name"], start, "disconnect", end=end)
    return TradeRecovery(TRADE["instrument_name"], gap, after, upto, first_live)


def test_a_known_sequence_number_pages_by_sequence_from_the_next_one() -> None:
    assert page_request(recovery(41), 41, 0.0) == BySeq(42, None, PAGE)
    assert page_request(recovery(41, 56), 41, 0.0) == BySeq(42, 56, PAGE)
    assert page_request(recovery(41, 56), 1041, 0.0) == BySeq(1042, 56, PAGE)  # the next page
    assert BySeq.method == BY_SEQ


def test_without_a_sequence_number_the_gap_is_asked_for_by_time_its_last_millisecond_included() -> (
    None
):
    assert page_request(recovery(None), None, 0.0) == ByTime(100_250, 107_501, PAGE)
    assert page_request(recovery(None, end=None), None, 200.0) == ByTime(100_250, 200_001, PAGE)
    assert ByTime.method == BY_TIME


def test_a_page_answer_is_its_trades_and_whether_more_follow() -> None:
    assert page_of(BY_SEQ, {"trades": [TRADE], "has_more": True}) == ([TRADE], True)
    assert page_of(BY_SEQ, {"trades": []}) == ([], False)
    for answer in ([TRADE], {"trades": None}, {"result": []}, None):
        with pytest.raises(ProtocolError, match=BY_SEQ):
            page_of(BY_SEQ, answer)


def test_only_trades_past_the_resume_point_are_stored_in_sequence_order() -> None:
    rows, bad = split_trades([trade(s) for s in (45, 41, 43, 44, 42)], RECV)
    assert bad == []
    assert [row[SEQ] for row in rows_after(rows, 42)] == [43, 44, 45]
    assert [row[SEQ] for row in rows_after(rows, None)] == [41, 42, 43, 44, 45]


def test_paging_resumes_after_the_highest_seq_even_of_a_malformed_trade_and_stops_if_stuck() -> (
    None
):
    malformed = dict(trade(47), amount="3")
    page = [trade(45), malformed, trade(46), {"trade_seq": True}, "junk"]
    assert resume_after(page, 44) == 47
    assert resume_after(page, None) == 47
    assert resume_after([], 44) is None  # nothing more
    assert resume_after([trade(40), trade(44)], 44) is None  # does not move on: stop, not loop
    assert resume_after([{"trade_seq": "50"}], 44) is None


def test_a_disconnect_counts_only_trades_before_the_first_live_one() -> None:
    done = recovery(41, upto=56, first_live=57)
    assert recovered(list(range(42, 60)), done) == (15, (42, 56))
    # upto unknown yet: the first live trade still bounds what was missed
    assert recovered(list(range(42, 60)), recovery(41, first_live=50)) == (8, (42, 49))
    assert recovered([40, 41], done) == (0, None)


def test_a_sequence_gap_counts_only_its_own_range_and_a_restart_everything_after_the_seed() -> None:
    assert recovered([4, 5, 6, 7], recovery(3, upto=6)) == (3, (4, 6))
    assert recovered([101, 102, 250], recovery(100)) == (3, (101, 250))
    assert recovered([], recovery(100)) == (0, None)


def test_paging_a_long_gap_walks_the_ledger_once_in_pages() -> None:
    """The decisions chained the way the backfiller chains them, over a ledger of 2,500 trades."""
    ledger = [trade(seq) for seq in range(1, 2501)]
    wanted = recovery(100, upto=2300, first_live=2301)
    stored: list[int] = []
    asked: list[BySeq | ByTime] = []
    after = wanted.after_seq
    while True:
        request = page_request(wanted, after, 0.0)
        assert isinstance(request, BySeq)
        asked.append(request)
        chosen = [t for t in ledger if request.start_seq <= t["trade_seq"]]
        chosen = [t for t in chosen if request.end_seq is None or t["trade_seq"] <= request.end_seq]
        page, has_more = page_of(
            request.method, {"trades": chosen[: request.count], "has_more": len(chosen) > PAGE}
        )
        rows, _ = split_trades(page, RECV)
        stored += [row[SEQ] for row in rows_after(rows, after)]
        last = resume_after(page, after)
        if last is None:
            break
        after = last
        if not has_more:
            break
    assert [r.start_seq for r in asked if isinstance(r, BySeq)] == [101, 1101, 2101]
    assert stored == list(range(101, 2301))
    assert recovered(stored, wanted) == (2200, (101, 2300))
