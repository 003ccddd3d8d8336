"""TimescaleDB, when the server has it: the time tables become compressed hypertables.

The migrations create the time tables natively partitioned by day. When the ``timescaledb``
extension can be loaded, :func:`enable` turns each of them, while it is still empty, into a
hypertable with one-day chunks, compression (segmented by instrument, ordered by the key) and an
optional retention policy. The writer then leaves partitioning to TimescaleDB
(:func:`hypertables`). A table that already holds rows is left natively partitioned, with a
warning: moving live data between layouts is an operator's decision, not a side effect of a start.

"Can be loaded" means listed in ``pg_available_extensions`` *and* named in the server's
``shared_preload_libraries``: ``CREATE EXTENSION`` of a library that was not preloaded ends the
session with FATAL, so that is checked first and never tried. In ``auto`` mode a server that has
the files but does not preload them keeps native partitions, with one warning that says what to
change; in ``on`` mode it is an error with the same hint.

Concurrent first starts (every shard of a feed starts at once) are serialised by one transaction
advisory lock, taken before ``CREATE EXTENSION`` and before each table's conversion.

Retention is level-triggered: given a :class:`Settings.retention`, each hypertable ends up with
exactly that retention policy (an existing one with another interval is replaced); ``NO_RETENTION``
removes the policy; ``None`` leaves whatever is there alone.

Everything here is guarded: without the extension (the common case, e.g. Debian's own PostgreSQL
or the embedded one) nothing runs but two catalog queries.
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from enum import StrEnum

import asyncpg

from optionfeed.store.errors import MigrationError
from optionfeed.store.tables import TIME_TABLES, Table, quote_ident

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key for creating the extension and converting tables (any constant unique
# to optionfeed).
TIMESCALE_LOCK_KEY = 0x6F70_7466_7473_6462  # "optftsdb"

PRELOAD_HINT = (
    "add timescaledb to shared_preload_libraries in postgresql.conf and restart the server"
)


class Mode(StrEnum):
    AUTO = "auto"  # use TimescaleDB when the server can load it
    ON = "on"  # require it: fail when it is missing
    OFF = "off"  # never use it


# The value of ``--retention`` that removes a retention policy.
NO_RETENTION = "forever"

_INTERVAL_RE = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")
_UNITS = {
    "h": "hours",
    "hour": "hours",
    "hours": "hours",
    "d": "days",
    "day": "days",
    "days": "days",
    "w": "weeks",
    "week": "weeks",
    "weeks": "weeks",
}


def interval(text: str) -> str:
    """``"90d"``, ``"90 days"``, ``"12h"``, ``"2w"`` -> a PostgreSQL interval (``"90 days"``).

    The result is interpolated into SQL (TimescaleDB's policy functions take literals), so only
    this exact shape is accepted. Raises ``ValueError`` with the accepted forms otherwise.
    """
    match = _INTERVAL_RE.match(text.lower())
    unit = _UNITS.get(match.group(2)) if match else None
    if match is None or unit is None or int(match.group(1)) <= 0:
        raise ValueError(
            f"{text!r} is not a duration: use a positive whole number of hours, days or weeks, "
            "e.g. 12h, 90d or 2w"
        )
    return f"{int(match.group(1))} {unit}"


def retention(text: str) -> str:
    """``--retention``'s value: an :func:`interval`, or ``forever`` (no retention policy)."""
    if text.strip().lower() in (NO_RETENTION, "none", "off"):
        return NO_RETENTION
    return interval(text)


@dataclass(frozen=True, slots=True)
class Settings:
    """How the time tables use TimescaleDB: the mode, the compression delay and the retention."""

    mode: Mode = Mode.AUTO
    compress_after: str = "2 days"
    retention: str | None = None  # an interval, NO_RETENTION, or None: leave policies alone


async def extension_available(connection: asyncpg.Connection) -> bool:
    return bool(
        await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
        )
    )


