"""One collector, from start to a clean stop.

What runs, and the order it stops in::

    embedded PostgreSQL (when no URL)      stops last
      probe server (/metrics /livez /readyz)
        writer + disk spool                flushes every buffered row, then closes the pool
          (gap rows still queued)          written after the feed stopped, before the writer
            REST client
              feed (exchange connections)  stops reading first, draining what was sent
                background tasks           cancelled first: gaps, backfill, refresh, stats...

Everything is entered on one ``AsyncExitStack``, so it unwinds in exactly the reverse order, on a
signal, at the end of ``--duration``, or on an error. The writer outlives everything that could
give it rows, which is what makes "pool is closed" impossible and loses nothing received.

While it runs, the collector keeps its instruments current without restarting: listings and
expiries arrive on ``instrument.state``; an assignment file is followed live; in local mode it
re-ranks every ``refresh_interval``. Gaps are recorded and trades backfilled
(:mod:`~optionfeed.collector.gaps`, :mod:`~optionfeed.collector.backfill`); when the database is
down, batches wait in the disk spool (:mod:`optionfeed.store.spool`).
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
from opentelemetry import trace

from optionfeed import __version__
from optionfeed.backoff import Backoff
from optionfeed.collector.assignment import Assignment, read_assignment, watch_assignment
from optionfeed.collector.backfill import Backfiller
from optionfeed.collector.connection import ConnectionSettings
from optionfeed.collector.feed import Feed, instrument_of
from optionfeed.collector.gaps import DEFAULT_STALE_AFTER, GapRecorder
from optionfeed.collector.lifecycle import Lifecycle
from optionfeed.collector.normalize import (
    MISSING_FIELD,
    BadElement,
    NormalizeError,
    instrument_row,
)
from optionfeed.collector.pacing import RequestPacer
from optionfeed.collector.router import Router
from optionfeed.deribit import channels as ch
from optionfeed.deribit.errors import ExchangeUnreachable, ProtocolError, RpcError
from optionfeed.deribit.exchange import DEFAULT_EXCHANGE_URL
from optionfeed.deribit.messages import Instrument
from optionfeed.deribit.ranking import RankBy
from optionfeed.deribit.rest import RestClient, fetch_ranking
from optionfeed.settings import mask_url
from optionfeed.store import tables, timescale
from optionfeed.store.connection import connect
from optionfeed.store.embedded import EmbeddedPostgres
from optionfeed.store.queries import last_trades
from optionfeed.store.records import status_row
from optionfeed.store.spool import DEFAULT_MAX_BYTES, Spool
from optionfeed.store.writer import Writer
from optionfeed.telemetry import tracing
from optionfeed.telemetry.health import HealthServer
from optionfeed.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

GET_INSTRUMENTS = "public/get_instruments"


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
    spool_dir: Path | None = None  # default: <data_dir>/spool
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    timescale: timescale.Settings = field(default_factory=timescale.Settings)
    metrics_port: int = 9464
    metrics_host: str = "0.0.0.0"
    duration: float | None = None
    assignment_path: Path | None = None
    local: LocalPlan | None = None
    client_id: str | None = None
    client_secret: str | None = None
    heartbeat_interval: float = 10.0
    data_timeout: float | None = 30.0
    channels_per_connection: int = 1_000
    max_connections: int = 8
    flush_interval: float = 0.25
    batch_rows: int = 10_000
    buffer_rows: int = 50_000
    refresh_interval: float = 300.0
    stale_after: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STALE_AFTER))
    backfill_workers: int = 2
    stats_interval: float = 60.0
    status_interval: float = 15.0
    pod: str = field(default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname())

    def __post_init__(self) -> None:
        if (self.assignment_path is None) == (self.local is None):
            raise ValueError("give either an assignment file or a local plan (currency, top)")

    @property
    def spool_path(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"


@dataclass(slots=True)
class Plan:
    """What to record: the feed's identity, its instruments and their channel families."""

    feed: str
    shard: int
    currency: str
    instruments: tuple[str, ...]
    families: tuple[str, ...]
    interval: str
    exchange_url: str

    def channels(self, leaving: set[str] | frozenset[str] = frozenset()) -> frozenset[str]:
        """Every channel to hold: each family of each instrument not ``leaving``, and lifecycle."""
        data = {
            ch.feed_channel(family, instrument, self.interval)
            for instrument in self.instruments
            if instrument not in leaving
            for family in self.families
        }
        return frozenset(data) | lifecycle_channels(self.currency)


