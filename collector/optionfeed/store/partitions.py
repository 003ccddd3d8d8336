"""Daily partitions of the time tables: made ahead of time, and on demand for any day written.

A partitioned table without a partition for a row's day rejects the row, so the writer calls
:meth:`Partitions.ensure` with the days of a batch before it writes it. The days already known to
exist are cached, so in steady state this costs a set lookup per table and batch. Days are counted
in whole UTC days since the Unix epoch (``ts_ms // 86_400_000``).

Partitions are named ``<table>_pYYYYMMDD`` and span ``[day 00:00 UTC, next day 00:00 UTC)``.
Creating one takes a transaction-scoped advisory lock, so collectors that start together (or a
collector and ``optionfeed migrate``) never race on the same ``CREATE TABLE``. A partition made by
hand under another name that already covers the day is accepted as it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg

from optionfeed.store.tables import MS_PER_DAY, Table, quote_ident

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key for partition DDL (any constant unique to optionfeed).
PARTITION_LOCK_KEY = 0x6F70_7466_7061_7274  # "optfpart"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAME_RE = re.compile(r"_p(\d{8})$")


def day_of(ts_ms: int) -> int:
    """The UTC day (days since 1970-01-01) of an epoch-milliseconds timestamp."""
    return ts_ms // MS_PER_DAY


def date_of(day: int) -> datetime:
    return _EPOCH + timedelta(days=day)


def partition_name(table: Table, day: int) -> str:
    return f"{table.name}_p{date_of(day):%Y%m%d}"


def partition_ddl(table: Table, day: int) -> str:
    start = date_of(day)
    end = start + timedelta(days=1)
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_ident(partition_name(table, day))} "
        f"PARTITION OF {quote_ident(table.name)} "
        f"FOR VALUES FROM ('{start:%Y-%m-%d %H:%M:%S}+00') TO ('{end:%Y-%m-%d %H:%M:%S}+00')"
    )


async def existing_days(connection: asyncpg.Connection, table: Table) -> set[int]:
    """Days that have a partition named by :func:`partition_name`."""
    names = await connection.fetch(
        """
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = $1 AND p.relnamespace = to_regnamespace(current_schema())
        """,
        table.name,
    )
    days: set[int] = set()
    for record in names:
        match = _NAME_RE.search(record["relname"])
        if match is None:
            continue
        day = datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC)
        days.add((day - _EPOCH).days)
    return days


class Partitions:
    """The partitions known to exist, per table, and the DDL that adds the missing ones."""

    def __init__(self, tables: Iterable[Table]) -> None:
        self.tables = tuple(t for t in tables if t.partitioned)
        self._known: dict[str, set[int]] = {}

    def exclude(self, names: Iterable[str]) -> None:
        """Stop managing these tables (TimescaleDB hypertables make their own chunks)."""
        drop = set(names)
        self.tables = tuple(t for t in self.tables if t.name not in drop)

    def manages(self, table: Table) -> bool:
        return table in self.tables

    def invalidate(self) -> None:
        """Forget what is known; the next :meth:`ensure` asks the catalog again."""
        self._known.clear()

    def missing(self, table: Table, days: Iterable[int]) -> set[int]:
        known = self._known.get(table.name)
        wanted = set(days)
        return wanted if known is None else wanted - known

    async def ensure(
        self, connection: asyncpg.Connection, table: Table, days: Iterable[int]
    ) -> int:
        """Make sure ``table`` has a partition for each of ``days``; returns how many were made."""
        if table not in self.tables:
            return 0
        missing = self.missing(table, days)
        if not missing:
            return 0
        created = 0
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
            # Under the lock, the catalog is the truth: another collector may have just made some.
            known = self._known[table.name] = await existing_days(connection, table)
            for day in sorted(missing - known):
                try:
                    async with connection.transaction():
                        await connection.execute(partition_ddl(table, day))
                except asyncpg.InvalidObjectDefinitionError as exc:
                    # Another partition (made by hand, under another name) covers the day.
                    log.debug("%s: day %s already covered: %s", table.name, date_of(day), exc)
                    continue
                created += 1
        known.update(missing)
        if created:
            log.info(
                "%s: created %d daily partition(s) from %s to %s",
                table.name,
                created,
                f"{date_of(min(missing)):%Y-%m-%d}",
                f"{date_of(max(missing)):%Y-%m-%d}",
            )
        return created

    async def ensure_ahead(
        self, connection: asyncpg.Connection, now_ms: int, *, behind: int = 1, ahead: int = 3
    ) -> int:
        """Partitions from ``behind`` days before today to ``ahead`` days after, for every table."""
        today = day_of(now_ms)
        days = range(today - behind, today + ahead + 1)
        created = 0
        for table in self.tables:
            created += await self.ensure(connection, table, days)
        return created
