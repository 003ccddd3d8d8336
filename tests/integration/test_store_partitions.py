"""Daily partitions: made ahead of time, on demand for old days, and safely in parallel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from optionfeed.store import migrations, partitions
from optionfeed.store.partitions import Partitions, day_of
from optionfeed.store.tables import ALL, QUOTES, TICKERS, TIME_TABLES
from optionfeed.store.writer import Writer
from optionfeed.telemetry.metrics import Metrics

DAY_MS = 86_400_000


@pytest.fixture
async def migrated(database_url: str) -> AsyncIterator[str]:
    connection = await asyncpg.connect(database_url)
    try:
        await migrations.migrate(connection)
    finally:
        await connection.close()
    return database_url


async def partition_names(url: str, table: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass($1)",
            table,
        )
    finally:
        await connection.close()
    return {r["relname"] for r in rows}


def test_partition_names_and_bounds_are_utc_days() -> None:
    day = day_of(1_626_993_723_632)  # 2021-07-22 22:42 UTC
    assert partitions.partition_name(TICKERS, day) == "option_tickers_p20210722"
    ddl = partitions.partition_ddl(TICKERS, day)
    assert "FROM ('2021-07-22 00:00:00+00') TO ('2021-07-23 00:00:00+00')" in ddl


async def test_the_writer_makes_partitions_ahead_of_time(migrated: str) -> None:
    async with Writer.connect(migrated, metrics=Metrics()):
        pass
    today = day_of(int(time.time() * 1000))
    for table in TIME_TABLES:
        names = await partition_names(migrated, table.name)
        wanted = {partitions.partition_name(table, d) for d in range(today - 1, today + 4)}
        assert wanted <= names, table.name


async def test_rows_of_old_days_get_their_partitions_on_demand(migrated: str) -> None:
    days = [1_626_993_723_632, 1_626_993_723_632 - 400 * DAY_MS, 1_500_000_000_000]
    rows = [("ETH-30JUL21-2800-C", ts, time.time(), 0.1, 1.0, 0.2, 2.0, None) for ts in days]
    async with Writer.connect(migrated, metrics=Metrics()) as writer:
        await writer.put_many(QUOTES, rows)
    names = await partition_names(migrated, "option_quotes")
    assert {
        "option_quotes_p20210722",
        "option_quotes_p20200617",
        "option_quotes_p20170714",
    } <= names
    connection = await asyncpg.connect(migrated)
    try:
        assert await connection.fetchval("SELECT count(*) FROM option_quotes") == 3
    finally:
        await connection.close()


async def test_two_collectors_creating_the_same_partitions_do_not_collide(migrated: str) -> None:
    first, second = await asyncpg.connect(migrated), await asyncpg.connect(migrated)
    try:
        days = range(day_of(1_600_000_000_000), day_of(1_600_000_000_000) + 20)
        made = await asyncio.gather(
            Partitions(ALL).ensure(first, TICKERS, days),
            Partitions(ALL).ensure(second, TICKERS, days),
        )
        assert sorted(made) == [0, 20]
    finally:
        await first.close()
        await second.close()


async def test_a_day_covered_by_a_partition_made_by_hand_is_accepted(migrated: str) -> None:
    connection = await asyncpg.connect(migrated)
    try:
        await connection.execute(
            "CREATE TABLE tickers_july PARTITION OF option_tickers "
            "FOR VALUES FROM ('2021-07-01 00:00+00') TO ('2021-08-01 00:00+00')"
        )
        made = await Partitions(ALL).ensure(connection, TICKERS, [day_of(1_626_993_723_632)])
        assert made == 0
    finally:
        await connection.close()


async def test_a_dropped_partition_is_made_again_on_the_next_write(migrated: str) -> None:
    row = ("ETH-30JUL21-2800-C", 1_626_993_723_632, time.time(), 0.1, 1.0, 0.2, 2.0, None)
    async with Writer.connect(
        migrated, metrics=Metrics(), retry_base=0.01, retry_cap=0.05
    ) as writer:
        await writer.put(QUOTES, row)
        await writer.flush()
        connection = await asyncpg.connect(migrated)
        try:
            await connection.execute("DROP TABLE option_quotes_p20210722")
        finally:
            await connection.close()
        await writer.put(QUOTES, (*row[:1], row[1] + 1, *row[2:]))
        await writer.flush()
        assert writer.stats.failed_attempts == 1  # "no partition": cache dropped, then retried
    assert "option_quotes_p20210722" in await partition_names(migrated, "option_quotes")
