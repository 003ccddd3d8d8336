"""The collector's Prometheus metrics: one place that names them.

Dashboards and alert rules rely on these names. Every name starts with ``optionfeed_`` and carries
its unit; labels come only from small fixed sets (``channel``, ``table``, ``reason``), never an
instrument name or an error text. Pod-level identity (feed, shard) is in
``optionfeed_collector_info`` and in the labels Prometheus adds from the pod.

Each collector owns a :class:`Metrics` with its own registry, so several collectors can run in one
process (tests do) without clashing. Hot paths bind label values once
(``metrics.messages_total.labels("ticker")`` kept in a variable) rather than per message.

Figures the collector already keeps for itself (trade sequence spans, channels without data) are
read when Prometheus scrapes, through callbacks (:meth:`Metrics.observe_trades`,
:meth:`Metrics.observe_silence`), so they cost nothing per message. The registry also carries the
standard ``process_*`` metrics (resident memory, CPU seconds, open files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from optionfeed.deribit.channels import FEED_CHANNELS

# Exchange -> commit lag and write latency: from a few ms to the flush age and well past it.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

GAP_REASONS = ("disconnect", "sequence", "stale", "outage")
# The reasons of optionfeed.store.errors.BatchNotWritten and of the writer's fallback and drops.
WRITE_ERROR_REASONS = (
    "connection",
    "timeout",
    "resources",
    "conflict",
    "partition",
    "database",
    "spool_full",
    "spool_io",
    "fallback",
)
DROP_REASONS = ("shutdown", "cancelled")


class _Observed(Collector):
    """Metrics computed at scrape time from callbacks the collector sets once it has built its
    pipeline; before that, zeros, so that every series exists from the first scrape."""

    def __init__(self) -> None:
        self.trades_expected: Callable[[], int] = lambda: 0
        self.trades_seen: Callable[[], int] = lambda: 0
        self.silent: Callable[[], Mapping[str, int]] = dict

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "optionfeed_trade_sequences_expected",
            "trade_seq numbers the exchange advanced through on the recorded instruments "
            "(since the last one stored, after a restart).",
            value=self.trades_expected(),
        )
        yield CounterMetricFamily(
            "optionfeed_trade_sequences_seen",
            "Trades received live or fetched by backfill; over the expected count, completeness.",
            value=self.trades_seen(),
        )
        silent = GaugeMetricFamily(
            "optionfeed_silent_channels",
            "Instrument channels without data now (disconnected, or stale past their "
            "threshold), by channel family.",
            labels=["channel"],
        )
        counts = self.silent()
        for family in FEED_CHANNELS:
            silent.add_metric([family], counts.get(family, 0))
        yield silent


class Metrics:
    """The collector's metrics, registered in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self._observed = _Observed()
        r.register(self._observed)
        self.info = Info("optionfeed_collector", "Identity of this collector.", registry=r)
        self.messages_total = Counter(
            "optionfeed_messages_total",
            "Notifications received from the exchange, by channel family.",
            ["channel"],
            registry=r,
        )
        self.rows_written_total = Counter(
            "optionfeed_rows_written_total",
            "Rows committed to the database, by table (after deduplication).",
            ["table"],
            registry=r,
        )
        self.buffer_rows = Gauge(
            "optionfeed_buffer_rows", "Rows waiting in the write buffer.", registry=r
        )
        self.buffer_capacity_rows = Gauge(
            "optionfeed_buffer_capacity_rows",
            "Rows the write buffer holds before the reader is slowed.",
            registry=r,
        )
        self.buffer_fill_ratio = Gauge(
            "optionfeed_buffer_fill_ratio", "Write buffer fill, 0 to 1.", registry=r
        )
        self.write_duration_seconds = Histogram(
            "optionfeed_write_duration_seconds",
            "Time to write one batch (COPY into staging and merge), by table.",
            ["table"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.write_errors_total = Counter(
            "optionfeed_write_errors_total",
            "Batches that failed to write, by reason.",
            ["reason"],
            registry=r,
        )
        self.commit_lag_seconds = Histogram(
            "optionfeed_commit_lag_seconds",
            "Exchange timestamp to database commit, per row, by table.",
            ["table"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reconnects_total = Counter(
            "optionfeed_reconnects_total",
            "Connections to the exchange re-established, by reason.",
            ["reason"],
            registry=r,
        )
        self.connections = Gauge(
            "optionfeed_connections", "Open connections to the exchange.", registry=r
        )
        self.subscribed_channels = Gauge(
            "optionfeed_subscribed_channels",
            "Channels the exchange acknowledged, across connections.",
            registry=r,
        )
        self.subscribe_failures_total = Counter(
            "optionfeed_subscribe_failures_total",
            "Channels the exchange left out of a subscribe acknowledgment or refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.rejected_messages_total = Counter(
            "optionfeed_rejected_messages_total",
            "Frames that could not be parsed or stored, by reason.",
            ["reason"],
            registry=r,
        )
        self.gaps_total = Counter(
            "optionfeed_gaps_total",
            "Gaps detected, by channel family and reason (disconnect, sequence, stale, outage).",
            ["channel", "reason"],
            registry=r,
        )
        self.backfilled_rows_total = Counter(
            "optionfeed_backfilled_rows_total",
            "Rows recovered through REST after a gap, by table.",
            ["table"],
            registry=r,
        )
        self.last_message_timestamp_seconds = Gauge(
            "optionfeed_last_message_timestamp_seconds",
            "Unix time of the last notification received.",
            registry=r,
        )
        self.last_commit_timestamp_seconds = Gauge(
            "optionfeed_last_commit_timestamp_seconds",
            "Unix time of the last successful database commit.",
            registry=r,
        )
        self.exchange_maintenance = Gauge(
            "optionfeed_exchange_maintenance",
            "1 while the exchange announces maintenance on platform_state.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "optionfeed_spool_bytes", "Bytes held in the disk spool.", registry=r
        )
        self.spool_capacity_bytes = Gauge(
            "optionfeed_spool_capacity_bytes", "Size limit of the disk spool.", registry=r
        )
        self.spool_fill_ratio = Gauge(
            "optionfeed_spool_fill_ratio", "Disk spool fill, 0 to 1.", registry=r
        )
        self.spooled_rows_total = Counter(
            "optionfeed_spooled_rows_total",
            "Rows written to the disk spool because the database could not take them.",
            registry=r,
        )
        self.spool_replayed_rows_total = Counter(
            "optionfeed_spool_replayed_rows_total",
            "Rows replayed from the disk spool into the database.",
            registry=r,
        )
        self.dropped_rows_total = Counter(
            "optionfeed_dropped_rows_total",
            "Rows lost on purpose under the documented full-spool policy, by reason.",
            ["reason"],
            registry=r,
        )

        # Series of small known label sets exist from the start, so that rates and alerts see
        # their first increase.
        for family in FEED_CHANNELS:
            for reason in GAP_REASONS:
                self.gaps_total.labels(family, reason)
        self.backfilled_rows_total.labels("option_trades")
        for reason in WRITE_ERROR_REASONS:
            self.write_errors_total.labels(reason)
        for reason in DROP_REASONS:
            self.dropped_rows_total.labels(reason)

    def observe_trades(self, *, expected: Callable[[], int], seen: Callable[[], int]) -> None:
        """Read ``optionfeed_trade_sequences_{expected,seen}_total`` from these at scrape time."""
        self._observed.trades_expected = expected
        self._observed.trades_seen = seen

    def observe_silence(self, silent: Callable[[], Mapping[str, int]]) -> None:
        """Read ``optionfeed_silent_channels`` (family -> count) from this at scrape time."""
        self._observed.silent = silent

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
