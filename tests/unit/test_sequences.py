from optionfeed.collector.sequences import BookChains, SequenceGap, Staleness, TradeSequences


def test_a_trade_seq_jump_is_a_gap_with_exact_bounds() -> None:
    seqs = TradeSequences()
    assert seqs.observe("X", 10) is None
    assert seqs.observe("X", 11) is None
    assert seqs.observe("X", 15) == SequenceGap("X", 12, 14)
    assert SequenceGap("X", 12, 14).size == 3


def test_repeated_and_old_trades_are_not_gaps_and_do_not_move_the_mark() -> None:
    seqs = TradeSequences()
    seqs.observe("X", 10)
    assert seqs.observe("X", 10) is None
    assert seqs.observe("X", 7) is None
    assert seqs.observe("X", 11) is None


def test_a_seed_from_the_database_reveals_the_gap_of_a_restart() -> None:
    seqs = TradeSequences()
    seqs.seed("X", 100)
    assert seqs.observe("X", 105) == SequenceGap("X", 101, 104)


def test_instruments_are_tracked_independently() -> None:
    seqs = TradeSequences()
    seqs.observe("A", 1)
    seqs.observe("B", 50)
    assert seqs.observe("A", 2) is None
    assert seqs.observe("B", 52) == SequenceGap("B", 51, 51)


def test_a_broken_book_chain_is_reported_once_until_a_snapshot_arrives() -> None:
    books = BookChains()
    assert books.observe("X", "snapshot", 100, None) is None
    assert books.observe("X", "change", 105, 100) is None
    broken = books.observe("X", "change", 120, 110)
    assert broken is not None
    assert (broken.expected_prev, broken.got_prev, broken.change_id) == (105, 110, 120)
    assert books.observe("X", "change", 130, 125) is None  # still waiting for the snapshot
    assert books.observe("X", "snapshot", 200, None) is None
    assert books.observe("X", "change", 201, 200) is None
    assert books.observe("X", "change", 203, 202) is not None


def test_a_change_before_any_snapshot_asks_for_one() -> None:
    books = BookChains()
    assert books.observe("X", "change", 5, 4) is not None


def test_a_silent_ticker_goes_stale_once_and_the_span_closes_when_it_speaks() -> None:
    stale = Staleness({"ticker": 30.0})
    stale.seen("X", "ticker", 100.0)
    stale.seen("Y", "ticker", 100.0)
    assert stale.sweep(120.0) == []
    stale.seen("Y", "ticker", 125.0)
    spans = stale.sweep(131.0)
    assert [(s.instrument, s.since) for s in spans] == [("X", 100.0)]
    # At 200 only Y is newly stale (silent since 125); X is not reported a second time.
    assert [(s.instrument, s.since) for s in stale.sweep(200.0)] == [("Y", 125.0)]
    ended = stale.seen("X", "ticker", 210.0)
    assert ended is not None
    assert (ended.instrument, ended.since) == ("X", 100.0)
    assert stale.seen("X", "ticker", 211.0) is None


def test_channels_without_a_threshold_never_go_stale() -> None:
    stale = Staleness({"ticker": 30.0})
    stale.seen("X", "trades", 0.0)
    assert stale.sweep(10_000.0) == []


def test_expected_trades_count_every_sequence_number_advanced_through_gaps_included() -> None:
    trades = TradeSequences()
    assert trades.expected() == 0
    trades.observe("X", 10)  # the first trade seen counts as one expected
    trades.observe("X", 11)
    trades.observe("X", 15)  # 12..14 missed: still expected
    trades.observe("X", 13)  # old: ignored
    trades.observe("Y", 1)
    assert trades.expected() == 6 + 1


def test_expected_trades_after_a_restart_start_at_the_last_one_stored() -> None:
    trades = TradeSequences()
    trades.seed("X", 100)  # stored before the restart: not expected again
    assert trades.expected() == 0
    trades.observe("X", 104)
    assert trades.expected() == 4


def test_a_forgotten_instrument_keeps_its_expected_count() -> None:
    trades = TradeSequences()
    trades.observe("X", 1)
    trades.observe("X", 3)
    trades.forget("X")
    assert trades.expected() == 3
    trades.observe("X", 50)  # followed again: a new span
    assert trades.expected() == 4
