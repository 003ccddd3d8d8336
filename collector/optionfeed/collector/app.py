"""One collector, from start to a clean stop.

What runs, and the order it stops in::

    embedded PostgreSQL (when no URL)      stops last
      probe server (/metrics /livez /readyz)
        writer + disk spool                flushes every buffered row, then closes the pool
          (gap rows still queued)          written after the connections closed, before the writer
            (reference data still queued)  written after the connections closed
              (last heartbeat)             ``stopped``, after the connections closed
                REST client
                  connection pool          stops reading first, draining what was sent
                    background jobs        cancelled first: gaps, backfill, refresh, stats...

Everything is entered on one ``AsyncExitStack``, so it unwinds in exactly the reverse order, on
:meth:`Collector.stop`, at the end of ``--duration``, or on an error. The writer outlives everything
that could give it rows, which is what makes "pool is closed" impossible and loses nothing
received. The parts are built in :mod:`~optionfeed.collector.pipeline`; the background jobs run in
one :class:`asyncio.TaskGroup`, whose first failure stops the collector and is raised.

While it runs, the collector keeps its instruments current without restarting (see
:mod:`~optionfeed.collector.reference`, :mod:`~optionfeed.collector.live_assignment`). Gaps are
recorded and trades backfilled (:mod:`~optionfeed.collector.gaps`,
:mod:`~optionfeed.collector.backfill`); when the database is down, batches wait in the disk spool
(:mod:`optionfeed.store.spool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from optionfeed import __version__
from optionfeed.collector import readiness
from optionfeed.collector.assignment import read_assignment
from optionfeed.collector.backfill import Backfiller
from optionfeed.collector.config import CollectorConfig
from optionfeed.collector.connection_pool import ConnectionPool
from optionfeed.collector.live_assignment import trace_load
from optionfeed.collector.pacing import RequestPacer
from optionfeed.collector.pipeline import Pipeline
from optionfeed.collector.plan import Plan, local_plan, plan_from_assignment, rank
from optionfeed.collector.reference import InstrumentCatalog
from optionfeed.collector.router import Router
from optionfeed.deribit.rest import RestClient
from optionfeed.settings import mask_url
from optionfeed.shard_document import ShardDocument
from optionfeed.store.connection import connect
from optionfeed.store.embedded import EmbeddedPostgres
from optionfeed.store.queries import last_trades
from optionfeed.store.spool import Spool
from optionfeed.store.writer import Writer
from optionfeed.telemetry.health import HealthServer
from optionfeed.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class Collector:
    """Records until :meth:`stop`; see the module docstring for the order of things."""

    def __init__(self, config: CollectorConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.started_at = time.time()
        self.writer: Writer | None = None
        self.spool: Spool | None = None
        self.pipeline: Pipeline | None = None
        self.pool: ConnectionPool | None = None  # once it is entered
        self.database_url: str | None = None
        self.pacer = RequestPacer()
        self.catalog = InstrumentCatalog()
        self._stop = asyncio.Event()
        self._started = asyncio.Event()

    # ----------------------------------------------------------------- control

    def stop(self) -> None:
        """Ask for a clean stop: stop reading, write every buffered row, close the pool."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def wait_started(self) -> None:
        """Until the pool holds its channels (they may still await acknowledgment)."""
        await self._started.wait()

    # ----------------------------------------------------------------- state

    @property
    def plan(self) -> Plan | None:
        return self.pipeline.subscriptions.plan if self.pipeline is not None else None

    @property
    def router(self) -> Router | None:
        return self.pipeline.router if self.pipeline is not None else None

    @property
    def backfill(self) -> Backfiller | None:
        return self.pipeline.backfill if self.pipeline is not None else None

    def readiness_checks(self) -> dict[str, Callable[[], tuple[bool, str]]]:
        return {
            "subscribed": lambda: readiness.subscribed(self.pool),
            "fresh": lambda: readiness.fresh(
                self.router, self.config.heartbeat_interval, time.time()
            ),
            "database": lambda: readiness.database(self.writer, self.spool, time.time()),
        }

    # ----------------------------------------------------------------- the run

    async def run(self) -> None:
        config = self.config
        assignment = None
        if config.assignment_path is not None:
            # A bad file is a usage error: report it before touching the database or the network.
            assignment = read_assignment(config.assignment_path)
        async with contextlib.AsyncExitStack() as stack:
            url = config.database_url
            if url is None:
                embedded = EmbeddedPostgres(config.data_dir / "pgdata")
                url = (await stack.enter_async_context(embedded)).url
            self.database_url = url
            if config.metrics_port:
                await stack.enter_async_context(
                    HealthServer(
                        config.metrics_port,
                        self.metrics,
                        self.readiness_checks(),
                        host=config.metrics_host,
                    )
                )
            self.spool = Spool(
                config.spool_path, metrics=self.metrics, max_bytes=config.spool_max_bytes
            )
            writer = self.writer = await stack.enter_async_context(
                Writer.connect(
                    url,
                    metrics=self.metrics,
                    max_age=config.flush_interval,
                    batch_rows=config.batch_rows,
                    capacity_rows=config.buffer_rows,
                    fallback=self.spool,
                    timescale_settings=config.timescale,
                )
            )
            log.info("writing to %s (spool: %s)", mask_url(url), config.spool_path)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            plan = await self._initial_plan(session, assignment)
            if plan is None:
                log.info("stopped before the exchange could be reached; nothing was recorded")
                return
            if assignment is not None:
                trace_load(assignment)
            self.metrics.info.info(
                {"feed": plan.feed, "shard": str(plan.shard), "version": __version__}
            )
            pipeline = self.pipeline = Pipeline(
                config,
                plan,
                rest=RestClient(plan.exchange_url, session),
                writer=writer,
                spool=self.spool,
                metrics=self.metrics,
                pacer=self.pacer,
                catalog=self.catalog,
                stop=self._stop,
                started_at=self.started_at,
            )
            # What the connections give while they drain is written after they closed.
            stack.push_async_callback(pipeline.gaps.flush, writer)
            stack.push_async_callback(pipeline.reference.settle)
            stack.push_async_callback(pipeline.heartbeat.final)
            await self._seed_trades(url, plan, pipeline)
            self.pool = await stack.enter_async_context(pipeline.pool)
            pipeline.subscriptions.hold(plan)
            log.info(
                "recording %d instruments of %s (%d channels) from %s as feed %s shard %d",
                len(plan.instruments),
                plan.currency,
                len(self.pool.channels),
                plan.exchange_url,
                plan.feed,
                plan.shard,
            )
            await self._run_jobs(pipeline)
            log.info("stopping: draining the exchange connections, then writing buffered rows")
        log.info("stopped cleanly")

    async def _run_jobs(self, pipeline: Pipeline) -> None:
        """The background jobs until a stop or ``--duration``; the first failure is raised."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(job, name=f"collector-{name}")
                    for name, job in pipeline.jobs().items()
                ]
                self._started.set()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.duration):
                        await self._stop.wait()
                for task in tasks:
                    task.cancel()
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _initial_plan(
        self, session: aiohttp.ClientSession, assignment: ShardDocument | None
    ) -> Plan | None:
        config = self.config
        if assignment is not None:
            return plan_from_assignment(assignment, config.exchange_url)
        assert config.local is not None
        ranking = await rank(RestClient(config.exchange_url, session), config.local, self._stop)
        if ranking is None:
            return None
        self.catalog.remember(ranking.instruments)
        return local_plan(config.local, ranking.names, config.exchange_url)

    async def _seed_trades(self, url: str, plan: Plan, pipeline: Pipeline) -> None:
        """Fetch the trades of the time this feed was not recorded (a restart, a crash)."""
        if "trades" not in plan.families or not plan.instruments:
            return
        connection = await connect(url)
        try:
            seeds = await last_trades(connection, plan.instruments)
        finally:
            await connection.close()
        now = time.time()
        for instrument, (last_seq, last_ts) in seeds.items():
            pipeline.gaps.restarted(instrument, last_seq, last_ts, now)
        if seeds:
            log.info("checking %d instruments for trades missed while not recording", len(seeds))
