"""TimescaleDB, when the server has it: the time tables become compressed hypertables.

The migrations create the time tables natively partitioned by day. When the ``timescaledb``
extension can be loaded, :func:`enable` turns each of them, while it is still empty, into a
hypertable with one-day chunks, compression (segmented by instrument, ordered by the key) and an
optional retention policy. The writer then leaves partitioning to TimescaleDB
(:func:`hypertables`). A table that already holds rows is left natively partitioned, with a
warning: moving live data between layouts is an operator's decision, not a side effect of a start.

Everything here is guarded: without the extension (the common case, e.g. Debian's own PostgreSQL
or the embedded one) nothing runs but one catalog query.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import asyncpg

from optionfeed.store.errors import MigrationError
from optionfeed.store.tables import TIME_TABLES, Table, quote_ident

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key for the conversion (any constant unique to optionfeed).
TIMESCALE_LOCK_KEY = 0x6F70_7466_7473_6462  # "optftsdb"


class Mode(StrEnum):
    AUTO = "auto"  # use TimescaleDB when the server can load it
    ON = "on"  # require it: fail when it is missing
    OFF = "off"  # never use it


async def extension_available(connection: asyncpg.Connection) -> bool:
    return bool(
        await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
        )
    )


async def extension_installed(connection: asyncpg.Connection) -> bool:
    return bool(
        await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
        )
    )


async def hypertables(connection: asyncpg.Connection) -> set[str]:
    """Names of the hypertables in the current schema; empty without the extension."""
    if not await extension_installed(connection):
        return set()
    rows = await connection.fetch(
        "SELECT hypertable_name FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = current_schema()"
    )
    return {r["hypertable_name"] for r in rows}


def hypertable_statements(
    table: Table, *, compress_after: str = "2 days", retention: str | None = None
) -> list[str]:
    """The SQL that turns an empty, natively partitioned ``table`` into a compressed hypertable."""
    name = quote_ident(table.name)
    old = quote_ident(f"{table.name}_native")
    # Compressed chunks keep unique keys only over segmentby/orderby columns: segment by
    # instrument, order by ts and the rest of the key.
    order = ["ts", *(c for c in table.key if c not in ("instrument", "ts"))]
    statements = [
        f"ALTER TABLE {name} RENAME TO {old}",
        f"CREATE TABLE {name} (LIKE {old} INCLUDING ALL)",
        f"DROP TABLE {old} CASCADE",
        f"SELECT create_hypertable('{table.name}', 'ts', chunk_time_interval => INTERVAL '1 day')",
        f"ALTER TABLE {name} SET (timescaledb.compress, "
        f"timescaledb.compress_segmentby = 'instrument', "
        f"timescaledb.compress_orderby = '{', '.join(order)}')",
        f"SELECT add_compression_policy('{table.name}', INTERVAL '{compress_after}', "
        "if_not_exists => true)",
    ]
    if retention is not None:
        statements.append(
            f"SELECT add_retention_policy('{table.name}', INTERVAL '{retention}', "
            "if_not_exists => true)"
        )
    return statements


async def enable(
    connection: asyncpg.Connection,
    mode: Mode = Mode.AUTO,
    *,
    compress_after: str = "2 days",
    retention: str | None = None,
) -> set[str]:
    """Make the time tables hypertables when ``mode`` and the server allow; returns hypertables."""
    if mode is Mode.OFF:
        return set()
    if not await extension_available(connection):
        if mode is Mode.ON:
            raise MigrationError("TimescaleDB was required but the server does not have it")
        log.debug("TimescaleDB is not available: the time tables stay natively partitioned")
        return set()
    try:
        async with connection.transaction():
            await connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        # Typically: the library is not in shared_preload_libraries.
        if mode is Mode.ON:
            raise MigrationError(f"TimescaleDB cannot be loaded: {exc}") from exc
        log.warning(
            "TimescaleDB is installed but cannot be loaded (%s): using native partitions", exc
        )
        return set()
    done = await hypertables(connection)
    for table in TIME_TABLES:
        if table.name in done:
            continue
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", TIMESCALE_LOCK_KEY)
            if table.name in await hypertables(connection):
                continue
            has_rows = await connection.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {quote_ident(table.name)})"
            )
            if has_rows:
                log.warning(
                    "%s holds rows: it stays natively partitioned (convert it by hand to use "
                    "TimescaleDB)",
                    table.name,
                )
                continue
            for statement in hypertable_statements(
                table, compress_after=compress_after, retention=retention
            ):
                await connection.execute(statement)
        log.info("%s is now a TimescaleDB hypertable with compression", table.name)
    return await hypertables(connection)
