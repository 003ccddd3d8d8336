"""Deribit payloads to rows: the real 2021 capture field for field, the quirks, and bad input."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from harness.capture import DATA, TRADE, capture, ticker_expectation
from optionfeed.collector import normalize
from optionfeed.collector.normalize import NormalizeError
from optionfeed.store import tables
from optionfeed.store.tables import Row, Table

RECV = 1_626_993_723.804855

# docs/deribit-protocol.md §6.1: an expired option (tardis-node test data, real 2020).
EXPIRED_TICKER: dict[str, Any] = {
    "underlying_price": 9724.48,
    "underlying_index": "SYN.BTC-8JUN20",
    "timestamp": 1591603200048,
    "stats": {"volume": 2.5, "price_change": 0.0, "low": 0.0005, "high": 0.0005},
    "state": "closed",
    "open_interest": 0.0,
    "min_price": 0.0001,
    "max_price": 0.015,
    "mark_price": 0.0,
    "mark_iv": 70.0,
    "last_price": 0.0005,
    "interest_rate": 0.0,
    "instrument_name": "BTC-8JUN20-8750-P",
    "index_price": 9729.25,
    "greeks": {"vega": 0.0, "theta": 0.0, "rho": 0.0, "gamma": 0.0, "delta": 0.0},
    "estimated_delivery_price": "expired",
    "delivery_price": 9728.65,
    "bid_iv": 0.0,
    "best_bid_price": 0.0,
    "best_bid_amount": 0.0,
    "best_ask_price": 0.0,
    "best_ask_amount": 0.0,
    "ask_iv": 500.0,
}


def as_dict(table: Table, row: Row) -> dict[str, Any]:
    assert len(row) == table.width
    return dict(zip(table.column_names, row, strict=True))


def assert_ticker_row_matches(data: dict[str, Any], row: Row) -> None:
    got = as_dict(tables.TICKERS, row)
    want = ticker_expectation(data)
    for column, value in want.items():
        assert got[column] == value, column
        assert type(got[column]) is type(value), column
    for column, value in got.items():
        if column not in want and column not in ("recv_ts", "expired"):
            assert value is None, f"{column} should be NULL: Deribit did not send it"
    assert got["expired"] is want.get("expired", False)
    assert got["recv_ts"] == RECV


def test_every_ticker_of_the_real_capture_maps_field_for_field() -> None:
    tickers = capture("ticker")
    assert len(tickers) == 89
    for data in tickers:
        assert len(data) == 23
        row = normalize.ticker_row(data, RECV)
        assert_ticker_row_matches(data, row)
        assert as_dict(tables.TICKERS, row)["extra"] is None


def test_an_expired_ticker_keeps_its_number_fields_and_the_fact_it_expired() -> None:
    row = as_dict(tables.TICKERS, normalize.ticker_row(EXPIRED_TICKER, RECV))
    assert_ticker_row_matches(EXPIRED_TICKER, normalize.ticker_row(EXPIRED_TICKER, RECV))
    assert row["expired"] is True
    assert row["estimated_delivery_price"] is None
    assert row["delivery_price"] == 9728.65
    assert row["state"] == "closed"
    assert row["underlying_index"] == "SYN.BTC-8JUN20"


def test_empty_book_sides_are_stored_as_sent_zero_or_null() -> None:
    zeros = as_dict(tables.TICKERS, normalize.ticker_row(EXPIRED_TICKER, RECV))
    assert (zeros["best_bid_price"], zeros["best_bid_amount"], zeros["bid_iv"]) == (0.0, 0.0, 0.0)
    nulls = dict(EXPIRED_TICKER, best_bid_price=None, best_bid_amount=None, bid_iv=None)
    row = as_dict(tables.TICKERS, normalize.ticker_row(nulls, RECV))
    assert (row["best_bid_price"], row["best_bid_amount"], row["bid_iv"]) == (None, None, None)


def test_null_last_price_and_null_stats_values_become_nulls() -> None:
    data = dict(
        capture("ticker")[0],
        last_price=None,
        stats={"volume": None, "low": None, "high": None, "price_change": None},
    )
    row = normalize.ticker_row(data, RECV)
    assert_ticker_row_matches(data, row)
    got = as_dict(tables.TICKERS, row)
    assert got["last_price"] is None
    assert got["stats_volume"] is None
    assert got["stats_high"] is None


def test_newer_stats_fields_are_kept_and_missing_optional_fields_are_null() -> None:
    data = copy.deepcopy(capture("ticker")[0])
    data["stats"]["volume_usd"] = 1234.5
    data["stats"]["volume_notional"] = 99.0
    del data["greeks"], data["bid_iv"], data["underlying_price"], data["settlement_price"]
    row = normalize.ticker_row(data, RECV)
    assert_ticker_row_matches(data, row)
    got = as_dict(tables.TICKERS, row)
    assert (got["stats_volume_usd"], got["stats_volume_notional"]) == (1234.5, 99.0)
    assert got["delta"] is None
    assert got["bid_iv"] is None
    assert got["settlement_price"] is None


def test_fields_without_a_column_are_kept_in_extra() -> None:
    data = copy.deepcopy(capture("ticker")[0])
    data["current_funding"] = 0.0001
    data["stats"]["volume_future"] = 5.0
    data["greeks"]["vanna"] = 0.1
    got = as_dict(tables.TICKERS, normalize.ticker_row(data, RECV))
    assert orjson.loads(got["extra"]) == {
        "current_funding": 0.0001,
        "stats": {"volume_future": 5.0},
        "greeks": {"vanna": 0.1},
    }
    assert got["delta"] == data["greeks"]["delta"]


@pytest.mark.parametrize(
    ("change", "reason", "mentions"),
    [
        ({"mark_price": "0.5"}, "wrong_type", "mark_price"),
        ({"best_bid_price": True}, "wrong_type", "best_bid_price"),
        ({"open_interest": [1]}, "wrong_type", "open_interest"),
        ({"timestamp": "1626993723632"}, "wrong_type", "timestamp"),
        ({"timestamp": 1626993723.632}, "wrong_type", "timestamp"),
        ({"timestamp": 12}, "bad_value", "out of range"),
        ({"instrument_name": 7}, "wrong_type", "instrument_name"),
        ({"instrument_name": "BTC\x00X"}, "bad_value", "instrument_name"),
        ({"state": 1}, "wrong_type", "state"),
        ({"underlying_index": 2003.6}, "wrong_type", "underlying_index"),
        ({"estimated_delivery_price": "soon"}, "bad_value", "estimated_delivery_price"),
        ({"greeks": [1, 2]}, "wrong_type", "greeks"),
        ({"stats": "none"}, "wrong_type", "stats"),
        ({"extra_field": "a\x00b"}, "bad_value", "NUL"),
    ],
)
def test_a_malformed_ticker_raises_a_specific_error(
    change: dict[str, Any], reason: str, mentions: str
) -> None:
    data = dict(capture("ticker")[0], **change)
    with pytest.raises(NormalizeError) as info:
        normalize.ticker_row(data, RECV)
    assert info.value.reason == reason
    assert mentions in info.value.detail


def test_greek_of_the_wrong_type_is_named() -> None:
    data = copy.deepcopy(capture("ticker")[0])
    data["greeks"]["vega"] = "high"
    with pytest.raises(NormalizeError, match=r"greeks\.vega is str"):
        normalize.ticker_row(data, RECV)


@pytest.mark.parametrize("field", ["instrument_name", "timestamp", "mark_price", "stats", "state"])
def test_a_ticker_without_a_required_field_is_rejected(field: str) -> None:
    data = dict(capture("ticker")[0])
    del data[field]
    with pytest.raises(NormalizeError) as info:
        normalize.ticker_row(data, RECV)
    assert info.value.reason == "missing_field"
    assert repr(field) in info.value.detail


def test_a_payload_that_is_not_an_object_is_rejected() -> None:
    for build in (normalize.ticker_row, normalize.book_row, normalize.quote_row):
        with pytest.raises(NormalizeError) as info:
            build([1, 2, 3], RECV)
        assert info.value.reason == "wrong_type"


def test_book_messages_of_the_real_capture_keep_ids_type_and_levels() -> None:
    books = capture("book")
    assert len(books) == 46
    for data in books:
        got = as_dict(tables.BOOK, normalize.book_row(data, RECV))
        assert got["instrument"] == data["instrument_name"]
        assert got["ts"] == data["timestamp"]
        assert got["change_id"] == data["change_id"]
        assert got["prev_change_id"] == data.get("prev_change_id")
        assert got["type"] == data["type"]
        assert orjson.loads(got["bids"]) == data["bids"]
        assert orjson.loads(got["asks"]) == data["asks"]
        assert got["extra"] is None
    snapshots = [b for b in books if b["type"] == "snapshot"]
    assert len(snapshots) == 10
    assert all(
        as_dict(tables.BOOK, normalize.book_row(s, RECV))["prev_change_id"] is None
        for s in snapshots
    )


def test_grouped_book_levels_and_empty_sides_are_accepted() -> None:
    data = {
        "instrument_name": "BTC-PERPETUAL",
        "timestamp": 1765541767174,
        "change_id": 5,
        "bids": [[92288.0, 133440.0]],
        "asks": [],
    }
    got = as_dict(tables.BOOK, normalize.book_row(data, RECV))
    assert orjson.loads(got["bids"]) == [[92288.0, 133440.0]]
    assert got["asks"] == b"[]"
    assert got["type"] is None
    assert got["prev_change_id"] is None


@pytest.mark.parametrize(
    "bids",
    [
        [["add", 1.0, 2.0]],
        [[1.0]],
        [["new", "1.0", 2.0]],
        "none",
        [[["new"], 1.0, 2.0]],
        [["new", 1.0, 2**70]],
    ],
)
def test_malformed_book_levels_are_rejected(bids: Any) -> None:
    data = dict(capture("book")[0], bids=bids)
    with pytest.raises(NormalizeError):
        normalize.book_row(data, RECV)


def test_book_change_ids_must_be_integers() -> None:
    with pytest.raises(NormalizeError, match="change_id"):
        normalize.book_row(dict(capture("book")[0], change_id="13169025645"), RECV)
    with pytest.raises(NormalizeError, match="out of range"):
        normalize.book_row(dict(capture("book")[0], change_id=2**64), RECV)


def test_a_trade_keeps_its_id_sequence_and_every_field() -> None:
    got = as_dict(tables.TRADES, normalize.trade_row(TRADE, RECV))
    for key, value in TRADE.items():
        column = {"instrument_name": "instrument", "timestamp": "ts"}.get(key, key)
        assert got[column] == value, key
    assert got["contracts"] is None
    assert got["liquidation"] is None
    assert got["extra"] is None


def test_rare_trade_fields_ids_and_unknown_fields() -> None:
    trade = dict(
        TRADE,
        contracts=3.0,
        liquidation="T",
        block_trade_id="154",
        block_trade_leg_count=2,
        combo_id="BTC-CS-19MAY26-70000_75000",
        combo_trade_id=244365193,  # the docs type it as a number; real data has strings
        block_rfq_id=77,
        legs=[{"instrument_name": "BTC-19MAY26-70000-C", "amount": 1}],
    )
    got = as_dict(tables.TRADES, normalize.trade_row(trade, RECV))
    assert got["liquidation"] == "T"
    assert got["block_trade_id"] == "154"
    assert got["block_trade_leg_count"] == 2
    assert got["combo_trade_id"] == "244365193"
    assert got["block_rfq_id"] == 77
    assert orjson.loads(got["extra"]) == {"legs": trade["legs"]}


def test_trades_data_is_an_array_and_each_element_is_checked() -> None:
    rows = normalize.trade_rows([TRADE, dict(TRADE, trade_id="48079290", trade_seq=3)], RECV)
    assert [as_dict(tables.TRADES, r)["trade_seq"] for r in rows] == [2, 3]
    with pytest.raises(NormalizeError, match="array"):
        normalize.trade_rows(TRADE, RECV)
    with pytest.raises(NormalizeError, match="trade_seq"):
        normalize.trade_rows([TRADE, {k: v for k, v in TRADE.items() if k != "trade_seq"}], RECV)


def test_split_trades_keeps_the_good_trades_and_names_each_bad_one_with_its_position() -> None:
    second = dict(TRADE, trade_id="48079290", trade_seq=3, amount="2.0")
    fourth = {k: v for k, v in TRADE.items() if k != "trade_seq"}
    good = [TRADE, dict(TRADE, trade_id="48079291", trade_seq=4)]
    rows, bad = normalize.split_trades([good[0], second, good[1], fourth], RECV)
    assert rows == normalize.trade_rows(good, RECV)
    assert [(b.position, b.value, b.error.reason) for b in bad] == [
        (1, second, "wrong_type"),
        (3, fourth, "missing_field"),
    ]
    assert "amount is str" in bad[0].error.detail


def test_split_trades_of_well_formed_trades_is_trade_rows() -> None:
    trades = [TRADE, dict(TRADE, trade_id="48079290", trade_seq=3)]
    assert normalize.split_trades(trades, RECV) == (normalize.trade_rows(trades, RECV), [])
    assert normalize.split_trades([], RECV) == ([], [])
    with pytest.raises(NormalizeError, match="array"):
        normalize.split_trades(TRADE, RECV)


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"trade_id": 48079289}, "trade_id"),
        ({"trade_seq": "2"}, "trade_seq"),
        ({"direction": "up"}, "direction"),
        ({"direction": ["buy"]}, "direction"),
        ({"price": None, "amount": "3"}, "amount"),
        ({"tick_direction": 2.0}, "tick_direction"),
    ],
)
def test_a_malformed_trade_raises(change: dict[str, Any], mentions: str) -> None:
    with pytest.raises(NormalizeError, match=mentions):
        normalize.trade_row(dict(TRADE, **change), RECV)


def test_quote_row() -> None:
    data = {
        "timestamp": 1765541767174,
        "instrument_name": "BTC-PERPETUAL",
        "best_ask_price": 92288.5,
        "best_bid_price": None,
        "best_ask_amount": 99470.0,
        "best_bid_amount": None,
    }
    got = as_dict(tables.QUOTES, normalize.quote_row(data, RECV))
    assert got == {
        "instrument": "BTC-PERPETUAL",
        "ts": 1765541767174,
        "recv_ts": RECV,
        "best_bid_price": None,
        "best_bid_amount": None,
        "best_ask_price": 92288.5,
        "best_ask_amount": 99470.0,
        "extra": None,
    }
    with pytest.raises(NormalizeError, match="best_ask_amount"):
        normalize.quote_row({k: v for k, v in data.items() if k != "best_ask_amount"}, RECV)


def rest_instruments() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for line in (DATA / "rest-get_instruments-2021-2022.txt").read_text().splitlines():
        if line.startswith("configuration:"):
            continue  # the capture tool's own settings, not a response
        found.extend(orjson.loads(line.split(": ", 1)[1])["result"])
    return found


def test_every_instrument_of_the_real_listings_maps_field_for_field() -> None:
    listed = rest_instruments()
    assert len(listed) == 1017
    renamed = {"instrument_name": "instrument"}
    for data in listed:
        got = as_dict(tables.INSTRUMENTS, normalize.instrument_row(data, RECV))
        extra = orjson.loads(got["extra"]) if got["extra"] is not None else {}
        for key, value in data.items():
            column = renamed.get(key, key)
            if column in got:
                stored = got[column]
                if column == "tick_size_steps":
                    stored = orjson.loads(stored)
                assert stored == value, key
            else:
                assert extra[key] == value, key
        assert got["first_seen"] == got["last_seen"] == RECV
        assert got["expired_at"] is None
    sol = [d for d in listed if "future_type" in d]
    assert sol, "the USDC listing carries a field without a column"
    expired = as_dict(tables.INSTRUMENTS, normalize.instrument_row(listed[0], RECV, expired=True))
    assert expired["expired_at"] == RECV


def test_normalize_dispatches_on_the_channel_family() -> None:
    table, rows = normalize.normalize("ticker.ETH-30JUL21-2800-C.100ms", capture("ticker")[0], RECV)
    assert table is tables.TICKERS
    assert len(rows) == 1
    table, rows = normalize.normalize("trades.option.BTC.100ms", [TRADE, TRADE], RECV)
    assert table is tables.TRADES
    assert len(rows) == 2
    table, rows = normalize.normalize("book.ETH-30JUL21-2800-C.100ms", capture("book")[0], RECV)
    assert table is tables.BOOK
    with pytest.raises(NormalizeError) as info:
        normalize.normalize("platform_state", {"maintenance": True}, RECV)
    assert info.value.reason == "unknown_channel"


def test_every_builder_follows_its_tables_column_order() -> None:
    assert len(normalize.ticker_row(capture("ticker")[0], RECV)) == tables.TICKERS.width
    assert len(normalize.trade_row(TRADE, RECV)) == tables.TRADES.width
    assert len(normalize.book_row(capture("book")[0], RECV)) == tables.BOOK.width
    assert len(normalize.instrument_row(rest_instruments()[0], RECV)) == tables.INSTRUMENTS.width
