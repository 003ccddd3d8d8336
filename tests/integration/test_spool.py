"""The disk spool, alone on real files and behind the writer with a real PostgreSQL taken away."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import pytest

from harness.postgres import TempPostgres
from optionfeed.store import records, tables
from optionfeed.store.errors import BatchNotWritten
from optionfeed.store.sink import Batch, PostgresSink, WriteResult
from optionfeed.store.spool import Spool, encode_batch
from optionfeed.store.tables import Row
from optionfeed.store.writer import Writer
from optionfeed.telemetry.metrics import Metrics

BASE_MS = 1_700_000_000_000


def quote(i: int) -> Row:
    return ("BTC-29DEC23-40000-C", BASE_MS + i, 1_700_000_000.5 + i, 0.01 * i, 1.0, None, 2.0, None)


def book(i: int) -> Row:
    row = [None] * len(tables.BOOK.columns)
    values = {
        "instrument": "BTC-29DEC23-40000-C",
        "ts": BASE_MS + i,
        "recv_ts": 1_700_000_000.25,
        "type": "change",
        "change_id": 1000 + i,
        "prev_change_id": 999 + i,
        "bids": b'[["new",0.0015,4714.0]]',
        "asks": b"[]",
    }
    for index, column in enumerate(tables.BOOK.columns):
        row[index] = values.get(column.name)
    return tuple(row)


def gap(i: int) -> Row:
    return records.gap_row(
        uuid.UUID(int=i + 1), channel="trades", reason="disconnect", start=1.0, end=2.0, now=3.0
    )


def batch(seq: int, n: int = 10) -> Batch:
    return Batch(
        seq,
        {
            tables.QUOTES: [quote(seq * 100 + i) for i in range(n)],
            tables.BOOK: [book(seq * 100 + i) for i in range(n)],
            tables.GAPS: [gap(seq)],
        },
    )


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_spooled_batches_come_back_in_order_and_byte_for_byte_after_a_restart(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path, metrics=Metrics(), segment_bytes=600)
    await spool.open()
    written = [batch(seq) for seq in range(1, 6)]
    for b in written:
        await spool.write(b)
    assert spool.engaged
    assert len(list(tmp_path.glob("*.seg"))) > 1, "small segments rotate"
    await spool.close()

    again = Spool(tmp_path, metrics=Metrics(), segment_bytes=600)
    await again.open()
    assert again.engaged
    replayed: list[Batch] = []

    async def keep(b: Batch) -> WriteResult:
        replayed.append(b)
        return WriteResult(time.time())

    while again.engaged:
        await again.replay(keep)
    assert [b.rows for b in replayed] == [b.rows for b in written]
    assert not list(tmp_path.glob("*.seg")), "replayed segments are deleted"
    assert again.used_bytes == 0


async def test_a_torn_record_at_the_end_is_cut_off_and_the_rest_survives(tmp_path: Path) -> None:
    spool = Spool(tmp_path, metrics=Metrics())
    await spool.open()
    await spool.write(batch(1))
    await spool.write(batch(2))
    segment = next(tmp_path.glob("*.seg"))
    whole = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(b"\x00\x10\x00\x00garbage")  # a header promising more than was written
    again = Spool(tmp_path, metrics=Metrics())
    await again.open()
    assert segment.stat().st_size == whole
    replayed: list[Batch] = []

    async def keep(b: Batch) -> WriteResult:
        replayed.append(b)
        return WriteResult(time.time())

    await again.replay(keep)
    assert [b.rows for b in replayed] == [batch(1).rows, batch(2).rows]


async def test_a_replay_that_fails_keeps_the_segment_for_the_next_attempt(tmp_path: Path) -> None:
    spool = Spool(tmp_path, metrics=Metrics())
    await spool.open()
    await spool.write(batch(1))
    await spool.write(batch(2))

    async def refuse(b: Batch) -> WriteResult:
        raise BatchNotWritten("connection", OSError("database down"))

    with pytest.raises(BatchNotWritten):
        await spool.replay(refuse)
    assert spool.engaged
    seen: list[int] = []

    async def keep(b: Batch) -> WriteResult:
        seen.append(b.count)
        return WriteResult(time.time())

    await spool.replay(keep)
    assert seen == [batch(1).count, batch(2).count]
    assert not spool.engaged


async def test_a_full_spool_refuses_batches_and_raises_the_alarm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path / "s", metrics=metrics)
    three = sum(len(encode_batch(batch(seq), spool._codecs)) for seq in range(1, 4))
    spool = Spool(tmp_path / "s", metrics=metrics, max_bytes=three)
    await spool.open()
    with caplog.at_level(logging.WARNING, logger="optionfeed.store.spool"):
        for seq in range(1, 4):
            await spool.write(batch(seq))
        with pytest.raises(BatchNotWritten) as info:
            await spool.write(batch(4))
    assert info.value.reason == "spool_full"
    assert sample(metrics, "optionfeed_spool_fill_ratio") == 1.0
    assert "100% full" in caplog.text
    assert "50% full" in caplog.text
    assert sample(metrics, "optionfeed_spooled_rows_total") == 3 * batch(1).count


async def test_the_writer_spools_while_the_database_is_down_and_replays_when_it_returns(
    postgres: TempPostgres, database_url: str, tmp_path: Path
) -> None:
    metrics = Metrics()
    spool = Spool(tmp_path, metrics=metrics)
    sink = PostgresSink(database_url)
    writer = Writer(
        sink, metrics=metrics, fallback=spool, fallback_after=2, retry_base=0.01, retry_cap=0.05
    )
    await writer.open()
    postgres.stop()
    try:
        for i in range(2000):
            await writer.put(tables.QUOTES, quote(i))
        await asyncio.wait_for(writer.flush(), 30)
        assert spool.engaged
        failed_before = writer.stats.failed_attempts
        for i in range(2000, 3000):
            await writer.put(tables.QUOTES, quote(i))
        await asyncio.wait_for(writer.flush(), 30)
        # Once the spool is engaged, batches queue there without trying the dead database.
        assert writer.stats.failed_attempts == failed_before
    finally:
        postgres.start()

    async def drained() -> None:
        while spool.engaged:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(drained(), 60)
    await writer.close()
    rows = postgres.psql("SELECT count(*), count(DISTINCT ts) FROM option_quotes",
                         database_url.rsplit("/", 1)[1])  # fmt: skip
    assert rows == "3000|3000"
    assert sample(metrics, "optionfeed_spool_replayed_rows_total") == 3000
    assert sample(metrics, "optionfeed_rows_written_total", {"table": "option_quotes"}) == 3000


async def test_rows_spooled_at_shutdown_are_replayed_by_the_next_collector(
    postgres: TempPostgres, database_url: str, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    writer = Writer(
        PostgresSink(database_url),
        metrics=Metrics(),
        fallback=Spool(spool_dir, metrics=Metrics()),
        fallback_after=1,
        retry_base=0.01,
        retry_cap=0.02,
    )
    await writer.open()
    postgres.stop()
    try:
        for i in range(500):
            await writer.put(tables.QUOTES, quote(i))
        await writer.close()  # the database is down: everything goes to the spool, nothing lost
    finally:
        postgres.start()
    assert list(spool_dir.glob("*.seg"))

    metrics = Metrics()
    spool = Spool(spool_dir, metrics=metrics)
    async with Writer(PostgresSink(database_url), metrics=metrics, fallback=spool):

        async def drained() -> None:
            while spool.engaged:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(drained(), 60)
    name = database_url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT count(*) FROM option_quotes", name) == "500"