def plan_from_assignment(assignment: Assignment, default_url: str) -> Plan:
    return Plan(
        feed=assignment.feed,
        shard=assignment.shard,
        currency=assignment.currency,
        instruments=assignment.instruments,
        families=assignment.channels,
        interval=assignment.interval,
        exchange_url=assignment.exchange_url or default_url,
    )


def lifecycle_channels(currency: str) -> frozenset[str]:
    """Channels every collector holds besides market data: listings/expiries, platform state."""
    return frozenset({ch.instrument_state(currency), ch.PLATFORM_STATE})


class Collector:
    """Records until :meth:`stop`; see the module docstring for the order of things."""

    def __init__(self, config: CollectorConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.started_at = time.time()
        self.plan: Plan | None = None
        self.writer: Writer | None = None
        self.spool: Spool | None = None
        self.router: Router | None = None
        self.feed: Feed | None = None
        self.gaps: GapRecorder | None = None
        self.backfill: Backfiller | None = None
        self.lifecycle: Lifecycle | None = None
        self.database_url: str | None = None
        self.pacer = RequestPacer()
        self.instruments: dict[str, Instrument] = {}  # reference data seen, by name
        self.gone: set[str] = set()  # instruments delivered/closed: never subscribed again
        self._rest: RestClient | None = None
        self._refresh_soon = asyncio.Event()
        self._spawned: set[asyncio.Task[None]] = set()
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
        spool = self.spool
        if spool is not None and spool.engaged:
            full = spool.fill_ratio >= 1.0
            return not full, f"spooling to disk ({spool.fill_ratio:.0%} of the spool used)"
        pending = writer.buffered_rows
        if pending == 0:
            return True, "nothing waiting"
        age = time.time() - writer.last_commit_at if writer.last_commit_at else float("inf")
        return age < 30.0, f"{pending} rows waiting, last commit {age:.1f} s ago"

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
            self.plan = plan
            if assignment is not None:
                self._trace_load(assignment)
            self.metrics.info.info(
                {"feed": plan.feed, "shard": str(plan.shard), "version": __version__}
            )
            rest = self._rest = RestClient(plan.exchange_url, session)
            gaps, feed = self._build_pipeline(plan, rest, writer)
            # Rows queued by hooks when the feed stops are written after it, before the writer.
            stack.push_async_callback(gaps.flush, writer)
            stack.push_async_callback(self._await_spawned)
            stack.push_async_callback(self._final_status)
            await self._seed_trades(url, plan)
            self.feed = await stack.enter_async_context(feed)
            feed.set_channels(plan.channels(self.gone))
            log.info(
                "recording %d instruments of %s (%d channels) from %s as feed %s shard %d",
                len(plan.instruments),
                plan.currency,
                len(feed.channels),
                plan.exchange_url,
                plan.feed,
                plan.shard,
            )
            tasks = _TaskSet()
            stack.push_async_callback(tasks.cancel_all)
            assert self.backfill is not None
            tasks.start(gaps.run(writer), "gaps")
            tasks.start(self.backfill.run(), "backfill")
            tasks.start(self._refresh_loop(rest), "refresh")
            tasks.start(self._stats_loop(), "stats")
            tasks.start(self._status_loop(), "status")
            if config.assignment_path is not None:
                tasks.start(self._follow_assignment(config.assignment_path), "assignment")
            self._ready_event.set()
            await self._wait_for_stop(tasks)
            log.info("stopping: draining the exchange connections, then writing buffered rows")
        log.info("stopped cleanly")

    def _build_pipeline(
        self, plan: Plan, rest: RestClient, writer: Writer
    ) -> tuple[GapRecorder, Feed]:
        config = self.config
        router = self.router = Router(writer, self.metrics)
        backfill: Backfiller | None = None

        def recover(recovery: Any) -> None:
            assert backfill is not None
            backfill.request(recovery)

        gaps = self.gaps = GapRecorder(
            feed=plan.feed,
            shard=plan.shard,
            metrics=self.metrics,
            trades=router.trades,
            recover=recover,
            resync=lambda channel: feed.resubscribe(channel),
            stale_after=config.stale_after,
        )
        backfill = self.backfill = Backfiller(
            rest,
            writer,
            pacer=self.pacer,
            trades=router.trades,
            on_recovered=gaps.recovered,
            reject=router.reject_elements,
            workers=config.backfill_workers,
        )
        self.lifecycle = Lifecycle(
            metrics=self.metrics,
            listed=self._listed,
            settling=self._settling,
            gone=self._gone,
        )
        router.attach(events=gaps, lifecycle=self.lifecycle)
        self.metrics.observe_trades(
            expected=router.trades.expected,
            seen=lambda: router.counts.trades + gaps.recovered_trades,
        )
        self.metrics.observe_silence(gaps.silent)
        feed = Feed(
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
            metrics=self.metrics,
            observer=gaps,
            channels_per_connection=config.channels_per_connection,
            max_connections=config.max_connections,
            pacer=self.pacer,
        )
        return gaps, feed

    async def _seed_trades(self, url: str, plan: Plan) -> None:
        """Fetch the trades of the time this feed was not recorded (a restart, a crash)."""
        if "trades" not in plan.families or not plan.instruments or self.gaps is None:
            return
        connection = await connect(url)
        try:
            seeds = await last_trades(connection, plan.instruments)
        finally:
            await connection.close()
        now = time.time()
        for instrument, (last_seq, last_ts) in seeds.items():
            self.gaps.restarted(instrument, last_seq, last_ts, now)
        if seeds:
            log.info("checking %d instruments for trades missed while not recording", len(seeds))

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
    ) -> Plan | None:
        config = self.config
        if assignment is not None:
            return plan_from_assignment(assignment, config.exchange_url)
        assert config.local is not None
        rest = RestClient(config.exchange_url, session)
        names = await self._rank(rest)
        if names is None:
            return None
        local = config.local
        return Plan(
            feed=local.feed,
            shard=0,
            currency=local.currency,
            instruments=names,
            families=local.channels,
            interval=local.interval,
            exchange_url=config.exchange_url,
        )

    async def _rank(self, rest: RestClient) -> tuple[str, ...] | None:
        """Local mode: the top-N live options, by the configured key; None if stopped first."""
        local = self.config.local
        assert local is not None
        result = await self._until_reachable(
            lambda: fetch_ranking(rest, local.currency, top_n=local.top, rank_by=local.rank_by),
            f"rank {local.currency} options",
        )
        if result is None:
            return None
        ranked, instruments = result
        self._remember(instruments)
        if not ranked:
            log.warning("the exchange lists no live %s options; nothing to record", local.currency)
        return tuple(ranked)

    async def _until_reachable(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Run ``call`` until it succeeds, retrying with backoff while the exchange is away."""
        backoff = Backoff(base=1.0, cap=60.0)
        while not self._stop.is_set():
            try:
                return await call()
            except (ExchangeUnreachable, RpcError, ProtocolError) as exc:
                if isinstance(exc, RpcError) and not exc.transient:
                    raise
                delay = backoff.next_delay()
                log.warning(
                    "cannot %s: %s; retrying in %.1f s (attempt %d)",
                    what,
                    exc,
                    delay,
                    backoff.attempt,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        return None

    # ----------------------------------------------------------------- instruments

    def _remember(self, instruments: list[Instrument]) -> list[BadElement]:
        """Keep the options of a listing by name; those without a name are returned."""
        unnamed: list[BadElement] = []
        for index, instrument in enumerate(instruments):
            if (
                not isinstance(instrument, dict)
                or type(instrument.get("instrument_name")) is not str
            ):
                detail = "instrument: not an object with an instrument_name string"
                unnamed.append(BadElement(index, instrument, NormalizeError(MISSING_FIELD, detail)))
            elif instrument.get("kind", "option") == "option":
                self.instruments[instrument["instrument_name"]] = instrument
        return unnamed

    async def _store_instruments(
        self, instruments: list[Instrument], *, expired: bool = False
    ) -> None:
        """Store each instrument that normalises; each one that does not is a rejection."""
        assert self.writer is not None
        now = time.time()
        bad: list[BadElement] = []
        for index, instrument in enumerate(instruments):
            try:
                row = instrument_row(instrument, now, expired=expired)
            except NormalizeError as exc:
                bad.append(BadElement(index, instrument, exc))
                continue
            await self.writer.put(tables.INSTRUMENTS, row)
        if bad and self.router is not None:
            # The list is what this collector knows, not one listing: no positions.
            await self.router.reject_elements(bad, None, now, GET_INSTRUMENTS)

    async def _refresh_loop(self, rest: RestClient) -> None:
        """Reference data now and every ``refresh_interval``; local mode also re-ranks then."""
        assert self.plan is not None
        first = True
        while True:
            instruments = await self._until_reachable(
                lambda: rest.get_instruments(self.plan.currency if self.plan else ""),
                "list instruments",
            )
            if instruments:
                unnamed = self._remember(instruments)
                if unnamed and self.router is not None:
                    await self.router.reject_elements(
                        unnamed, len(instruments), time.time(), GET_INSTRUMENTS
                    )
                await self._store_instruments(list(self.instruments.values()))
                if first:
                    log.info("stored reference data of %d instruments", len(self.instruments))
            if not first and self.config.local is not None:
                await self._rerank(rest)
            first = False
            self._refresh_soon.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refresh_soon.wait(), self.config.refresh_interval)

    async def _rerank(self, rest: RestClient) -> None:
        plan, feed = self.plan, self.feed
        assert plan is not None
        assert feed is not None
        names = await self._rank(rest)
        if names is None or names == plan.instruments:
            return
        plan.instruments = names
        diff = feed.set_channels(plan.channels(self.gone))
        self._forget_removed(diff.removed)
        log.info(
            "re-ranked: %d instruments; subscribing %d and unsubscribing %d channels",
            len(names),
            len(diff.added),
            len(diff.removed),
        )

    def _listed(self, name: str) -> None:
        if name not in self.instruments:
            log.info("%s was listed", name)
            self._refresh_soon.set()  # reference data now, and (local mode) a re-rank

    def _settling(self, name: str, ts_ms: int) -> None:
        # Keep recording through settlement: the final tickers carry the delivery price.
        instrument = self.instruments.get(name)
        if instrument is not None and self.writer is not None:
            expired: Instrument = {**instrument, "state": "settlement"}
            self._spawn(self._store_instruments([expired], expired=True))

    def _gone(self, name: str, state: str, ts_ms: int) -> None:
        plan, feed = self.plan, self.feed
        if plan is None or feed is None or name in self.gone:
            return
        self.gone.add(name)
        if name in plan.instruments:
            diff = feed.set_channels(plan.channels(self.gone))
            self._forget_removed(diff.removed)
            log.info("%s is %s: unsubscribed its %d channels", name, state, len(diff.removed))
        instrument = self.instruments.get(name)
        if instrument is not None:
            delivered: Instrument = {**instrument, "state": state, "is_active": False}
            self._spawn(self._store_instruments([delivered], expired=True))

    def _forget_removed(self, channels: frozenset[str]) -> None:
        assert self.router is not None
        assert self.gaps is not None
        for instrument in {instrument_of(c) for c in channels} - {""}:
            self.router.trades.forget(instrument)
            self.router.books.forget(instrument)
            self.gaps.forget(instrument)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short write (reference data) from a synchronous hook; awaited before shutdown."""
        task = asyncio.create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _await_spawned(self) -> None:
        await asyncio.gather(*self._spawned, return_exceptions=True)

    # ----------------------------------------------------------------- assignment

    async def _follow_assignment(self, path: Path) -> None:
        assert self.feed is not None
        assert self.plan is not None
        current = read_assignment(path)
        async for assignment in watch_assignment(path, current):
            with tracer.start_as_current_span(
                "optionfeed.assignment.reload",
                links=tracing.link_to(assignment.traceparent),
                attributes={
                    "optionfeed.assignment.generation": assignment.generation,
                    "optionfeed.instruments": len(assignment.instruments),
                },
            ) as span:
                added, removed = self._apply_assignment(assignment)
                span.set_attributes(
                    {"optionfeed.channels.added": added, "optionfeed.channels.removed": removed}
                )

    @staticmethod
    def _trace_load(assignment: Assignment) -> None:
        """A span for the assignment the collector started with, linked to the operator's pass."""
        tracer.start_span(
            "optionfeed.assignment.load",
            links=tracing.link_to(assignment.traceparent),
            attributes={
                "optionfeed.assignment.generation": assignment.generation,
                "optionfeed.instruments": len(assignment.instruments),
            },
        ).end()

    def _apply_assignment(self, assignment: Assignment) -> tuple[int, int]:
        """Subscribe and unsubscribe the difference; (channels added, channels removed)."""
        assert self.feed is not None
        assert self.plan is not None
        plan = plan_from_assignment(assignment, self.config.exchange_url)
        if plan.exchange_url != self.plan.exchange_url:
            log.error(
                "the assignment now names exchange %s; a running collector keeps %s "
                "(restart it to switch)",
                plan.exchange_url,
                self.plan.exchange_url,
            )
            plan.exchange_url = self.plan.exchange_url
        diff = self.feed.set_channels(plan.channels(self.gone))
        self._forget_removed(diff.removed)
        self.plan = plan
        log.info(
            "assignment generation %d: %d instruments; subscribing %d and unsubscribing %d "
            "channels on the live connections",
            assignment.generation,
            len(plan.instruments),
            len(diff.added),
            len(diff.removed),
        )
        return len(diff.added), len(diff.removed)

    # ----------------------------------------------------------------- reporting

    def stats_line(self) -> str:
        router, writer = self.router, self.writer
        if router is None or writer is None:
            return "STATS starting"
        c, s = router.counts, writer.stats
        written = sum(s.inserted.values())
        gaps = self.gaps.opened if self.gaps else 0
        spool = f" spool={self.spool.fill_ratio:.0%}" if self.spool and self.spool.engaged else ""
        return (
            f"STATS ticks={c.tickers} quotes={c.quotes} trades={c.trades} books={c.books} "
            f"errors={c.rejected + s.failed_attempts} gaps={gaps} buffer={writer.fill_ratio:.0%}"
            f"{spool} rows_written={written}"
        )

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval)
            log.info("%s", self.stats_line())

    def _status(self, state: str) -> tables.Row:
        plan, feed, router = self.plan, self.feed, self.router
        assert plan is not None
        counters: dict[str, Any] = {"state": state}
        if router is not None:
            c = router.counts
            counters |= {
                "tickers": c.tickers,
                "quotes": c.quotes,
                "trades": c.trades,
                "books": c.books,
                "rejected": c.rejected,
                "gaps": self.gaps.opened if self.gaps else 0,
            }
        connected = sum(1 for c in feed.connections if c.connected) if feed else 0
        return status_row(
            feed=plan.feed,
            shard=plan.shard,
            pod=self.config.pod,
            started_at=self.started_at,
            now=time.time(),
            version=__version__,
            instruments=len(plan.instruments),
            connections=0 if state == "stopped" else connected,
            counters=counters,
        )

    async def _status_loop(self) -> None:
        assert self.writer is not None
        while True:
            await self.writer.put(tables.STATUS, self._status("running"))
            await asyncio.sleep(self.config.status_interval)

    async def _final_status(self) -> None:
        """The last heartbeat, after the feed stopped: nobody mistakes this pod for a live one."""
        if self.writer is not None and self.plan is not None:
            await self.writer.put(tables.STATUS, self._status("stopped"))


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


# A Ctrl-C reaches every process of the terminal's group, and wrappers such as `uv run` forward
# it again: copies of one keypress arrive within milliseconds. Only a signal this long after the
# first counts as the user asking a second time.
SECOND_SIGNAL_AFTER = 1.0


def install_signal_handlers(collector: Collector) -> None:
    """SIGTERM/SIGINT stop cleanly; a second signal stops without waiting for the drain."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    first: list[float] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if not collector.stopping:
            first.append(now)
            log.info("%s received: stopping cleanly (send it again to stop at once)", name)
            collector.stop()
        elif first and now - first[0] < SECOND_SIGNAL_AFTER:
            log.debug("%s again within %.1f s: the same request", name, SECOND_SIGNAL_AFTER)
        elif main is not None:
            log.warning("second %s: stopping now, without waiting for the drain", name)
            main.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