async def extension_preloaded(connection: asyncpg.Connection) -> bool:
    """Whether the server loads the library at start (required before CREATE EXTENSION)."""
    libraries = await connection.fetchval("SELECT current_setting('shared_preload_libraries')")
    names = {name.strip().strip('"').rsplit("/", 1)[-1] for name in str(libraries).split(",")}
    return any(name.split("-", 1)[0] == "timescaledb" for name in names)


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
    if not await extension_preloaded(connection):
        # Touching the extension's catalog would end the session with FATAL.
        raise MigrationError(
            "this database uses TimescaleDB but the server does not preload it: " + PRELOAD_HINT
        )
    rows = await connection.fetch(
        "SELECT hypertable_name FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = current_schema()"
    )
    return {r["hypertable_name"] for r in rows}


def hypertable_statements(table: Table, *, compress_after: str = "2 days") -> list[str]:
    """The SQL that turns an empty, natively partitioned ``table`` into a compressed hypertable."""
    name = quote_ident(table.name)
    old = quote_ident(f"{table.name}_native")
    # Compressed chunks keep unique keys only over segmentby/orderby columns: segment by
    # instrument, order by ts and the rest of the key.
    order = ["ts", *(c for c in table.key if c not in ("instrument", "ts"))]
    return [
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


async def retention_policies(connection: asyncpg.Connection) -> dict[str, datetime.timedelta]:
    """hypertable name -> its retention policy's ``drop_after``, for this schema's hypertables."""
    rows = await connection.fetch(
        "SELECT hypertable_name, (config->>'drop_after')::interval AS drop_after "
        "FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_retention' AND hypertable_schema = current_schema()"
    )
    return {row["hypertable_name"]: row["drop_after"] for row in rows}


async def apply_retention(
    connection: asyncpg.Connection, tables: set[str], retention: str | None
) -> None:
    """Give each of ``tables`` (hypertables) exactly the retention ``retention`` asks for."""
    if retention is None:
        return
    current = await retention_policies(connection)
    wanted = None
    if retention != NO_RETENTION:
        wanted = await connection.fetchval("SELECT $1::text::interval", retention)
    for table in sorted(tables):
        have = current.get(table)
        if have == wanted:
            continue
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", TIMESCALE_LOCK_KEY)
            if have is not None:
                await connection.execute(
                    "SELECT remove_retention_policy($1::regclass, if_exists => true)", table
                )
            if wanted is not None:
                await connection.execute(
                    f"SELECT add_retention_policy($1::regclass, INTERVAL '{retention}')", table
                )
        if wanted is None:
            log.info("%s: retention policy removed (rows are kept)", table)
        else:
            log.info("%s: chunks older than %s are dropped", table, retention)


async def enable(connection: asyncpg.Connection, settings: Settings | None = None) -> set[str]:
    """Make the time tables hypertables when the settings and the server allow; returns them."""
    settings = settings if settings is not None else Settings()
    mode = settings.mode
    if mode is Mode.OFF:
        return set()
    if not await extension_available(connection):
        if mode is Mode.ON:
            raise MigrationError("TimescaleDB was required but the server does not have it")
        log.debug("TimescaleDB is not available: the time tables stay natively partitioned")
        return set()
    if not await extension_preloaded(connection):
        if mode is Mode.ON:
            raise MigrationError(
                f"TimescaleDB was required but the server does not preload it: {PRELOAD_HINT}"
            )
        log.warning(
            "TimescaleDB is installed but not preloaded, so the time tables stay natively "
            "partitioned: to use it, %s",
            PRELOAD_HINT,
        )
        return set()
    try:
        async with connection.transaction():
            # Several collectors start at once: without the lock two CREATE EXTENSION race on
            # pg_extension's unique name index.
            await connection.execute("SELECT pg_advisory_xact_lock($1)", TIMESCALE_LOCK_KEY)
            await connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
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
            for statement in hypertable_statements(table, compress_after=settings.compress_after):
                await connection.execute(statement)
        log.info("%s is now a TimescaleDB hypertable with compression", table.name)
    hyper = await hypertables(connection)
    await apply_retention(connection, hyper, settings.retention)
    return hyper
