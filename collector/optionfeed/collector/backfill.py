"""Fetching missed trades through REST, by sequence number, inside Deribit's rate limits.

Each :class:`~optionfeed.collector.gaps.TradeRecovery` names an instrument and where its stream
stopped (``after_seq``), and possibly where it resumed (``upto_seq``). The backfiller pages through
``public/get_last_trades_by_instrument`` (``start_seq``/``end_seq``, 1,000 a page, ascending,
while ``has_more``) and writes every trade it gets. Duplicates are impossible: trades merge on
(instrument, trade_id). When the stream never delivered a trade of the instrument (so no sequence
number is known), the first page is fetched by time from the gap's start instead. What to ask
for, where paging stops and what counts as recovered is decided in
:mod:`optionfeed.collector.trade_pages`; this module does the requests.

Requests go through the collector's :class:`~optionfeed.collector.pacing.RequestPacer`, the same
credit buckets its WebSocket requests draw on, so backfill can never push the collector into
10028. Transient errors and an unreachable exchange are retried with backoff for as long as the
collector runs; an instrument the exchange no longer knows is given up with a log line.

Each trade of a page is checked on its own (:func:`~optionfeed.collector.normalize.split_trades`):
the good ones are stored, each malformed one becomes a ``rejected_messages`` row (its channel is
the REST method) and is not counted as recovered.

``rows_recovered`` counts the trades stored that the stream had not delivered: those before the
first trade the stream delivered after the gap, within ``upto_seq`` when it is known. A trade
counts once its row is handed to the writer, which stores every row normalisation accepts (rows
merge on their natural key; one the database refused anyway would be isolated into
``rejected_messages`` and logged by the writer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace

from optionfeed.backoff import Backoff
from optionfeed.collector.gaps import TradeRecovery
from optionfeed.collector.normalize import BadElement, split_trades
from optionfeed.collector.pacing import RequestPacer
from optionfeed.collector.router import RowSink
from optionfeed.collector.sequences import TradeSequences
from optionfeed.collector.trade_pages import (
    BySeq,
    ByTime,
    page_of,
    page_request,
    recovered,
    resume_after,
    rows_after,
)
from optionfeed.deribit.errors import ExchangeUnreachable, ProtocolError, RpcError
from optionfeed.deribit.rest import RestClient
from optionfeed.store import tables

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Recovered = Callable[[TradeRecovery, int, tuple[int, int] | None], None]
# Stores each bad element of a list as a rejection: (elements, of how many, when, where from).
RejectElements = Callable[[list[BadElement], int | None, float, str], Awaitable[None]]

_SEQ = tables.index_of(tables.TRADES, "trade_seq")


class Backfiller:
    def __init__(
        self,
        rest: RestClient,
        rows: RowSink,
        *,
        pacer: RequestPacer,
        trades: TradeSequences,
        on_recovered: Recovered,
        reject: RejectElements,
        workers: int = 2,
    ) -> None:
        self._rest = rest
        self._rows = rows
        self._pacer = pacer
        self._trades = trades
        self._on_recovered = on_recovered
        self._reject = reject
        self._workers = workers
        self._queue: asyncio.Queue[TradeRecovery] = asyncio.Queue()
        self.pending = 0
        self.fetched = 0

    def request(self, recovery: TradeRecovery) -> None:
        self.pending += 1
        self._queue.put_nowait(recovery)

    async def run(self) -> None:
        """Serve recoveries until cancelled."""
        async with asyncio.TaskGroup() as group:
            for n in range(self._workers):
                group.create_task(self._worker(), name=f"backfill-{n}")

    async def _worker(self) -> None:
        while True:
            recovery = await self._queue.get()
            try:
                await self._traced_recover(recovery)
            finally:
                self.pending -= 1
                self._queue.task_done()

    async def idle(self) -> None:
        """Until every requested recovery is done (tests and shutdown reports use it)."""
        await self._queue.join()

    async def _traced_recover(self, recovery: TradeRecovery) -> None:
        """One recovery in a span, the child of its gap's span when the gap has one."""
        gap = recovery.gap
        parent = trace.set_span_in_context(
            trace.NonRecordingSpan(gap.traced) if gap.traced is not None else trace.INVALID_SPAN
        )
        attributes: dict[str, str | int] = {
            "optionfeed.instrument": recovery.instrument,
            "optionfeed.gap.id": str(gap.gap_id),
            "optionfeed.gap.reason": gap.reason,
        }
        if recovery.after_seq is not None:
            attributes["optionfeed.backfill.after_seq"] = recovery.after_seq
        if recovery.upto_seq is not None:
            attributes["optionfeed.backfill.upto_seq"] = recovery.upto_seq
        with tracer.start_as_current_span(
            "optionfeed.backfill", context=parent, attributes=attributes
        ):
            await self._recover(recovery)

    async def _recover(self, recovery: TradeRecovery) -> None:
        backoff = Backoff(base=1.0, cap=30.0)
        stored: list[int] = []  # trade_seq of every trade stored
        fetched = 0
        highest: int | None = None  # the highest trade_seq the exchange gave, stored or not
        after = recovery.after_seq
        while True:
            request = page_request(recovery, after, time.time())
            try:
                page, has_more = await self._page(recovery.instrument, request)
            except (ExchangeUnreachable, RpcError, ProtocolError) as exc:
                if isinstance(exc, RpcError) and not exc.transient:
                    log.error(
                        "trades of %s cannot be fetched (%s); the gap stays recorded",
                        recovery.instrument,
                        exc,
                    )
                    break
                delay = backoff.next_delay()
                log.warning(
                    "fetching trades of %s failed (%s); retrying in %.1f s",
                    recovery.instrument,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            fetched += len(page)
            stored.extend(await self._store(request.method, page, after))
            last = resume_after(page, after)
            if last is None:
                break
            highest = last if highest is None else max(highest, last)
            after = last
            if not has_more:
                break
        self.fetched += fetched
        count, seqs = recovered(stored, recovery)
        trace.get_current_span().set_attributes(
            {
                "optionfeed.backfill.trades_fetched": fetched,
                "optionfeed.rows_recovered": count,
            }
        )
        if highest is not None:
            self._trades.seed(recovery.instrument, highest)
        if seqs is not None:
            log.info(
                "recovered %d trades of %s (trade_seq %d..%d)",
                count,
                recovery.instrument,
                *seqs,
            )
        self._on_recovered(recovery, count, seqs)

    async def _page(self, instrument: str, request: BySeq | ByTime) -> tuple[list[Any], bool]:
        """One page of trades (unchecked), and whether more follow."""
        await self._pacer.acquire(request.method)
        result: Any
        if isinstance(request, ByTime):
            result = await self._rest.get_last_trades_by_instrument_and_time(
                instrument,
                start_timestamp=request.start_timestamp,
                end_timestamp=request.end_timestamp,
                count=request.count,
            )
        else:
            result = await self._rest.get_last_trades_by_instrument(
                instrument,
                start_seq=request.start_seq,
                end_seq=request.end_seq,
                count=request.count,
            )
        return page_of(request.method, result)

    async def _store(self, method: str, page: list[Any], after: int | None) -> list[int]:
        """Store the good trades of ``page`` after ``after``, reject the bad; their trade_seqs."""
        now = time.time()
        rows, bad = split_trades(page, now)
        if bad:
            await self._reject(bad, len(page), now, method)
        rows = rows_after(rows, after)
        if rows:
            await self._rows.put_many(tables.TRADES, rows)
        return [row[_SEQ] for row in rows]
