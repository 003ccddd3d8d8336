"""The batch writer: a bounded buffer of rows in front of a ``BatchSink``.

::

    async with Writer.connect(database_url, metrics=Metrics()) as writer:
        await writer.put(tables.TICKERS, normalize.ticker_row(data, recv_ts))
    # Every row put above is now committed, and the connection pool is closed.

Flushing. One task, the flusher, takes everything buffered as one batch and hands it to the sink
when the buffer holds ``batch_rows`` rows, when its oldest row is ``max_age`` seconds old (250 ms
by default), when a producer is waiting for room, or on :meth:`Writer.flush` and close. While a
batch is being written the next one accumulates, so batches grow by themselves when the database
is slower than the feed.

Backpressure. The buffer holds at most ``capacity_rows`` rows, counting the batch being written.
When it is full, :meth:`Writer.put` waits until a commit makes room: the reader is slowed, no row
is dropped. ``optionfeed_buffer_rows`` and ``optionfeed_buffer_fill_ratio`` show the fill.

Failures. A batch the sink could not commit (``BatchNotWritten``: connection lost, timeout, the
server refusing writes) is kept and written again after a capped, jittered, exponential backoff,
for as long as it takes; every attempt increments ``optionfeed_write_errors_total{reason}`` and
logs a warning. With a ``fallback`` sink (the disk spool), the batch goes there after
``fallback_after`` failed attempts instead, and the writer moves on. Rows the database refuses
outright are isolated by the sink and stored in ``rejected_messages``.

Metrics. ``optionfeed_rows_written_total{table}`` counts rows the merges stored, after
deduplication (a row already in the table is not counted again); :attr:`Writer.stats` also keeps
the rows received per table, so ``stats.duplicates`` is what the natural keys left out (with
redundant collectors, about half). ``optionfeed_commit_lag_seconds{table}`` observes, for every
committed row of a time table (duplicates included: they were committed by someone), the time
from its exchange timestamp to the commit. ``optionfeed_write_duration_seconds{table}`` times
each table's COPY and merge.

Shutdown. :meth:`Writer.close` (and leaving the ``async with``) stops accepting rows, writes every
buffered row, and only then closes the sink and its pool. The pool belongs to the sink, the sink to
the writer, and nothing else holds either, so no code can meet a closed pool. The guarantee,
cancellation included: once ``close()`` has begun, every row accepted by ``put()`` ends up
committed, handed to the fallback, or, if ``close_timeout`` passes first (the database is down),
counted in ``optionfeed_dropped_rows_total{reason="shutdown"}``, logged with its count per table
and reported by :class:`~optionfeed.store.errors.UnwrittenRows`. Cancelling ``close()`` does not
cut this short: the cancellation is held until the flush has finished or ``close_timeout`` has
passed, then re-raised. A ``put()`` still waiting for room when close gives up raises
:class:`~optionfeed.store.errors.WriterClosed`; its row was never accepted. If the flusher is
cancelled without ``close()`` (an event loop torn down under a writer never closed), the rows it
held are counted with ``reason="cancelled"`` and logged: lost, but never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from optionfeed.backoff import Backoff
from optionfeed.store import timescale
from optionfeed.store.connection import DEFAULT_CONNECT_TIMEOUT
from optionfeed.store.errors import (
    BatchNotWritten,
    UnwrittenRows,
    WriterClosed,
    WriterFailed,
)
from optionfeed.store.lag import observe_lags
from optionfeed.store.sink import Batch, BatchSink, PostgresSink, WriteResult
from optionfeed.store.tables import ALL, Row, Table

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

DEFAULT_BATCH_ROWS = 10_000
DEFAULT_MAX_AGE = 0.25
DEFAULT_CAPACITY_ROWS = 50_000
DEFAULT_CLOSE_TIMEOUT = 30.0


@dataclass(slots=True)
class WriterStats:
    """Counters of one writer, for logs and progress displays (metrics carry the same)."""

    received: dict[str, int] = field(default_factory=dict)  # rows taken into batches
    inserted: dict[str, int] = field(default_factory=dict)  # rows stored after deduplication
    batches: int = 0  # batches committed
    failed_attempts: int = 0  # write attempts that failed and were retried
    handed_on: int = 0  # rows given to the fallback sink
    rejected: int = 0  # rows the database refused (now in rejected_messages)
    waits_for_room: int = 0  # times a put() waited because the buffer was full

    @property
    def duplicates(self) -> int:
        """Rows committed but left out by the natural keys (already stored)."""
        return max(0, sum(self.received.values()) - sum(self.inserted.values()) - self.handed_on)


class WriterMetrics(Protocol):
    """The metrics the writer records (names in ``optionfeed.telemetry.metrics``, whose
    ``Metrics`` provides them; the store layer does not import telemetry)."""

    rows_written_total: Counter
    buffer_rows: Gauge
    buffer_capacity_rows: Gauge
    buffer_fill_ratio: Gauge
    write_duration_seconds: Histogram
    write_errors_total: Counter
    commit_lag_seconds: Histogram
    last_commit_timestamp_seconds: Gauge
    rejected_messages_total: Counter
    dropped_rows_total: Counter


class Fallback(BatchSink, Protocol):
    """A sink that keeps batches for later (the disk spool) and gives them back in order."""

    @property
    def engaged(self) -> bool:
        """Batches are waiting in it; new ones must not skip ahead of a database that is down."""
        ...

    async def replay(self, write: Callable[[Batch], Awaitable[WriteResult]]) -> int:
        """Write its oldest batches with ``write``; rows replayed (0 when it held none)."""
        ...


class Writer:
    """Buffers rows per table and writes them in batches through a sink; see the module doc."""

    def __init__(
        self,
        sink: BatchSink,
        *,
        metrics: WriterMetrics,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        max_age: float = DEFAULT_MAX_AGE,
        capacity_rows: int = DEFAULT_CAPACITY_ROWS,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        fallback: Fallback | None = None,
        fallback_after: int = 3,
        retry_base: float = 0.1,
        retry_cap: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if batch_rows < 1 or capacity_rows < 1:
            raise ValueError("batch_rows and capacity_rows must be at least 1")
        if max_age <= 0 or close_timeout < 0:
            raise ValueError("max_age must be > 0 and close_timeout >= 0")
        self._sink = sink
        self._fallback = fallback
        self._fallback_after = max(1, fallback_after)
        self.metrics = metrics
        self._batch_rows = batch_rows
        self._max_age = max_age
        self._capacity = capacity_rows
        self._close_timeout = close_timeout
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._rng = rng or random.Random()
        # A zero series per table from the start: the first rows written show in rate() and
        # increase(), and a dashboard lists every table before its first commit.
        for table in ALL:
            metrics.rows_written_total.labels(table.name)
        self.stats = WriterStats()
        self.last_commit_at = 0.0  # time.time() of the last commit, 0 before the first

        self._buffers: dict[str, list[Row]] = {}
        self._tables: dict[str, Table] = {}
        self._count = 0  # rows buffered, not yet taken into a batch
        self._inflight: Batch | None = None  # the batch being written
        self._inflight_rows = 0
        self._oldest = 0.0  # loop time when the buffer last became non-empty
        self._seq = 0  # last batch taken
        self._done_seq = 0  # last batch committed or handed on
        self._flush_now = False
        self._waiting = 0  # put() calls waiting for room
        self._closing = False
        self._closed = False
        self._stopped = False  # the flusher has exited
        self._failure: BaseException | None = None
        self._last_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._spooled = asyncio.Event()  # a batch went to the fallback: wake the replay
        self._fallback_failing = False  # reported once per episode, not once per attempt
        self._wake = asyncio.Event()  # the flusher should look at the buffer
        self._room = asyncio.Event()  # a commit made room, or the writer stopped
        self._progress = asyncio.Event()  # a batch finished

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        metrics: WriterMetrics,
        tables: Iterable[Table] = ALL,
        migrate: bool = True,
        timescale_settings: timescale.Settings | None = None,
        pool_size: int = 2,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        write_timeout: float = 60.0,
        **options: Any,
    ) -> Writer:
        """A writer into the PostgreSQL database at ``url``; ``options`` are the writer's."""
        sink = PostgresSink(
            url,
            tables=tables,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            write_timeout=write_timeout,
            migrate=migrate,
            timescale_settings=timescale_settings,
        )
        return cls(sink, metrics=metrics, **options)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Writer:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the sink (connect, migrate, check) and start the flusher."""
        if self._task is not None or self._closed:
            raise RuntimeError("a writer is opened once")
        await self._sink.open()
        if self._fallback is not None:
            try:
                await self._fallback.open()
            except BaseException:
                await self._sink.close()
                raise
        self._loop = asyncio.get_running_loop()
        m = self.metrics
        m.buffer_capacity_rows.set(self._capacity)
        m.buffer_rows.set_function(lambda: self._count + self._inflight_rows)
        m.buffer_fill_ratio.set_function(
            lambda: (self._count + self._inflight_rows) / self._capacity
        )
        self._task = asyncio.create_task(self._run(), name="optionfeed-writer")
        if self._fallback is not None:
            self._replay_task = asyncio.create_task(self._replay(), name="optionfeed-spool-replay")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered_rows(self) -> int:
        """Rows accepted and not yet committed (buffered plus the batch being written)."""
        return self._count + self._inflight_rows

    @property
    def capacity_rows(self) -> int:
        return self._capacity

    @property
    def fill_ratio(self) -> float:
        return self.buffered_rows / self._capacity

    # ------------------------------------------------------------------ producers

    async def put(self, table: Table, row: Row) -> None:
        """Buffer one row of ``table``; waits while the buffer is full."""
        if self._closing or self._count + self._inflight_rows >= self._capacity:
            await self._wait_for_room()
        rows = self._buffers.get(table.name)
        if rows is None:
            rows = self._new_buffer(table)
        rows.append(row)
        self._count += 1
        if self._count == 1:
            self._oldest = self._loop.time()  # type: ignore[union-attr]
            self._wake.set()
        elif self._count == self._batch_rows:
            self._wake.set()

    async def put_many(self, table: Table, rows: Sequence[Row]) -> None:
        """Buffer several rows of one table (a trades message); waits while the buffer is full."""
        start = 0
        while start < len(rows):
            if self._closing or self._count + self._inflight_rows >= self._capacity:
                await self._wait_for_room()
            room = max(1, self._capacity - self._count - self._inflight_rows)
            chunk = rows[start : start + room]
            buffer = self._buffers.get(table.name)
            if buffer is None:
                buffer = self._new_buffer(table)
            was_empty = self._count == 0
            buffer.extend(chunk)
            self._count += len(chunk)
            start += len(chunk)
            if was_empty:
                self._oldest = self._loop.time()  # type: ignore[union-attr]
                self._wake.set()
            elif self._count >= self._batch_rows:
                self._wake.set()

    def _new_buffer(self, table: Table) -> list[Row]:
        if self._task is None:
            raise WriterClosed()
        rows: list[Row] = []
        self._buffers[table.name] = rows
        self._tables[table.name] = table
        return rows

    async def _wait_for_room(self) -> None:
        if self._closing or self._task is None:
            raise WriterClosed()
        self._raise_if_failed()
        self._waiting += 1
        self.stats.waits_for_room += 1
        self._wake.set()  # a waiting producer is reason enough to flush now
        try:
            while self._count + self._inflight_rows >= self._capacity:
                # Checked before every wait: a stopped flusher will never make room.
                self._raise_if_failed()
                if self._stopped:
                    raise WriterClosed()
                self._room.clear()
                await self._room.wait()
        finally:
            self._waiting -= 1

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise WriterFailed(self._failure) from self._failure

    async def flush(self) -> None:
        """Write everything put so far; returns once it is committed (or handed on)."""
        if self._task is None:
            raise WriterClosed()
        target = self._seq + 1 if self._count else self._seq
        self._flush_now = True
        self._wake.set()
        while self._done_seq < target:
            self._raise_if_failed()
            if self._stopped:
                raise WriterClosed()
            self._progress.clear()
            await self._progress.wait()

    # ------------------------------------------------------------------ the flusher

    async def _run(self) -> None:
        assert self._loop is not None
        try:
            while True:
                if self._count == 0:
                    if self._closing and self._waiting == 0:
                        return
                    self._flush_now = False
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                due = (
                    self._closing
                    or self._flush_now
                    or self._waiting > 0
                    or self._count >= self._batch_rows
                )
                if not due:
                    delay = self._oldest + self._max_age - self._loop.time()
                    if delay > 0:
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(delay):
                                await self._wake.wait()
                        continue
                self._flush_now = False
                await self._deliver(self._take())
        except asyncio.CancelledError:
            if not self._closing:
                self._report_dropped("cancelled", self._unwritten())
            raise
        except BaseException as exc:
            self._failure = exc
            log.exception("the writer's flush task failed")
            raise
        finally:
            self._stopped = True
            self._room.set()
            self._progress.set()

    def _take(self) -> Batch:
        buffers, self._buffers = self._buffers, {}
        self._seq += 1
        batch = Batch(self._seq, {self._tables[n]: rows for n, rows in buffers.items() if rows})
        self._inflight = batch
        self._inflight_rows = self._count
        self._count = 0
        received = self.stats.received
        for table, rows in batch.rows.items():
            received[table.name] = received.get(table.name, 0) + len(rows)
        return batch

    async def _deliver(self, batch: Batch) -> None:
        """Write one batch, traced: a span per flush, its tables' COPY and merge as children."""
        with tracer.start_as_current_span(
            "optionfeed.flush",
            attributes={
                "optionfeed.batch.seq": batch.seq,
                "optionfeed.batch.rows": batch.count,
                "optionfeed.batch.tables": sorted(batch.counts()),
            },
        ) as span:
            failed, handed_on = self.stats.failed_attempts, self.stats.handed_on
            await self._write_batch(batch)
            span.set_attributes(
                {
                    "optionfeed.batch.failed_attempts": self.stats.failed_attempts - failed,
                    "optionfeed.batch.outcome": (
                        "spooled" if self.stats.handed_on != handed_on else "committed"
                    ),
                }
            )

    async def _write_batch(self, batch: Batch) -> None:
        backoff = Backoff(self._retry_base, self._retry_cap, self._rng)
        attempts = 0
        while True:
            fallback = self._fallback
            if fallback is not None and fallback.engaged and await self._hand_on(batch):
                return  # the database is behind the spool: queue there, don't wait on it
            try:
                result = await self._sink.write(batch)
            except BatchNotWritten as exc:
                attempts += 1
                self._last_error = exc
                self.stats.failed_attempts += 1
                self.metrics.write_errors_total.labels(exc.reason).inc()
                if attempts <= 3 or attempts % 20 == 0:
                    log.warning(
                        "batch %d (%d rows) not written, attempt %d: %s",
                        batch.seq,
                        batch.count,
                        attempts,
                        exc,
                    )
                fall_back = self._fallback is not None and attempts >= self._fallback_after
                if fall_back and await self._hand_on(batch):
                    return
                await asyncio.sleep(backoff.next_delay())
                continue
            self._committed(batch, result)
            return

    async def _hand_on(self, batch: Batch) -> bool:
        assert self._fallback is not None
        try:
            await self._fallback.write(batch)
        except Exception as exc:  # whatever the fallback's trouble, the batch stays with us
            self.metrics.write_errors_total.labels("fallback").inc()
            if not self._fallback_failing:
                log.error(
                    "batch %d could not be handed to the fallback either (%s); batches wait in "
                    "memory and producers are slowed until the database or the spool takes them",
                    batch.seq,
                    exc,
                )
            self._fallback_failing = True
            return False
        if self._fallback_failing:
            log.warning("the fallback takes batches again")
        self._fallback_failing = False
        self.stats.handed_on += batch.count
        if not self._spooled.is_set():
            log.warning(
                "the database is not taking writes: batches go to the disk spool from batch %d "
                "(%d rows) until it is back",
                batch.seq,
                batch.count,
            )
        self._spooled.set()
        self._finished(batch)
        return True

    def _committed(self, batch: Batch, result: WriteResult) -> None:
        self._account(batch, result)
        self.stats.batches += 1
        self._finished(batch)

    def _account(self, batch: Batch, result: WriteResult) -> None:
        """Metrics and stats of a batch the database committed (live or replayed)."""
        m = self.metrics
        stats = self.stats
        for name, n in result.inserted.items():
            m.rows_written_total.labels(name).inc(n)
            stats.inserted[name] = stats.inserted.get(name, 0) + n
        for name, seconds in result.durations.items():
            m.write_duration_seconds.labels(name).observe(seconds)
        for table, rows in batch.rows.items():
            index = table.ts_index
            if index is not None:
                observe_lags(
                    m.commit_lag_seconds.labels(table.name),
                    list(map(itemgetter(index), rows)),
                    result.committed_at,
                )
        if result.rejected:
            m.rejected_messages_total.labels("unstorable").inc(result.rejected)
            stats.rejected += result.rejected
        m.last_commit_timestamp_seconds.set(result.committed_at)
        self.last_commit_at = result.committed_at

    async def _replay(self) -> None:
        """Drain the fallback into the database whenever it holds batches and the database is up."""
        fallback = self._fallback
        assert fallback is not None
        backoff = Backoff(self._retry_base, self._retry_cap, self._rng)
        while True:
            if not fallback.engaged:
                self._spooled.clear()
                await self._spooled.wait()
                continue
            try:
                replayed = await fallback.replay(self._write_replayed)
            except BatchNotWritten as exc:
                self.metrics.write_errors_total.labels(exc.reason).inc()
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            if replayed and _drained(fallback):
                log.info("the disk spool is replayed into the database; writing directly again")

    async def _write_replayed(self, batch: Batch) -> WriteResult:
        result = await self._sink.write(batch)
        self._account(batch, result)
        return result

    def _finished(self, batch: Batch) -> None:
        self._inflight = None
        self._inflight_rows = 0
        self._done_seq = batch.seq
        self._room.set()
        self._progress.set()

    # ------------------------------------------------------------------ shutdown

    async def close(self) -> None:
        """Write every buffered row, then close the sink; see the module doc for the guarantee."""
        if self._closed:
            return
        task = self._task
        if task is None:
            self._closed = True
            return
        self._closing = True
        self._wake.set()
        if self._replay_task is not None:
            self._replay_task.cancel()
            await asyncio.gather(self._replay_task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._close_timeout
        cancelled = False
        while not task.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait({task}, timeout=remaining)
            except asyncio.CancelledError:
                # Held until the rows are written or the deadline passes; re-raised below.
                cancelled = True
        if not task.done():
            task.cancel()
            while not task.done():
                try:
                    await asyncio.wait({task})
                except asyncio.CancelledError:
                    cancelled = True
        failure = self._failure
        unwritten = self._unwritten()
        if unwritten and self._fallback is not None and await self._hand_remaining_on():
            unwritten = {}
        try:
            await self._sink.close()
        finally:
            if self._fallback is not None:
                await self._fallback.close()
            self._closed = True
        if unwritten:
            self._report_dropped("shutdown", unwritten)
            raise UnwrittenRows(unwritten, self._last_error or failure) from failure
        if failure is not None:
            raise WriterFailed(failure) from failure
        if cancelled:
            raise asyncio.CancelledError()

    def _unwritten(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        if self._inflight is not None:
            counts.update(self._inflight.counts())
        for name, rows in self._buffers.items():
            if rows:
                counts[name] = counts.get(name, 0) + len(rows)
        return counts

    async def _hand_remaining_on(self) -> bool:
        rows: dict[Table, list[Row]] = {}
        if self._inflight is not None:
            for table, table_rows in self._inflight.rows.items():
                rows.setdefault(table, []).extend(table_rows)
        for name, table_rows in self._buffers.items():
            rows.setdefault(self._tables[name], []).extend(table_rows)
        self._seq += 1
        batch = Batch(self._seq, rows)
        if await self._hand_on(batch):
            self._buffers = {}
            self._count = 0
            return True
        return False

    def _report_dropped(self, reason: str, unwritten: dict[str, int]) -> None:
        total = sum(unwritten.values())
        if not total:
            return
        self.metrics.dropped_rows_total.labels(reason).inc(total)
        log.error(
            "%d rows were not written (%s): %s; last error: %s",
            total,
            reason,
            ", ".join(f"{name} {n}" for name, n in sorted(unwritten.items())),
            self._last_error,
        )


def _drained(fallback: Fallback) -> bool:
    # A function, not an inline test: the replay just awaited, so `engaged` may have changed.
    return not fallback.engaged
