"""Where batches go: the :class:`BatchSink` seam, and the PostgreSQL sink behind it.

The writer (:mod:`optionfeed.store.writer`) buffers rows and hands whole batches to a sink. A sink
either commits a batch and says how many rows each table stored, or raises
:class:`~optionfeed.store.errors.BatchNotWritten` and keeps nothing half-done. That is the seam a
disk spool plugs into: a spool is another ``BatchSink`` (the writer's ``fallback``) that takes the
batches the database could not, and later replays them into a :class:`PostgresSink`. Replays are
idempotent because every table merges on its natural key.

:class:`PostgresSink` writes a batch in one transaction: per table, a binary COPY into the
connection's temporary staging table, then ``INSERT … SELECT … ON CONFLICT`` into the table
(:meth:`optionfeed.store.tables.Table.merge_sql`). Before that it makes sure every day the batch
touches has a partition.

A row the database refuses (a value out of range, a character PostgreSQL text cannot hold) must
not block the rows around it forever. When a batch fails with a data error, the sink writes each
table's rows in halves, recursively, until the refused rows are isolated; those become
``rejected_messages`` rows carrying the error and the row's text, and the rest is stored.
Connection, timeout and server-side failures are never treated that way: the batch is returned
to the writer whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Protocol

import asyncpg
from opentelemetry import trace

from optionfeed.settings import mask_url
from optionfeed.store import migrations, timescale
from optionfeed.store.connection import DEFAULT_CONNECT_TIMEOUT, create_pool
from optionfeed.store.errors import BatchNotWritten, SchemaMismatch, WriterClosed
from optionfeed.store.partitions import Partitions, day_of
from optionfeed.store.records import rejected_row
from optionfeed.store.tables import ALL, MS_PER_DAY, REJECTED, Row, Table

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


@dataclass(slots=True)
class Batch:
    """Rows taken from the writer's buffer together, per table; written all or nothing."""

    seq: int
    rows: dict[Table, list[Row]]

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def counts(self) -> dict[str, int]:
        return {t.name: len(r) for t, r in self.rows.items()}


@dataclass(slots=True)
class WriteResult:
    """What a sink did with a batch."""

    committed_at: float  # time.time() just after the commit
    inserted: dict[str, int] = field(default_factory=dict)  # rows stored after deduplication
    durations: dict[str, float] = field(default_factory=dict)  # seconds per table, COPY + merge
    rejected: int = 0  # rows refused by the database, stored as rejected_messages instead


class BatchSink(Protocol):
    """Takes whole batches. ``write`` commits all of a batch or raises ``BatchNotWritten``."""

    async def open(self) -> None: ...

    async def write(self, batch: Batch) -> WriteResult: ...

    async def close(self) -> None: ...


# Errors that come from the rows themselves (encoding in the client, or class 22/23 on the server).
# asyncpg's client-side DataError is a ValueError.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    TypeError,
    ValueError,
    OverflowError,
)

