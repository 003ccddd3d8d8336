"""The batch writer against a real PostgreSQL: flushing, backpressure, shutdown, failures."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from harness.postgres import TempPostgres
from optionfeed.store import records, tables
from optionfeed.store.errors import BatchNotWritten, UnwrittenRows, WriterClosed
from optionfeed.store.sink import Batch, PostgresSink, WriteResult
from optionfeed.store.tables import Row
from optionfeed.store.writer import Writer
from optionfeed.telemetry.metrics import Metrics

BASE_MS = 1_700_000_000_000  # 2023-11-14


def quote(i: int, instrument: str = "BTC-29DEC23-40000-C", base: int = BASE_MS) -> Row:
    return (instrument, base + i, time.time(), 0.01 * i, 1.0, 0.02 * i, 2.0, None)


class ObservedSink(PostgresSink):
    """The real sink, with hooks the tests await instead of sleeping: after each write, before
    each write (a gate the test can close), and on close."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.batches: list[dict[str, int]] = []
        self.failures: list[BatchNotWritten] = []
        self.events: list[str] = []
        self.written = asyncio.Event()
        self.failed = asyncio.Event()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def write(self, batch: Batch) -> WriteResult:
        self.entered.set()
        await self.gate.wait()
        try:
            result = await super().write(batch)
        except BatchNotWritten as exc:
            self.failures.append(exc)
            self.failed.set()
            raise
        self.batches.append(batch.counts())
        self.events.append("write")
        self.written.set()
        return result

    async def close(self) -> None:
        self.events.append("close")
        await super().close()


