"""The demo, start to stop: the embedded PostgreSQL, the simulator, a collector, the display.

What runs, and the order it stops in::

    embedded PostgreSQL (DIR/demo/pgdata)   starts with the simulator, stops last
      simulator (a child process)           stops second, once nothing reads from it
        collector                           stops first: stops reading, writes every buffered
                                            row, closes its pool
          display (panel or lines)          follows the collector's counters twice a second

The collector stops first so that it drains while the exchange and the database are still there;
the summary is then read from the database, which stops last. A stop comes from Ctrl-C or SIGTERM
(a second one cancels the drain), from the end of ``--duration`` (counted from when recording
began), or from a failure: the collector erring, or the simulator exiting by itself. Every step is
bounded in time: the simulator's start (30 s) and stop (10 s, then SIGKILL), the collector's start
(60 s) and drain (60 s, then cancelled; its writer then has its own 30 s close deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from optionfeed.collector.app import Collector
from optionfeed.collector.config import CollectorConfig, LocalPlan
from optionfeed.demo.exchange import SimulatedExchange
from optionfeed.demo.progress import (
    TABLES,
    Buckets,
    Sample,
    Summary,
    View,
    baseline,
    summarize,
)
from optionfeed.demo.terminal import Display, LivePanel, PlainProgress
from optionfeed.deribit.channels import FEED_CHANNELS
from optionfeed.report import read_report
from optionfeed.report.errors import ReportError
from optionfeed.report.model import Report
from optionfeed.report.window import Window
from optionfeed.shutdown import Shutdown
from optionfeed.store.embedded import EmbeddedPostgres
from optionfeed.store.errors import StoreError

log = logging.getLogger(__name__)

SAMPLE_EVERY = 0.5
RECENT = 5.0  # seconds over which rates and recent lag are shown
COLLECTOR_START_TIMEOUT = 60.0
COLLECTOR_DRAIN_TIMEOUT = 60.0
COLLECTOR_CANCEL_TIMEOUT = 35.0


class DemoFailed(RuntimeError):
    """Something the demo depends on failed; the message says what and where to look."""


@dataclass(frozen=True, slots=True)
class DemoConfig:
    currency: str = "ETH"
    top: int = 50
    channels: tuple[str, ...] = FEED_CHANNELS
    rate: float = 1000.0
    duration: float | None = None
    data_dir: Path = Path(".optionfeed")
    seed: int | None = None
    metrics_port: int = 0
    live: bool = False  # a panel redrawn in place; else a progress line every progress_every s
    progress_every: float = 5.0

    @property
    def home(self) -> Path:
        """The demo's own directory: its database and the simulator's log."""
        return self.data_dir / "demo"

    @property
    def title(self) -> str:
        return f"optionfeed demo: {self.currency} top {self.top} ({', '.join(self.channels)})"


@dataclass(slots=True)
class Outcome:
    """How the demo ended."""

    summary: Summary | None = None
    interrupted: bool = False  # stopped before recording began
    drain_cut: str | None = None  # why the collector's drain was cancelled, if it was


def read_lag(collector: Collector) -> Buckets:
    """The exchange-to-commit histogram summed over tables, as cumulative buckets."""
    totals: dict[float, float] = {}
    for metric in collector.metrics.commit_lag_seconds.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket"):
                bound = float(s.labels["le"])
                totals[bound] = totals.get(bound, 0.0) + s.value
    return tuple(sorted(totals.items()))


def read_messages(collector: Collector) -> float:
    return sum(
        s.value
        for metric in collector.metrics.messages_total.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    )


def take_sample(collector: Collector, at: float) -> Sample:
    writer, router, pool = collector.writer, collector.router, collector.pool
    return Sample(
        at=at,
        messages=read_messages(collector),
        rows=dict(writer.stats.inserted) if writer is not None else {},
        lag=read_lag(collector),
        buffered=writer.buffered_rows if writer is not None else 0,
        capacity=writer.capacity_rows if writer is not None else collector.config.buffer_rows,
        connections=sum(1 for c in pool.connections if c.connected) if pool is not None else 0,
        channels_acked=len(pool.acknowledged) if pool is not None else 0,
        channels_held=len(pool.channels) if pool is not None else 0,
        rejected=(router.counts.rejected if router is not None else 0)
        + (writer.stats.rejected if writer is not None else 0),
    )


class Demo:
    """Runs one demo; :meth:`stop` (or a signal to :attr:`shutdown`) ends it cleanly.

    A second signal, while the collector drains, cuts the drain short (its writer still gets its
    own close deadline); the simulator and the database are stopped in order all the same.
    """

    def __init__(
        self,
        config: DemoConfig,
        *,
        out: TextIO,
        display: Display | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.out = out
        self.display = display or (
            LivePanel(out) if config.live else PlainProgress(out, config.progress_every)
        )
        self.monotonic = monotonic
        self.status = "starting"
        self.samples: deque[Sample] = deque()
        self.collector: Collector | None = None
        self._stop = asyncio.Event()
        self.collector_task: asyncio.Task[None] | None = None  # Collector.run, once started
        self._drain_cut: str | None = None
        self._recording_since: float | None = None
        self._recording_until: float | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._database_up = False
        self.shutdown = Shutdown(
            self.stop,
            insist=self._cut_drain,
            insisting="cancelling the collector's drain",
            monotonic=monotonic,
        )

    # ----------------------------------------------------------------- control

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self.status = "stopping: the collector drains and flushes"
            if self.collector is not None:
                self.collector.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _cut_drain(self, signal_name: str) -> bool:
        task = self.collector_task
        if task is None or task.done() or self._drain_cut is not None:
            return False
        self._drain_cut = f"a second {signal_name}"
        task.cancel()
        return True

    # ----------------------------------------------------------------- the run

    async def run(self) -> Outcome:
        config = self.config
        began = datetime.now(UTC)
        exchange = SimulatedExchange(
            currency=config.currency,
            rate=config.rate,
            seed=config.seed,
            log_path=config.home / "simulator.log",
        )
        embedded = EmbeddedPostgres(config.home / "pgdata")
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._stop_database, embedded)
            stack.push_async_callback(self._stop_exchange, exchange)
            # Fork first, then start the database's thread: see SimulatedExchange.spawn.
            await exchange.spawn()
            await _all_or_first_error(exchange.wait_ready(), self._start_database(embedded))
            self._say(
                f"simulator: ws://{exchange.address}/ws/api/v2 ({config.currency}, "
                f"{config.rate:g} events/s)\n"
                f"database:  psql '{embedded.url}'  (while the demo runs)"
            )
            if self.stopping:
                return Outcome(interrupted=True)
            collector = self.collector = Collector(
                CollectorConfig(
                    exchange_url=exchange.ws_url,
                    database_url=embedded.url,
                    data_dir=config.home,
                    metrics_port=config.metrics_port,
                    metrics_host="127.0.0.1",
                    local=LocalPlan(config.currency, config.top, config.channels, "100ms"),
                )
            )
            task = self.collector_task = asyncio.create_task(collector.run(), name="demo-collector")
            try:
                await self._record(collector, task, exchange)
            finally:
                await self._stop_collector(collector, task)
            if self._recording_since is None:
                return Outcome(interrupted=True, drain_cut=self._drain_cut)
            ended = datetime.now(UTC)
            summary = await self._summarize(collector, embedded.url, began, ended)
        return Outcome(summary=summary, drain_cut=self._drain_cut)

    async def _record(
        self, collector: Collector, task: asyncio.Task[None], exchange: SimulatedExchange
    ) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        died = asyncio.ensure_future(exchange.exited())
        started = asyncio.ensure_future(collector.wait_started())
        try:
            done, _ = await asyncio.wait(
                {started, task, stop, died},
                timeout=COLLECTOR_START_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            self._check(task, died)
            if not done:
                raise DemoFailed(
                    f"the collector did not start within {COLLECTOR_START_TIMEOUT:g} s"
                )
            if stop in done:
                return
            self._recording_since = self.monotonic()
            self.status = "recording"
            self.display.start()
            self._sampler = asyncio.create_task(self._sample(collector), name="demo-display")
            await asyncio.wait(
                {task, stop, died}, timeout=self.config.duration, return_when="FIRST_COMPLETED"
            )
            self._check(task, died)
        finally:
            if self._recording_since is not None:
                self._recording_until = self.monotonic()
            # The panel keeps showing the counters while the collector drains.
            self.status = "stopping: the collector drains and flushes"
            for future in (stop, started, died):
                future.cancel()

    def _check(self, task: asyncio.Task[None], died: asyncio.Future[int]) -> None:
        if task.done():
            task.result()  # raises what stopped it
            raise DemoFailed("the collector stopped by itself")
        if died.done() and not died.cancelled():
            raise DemoFailed(
                f"the simulator exited by itself with status {died.result()} "
                f"(its log: {self.config.home / 'simulator.log'})"
            )

    async def _sample(self, collector: Collector) -> None:
        title = self.config.title
        while True:
            now = self.monotonic()
            self.samples.append(take_sample(collector, now))
            while self.samples and now - self.samples[0].at > 2 * RECENT:
                self.samples.popleft()
            since = self._recording_since or now
            self.display.update(
                View(
                    title=title,
                    now=self.samples[-1],
                    then=baseline(self.samples, RECENT),
                    elapsed=now - since,
                    duration=self.config.duration,
                    status=self.status,
                )
            )
            await asyncio.sleep(SAMPLE_EVERY)

    async def _stop_collector(self, collector: Collector, task: asyncio.Task[None]) -> None:
        log.info("stopping the collector: draining the exchange connections, writing buffered rows")
        collector.stop()
        try:
            done, _ = await asyncio.wait({task}, timeout=COLLECTOR_DRAIN_TIMEOUT)
            if not done:
                log.warning(
                    "the collector did not stop within %g s; cancelling it",
                    COLLECTOR_DRAIN_TIMEOUT,
                )
                self._drain_cut = self._drain_cut or f"no end after {COLLECTOR_DRAIN_TIMEOUT:g} s"
                task.cancel()
                await asyncio.wait({task}, timeout=COLLECTOR_CANCEL_TIMEOUT)
        finally:
            sampler, self._sampler = self._sampler, None
            if sampler is not None:
                sampler.cancel()
                await asyncio.wait([sampler])
            if self._recording_since is not None:
                self.samples.append(take_sample(collector, self.monotonic()))
            self.display.close()
        if task.done() and not task.cancelled():
            task.result()  # the collector's own failure (say, rows it could not write)
        writer = collector.writer
        written = sum(writer.stats.inserted.get(t, 0) for t in TABLES) if writer else 0
        log.info("collector stopped: %d market data rows committed", written)

    async def _stop_exchange(self, exchange: SimulatedExchange) -> None:
        code = await exchange.stop()
        if code is not None:
            log.info("simulator stopped (exit status %d)", code)

    async def _start_database(self, embedded: EmbeddedPostgres) -> None:
        await embedded.start()
        self._database_up = True

    async def _stop_database(self, embedded: EmbeddedPostgres) -> None:
        await embedded.stop()
        if self._database_up:
            log.info("embedded PostgreSQL stopped; its data stays under %s", embedded.directory)

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # ----------------------------------------------------------------- the summary

    async def _summarize(
        self, collector: Collector, url: str, began: datetime, ended: datetime
    ) -> Summary:
        config = self.config
        last = self.samples[-1] if self.samples else take_sample(collector, self.monotonic())
        window = Window(began, ended + timedelta(milliseconds=1))
        report: Report | None = None
        try:
            report = await read_report(url, window, now=ended, statement_timeout=120.0)
        except (ReportError, StoreError, OSError) as exc:
            # The summary falls back to the collector's own counters, and says so.
            log.warning("could not read the summary from the database: %s", exc)
        recorded = 0.0
        if self._recording_since is not None and self._recording_until is not None:
            recorded = self._recording_until - self._recording_since
        start_arg = began.strftime("%Y-%m-%dT%H:%M:%SZ")
        end_arg = (ended + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return summarize(
            title=config.title,
            recorded_seconds=recorded,
            planned_instruments=len(collector.plan.instruments) if collector.plan else 0,
            last=last,
            report=report,
            data_dir=str(config.home / "pgdata"),
            report_command=f"optionfeed report --data-dir {config.home} "
            f"--from {start_arg} --to {end_arg}",
        )


async def _all_or_first_error(*steps: Any) -> None:
    """Run ``steps`` together to the end (none is left half-started); raise the first error."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
