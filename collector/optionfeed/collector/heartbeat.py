"""What a running collector reports about itself: a status row every ``status_interval`` (the
heartbeat the report and the operator read), a STATS log line every ``stats_interval``, and a
last status row, ``stopped``, once the connections closed."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from optionfeed import __version__
from optionfeed.collector.connection_pool import ConnectionPool
from optionfeed.collector.gaps import GapRecorder
from optionfeed.collector.router import Router
from optionfeed.collector.subscriptions import Subscriptions
from optionfeed.store import tables
from optionfeed.store.records import status_row
from optionfeed.store.spool import Spool
from optionfeed.store.writer import Writer

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        *,
        writer: Writer,
        spool: Spool | None,
        router: Router,
        gaps: GapRecorder,
        pool: ConnectionPool,
        subscriptions: Subscriptions,
        pod: str,
        started_at: float,
        status_interval: float,
        stats_interval: float,
    ) -> None:
        self._writer = writer
        self._spool = spool
        self._router = router
        self._gaps = gaps
        self._pool = pool
        self._subscriptions = subscriptions
        self._pod = pod
        self._started_at = started_at
        self._status_interval = status_interval
        self._stats_interval = stats_interval

    def stats_line(self) -> str:
        c, s = self._router.counts, self._writer.stats
        written = sum(s.inserted.values())
        spool = self._spool
        spooling = f" spool={spool.fill_ratio:.0%}" if spool is not None and spool.engaged else ""
        return (
            f"STATS ticks={c.tickers} quotes={c.quotes} trades={c.trades} books={c.books} "
            f"errors={c.rejected + s.failed_attempts} gaps={self._gaps.opened} "
            f"buffer={self._writer.fill_ratio:.0%}{spooling} rows_written={written}"
        )

    def status(self, state: str) -> tables.Row:
        plan = self._subscriptions.plan
        c = self._router.counts
        counters: dict[str, Any] = {
            "state": state,
            "tickers": c.tickers,
            "quotes": c.quotes,
            "trades": c.trades,
            "books": c.books,
            "rejected": c.rejected,
            "gaps": self._gaps.opened,
        }
        connected = sum(1 for connection in self._pool.connections if connection.connected)
        return status_row(
            feed=plan.feed,
            shard=plan.shard,
            pod=self._pod,
            started_at=self._started_at,
            now=time.time(),
            version=__version__,
            instruments=len(plan.instruments),
            connections=0 if state == "stopped" else connected,
            counters=counters,
        )

    async def run_status(self) -> None:
        while True:
            await self._writer.put(tables.STATUS, self.status("running"))
            await asyncio.sleep(self._status_interval)

    async def run_stats(self) -> None:
        while True:
            await asyncio.sleep(self._stats_interval)
            log.info("%s", self.stats_line())

    async def final(self) -> None:
        """The last heartbeat, after the connections closed: nobody mistakes this pod for a live
        one."""
        await self._writer.put(tables.STATUS, self.status("stopped"))