# Failures of the connection or the server, not of the rows: the batch is retried whole.
# InternalClientError is what asyncpg raises when a connection broke mid-exchange.
_FAILURES: tuple[type[BaseException], ...] = (
    TimeoutError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def _is_missing_partition(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition" in str(exc)


def classify(exc: BaseException) -> str:
    """The ``write_errors_total`` reason for a failure that is not about the rows."""
    if isinstance(exc, TimeoutError | asyncpg.QueryCanceledError):
        return "timeout"
    if isinstance(
        exc,
        OSError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | asyncpg.OperatorInterventionError
        | asyncpg.CannotConnectNowError,
    ):
        return "connection"
    if isinstance(exc, asyncpg.InsufficientResourcesError):
        return "resources"
    if isinstance(exc, asyncpg.TransactionRollbackError | asyncpg.LockNotAvailableError):
        return "conflict"
    return "database"


def _inserted(status: str) -> int:
    # "INSERT 0 <n>"
    return int(status.rsplit(" ", 1)[-1])


_TYPE_NAMES = {"timestamptz": "timestamp with time zone"}


async def check_schema(connection: asyncpg.Connection, tables: Iterable[Table]) -> None:
    """Raise :class:`SchemaMismatch` unless every column the program writes exists, typed alike."""
    problems: list[str] = []
    for table in tables:
        rows = await connection.fetch(
            """
            SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
            FROM pg_attribute a
            WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
            """,
            table.name,
        )
        if not rows:
            problems.append(f"table {table.name} is missing")
            continue
        have = {r["attname"]: r["type"] for r in rows}
        for column in table.columns:
            want = _TYPE_NAMES.get(column.sql_type, column.sql_type)
            got = have.get(column.name)
            if got is None:
                problems.append(f"{table.name}.{column.name} is missing")
            elif got != want:
                problems.append(f"{table.name}.{column.name} is {got}, expected {want}")
    if problems:
        raise SchemaMismatch(
            "the database does not have the tables this program writes ("
            + "; ".join(problems)
            + "): run `optionfeed migrate`"
        )


class PostgresSink:
    """Commits batches into PostgreSQL through a pool it owns from ``open()`` to ``close()``."""

    def __init__(
        self,
        url: str,
        *,
        tables: Iterable[Table] = ALL,
        pool_size: int = 2,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        write_timeout: float = 60.0,
        close_timeout: float = 10.0,
        migrate: bool = True,
        timescale_settings: timescale.Settings | None = None,
        partitions_ahead: int = 3,
    ) -> None:
        self.url = url
        self.tables = tuple(tables)
        if REJECTED not in self.tables:
            # Refused rows are stored there; the staging table must exist on every connection.
            self.tables = (*self.tables, REJECTED)
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._close_timeout = close_timeout
        self._migrate = migrate
        self._timescale = timescale_settings or timescale.Settings()
        self._ahead = partitions_ahead
        self._ahead_day: int | None = None
        self._pool: asyncpg.Pool | None = None
        self._merge_sql: dict[str, str] = {t.name: t.merge_sql() for t in self.tables}
        self.partitions = Partitions(self.tables)

    def __repr__(self) -> str:
        return f"PostgresSink({mask_url(self.url)})"

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, migrate (unless told not to), check the schema, make today's partitions."""
        pool = await create_pool(
            self.url,
            self.tables,
            min_size=1,
            max_size=self._pool_size,
            connect_timeout=self._connect_timeout,
        )
        try:
            async with pool.acquire() as connection:
                if self._migrate:
                    await migrations.migrate(connection)
                    hyper = await timescale.enable(connection, self._timescale)
                else:
                    hyper = await timescale.hypertables(connection)
                await check_schema(connection, self.tables)
                self.partitions.exclude(hyper)
                await self._ensure_ahead(connection)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close the pool gracefully; terminate it if that takes longer than ``close_timeout``."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._close_timeout):
                await pool.close()
        except asyncio.CancelledError:
            pool.terminate()
            raise
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("the database pool did not close cleanly (%r): terminated it", exc)
            pool.terminate()

    # ------------------------------------------------------------------ writing

    async def write(self, batch: Batch) -> WriteResult:
        pool = self._pool
        if pool is None:
            raise WriterClosed()
        try:
            connection = await pool.acquire(timeout=self._connect_timeout)
        except _FAILURES as exc:
            raise BatchNotWritten(classify(exc), exc) from exc
        try:
            await self._ensure_partitions(connection, batch)
            try:
                return await self._commit(connection, batch.rows)
            except _DATA_ERRORS as exc:
                if _is_missing_partition(exc):
                    self.partitions.invalidate()
                    raise BatchNotWritten("partition", exc) from exc
                log.warning(
                    "batch %d (%d rows) holds rows the database refuses (%s): isolating them",
                    batch.seq,
                    batch.count,
                    exc,
                )
                return await self._isolate(connection, batch)
        except BatchNotWritten:
            raise
        except _FAILURES as exc:
            # The connection may be half-way through a protocol exchange: never reuse it.
            _discard(connection)
            raise BatchNotWritten(classify(exc), exc) from exc
        except BaseException:
            _discard(connection)  # cancelled mid-COPY: the same
            raise
        finally:
            # A reset that fails on release terminates the connection, and the pool makes a new
            # one on the next acquire: the batch's outcome is already decided above.
            with contextlib.suppress(*_FAILURES):
                await pool.release(connection)

    async def _ensure_ahead(self, connection: asyncpg.Connection) -> None:
        now_ms = int(time.time() * 1000)
        await self.partitions.ensure_ahead(connection, now_ms, ahead=self._ahead)
        self._ahead_day = day_of(now_ms)

    async def _ensure_partitions(self, connection: asyncpg.Connection, batch: Batch) -> None:
        if self._ahead_day != day_of(int(time.time() * 1000)):
            await self._ensure_ahead(connection)
        for table, rows in batch.rows.items():
            index = table.ts_index
            if index is None or not self.partitions.manages(table):
                continue
            try:
                days = {ts // MS_PER_DAY for ts in map(itemgetter(index), rows)}
            except TypeError:
                # A row built by hand with a bad ts: the merge refuses it and it is isolated.
                days = {ts // MS_PER_DAY for ts in map(itemgetter(index), rows) if type(ts) is int}
            if self.partitions.missing(table, days):
                await self.partitions.ensure(connection, table, days)

    async def _commit(
        self, connection: asyncpg.Connection, rows: Mapping[Table, list[Row]]
    ) -> WriteResult:
        inserted: dict[str, int] = {}
        durations: dict[str, float] = {}
        async with asyncio.timeout(self._write_timeout):
            async with connection.transaction():
                for table, table_rows in rows.items():
                    if not table_rows:
                        continue
                    with tracer.start_as_current_span(
                        "optionfeed.flush.table",
                        attributes={
                            "db.collection.name": table.name,
                            "optionfeed.rows": len(table_rows),
                        },
                    ) as span:
                        started = time.perf_counter()
                        await connection.copy_records_to_table(
                            table.staging_name, records=table_rows
                        )
                        copied = time.perf_counter()
                        status = await connection.execute(self._merge_sql[table.name])
                        merged = time.perf_counter()
                        inserted[table.name] = _inserted(status)
                        durations[table.name] = merged - started
                        span.set_attributes(
                            {
                                "optionfeed.rows.inserted": inserted[table.name],
                                "optionfeed.copy.seconds": copied - started,
                                "optionfeed.merge.seconds": merged - copied,
                            }
                        )
        return WriteResult(time.time(), inserted, durations)

    async def _isolate(self, connection: asyncpg.Connection, batch: Batch) -> WriteResult:
        """Store what can be stored, table by table; refused rows become rejected_messages."""
        result = WriteResult(0.0)
        refused: list[Row] = []
        for table, rows in batch.rows.items():
            await self._bisect(connection, table, rows, result, refused)
        if refused:
            log.error(
                "batch %d: %d row(s) refused by the database, stored in rejected_messages",
                batch.seq,
                len(refused),
            )
            done = await self._commit(connection, {REJECTED: refused})
            _merge(result, done)
            result.rejected = len(refused)
        result.committed_at = time.time()
        return result

    async def _bisect(
        self,
        connection: asyncpg.Connection,
        table: Table,
        rows: list[Row],
        result: WriteResult,
        refused: list[Row],
    ) -> None:
        try:
            done = await self._commit(connection, {table: rows})
        except _DATA_ERRORS as exc:
            if _is_missing_partition(exc):
                self.partitions.invalidate()
                raise BatchNotWritten("partition", exc) from exc
            if len(rows) == 1:
                reason = f"the database refused this {table.name} row: {exc}"
                refused.append(rejected_row(reason, repr(rows[0]), time.time(), None))
                return
            middle = len(rows) // 2
            await self._bisect(connection, table, rows[:middle], result, refused)
            await self._bisect(connection, table, rows[middle:], result, refused)
            return
        _merge(result, done)


def _discard(connection: asyncpg.Connection) -> None:
    # A connection the server closed is already back in the pool, detached: nothing to do then.
    with contextlib.suppress(asyncpg.InterfaceError):
        connection.terminate()


def _merge(into: WriteResult, other: WriteResult) -> None:
    for name, n in other.inserted.items():
        into.inserted[name] = into.inserted.get(name, 0) + n
    for name, seconds in other.durations.items():
        into.durations[name] = into.durations.get(name, 0.0) + seconds
