"""The parts that turn the exchange's messages into rows, built in dependency order.

::

    router          every message to its normaliser, rows to the writer
    gaps            disconnects, book breaks and silence as gap rows; asks for trades and books
    backfill        the trades a gap missed, fetched over REST
    pool            the exchange connections, reading into the router, reporting to gaps
    subscriptions   the plan in force and the channels the pool holds for it
    reference       reference data, re-ranking, listings and deliveries
    lifecycle       ``instrument.state`` and ``platform_state``, turned into calls on reference
    heartbeat       status rows and STATS lines

Gaps ask the backfill for trades and the pool for a fresh book snapshot, and both are built after
gaps (they report to it): gaps reach them through :meth:`Pipeline.recover` and
:meth:`Pipeline.resync`, which are called only once the pool reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from optionfeed import __version__
from optionfeed.collector.backfill import Backfiller
from optionfeed.collector.config import CollectorConfig
from optionfeed.collector.connection import ConnectionSettings
from optionfeed.collector.connection_pool import ConnectionPool
from optionfeed.collector.gaps import GapRecorder, TradeRecovery
from optionfeed.collector.heartbeat import Heartbeat
from optionfeed.collector.lifecycle import Lifecycle
from optionfeed.collector.live_assignment import follow_assignment
from optionfeed.collector.pacing import RequestPacer
from optionfeed.collector.plan import Plan
from optionfeed.collector.reference import InstrumentCatalog, ReferenceData
from optionfeed.collector.router import Router
from optionfeed.collector.subscriptions import Subscriptions
from optionfeed.deribit.rest import RestClient
from optionfeed.store.spool import Spool
from optionfeed.store.writer import Writer
from optionfeed.telemetry.metrics import Metrics


class Pipeline:
    def __init__(
        self,
        config: CollectorConfig,
        plan: Plan,
        *,
        rest: RestClient,
        writer: Writer,
        spool: Spool | None,
        metrics: Metrics,
        pacer: RequestPacer,
        catalog: InstrumentCatalog,
        stop: asyncio.Event,
        started_at: float,
    ) -> None:
        self.config = config
        self.writer = writer
        router = self.router = Router(writer, metrics)
        gaps = self.gaps = GapRecorder(
            feed=plan.feed,
            shard=plan.shard,
            metrics=metrics,
            trades=router.trades,
            recover=self.recover,
            resync=self.resync,
            stale_after=config.stale_after,
        )
        self.backfill = Backfiller(
            rest,
            writer,
            pacer=pacer,
            trades=router.trades,
            on_recovered=gaps.recovered,
            reject=router.reject_elements,
            workers=config.backfill_workers,
        )
        pool = self.pool = ConnectionPool(
            ConnectionSettings(
                url=plan.exchange_url,
                client_name="optionfeed",
                client_version=__version__,
                heartbeat_interval=config.heartbeat_interval,
                data_timeout=config.data_timeout,
                client_id=config.client_id,
                client_secret=config.client_secret,
            ),
            router,
            metrics=metrics,
            observer=gaps,
            channels_per_connection=config.channels_per_connection,
            max_connections=config.max_connections,
            pacer=pacer,
        )
        subscriptions = self.subscriptions = Subscriptions(plan, pool, router, gaps)
        reference = self.reference = ReferenceData(
            catalog,
            rest=rest,
            writer=writer,
            router=router,
            subscriptions=subscriptions,
            local=config.local,
            refresh_interval=config.refresh_interval,
            stop=stop,
        )
        self.lifecycle = Lifecycle(
            metrics=metrics,
            listed=reference.listed,
            settling=reference.settling,
            gone=reference.gone,
        )
        router.attach(events=gaps, lifecycle=self.lifecycle)
        metrics.observe_trades(
            expected=router.trades.expected,
            seen=lambda: router.counts.trades + gaps.recovered_trades,
        )
        metrics.observe_silence(gaps.silent)
        self.heartbeat = Heartbeat(
            writer=writer,
            spool=spool,
            router=router,
            gaps=gaps,
            pool=pool,
            subscriptions=subscriptions,
            pod=config.pod,
            started_at=started_at,
            status_interval=config.status_interval,
            stats_interval=config.stats_interval,
        )

    def recover(self, recovery: TradeRecovery) -> None:
        """Fetch the trades a gap missed."""
        self.backfill.request(recovery)

    def resync(self, channel: str) -> None:
        """Ask the exchange for ``channel`` afresh (a new book snapshot)."""
        self.pool.resubscribe(channel)

    def jobs(self) -> dict[str, Coroutine[Any, Any, None]]:
        """What runs alongside the connections until the collector stops, by name."""
        jobs = {
            "gaps": self.gaps.run(self.writer),
            "backfill": self.backfill.run(),
            "refresh": self.reference.run(),
            "stats": self.heartbeat.run_stats(),
            "status": self.heartbeat.run_status(),
        }
        path = self.config.assignment_path
        if path is not None:
            jobs["assignment"] = follow_assignment(
                path, self.subscriptions, self.config.exchange_url
            )
        return jobs
