"""The real 2021 capture, normalised and written, read back from PostgreSQL field for field."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from harness.capture import notifications, ticker_expectation
from optionfeed.collector import normalize
from optionfeed.store import tables
from optionfeed.store.writer import Writer
from optionfeed.telemetry.metrics import Metrics

DATA = Path(__file__).resolve().parents[1] / "data" / "deribit"

# docs/deribit-protocol.md §6.1: an expired option (tardis-node test data, real 2020).
EXPIRED_TICKER = orjson.loads(
    b'{"underlying_price":9724.48,"underlying_index":"SYN.BTC-8JUN20","timestamp":1591603200048,'
    b'"stats":{"volume":2.5,"price_change":0.0,"low":0.0005,"high":0.0005},"state":"closed",'
    b'"open_interest":0.0,"min_price":0.0001,"max_price":0.015,"mark_price":0.0,"mark_iv":70.0,'
    b'"last_price":0.0005,"interest_rate":0.0,"instrument_name":"BTC-8JUN20-8750-P",'
    b'"index_price":9729.25,"greeks":{"vega":0.0,"theta":0.0,"rho":0.0,"gamma":0.0,"delta":0.0},'
    b'"estimated_delivery_price":"expired","delivery_price":9728.65,"bid_iv":0.0,'
    b'"best_bid_price":0.0,"best_bid_amount":0.0,"best_ask_price":0.0,"best_ask_amount":0.0,'
    b'"ask_iv":500.0}'
)

# Every column read back, timestamps as exact epoch numbers.
SELECT_TICKERS = """
SELECT *, (extract(epoch FROM ts) * 1000)::bigint AS ts_ms,
       extract(epoch FROM recv_ts)::float8 AS recv_s
FROM option_tickers ORDER BY instrument, ts
"""


async def test_the_capture_lands_field_for_field(database_url: str) -> None:
    messages = notifications()
    async with Writer.connect(database_url, metrics=Metrics()) as writer:
        for channel, data, recv in messages:
            table, rows = normalize.normalize(channel, data, recv)
            await writer.put_many(table, rows)
        await writer.put(tables.TICKERS, normalize.ticker_row(EXPIRED_TICKER, time.time()))

    tickers = [(d, r) for c, d, r in messages if c.startswith("ticker.")] + [(EXPIRED_TICKER, 0.0)]
    books = [(d, r) for c, d, r in messages if c.startswith("book.")]
    assert (len(tickers), len(books)) == (90, 46)

    connection = await asyncpg.connect(database_url)
    try:
        stored = {
            (r["instrument"], r["ts_ms"]): dict(r) for r in await connection.fetch(SELECT_TICKERS)
        }
        stored_books = {
            (r["instrument"], r["change_id"]): dict(r)
            for r in await connection.fetch(
                "SELECT *, (extract(epoch FROM ts) * 1000)::bigint AS ts_ms, "
                "extract(epoch FROM recv_ts)::float8 AS recv_s "
                "FROM option_book"
            )
        }
    finally:
        await connection.close()

    assert len(stored) == len(tickers)
    checked = 0
    for data, recv in tickers:
        row = stored[(data["instrument_name"], data["timestamp"])]
        want = ticker_expectation(data, ts_column="ts_ms")
        for column, value in want.items():
            assert row[column] == value, (data["instrument_name"], column)
            checked += 1
        for column in tables.TICKERS.column_names:
            if column not in want and column not in ("ts", "recv_ts", "expired"):
                assert row[column] is None, column
        assert row["expired"] is want.get("expired", False)
        if recv:
            assert abs(row["recv_s"] - recv) < 1e-6
    # Every key of every message: 23 keys, greeks and stats opened up, per capture ticker.
    assert checked >= 89 * (23 - 2 + 5 + 4)

    assert len(stored_books) == len(books)
    for data, recv in books:
        row = stored_books[(data["instrument_name"], data["change_id"])]
        assert row["ts_ms"] == data["timestamp"]
        assert row["prev_change_id"] == data.get("prev_change_id")
        assert row["type"] == data["type"]
        # jsonb keeps the numbers as sent (4714.0 stays 4714.0), actions as strings.
        assert orjson.loads(row["bids"]) == data["bids"]
        assert orjson.loads(row["asks"]) == data["asks"]
        assert abs(row["recv_s"] - recv) < 1e-6

    # The quirks, as stored.
    expired = stored[("BTC-8JUN20-8750-P", 1591603200048)]
    assert (expired["expired"], expired["estimated_delivery_price"]) == (True, None)
    assert expired["delivery_price"] == 9728.65
    assert (expired["best_bid_price"], expired["best_bid_amount"], expired["bid_iv"]) == (0.0,) * 3
    empty_bids = [r for r in stored.values() if r["best_bid_price"] == 0.0]
    assert len(empty_bids) >= 13  # the capture has 13 tickers with an empty bid side
    assert {r["underlying_index"] for r in stored.values()} >= {"BTC-24SEP21", "ETH-30JUL21"}


ODD_VALUES: list[Any] = [
    None,
    True,
    "",
    "x\x00y",
    "expired",
    "1.5",
    0,
    -1,
    2**63,
    2**70,
    1e308,
    -0.0,
    [],
    [["new", 1.0]],
    {},
    {"a": "\x00"},
]


def mutations(seed: int, count: int) -> list[tuple[str, dict[str, Any]]]:
    """Capture payloads with one field (top level or nested) set to an odd JSON value."""
    rng = random.Random(seed)
    base = [(c, d) for c, d, _ in notifications()]
    out = []
    for _ in range(count):
        channel, data = rng.choice(base)
        data = copy.deepcopy(data)
        target = data
        nested = [k for k, v in data.items() if isinstance(v, dict)]
        if nested and rng.random() < 0.3:
            target = data[rng.choice(nested)]
        key = rng.choice([*target.keys(), "new_field"])
        target[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        data["timestamp"] = data["timestamp"] if key != "timestamp" else target[key]
        if isinstance(data.get("change_id"), int):
            data["change_id"] += len(out) * 1000  # keep book rows distinct
        out.append((channel, data))
    return out


async def test_whatever_the_normalisers_accept_the_database_stores(database_url: str) -> None:
    metrics = Metrics()
    accepted = 0
    reasons: list[str] = []
    seen: set[tuple[Any, ...]] = set()
    async with Writer.connect(database_url, metrics=metrics) as writer:
        for channel, data in mutations(seed=11, count=600):
            try:
                table, rows = normalize.normalize(channel, data, 1.0)
            except normalize.NormalizeError as exc:
                reasons.append(exc.reason)
                continue
            for row in rows:
                key = (table.name, row[0], row[1], row[3] if table is tables.BOOK else None)
                if key not in seen:
                    seen.add(key)
                    accepted += 1
            await writer.put_many(table, rows)
    assert writer.stats.rejected == 0, "a normalised row was refused by PostgreSQL"
    assert sum(writer.stats.inserted.values()) == accepted
    assert accepted > 100
    assert len(reasons) > 100
    assert set(reasons) <= {"missing_field", "wrong_type", "bad_value"}
