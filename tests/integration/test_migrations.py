"""Migrations: idempotent, safe when two run at once, and in agreement with store/tables.py."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from harness import builds
from optionfeed.store import migrations, timescale
from optionfeed.store.errors import MigrationError, SchemaMismatch
from optionfeed.store.sink import check_schema
from optionfeed.store.tables import ALL, TIME_TABLES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    con = await asyncpg.connect(database_url)
    yield con
    await con.close()


async def test_migrate_applies_once_and_records_each_file(connection: asyncpg.Connection) -> None:
    files = migrations.load_migrations()
    applied = await migrations.migrate(connection)
    assert [m.version for m in applied] == [m.version for m in files]
    assert await migrations.migrate(connection) == []
    recorded = await connection.fetch("SELECT version, name, checksum FROM schema_migrations")
    assert [(r["version"], r["name"], r["checksum"]) for r in recorded] == [
        (m.version, m.name, m.checksum) for m in files
    ]


async def test_two_migrations_at_once_apply_the_schema_exactly_once(database_url: str) -> None:
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        # The first holds the lock before the second asks for it: the second must wait, then
        # find nothing to do.
        await first.execute("SELECT pg_advisory_lock($1)", migrations.MIGRATION_LOCK_KEY)
        waiting = asyncio.create_task(migrations.migrate(second))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done, "a migration ran while another held the lock"
        await first.execute("SELECT pg_advisory_unlock($1)", migrations.MIGRATION_LOCK_KEY)
        applied_by_second = await waiting
        assert [m.version for m in applied_by_second] == [1]

        results = await asyncio.gather(migrations.migrate(first), migrations.migrate(second))
        assert results == [[], []]
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == len(
            migrations.load_migrations()
        )
    finally:
        await first.close()
        await second.close()


async def test_concurrent_first_runs_on_an_empty_database_do_not_collide(database_url: str) -> None:
    connections = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c) for c in connections))
        assert sorted(len(r) for r in results) == [0, 0, len(migrations.load_migrations())]
    finally:
        for c in connections:
            await c.close()


async def test_an_edited_applied_migration_is_refused(connection: asyncpg.Connection) -> None:
    await migrations.migrate(connection)
    await connection.execute("UPDATE schema_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(MigrationError, match=r"0001_tables\.sql was changed"):
        await migrations.migrate(connection)


async def test_a_failing_migration_names_its_file_and_leaves_nothing_half_done(
    connection: asyncpg.Connection, tmp_path: Path
) -> None:
    shutil.copy(migrations.schema_dir() / "0001_tables.sql", tmp_path)
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half (a int);\nSELECT nonsense;\n")
    with pytest.raises(MigrationError, match=r"0002_broken\.sql failed"):
        await migrations.migrate(connection, migrations.load_migrations(tmp_path))
    assert await connection.fetchval("SELECT to_regclass('half')") is None
    assert await connection.fetchval("SELECT max(version) FROM schema_migrations") == 1


def test_migration_files_are_named_by_version(tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        migrations.load_migrations(tmp_path)


async def test_the_migrated_schema_is_what_tables_py_writes(connection: asyncpg.Connection) -> None:
    await migrations.migrate(connection)
    await check_schema(connection, ALL)
    for table in ALL:
        columns = await connection.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            table.name,
        )
        assert tuple(r["attname"] for r in columns) == table.column_names, table.name
        key = await connection.fetch(
            """
            SELECT a.attname FROM pg_index i
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
            WHERE i.indrelid = to_regclass($1) AND i.indisprimary
            ORDER BY array_position(i.indkey, a.attnum)
            """,
            table.name,
        )
        assert tuple(r["attname"] for r in key) == table.key, table.name
    partitioned = await connection.fetch(
        "SELECT c.relname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid"
    )
    assert {r["relname"] for r in partitioned} == {t.name for t in TIME_TABLES}


async def test_a_database_without_the_schema_is_refused_with_a_hint(
    connection: asyncpg.Connection,
) -> None:
    with pytest.raises(SchemaMismatch, match="run `optionfeed migrate`"):
        await check_schema(connection, ALL)
    await migrations.migrate(connection)
    await connection.execute("ALTER TABLE option_trades DROP COLUMN iv")
    with pytest.raises(SchemaMismatch, match=r"option_trades\.iv is missing"):
        await check_schema(connection, ALL)


async def test_without_timescaledb_the_time_tables_stay_natively_partitioned(
    connection: asyncpg.Connection,
) -> None:
    await migrations.migrate(connection)
    assert not await timescale.extension_available(connection)
    assert await timescale.enable(connection, timescale.Settings(mode=timescale.Mode.AUTO)) == set()
    assert await timescale.hypertables(connection) == set()
    with pytest.raises(MigrationError, match="TimescaleDB was required"):
        await timescale.enable(connection, timescale.Settings(mode=timescale.Mode.ON))


def test_hypertable_statements_keep_the_natural_key_compressible() -> None:
    by_name = {t.name: t for t in TIME_TABLES}
    statements = timescale.hypertable_statements(by_name["option_trades"], compress_after="3 days")
    joined = "\n".join(statements)
    assert "create_hypertable('option_trades', 'ts'" in joined
    assert "compress_segmentby = 'instrument'" in joined
    assert "compress_orderby = 'ts, trade_id'" in joined
    assert "add_compression_policy('option_trades', INTERVAL '3 days'" in joined


@pytest.mark.slow
def test_the_schema_files_ship_inside_the_wheel(tmp_path: Path) -> None:
    result = subprocess.run(
        [builds.uv(), "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("optionfeed-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("optionfeed/schema/")}
    assert shipped == {f"optionfeed/schema/{p.name}" for p in (ROOT / "schema").glob("*.sql")}

    # Installed from that wheel (no source tree on the path), the program finds them.
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = (
        "from optionfeed.store import migrations; "
        "print(migrations.schema_dir()); print(len(migrations.load_migrations()))"
    )
    found = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    directory, count = found.stdout.split()
    assert Path(directory) == target / "optionfeed" / "schema"
    assert int(count) == len(shipped)
