"""TimescaleDB for real: a server built with the extension, preloaded or not.

``timescale_postgres`` preloads the library; ``timescale_unloaded_postgres`` has the same files
but an empty ``shared_preload_libraries``, where ``CREATE EXTENSION`` would end the session with
FATAL. Policies are run by hand (``CALL run_job``): on some PostgreSQL 15 minor releases the
extension's background scheduler fails, and the tests are about our tables and policies, not its
scheduler.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from harness.collector import CollectorProcess, count, wait_for
from harness.postgres import TempPostgres, temp_database
from harness.simulator import SimulatorProcess
from optionfeed.collector.normalize import trade_row
from optionfeed.store import migrations, timescale
from optionfeed.store.errors import MigrationError
from optionfeed.store.sink import PostgresSink
from optionfeed.store.tables import TIME_TABLES, TRADES, Row
from optionfeed.store.writer import Writer
from optionfeed.telemetry.metrics import Metrics

TIME_TABLE_NAMES = {t.name for t in TIME_TABLES}
DAY_MS = 86_400_000


@pytest.fixture
def ts_url(timescale_postgres: TempPostgres) -> Iterator[str]:
    with temp_database(timescale_postgres) as url:
        yield url


@pytest.fixture
def unloaded_url(timescale_unloaded_postgres: TempPostgres) -> Iterator[str]:
    with temp_database(timescale_unloaded_postgres) as url:
        yield url


@pytest.fixture
async def connection(ts_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(ts_url)
    try:
        yield conn
    finally:
        await conn.close()


def migrate_cli(url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optionfeed", "migrate", "--database-url", url, *flags],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


# ------------------------------------------------------------ installed but not preloaded


async def test_auto_keeps_native_partitions_with_one_warning_when_the_library_is_not_preloaded(
    unloaded_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await asyncpg.connect(unloaded_url)
    try:
        assert await timescale.extension_available(conn)
        await migrations.migrate(conn)
        with caplog.at_level(logging.WARNING, logger="optionfeed.store.timescale"):
            assert await timescale.enable(conn) == set()
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1
        assert "shared_preload_libraries" in warnings[0]
        # The session survived: nothing tried CREATE EXTENSION.
        assert await conn.fetchval("SELECT 1") == 1
        assert not await timescale.extension_installed(conn)
        partitioned = await conn.fetchval(
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "WHERE c.relname = ANY($1::text[])",
            sorted(TIME_TABLE_NAMES),
        )
        assert partitioned == len(TIME_TABLES)
    finally:
        await conn.close()


def test_migrate_on_a_server_that_does_not_preload_timescaledb(unloaded_url: str) -> None:
    required = migrate_cli(unloaded_url, "--timescale", "on")
    assert required.returncode == 1, required.stderr
    (error,) = [line for line in required.stderr.splitlines() if "optionfeed migrate:" in line]
    assert error.startswith("optionfeed migrate: TimescaleDB was required"), required.stderr
    assert "shared_preload_libraries" in required.stderr
    assert "Traceback" not in required.stderr

    auto = migrate_cli(unloaded_url)
    assert auto.returncode == 0, auto.stderr
    assert "the schema is up to date" in auto.stdout
    warnings = [line for line in auto.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, auto.stderr
    assert "not preloaded" in warnings[0]
    assert "Traceback" not in auto.stderr


async def test_collect_takes_timescale_from_its_flag_and_environment(
    unloaded_url: str, simulator: SimulatorProcess
) -> None:
    common = ["--currency", "ETH", "--top", "3", "--channels", "ticker",
              "--exchange-url", simulator.ws_url, "--database-url", unloaded_url,
              "--metrics-port", "0"]  # fmt: skip
    with CollectorProcess(*common, env={"OPTIONFEED_TIMESCALE": "on"}) as required:
        assert required.wait(60) == 1
    assert "shared_preload_libraries" in required.output
    assert "Traceback" not in required.output

    for flags in (["--timescale", "off"], ["--timescale", "auto"]):
        before = await count(unloaded_url, "option_tickers")
        with CollectorProcess(*common, *flags, "--duration", "600") as collector:

            async def flowing(before: int = before) -> bool:
                return await count(unloaded_url, "option_tickers") > before

            await wait_for(flowing, within=60, what="tickers stored")
            collector.signal()
            assert collector.wait(60) == 0
        assert "Traceback" not in collector.output


# ------------------------------------------------------------ preloaded


async def test_migrations_make_compressed_hypertables_with_the_natural_key(
    connection: asyncpg.Connection,
) -> None:
    await migrations.migrate(connection)
    settings = timescale.Settings(mode=timescale.Mode.ON, retention="90 days")
    assert await timescale.enable(connection, settings) == TIME_TABLE_NAMES
    chunk_days = await connection.fetch(
        "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_schema = current_schema()"
    )
    assert {r["hypertable_name"]: r["time_interval"] for r in chunk_days} == dict.fromkeys(
        TIME_TABLE_NAMES, datetime.timedelta(days=1)
    )
    compression = await connection.fetch(
        "SELECT hypertable_name, attname, segmentby_column_index, orderby_column_index "
        "FROM timescaledb_information.compression_settings "
        "WHERE hypertable_schema = current_schema()"
    )
    for table in TIME_TABLES:
        mine = [r for r in compression if r["hypertable_name"] == table.name]
        segment = [r["attname"] for r in mine if r["segmentby_column_index"] is not None]
        order = sorted(
            (r for r in mine if r["orderby_column_index"] is not None),
            key=lambda r: r["orderby_column_index"],
        )
        assert segment == ["instrument"], table.name
        assert [r["attname"] for r in order] == [
            "ts",
            *(c for c in table.key if c not in ("instrument", "ts")),
        ], table.name
    jobs = await connection.fetch(
        "SELECT hypertable_name, proc_name, config FROM timescaledb_information.jobs "
        "WHERE hypertable_schema = current_schema()"
    )
    procs = {(r["hypertable_name"], r["proc_name"]) for r in jobs}
    for name in TIME_TABLE_NAMES:
        assert (name, "policy_compression") in procs
        assert (name, "policy_retention") in procs
    policies = await timescale.retention_policies(connection)
    assert policies == dict.fromkeys(TIME_TABLE_NAMES, datetime.timedelta(days=90))
    # Natural keys are still unique constraints on the hypertables.
    for table in TIME_TABLES:
        key = await connection.fetchval(
            "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = $1::regclass AND i.indisunique GROUP BY i.indexrelid",
            table.name,
        )
        assert sorted(key) == sorted(table.key), table.name


async def test_retention_follows_the_setting_each_start(connection: asyncpg.Connection) -> None:
    await migrations.migrate(connection)
    on = timescale.Mode.ON
    await timescale.enable(connection, timescale.Settings(mode=on, retention="30 days"))
    assert set((await timescale.retention_policies(connection)).values()) == {
        datetime.timedelta(days=30)
    }
    # No setting: what is there stays.
    await timescale.enable(connection, timescale.Settings(mode=on))
    assert set((await timescale.retention_policies(connection)).values()) == {
        datetime.timedelta(days=30)
    }
    await timescale.enable(connection, timescale.Settings(mode=on, retention="2 weeks"))
    assert await timescale.retention_policies(connection) == dict.fromkeys(
        TIME_TABLE_NAMES, datetime.timedelta(days=14)
    )
    await timescale.enable(
        connection, timescale.Settings(mode=on, retention=timescale.NO_RETENTION)
    )
    assert await timescale.retention_policies(connection) == {}


def test_retention_and_compression_flags_reject_what_is_not_a_duration(ts_url: str) -> None:
    for flag, value in (("--retention", "90 parsecs"), ("--compress-after", "'; DROP TABLE x")):
        bad = migrate_cli(ts_url, flag, value)
        assert bad.returncode == 2
        assert "is not a duration" in bad.stderr
    assert timescale.retention("90d") == "90 days"
    assert timescale.retention("forever") == timescale.NO_RETENTION
    assert timescale.interval("12h") == "12 hours"
    with pytest.raises(ValueError, match="positive"):
        timescale.interval("0d")


def test_migrate_with_retention_sets_the_policy(ts_url: str) -> None:
    done = migrate_cli(ts_url, "--timescale", "on", "--retention", "90d")
    assert done.returncode == 0, done.stderr

    async def policies() -> dict[str, datetime.timedelta]:
        conn = await asyncpg.connect(ts_url)
        try:
            return await timescale.retention_policies(conn)
        finally:
            await conn.close()

    assert asyncio.run(policies()) == dict.fromkeys(TIME_TABLE_NAMES, datetime.timedelta(days=90))


@pytest.mark.parametrize("attempt", range(3))
def test_concurrent_first_starts_all_succeed(ts_url: str, attempt: int) -> None:
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "optionfeed",
                "migrate",
                "--database-url",
                ts_url,
                "--timescale",
                "on",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(run.wait(120), *run.communicate()) for run in runs]
    for code, _out, err in results:
        assert code == 0, err
        assert "Traceback" not in err
    applied = [out for _, out, _ in results if "applied 1 migration(s)" in out]
    assert len(applied) == 1

    async def shape() -> tuple[set[str], int]:
        conn = await asyncpg.connect(ts_url)
        try:
            return await timescale.hypertables(conn), await conn.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
            )
        finally:
            await conn.close()

    assert asyncio.run(shape()) == (TIME_TABLE_NAMES, 1)


def trades(start_ms: int, seqs: range, instrument: str = "BTC-27DEC24-60000-C") -> list[Row]:
    rows = []
    for seq in seqs:
        trade = {
            "trade_seq": seq,
            "trade_id": f"T-{seq}",
            "timestamp": start_ms + seq * 1000,
            "tick_direction": 0,
            "price": 0.05,
            "mark_price": 0.05,
            "iv": 50.0,
            "instrument_name": instrument,
            "index_price": 60_000.0,
            "direction": "buy",
            "amount": 1.0,
        }
        rows.append(trade_row(trade, time.time()))
    return rows


async def test_a_compressed_chunk_takes_duplicates_and_late_rows_without_breaking_the_key(
    ts_url: str, connection: asyncpg.Connection
) -> None:
    four_days_ago = (int(time.time() * 1000) // DAY_MS - 4) * DAY_MS + 3_600_000
    sink = PostgresSink(ts_url, timescale_settings=timescale.Settings(mode=timescale.Mode.ON))
    async with Writer(sink, metrics=Metrics(), batch_rows=1_000_000, max_age=0.05) as writer:
        for row in trades(four_days_ago, range(0, 100, 2)):  # even sequences first
            await writer.put(TRADES, row)
        await writer.flush()
    assert await timescale.hypertables(connection) == TIME_TABLE_NAMES
    assert await connection.fetchval("SELECT count(*) FROM show_chunks('option_trades')") == 1
    # The table's own compression policy compresses it, run by hand (not by the scheduler).
    job = await connection.fetchval(
        "SELECT job_id FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_compression' AND hypertable_name = 'option_trades'"
    )
    await connection.execute(f"CALL run_job({int(job)})")
    compressed = await connection.fetchval(
        "SELECT count(*) FROM timescaledb_information.chunks "
        "WHERE hypertable_name = 'option_trades' AND is_compressed"
    )
    assert compressed == 1

    # Every even trade again (a replayed spool, a backfill overlap) and the odd ones, late.
    sink = PostgresSink(ts_url, timescale_settings=timescale.Settings(mode=timescale.Mode.ON))
    async with Writer(sink, metrics=Metrics(), batch_rows=1_000_000, max_age=0.05) as writer:
        for row in trades(four_days_ago, range(100)):
            await writer.put(TRADES, row)
        await writer.flush()

    stored = await connection.fetch("SELECT trade_seq FROM option_trades ORDER BY trade_seq")
    assert [r["trade_seq"] for r in stored] == list(range(100))
    assert await connection.fetchval("SELECT count(DISTINCT trade_id) FROM option_trades") == 100


async def test_the_retention_policy_drops_old_chunks_and_keeps_recent_ones(ts_url: str) -> None:
    settings = timescale.Settings(mode=timescale.Mode.ON, retention=timescale.interval("30d"))
    sink = PostgresSink(ts_url, timescale_settings=settings)
    now_ms = int(time.time() * 1000)
    async with Writer(sink, metrics=Metrics(), batch_rows=1_000_000, max_age=0.05) as writer:
        for age_days in (45, 1):
            for row in trades(now_ms - age_days * DAY_MS, range(5), instrument=f"BTC-{age_days}"):
                await writer.put(TRADES, row)
        await writer.flush()
    conn = await asyncpg.connect(ts_url)
    try:
        job = await conn.fetchval(
            "SELECT job_id FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_name = 'option_trades'"
        )
        await conn.execute(f"CALL run_job({int(job)})")
        left = await conn.fetch("SELECT DISTINCT instrument FROM option_trades")
        assert [r["instrument"] for r in left] == ["BTC-1"]
    finally:
        await conn.close()


async def test_rows_far_from_today_land_in_chunks_the_writer_never_made(ts_url: str) -> None:
    sink = PostgresSink(ts_url, timescale_settings=timescale.Settings(mode=timescale.Mode.ON))
    now_ms = int(time.time() * 1000)
    async with Writer(sink, metrics=Metrics(), batch_rows=1_000_000, max_age=0.05) as writer:
        for start in (now_ms - 40 * DAY_MS, now_ms + 20 * DAY_MS):
            for row in trades(start, range(3), instrument=f"BTC-{start}"):
                await writer.put(TRADES, row)
        await writer.flush()
    conn = await asyncpg.connect(ts_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM option_trades") == 6
        assert await conn.fetchval("SELECT count(*) FROM show_chunks('option_trades')") == 2
    finally:
        await conn.close()


async def test_on_fails_clearly_on_a_server_without_the_extension(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.migrate(conn)
        with pytest.raises(MigrationError, match="does not have it"):
            await timescale.enable(conn, timescale.Settings(mode=timescale.Mode.ON))
    finally:
        await conn.close()
