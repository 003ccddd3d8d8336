"""Fetching missed trades through REST, by sequence number, inside Deribit's rate limits.

Each :class:`~optionfeed.collector.gaps.TradeRecovery` names an instrument and where its stream
stopped (``after_seq``), and possibly where it resumed (``upto_seq``). The backfiller pages through
``public/get_last_trades_by_instrument`` (``start_seq``/``end_seq``, 1,000 a page, ascending,
while ``has_more``) and writes every trade it gets. Duplicates are impossible: trades merge on
(instrument, trade_id). When the stream never delivered a trade of the instrument (so no sequence
number is known), the first page is fetched by time from the gap's start instead.

Requests go through the collector's :class:`~optionfeed.collector.pacing.RequestPacer`, the same
credit buckets its WebSocket requests draw on, so backfill can never push the collector into
10028. Transient errors and an unreachable exchange are retried with backoff for as long as the
collector runs; an instrument the exchange no longer knows is given up with a log line.

``rows_recovered`` counts the trades fetched that the stream had not delivered: those before the
first trade the stream delivered after the gap, within ``upto_seq`` when it is known.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from opentelemetry import trace

from optionfeed.backoff import Backoff
from optionfeed.collector.gaps import TradeRecovery
from optionfeed.collector.normalize import NormalizeError, trade_rows
from optionfeed.collector.pacing import RequestPacer
from optionfeed.collector.router import RowSink
from optionfeed.collector.sequences import TradeSequences
from optionfeed.deribit.errors import ExchangeUnreachable, ProtocolError, RpcError
from optionfeed.deribit.messages import Trade
from optionfeed.deribit.rest import RestClient
from optionfeed.store import tables

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

PAGE = 1000
BY_SEQ = "public/get_last_trades_by_instrument"
BY_TIME = "public/get_last_trades_by_instrument_and_time"

Recovered = Callable[[TradeRecovery, int, tuple[int, int] | None], None]


class Backfiller:
    def __init__(
        self,
        rest: RestClient,
        rows: RowSink,
        *,
        pacer: RequestPacer,
        trades: TradeSequences,
        on_recovered: Recovered,
        workers: int = 2,
    ) -> None:
        self._rest = rest
        self._rows = rows
        self._pacer = pacer
        self._trades = trades
        self._on_recovered = on_recovered
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
        fetched: list[Trade] = []
        after = recovery.after_seq
        while True:
            try:
                page, has_more = await self._page(recovery, after)
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
            if page:
                await self._store(recovery.instrument, page)
                fetched.extend(page)
                after = max(t["trade_seq"] for t in page)
            if not has_more or not page:
                break
        self.fetched += len(fetched)
        missed = [t for t in fetched if _was_missed(t["trade_seq"], recovery)]
        trace.get_current_span().set_attributes(
            {
                "optionfeed.backfill.trades_fetched": len(fetched),
                "optionfeed.rows_recovered": len(missed),
            }
        )
        seqs = (missed[0]["trade_seq"], missed[-1]["trade_seq"]) if missed else None
        if fetched:
            self._trades.seed(recovery.instrument, max(t["trade_seq"] for t in fetched))
        if missed:
            log.info(
                "recovered %d trades of %s (trade_seq %d..%d)",
                len(missed),
                recovery.instrument,
                *seqs,  # type: ignore[misc]
            )
        self._on_recovered(recovery, len(missed), seqs)

    async def _page(self, recovery: TradeRecovery, after: int | None) -> tuple[list[Trade], bool]:
        if after is None:
            await self._pacer.acquire(BY_TIME)
            end = recovery.gap.end or time.time()
            result = await self._rest.get_last_trades_by_instrument_and_time(
                recovery.instrument,
                start_timestamp=int(recovery.gap.start * 1000),
                end_timestamp=int(end * 1000) + 1,
                count=PAGE,
            )
        else:
            await self._pacer.acquire(BY_SEQ)
            result = await self._rest.get_last_trades_by_instrument(
                recovery.instrument,
                start_seq=after + 1,
                end_seq=recovery.upto_seq,
                count=PAGE,
            )
        trades = sorted(result["trades"], key=lambda t: t["trade_seq"])
        if after is not None:
            trades = [t for t in trades if t["trade_seq"] > after]
        return trades, bool(result.get("has_more"))

    async def _store(self, instrument: str, trades: list[Trade]) -> None:
        try:
            rows = trade_rows(trades, time.time())
        except NormalizeError as exc:
            log.error("trades of %s from REST are malformed (%s); not stored", instrument, exc)
            return
        await self._rows.put_many(tables.TRADES, rows)


def _was_missed(trade_seq: int, recovery: TradeRecovery) -> bool:
    if recovery.after_seq is not None and trade_seq <= recovery.after_seq:
        return False
    if recovery.upto_seq is not None and trade_seq > recovery.upto_seq:
        return False
    return recovery.first_live_seq is None or trade_seq < recovery.first_live_seq
