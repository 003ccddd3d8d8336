"""The embedded PostgreSQL (pgserver): starts under a directory of ours and takes writes."""

from __future__ import annotations

import time
from pathlib import Path

import asyncpg

from optionfeed.store import tables
from optionfeed.store.embedded import EmbeddedPostgres
from optionfeed.store.writer import Writer
from optionfeed.telemetry.metrics import Metrics


async def test_the_embedded_postgres_migrates_and_stores_rows(tmp_path: Path) -> None:
    directory = tmp_path / "pgdata"
    async with EmbeddedPostgres(directory) as embedded:
        assert "host=" in embedded.url
        assert "@/optionfeed?" in embedded.url
        row = ("BTC-29DEC23-40000-C", 1_700_000_000_000, time.time(), 0.1, 1.0, 0.2, 2.0, None)
        async with Writer.connect(embedded.url, metrics=Metrics()) as writer:
            await writer.put(tables.QUOTES, row)
        connection = await asyncpg.connect(embedded.url)
        try:
            assert await connection.fetchval("SELECT count(*) FROM option_quotes") == 1
            assert await connection.fetchval("SELECT max(version) FROM schema_migrations") == 1
        finally:
            await connection.close()
    assert (directory / "PG_VERSION").exists()
    assert not (directory / "postmaster.pid").exists(), "the server was left running"
