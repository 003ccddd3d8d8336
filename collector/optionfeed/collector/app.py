"""One collector, from start to a clean stop.

What runs, and the order it stops in::

    embedded PostgreSQL (when no URL)      stops last
      probe server (/metrics /livez /readyz)
        writer (its pool belongs to it)    flushes every buffered row, then closes the pool
          REST client
            feed (the exchange connections) stops reading first, draining what was sent
              background tasks             cancelled first: assignment watch, stats, heartbeat

Everything is entered on one ``AsyncExitStack``, so it unwinds in exactly the reverse order, on a
signal, at the end of ``--duration``, or on an error. The writer outlives everything that could
give it rows, which is what makes "pool is closed" impossible and loses nothing received.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from optionfeed import __version__
from optionfeed.backoff import Backoff
from optionfeed.collector.assignment import Assignment, read_assignment, watch_assignment
from optionfeed.collector.connection import ConnectionSettings
from optionfeed.collector.feed import Feed
from optionfeed.collector.normalize import NormalizeError, instrument_row
from optionfeed.collector.router import Events, Router
from optionfeed.deribit import channels as ch
from optionfeed.deribit.errors import ExchangeUnreachable, RpcError
from optionfeed.deribit.messages import Instrument
from optionfeed.deribit.ranking import RankBy
from optionfeed.deribit.rest import RestClient, fetch_ranking
from optionfeed.settings import mask_url
from optionfeed.store import tables
from optionfeed.store.embedded import EmbeddedPostgres
from optionfeed.store.records import status_row
from optionfeed.store.writer import Writer
from optionfeed.telemetry.health import HealthServer
from optionfeed.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE_URL = "wss://www.deribit.com/ws/api/v2"


@dataclass(frozen=True, slots=True)
class LocalPlan:
    """Local mode: the collector ranks the currency's options by itself."""

    currency: str
    top: int | None
    channels: tuple[str, ...]
    interval: str
    rank_by: RankBy = RankBy.VOLUME_USD

    @property
    def feed(self) -> str:
        top = "all" if self.top is None else f"top{self.top}"
        return f"{self.currency.lower()}-{top}"


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    exchange_url: str = DEFAULT_EXCHANGE_URL
    database_url: str | None = None
    data_dir: Path = Path(".optionfeed")
    metrics_port: int = 9464
    metrics_host: str = "0.0.0.0"
    duration: float | None = None
    assignment_path: Path | None = None
    local: LocalPlan | None = None
    client_id: str | None = None
    client_secret: str | None = None
    heartbeat_interval: float = 10.0
    channels_per_connection: int = 1_000
    max_connections: int = 8
    flush_interval: float = 0.25
    batch_rows: int = 10_000
    buffer_rows: int = 50_000
    stats_interval: float = 60.0
    status_interval: float = 15.0
    pod: str = field(default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname())

    def __post_init__(self) -> None:
        if (self.assignment_path is None) == (self.local is None):
            raise ValueError("give either an assignment file or a local plan (currency, top)")


@dataclass(slots=True)
class Plan:
    """What to record: the feed's identity and its channels."""

    feed: str
    shard: int
    currency: str
    channels: frozenset[str]
    instruments: tuple[str, ...]
    exchange_url: str


def plan_from_assignment(assignment: Assignment, default_url: str) -> Plan:
    return Plan(
        feed=assignment.feed,
        shard=assignment.shard,
        currency=assignment.currency,
        channels=assignment.channel_names() | lifecycle_channels(assignment.currency),
        instruments=assignment.instruments,
        exchange_url=assignment.exchange_url or default_url,
    )


def lifecycle_channels(currency: str) -> frozenset[str]:
    """Channels every collector holds besides market data: listings/expiries, platform state."""
    return frozenset({ch.instrument_state(currency), ch.PLATFORM_STATE})


def plan_channels(
    instruments: tuple[str, ...], families: tuple[str, ...], interval: str
) -> set[str]:
    return {ch.feed_channel(f, i, interval) for i in instruments for f in families}