async def count(url: str, table: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await connection.close()


@pytest.fixture
async def sink(database_url: str) -> AsyncIterator[ObservedSink]:
    return ObservedSink(database_url)


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_a_batch_is_flushed_when_it_reaches_batch_rows(
    sink: ObservedSink, database_url: str
) -> None:
    async with Writer(sink, metrics=Metrics(), batch_rows=100, max_age=3600) as writer:
        for i in range(100):
            await writer.put(tables.QUOTES, quote(i))
        await asyncio.wait_for(sink.written.wait(), 10)
        assert sink.batches == [{"option_quotes": 100}]
        assert await count(database_url, "option_quotes") == 100


async def test_a_batch_is_flushed_when_its_oldest_row_is_max_age_old(
    sink: ObservedSink, database_url: str
) -> None:
    async with Writer(sink, metrics=Metrics(), batch_rows=1_000_000, max_age=0.05) as writer:
        started = time.monotonic()
        await writer.put(tables.QUOTES, quote(1))
        await asyncio.wait_for(sink.written.wait(), 10)
        elapsed = time.monotonic() - started
        assert 0.05 <= elapsed < 5
        assert await count(database_url, "option_quotes") == 1


async def test_the_default_flush_age_is_at_most_250_ms(database_url: str) -> None:
    writer = Writer.connect(database_url, metrics=Metrics())
    assert writer._max_age <= 0.25


async def test_a_full_buffer_slows_the_producer_and_loses_nothing(
    sink: ObservedSink, database_url: str
) -> None:
    metrics = Metrics()
    async with Writer(
        sink, batch_rows=5, capacity_rows=10, max_age=3600, metrics=metrics
    ) as writer:
        sink.gate.clear()  # the database "stalls": no batch completes until the gate opens
        for i in range(5):
            await writer.put(tables.QUOTES, quote(i))
        await asyncio.wait_for(sink.entered.wait(), 10)  # 5 rows taken, now in flight
        for i in range(5, 10):
            await writer.put(tables.QUOTES, quote(i))
        assert writer.buffered_rows == 10
        assert sample(metrics, "optionfeed_buffer_fill_ratio") == 1.0

        blocked = asyncio.create_task(writer.put(tables.QUOTES, quote(10)))
        done, _ = await asyncio.wait({blocked}, timeout=0.2)
        assert not done, "put() returned while the buffer was full"
        assert writer.stats.waits_for_room == 1

        sink.gate.set()
        await asyncio.wait_for(blocked, 10)
        for i in range(11, 40):
            await writer.put(tables.QUOTES, quote(i))
    assert await count(database_url, "option_quotes") == 40
    assert sample(metrics, "optionfeed_rows_written_total", {"table": "option_quotes"}) == 40


async def test_close_writes_every_row_before_the_pool_closes(
    sink: ObservedSink, database_url: str
) -> None:
    writer = Writer(sink, metrics=Metrics(), batch_rows=1_000_000, max_age=3600)
    await writer.open()
    for i in range(2_500):
        await writer.put(tables.QUOTES, quote(i))
    await writer.close()
    assert sink.events == ["write", "close"]
    assert await count(database_url, "option_quotes") == 2_500
    with pytest.raises(WriterClosed):
        await writer.put(tables.QUOTES, quote(9_999))


async def test_a_row_put_just_before_close_lands(sink: ObservedSink, database_url: str) -> None:
    async with Writer(sink, metrics=Metrics()) as writer:
        await writer.put(tables.QUOTES, quote(42))
    assert await count(database_url, "option_quotes") == 1


async def test_a_cancelled_close_still_writes_the_rows_then_reraises(
    sink: ObservedSink, database_url: str
) -> None:
    writer = Writer(sink, metrics=Metrics(), batch_rows=1_000_000, max_age=3600, close_timeout=30)
    await writer.open()
    sink.gate.clear()
    for i in range(300):
        await writer.put(tables.QUOTES, quote(i))
    closing = asyncio.create_task(writer.close())
    await asyncio.wait_for(sink.entered.wait(), 10)
    closing.cancel()
    await asyncio.sleep(0)  # let the cancellation reach close()
    assert not closing.done(), "close() gave up on its rows when cancelled"
    sink.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert await count(database_url, "option_quotes") == 300
    assert sink.events == ["write", "close"]


async def test_duplicates_on_the_natural_key_are_dropped(
    sink: ObservedSink, database_url: str
) -> None:
    metrics = Metrics()
    rows = [quote(i) for i in range(50)]
    async with Writer(sink, metrics=metrics) as writer:
        await writer.put_many(tables.QUOTES, rows + rows[:10])  # duplicates within one batch
        await writer.flush()
        await writer.put_many(tables.QUOTES, rows)  # and across batches
        await writer.flush()
        assert writer.stats.duplicates == 60
    assert await count(database_url, "option_quotes") == 50
    assert sample(metrics, "optionfeed_rows_written_total", {"table": "option_quotes"}) == 50
    # The lag histogram counts every committed row, duplicates included.
    assert sample(metrics, "optionfeed_commit_lag_seconds_count", {"table": "option_quotes"}) == 110


async def test_trades_deduplicate_on_instrument_and_trade_id(
    sink: ObservedSink, database_url: str
) -> None:
    def trade(trade_id: str, seq: int) -> Row:
        return ("ETH-29DEC23-2000-C", BASE_MS + seq, time.time(), trade_id, seq, 0.01, 1.0)

    width = tables.TRADES.width
    rows = [(*trade(f"ETH-{i}", i), *([None] * (width - 7))) for i in range(20)]
    for r in rows:
        assert len(r) == width
    async with Writer(sink, metrics=Metrics()) as writer:
        await writer.put_many(tables.TRADES, rows)
        await writer.flush()
        await writer.put_many(tables.TRADES, rows[5:15])
    assert await count(database_url, "option_trades") == 20


async def test_lag_and_write_metrics_are_recorded_per_table(
    sink: ObservedSink, database_url: str
) -> None:
    metrics = Metrics()
    now_ms = int(time.time() * 1000)
    async with Writer(sink, metrics=metrics) as writer:
        for i in range(10):
            await writer.put(tables.QUOTES, quote(i, base=now_ms - 2_000))
    labels = {"table": "option_quotes"}
    assert sample(metrics, "optionfeed_commit_lag_seconds_count", labels) == 10
    lag_sum = sample(metrics, "optionfeed_commit_lag_seconds_sum", labels)
    assert 10 * 1.9 < lag_sum < 10 * 60
    assert sample(metrics, "optionfeed_commit_lag_seconds_bucket", {**labels, "le": "1.0"}) == 0
    assert sample(metrics, "optionfeed_write_duration_seconds_count", labels) >= 1
    assert sample(metrics, "optionfeed_last_commit_timestamp_seconds") > now_ms / 1000 - 1
    assert sample(metrics, "optionfeed_buffer_capacity_rows") == writer.capacity_rows


async def test_a_row_the_database_refuses_goes_to_rejected_messages_and_the_rest_is_stored(
    sink: ObservedSink, database_url: str
) -> None:
    metrics = Metrics()
    good = [quote(i) for i in range(200)]
    # Built by hand, past the normalisers: PostgreSQL text cannot hold NUL.
    poison = ("BTC\x00BAD", BASE_MS + 500, time.time(), 1.0, 1.0, 1.0, 1.0, None)
    async with Writer(sink, metrics=metrics) as writer:
        await writer.put_many(tables.QUOTES, good[:100])
        await writer.put(tables.QUOTES, poison)
        await writer.put_many(tables.QUOTES, good[100:])
    assert await count(database_url, "option_quotes") == 200
    connection = await asyncpg.connect(database_url)
    try:
        rejected = await connection.fetch("SELECT reason, raw FROM rejected_messages")
    finally:
        await connection.close()
    assert len(rejected) == 1
    assert "option_quotes" in rejected[0]["reason"]
    assert "BTC\\x00BAD" in rejected[0]["raw"]
    assert sample(metrics, "optionfeed_rejected_messages_total", {"reason": "unstorable"}) == 1


async def test_a_failed_write_is_retried_until_the_database_returns(
    postgres: TempPostgres, database_url: str
) -> None:
    metrics = Metrics()
    sink = ObservedSink(database_url)
    async with Writer(sink, metrics=metrics, retry_base=0.05, retry_cap=0.2) as writer:
        postgres.stop()
        try:
            await writer.put_many(tables.QUOTES, [quote(i) for i in range(100)])
            await asyncio.wait_for(sink.failed.wait(), 20)
            assert writer.buffered_rows == 100
        finally:
            postgres.start()
        await asyncio.wait_for(writer.flush(), 30)
    assert await count(database_url, "option_quotes") == 100
    assert sink.failures[0].reason == "connection"
    assert sample(metrics, "optionfeed_write_errors_total", {"reason": "connection"}) >= 1
    assert writer.stats.failed_attempts >= 1


async def test_close_with_the_database_gone_reports_the_unwritten_rows_and_does_not_hang(
    postgres: TempPostgres, database_url: str
) -> None:
    metrics = Metrics()
    sink = ObservedSink(database_url)
    writer = Writer(sink, metrics=metrics, close_timeout=0.5, retry_base=0.05, retry_cap=0.1)
    await writer.open()
    postgres.stop()
    try:
        await writer.put_many(tables.QUOTES, [quote(i) for i in range(30)])
        started = time.monotonic()
        with pytest.raises(UnwrittenRows) as info:
            await writer.close()
        assert time.monotonic() - started < 15
    finally:
        postgres.start()
    assert info.value.rows == {"option_quotes": 30}
    assert sample(metrics, "optionfeed_dropped_rows_total", {"reason": "shutdown"}) == 30
    assert sink.events[-1] == "close"


async def test_reference_tables_upsert_keeping_first_seen(
    sink: ObservedSink, database_url: str
) -> None:
    from optionfeed.collector.normalize import instrument_row

    listing = {
        "instrument_name": "BTC-24SEP21-40000-P",
        "kind": "option",
        "strike": 40000.0,
        "option_type": "put",
        "tick_size": 0.0005,
        "expiration_timestamp": 1632470400000,
        "creation_timestamp": 1606129458000,
        "is_active": True,
        "settlement_period": "month",
        "base_currency": "BTC",
        "quote_currency": "BTC",
        "contract_size": 1.0,
        "min_trade_amount": 0.1,
    }
    gap = uuid.uuid4()
    async with Writer(sink, metrics=Metrics()) as writer:
        await writer.put(tables.INSTRUMENTS, instrument_row(listing, 1000.0))
        await writer.put(tables.GAPS, records.gap_row(
            gap, channel="trades.BTC-24SEP21-40000-P.100ms", reason="sequence",
            start=1000.0, end=None, now=1000.0, seq_from=5, seq_to=9,
        ))  # fmt: skip
        await writer.flush()
        changed = dict(listing, tick_size=0.001, is_active=False)
        await writer.put(tables.INSTRUMENTS, instrument_row(changed, 2000.0, expired=True))
        await writer.put(tables.INSTRUMENTS, instrument_row(changed, 1500.0))  # same batch, older
        await writer.put(tables.GAPS, records.gap_row(
            gap, channel="trades.BTC-24SEP21-40000-P.100ms", reason="sequence",
            start=1000.0, end=1010.0, now=1020.0, rows_recovered=5,
        ))  # fmt: skip
        await writer.put(tables.STATUS, records.status_row(
            feed="f", shard=0, pod="p", started_at=1.0, now=2.0, version="1",
            instruments=3, connections=1, counters={"ticks": 1},
        ))  # fmt: skip
        await writer.put(tables.STATUS, records.status_row(
            feed="f", shard=0, pod="p", started_at=1.0, now=3.0, version="1",
            instruments=4, connections=1, counters={"ticks": 9},
        ))  # fmt: skip
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT tick_size, is_active, extract(epoch FROM first_seen) AS first, "
            "extract(epoch FROM last_seen) AS last, extract(epoch FROM expired_at) AS expired, "
            "extract(epoch FROM expiration_timestamp) * 1000 AS expiry FROM instruments"
        )
        gaps = await connection.fetch(
            "SELECT seq_from, seq_to, rows_recovered, extract(epoch FROM gap_end) AS end_s, "
            "extract(epoch FROM detected_at) AS detected FROM data_gaps"
        )
        status = await connection.fetch("SELECT instruments, counters::text FROM collector_status")
    finally:
        await connection.close()
    assert (row["tick_size"], row["is_active"]) == (0.001, False)
    assert (row["first"], row["last"], row["expired"]) == (1000, 2000, 2000)
    assert row["expiry"] == 1632470400000
    assert [tuple(g) for g in gaps] == [(5, 9, 5, 1010, 1000)]
    assert [tuple(s) for s in status] == [(4, '{"ticks": 9}')]


async def test_rejected_frames_are_stored_verbatim_where_possible(
    sink: ObservedSink, database_url: str
) -> None:
    raw = b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X"\xff\x00'
    async with Writer(sink, metrics=Metrics()) as writer:
        await writer.put(
            tables.REJECTED, records.rejected_row("not JSON: unexpected end", raw, 1.5, "ticker.X")
        )
    connection = await asyncpg.connect(database_url)
    try:
        stored = await connection.fetchrow(
            "SELECT channel, reason, raw, extract(epoch FROM recv_ts) AS recv "
            "FROM rejected_messages"
        )
    finally:
        await connection.close()
    assert stored["channel"] == "ticker.X"
    assert stored["reason"] == "not JSON: unexpected end"
    assert stored["raw"] == raw[:-2].decode() + "\\xff\\x00"
    assert stored["recv"] == 1.5


async def test_put_after_close_and_before_open_is_refused(sink: ObservedSink) -> None:
    writer = Writer(sink, metrics=Metrics())
    with pytest.raises(WriterClosed):
        await writer.put(tables.QUOTES, quote(1))
    await writer.open()
    await writer.close()
    await writer.close()  # idempotent
    with pytest.raises(WriterClosed):
        await writer.put(tables.QUOTES, quote(1))
