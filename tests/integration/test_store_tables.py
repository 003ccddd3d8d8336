"""The pure parts of the store: table definitions, batched lag observation, record helpers."""

from __future__ import annotations

import random
import uuid

import pytest
from prometheus_client import CollectorRegistry, Histogram

from optionfeed.store import lag, records, tables
from optionfeed.store.tables import Carry, Column, Conflict, Table
from optionfeed.telemetry.metrics import LATENCY_BUCKETS


def histogram() -> Histogram:
    return Histogram("lag", "lag", ["table"], buckets=LATENCY_BUCKETS, registry=CollectorRegistry())


def samples(h: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in h.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_batched_lag_observation_equals_one_observe_per_row() -> None:
    rng = random.Random(3)
    commit = 1_700_000_100.123
    # Lags from 1 ms to 120 s, away from the exact bucket bounds.
    ts = [int((commit - rng.uniform(0.001, 120)) * 1000) + rng.choice((0, 1)) for _ in range(5000)]
    ts = [t for t in ts if all(abs(commit - t / 1000 - b) > 1e-6 for b in LATENCY_BUCKETS)]
    one_by_one, batched = histogram(), histogram()
    for t in ts:
        one_by_one.labels("x").observe(commit - t / 1000)
    lag.observe_lags(batched.labels("x"), list(ts), commit)
    want, got = samples(one_by_one), samples(batched)
    assert want.keys() == got.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_lag_observation_falls_back_to_observe_without_the_bucket_counters() -> None:
    class Plain:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    plain = Plain()
    lag.observe_lags(plain, [1000, 2000], 3.0)
    assert plain.seen == [2.0, 1.0]


def test_every_table_has_a_key_among_its_columns_and_time_tables_partition_on_ts() -> None:
    for table in tables.ALL:
        assert set(table.key) <= set(table.column_names)
        if table.partitioned:
            assert table.key[-1] == "ts"
            assert table.ts_index == 1
            assert table.column_names[:3] == ("instrument", "ts", "recv_ts")
    assert {t.name for t in tables.TIME_TABLES} == {
        "option_tickers",
        "option_quotes",
        "option_trades",
        "option_book",
    }


def test_merges_deduplicate_or_upsert_as_declared() -> None:
    assert tables.TICKERS.merge_sql().endswith('ON CONFLICT ("instrument", "ts") DO NOTHING')
    assert "'epoch'::timestamptz + \"ts\" * interval '1 millisecond'" in tables.TICKERS.merge_sql()
    assert 'to_timestamp("recv_ts")' in tables.TICKERS.merge_sql()
    upsert = tables.INSTRUMENTS.merge_sql()
    assert 'SELECT DISTINCT ON ("instrument")' in upsert
    assert '"first_seen" = LEAST(t.first_seen, EXCLUDED.first_seen)' in upsert
    assert "ON COMMIT DELETE ROWS" in tables.TICKERS.staging_ddl()
    assert '"ts" bigint' in tables.TICKERS.staging_ddl()


def test_table_definitions_are_checked() -> None:
    cols = (Column("instrument", "text"), Column("ts", "timestamptz", Carry.EPOCH_MS))
    with pytest.raises(ValueError, match="unknown column"):
        Table("t", cols, key=("nope",))
    with pytest.raises(ValueError, match="needs ts"):
        Table("t", cols, key=("instrument",), partitioned=True)
    with pytest.raises(ValueError, match="newest"):
        Table("t", cols, key=("instrument",), conflict=Conflict.UPDATE)


def test_rejected_rows_hold_text_postgres_accepts() -> None:
    row = records.rejected_row("bad\x00reason", b"\xff{\x00}", 2.0, channel="ticker.X")
    assert len(row) == tables.REJECTED.width
    _, recv, channel, reason, raw = row
    assert (recv, channel, reason, raw) == (2.0, "ticker.X", "bad\\x00reason", "\\xff{\\x00}")


def test_gap_and_status_rows_follow_their_tables() -> None:
    gap = records.gap_row(uuid.uuid4(), channel="c", reason="stale", start=1.0, end=None, now=2.0)
    assert len(gap) == tables.GAPS.width
    status = records.status_row(
        feed="f",
        shard=0,
        pod="p",
        started_at=1.0,
        now=2.0,
        version="v",
        instruments=1,
        connections=1,
        counters={},
    )
    assert len(status) == tables.STATUS.width