class Collector:
    """Records until :meth:`stop`; see the module docstring for the order of things."""

    def __init__(
        self,
        config: CollectorConfig,
        *,
        metrics: Metrics | None = None,
        events: Events | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.events = events or Events()
        self.started_at = time.time()
        self.plan: Plan | None = None
        self.writer: Writer | None = None
        self.router: Router | None = None
        self.feed: Feed | None = None
        self.database_url: str | None = None
        self._stop = asyncio.Event()
        self._ready_event = asyncio.Event()

    # ----------------------------------------------------------------- control

    def stop(self) -> None:
        """Ask for a clean stop: stop reading, write every buffered row, close the pool."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def wait_started(self) -> None:
        """Until the feed holds its channels (they may still await acknowledgment)."""
        await self._ready_event.wait()

    # ----------------------------------------------------------------- readiness

    def readiness_checks(self) -> dict[str, Callable[[], tuple[bool, str]]]:
        return {
            "subscribed": self._check_subscribed,
            "fresh": self._check_fresh,
            "database": self._check_database,
        }

    def _check_subscribed(self) -> tuple[bool, str]:
        feed = self.feed
        if feed is None or not feed.connections:
            return False, "not connected yet"
        acked, held = len(feed.acknowledged), len(feed.channels)
        refused = len(feed.refused)
        detail = f"{acked}/{held} channels acknowledged" + (
            f", {refused} refused" if refused else ""
        )
        return feed.subscribed, detail

    def _check_fresh(self) -> tuple[bool, str]:
        router = self.router
        if router is None or router.last_message_at == 0:
            return False, "no message yet"
        age = time.time() - router.last_message_at
        limit = 2 * self.config.heartbeat_interval
        return age < limit, f"last message {age:.1f} s ago (limit {limit:g} s)"

    def _check_database(self) -> tuple[bool, str]:
        writer = self.writer
        if writer is None or writer.closed:
            return False, "writer not open"
        last_commit = writer.last_commit_at
        pending = writer.buffered_rows
        if pending == 0:
            return True, "nothing waiting"
        age = time.time() - last_commit if last_commit else float("inf")
        ok = age < 30.0
        return ok, f"{pending} rows waiting, last commit {age:.1f} s ago"

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
            self.writer = await stack.enter_async_context(
                Writer.connect(
                    url,
                    metrics=self.metrics,
                    max_age=config.flush_interval,
                    batch_rows=config.batch_rows,
                    capacity_rows=config.buffer_rows,
                )
            )
            log.info("writing to %s", mask_url(url))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            plan, instruments = await self._initial_plan(session, assignment)
            if plan is None:
                return  # stopped before the exchange could be reached
            self.plan = plan
            self.metrics.info.info(
                {"feed": plan.feed, "shard": str(plan.shard), "version": __version__}
            )
            rest = RestClient(plan.exchange_url, session)
            self.router = Router(self.writer, self.metrics, events=self.events)
            self.feed = await stack.enter_async_context(
                Feed(
                    ConnectionSettings(
                        url=plan.exchange_url,
                        client_name="optionfeed",
                        client_version=__version__,
                        heartbeat_interval=config.heartbeat_interval,
                        client_id=config.client_id,
                        client_secret=config.client_secret,
                    ),
                    self.router,
                    metrics=self.metrics,
                    observer=None,
                    channels_per_connection=config.channels_per_connection,
                    max_connections=config.max_connections,
                )
            )
            self.feed.set_channels(plan.channels)
            log.info(
                "recording %d instruments of %s (%d channels) from %s as feed %s shard %d",
                len(plan.instruments),
                plan.currency,
                len(plan.channels),
                plan.exchange_url,
                plan.feed,
                plan.shard,
            )
            tasks = _TaskSet()
            stack.push_async_callback(tasks.cancel_all)
            tasks.start(self._keep_instruments(rest, plan.currency, instruments), "instruments")
            tasks.start(self._stats_loop(), "stats")
            tasks.start(self._status_loop(), "status")
            if config.assignment_path is not None:
                tasks.start(self._follow_assignment(config.assignment_path), "assignment")
            self._ready_event.set()
            await self._wait_for_stop(tasks)
            log.info("stopping: draining the exchange connections, then writing buffered rows")
        log.info("stopped cleanly")

    async def _wait_for_stop(self, tasks: _TaskSet) -> None:
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        waiting: set[asyncio.Future[Any]] = {stop, tasks.failed}
        try:
            await asyncio.wait(waiting, timeout=self.config.duration, return_when="FIRST_COMPLETED")
        finally:
            stop.cancel()
        tasks.raise_failure()

    async def _initial_plan(
        self, session: aiohttp.ClientSession, assignment: Assignment | None
    ) -> tuple[Plan | None, list[Instrument]]:
        config = self.config
        if assignment is not None:
            return plan_from_assignment(assignment, config.exchange_url), []
        assert config.local is not None
        local = config.local
        rest = RestClient(config.exchange_url, session)
        result = await self._until_reachable(
            lambda: fetch_ranking(rest, local.currency, top_n=local.top, rank_by=local.rank_by),
            f"rank {local.currency} options",
        )
        if result is None:
            return None, []
        ranked, instruments = result
        if not ranked:
            log.warning("the exchange lists no live %s options; nothing to record", local.currency)
        names = tuple(ranked)
        plan = Plan(
            feed=local.feed,
            shard=0,
            currency=local.currency,
            channels=frozenset(plan_channels(names, local.channels, local.interval))
            | lifecycle_channels(local.currency),
            instruments=names,
            exchange_url=config.exchange_url,
        )
        return plan, instruments

    async def _until_reachable(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Run ``call`` until it succeeds, retrying with backoff while the exchange is away."""
        backoff = Backoff(base=1.0, cap=60.0)
        while not self._stop.is_set():
            try:
                return await call()
            except (ExchangeUnreachable, RpcError) as exc:
                if isinstance(exc, RpcError) and not exc.transient:
                    raise
                delay = backoff.next_delay()
                log.warning("cannot %s: %s; retrying in %.1f s", what, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        return None

    # ----------------------------------------------------------------- background work

    async def _keep_instruments(
        self, rest: RestClient, currency: str, known: list[Instrument]
    ) -> None:
        """Upsert the currency's instruments (reference data) into ``instruments``."""
        instruments = known or await self._until_reachable(
            lambda: rest.get_instruments(currency), f"list {currency} instruments"
        )
        if instruments:
            await self._store_instruments(instruments)

    async def _store_instruments(self, instruments: list[Instrument]) -> None:
        assert self.writer is not None
        now = time.time()
        stored = 0
        for instrument in instruments:
            if instrument.get("kind") != "option":
                continue
            try:
                row = instrument_row(instrument, now)
            except NormalizeError as exc:
                log.warning("instrument %s not stored: %s", instrument.get("instrument_name"), exc)
                continue
            await self.writer.put(tables.INSTRUMENTS, row)
            stored += 1
        log.info("stored reference data of %d instruments", stored)

    async def _follow_assignment(self, path: Path) -> None:
        assert self.feed is not None
        assert self.plan is not None
        current = read_assignment(path)
        async for assignment in watch_assignment(path, current):
            plan = plan_from_assignment(assignment, self.config.exchange_url)
            if plan.exchange_url != self.plan.exchange_url:
                log.error(
                    "the assignment now names exchange %s; a running collector keeps %s "
                    "(restart it to switch)",
                    plan.exchange_url,
                    self.plan.exchange_url,
                )
                plan.exchange_url = self.plan.exchange_url
            diff = self.feed.set_channels(plan.channels)
            self.plan = plan
            log.info(
                "assignment generation %d: %d instruments; subscribing %d and unsubscribing %d "
                "channels on the live connections",
                assignment.generation,
                len(plan.instruments),
                len(diff.added),
                len(diff.removed),
            )

    def stats_line(self) -> str:
        router, writer = self.router, self.writer
        if router is None or writer is None:
            return "STATS starting"
        c, s = router.counts, writer.stats
        written = sum(s.inserted.values())
        return (
            f"STATS ticks={c.tickers} quotes={c.quotes} trades={c.trades} books={c.books} "
            f"errors={c.rejected + s.failed_attempts} buffer={writer.fill_ratio:.0%} "
            f"rows_written={written}"
        )

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            log.info("%s", self.stats_line())

    async def _status_loop(self) -> None:
        assert self.writer is not None
        assert self.plan is not None
        while True:
            plan, feed, router = self.plan, self.feed, self.router
            counters = {}
            if router is not None:
                c = router.counts
                counters = {
                    "tickers": c.tickers,
                    "quotes": c.quotes,
                    "trades": c.trades,
                    "books": c.books,
                    "rejected": c.rejected,
                }
            await self.writer.put(
                tables.STATUS,
                status_row(
                    feed=plan.feed,
                    shard=plan.shard,
                    pod=self.config.pod,
                    started_at=self.started_at,
                    now=time.time(),
                    version=__version__,
                    instruments=len(plan.instruments),
                    connections=sum(1 for c in feed.connections if c.connected) if feed else 0,
                    counters=counters,
                ),
            )
            await asyncio.sleep(self.config.status_interval)


class _TaskSet:
    """Named background tasks: the first failure is re-raised; all are cancelled on exit."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self.failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"collector-{name}")
        task.add_done_callback(self._done)
        self._tasks.append(task)

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.failed.done():
            return
        exc = task.exception()
        if exc is not None:
            self.failed.set_exception(exc)

    def raise_failure(self) -> None:
        if self.failed.done():
            self.failed.result()

    async def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self.failed.done():
            self.failed.cancel()


def install_signal_handlers(collector: Collector) -> None:
    """SIGTERM/SIGINT stop cleanly; a second signal stops without waiting for the drain."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if not collector.stopping:
            log.info("%s received: stopping cleanly", signal.Signals(signum).name)
            collector.stop()
        elif main is not None:
            log.warning("second %s: stopping now", signal.Signals(signum).name)
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
