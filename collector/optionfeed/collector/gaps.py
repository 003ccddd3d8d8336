"""Every gap, recorded with its bounds: the ``data_gaps`` rows of one collector.

A :class:`GapRecorder` listens to the router (sequence jumps, broken books, what arrived when)
and to the connections (sessions lost and restored), and writes one ``data_gaps`` row per
instrument and channel for each gap:

- ``disconnect``: a session ended; from the last frame it delivered to the moment the exchange
  acknowledged the channel again on a new session. ``stale`` when the session ended because the
  stream went silent without closing.
- ``sequence``: trades skipped a ``trade_seq`` (bounds in ``seq_from``/``seq_to``), or a book's
  ``prev_change_id`` did not follow the last ``change_id`` (until the fresh snapshot arrives).
- ``stale``: a ticker silent longer than its threshold, from its last message to its next (or
  to its session's last frame, where a ``disconnect`` gap takes over).

An instrument that leaves the feed ends its open gaps at that moment.

A gap row is written when the gap opens (``gap_end`` NULL: it shows while it lasts) and written
again, same ``gap_id``, when it closes and when its trades have been fetched; the table merges
on ``gap_id``. Trade gaps are handed to the :class:`~optionfeed.collector.backfill.Backfiller`,
which fills ``rows_recovered``.

The hooks run on the reader's hot path and must not wait, so rows go into a queue that
:meth:`GapRecorder.run` writes out.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from optionfeed.collector.connection import ExchangeConnection, Observer
from optionfeed.collector.router import Events, RowSink
from optionfeed.collector.sequences import BookBreak, SequenceGap, Staleness, TradeSequences
from optionfeed.collector.waiting import wait_set
from optionfeed.deribit.channels import FEED_CHANNELS, FEED_FAMILIES, InvalidChannel, parse_channel
from optionfeed.store import tables
from optionfeed.store.records import GapReason, gap_row
from optionfeed.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

DEFAULT_STALE_AFTER = {"ticker": 60.0}


@dataclass(slots=True)
class Gap:
    """One gap of one instrument's channel, as it is known so far."""

    family: str
    instrument: str | None
    start: float
    reason: GapReason
    gap_id: uuid.UUID = field(default_factory=uuid.uuid4)
    end: float | None = None
    seq_from: int | None = None
    seq_to: int | None = None
    recovered: int = 0
    announced: bool = (
        False  # its row was written (a restart's gap is written only if it held trades)
    )
    # Its span, made once the gap has both bounds; its backfill's span is a child of it.
    traced: trace.SpanContext | None = None


@dataclass(slots=True)
class TradeRecovery:
    """What the backfiller should fetch for one instrument, and the gap it fills."""

    instrument: str
    gap: Gap
    after_seq: int | None  # fetch trades with trade_seq > after_seq (None: by time from start)
    upto_seq: int | None  # ... up to this one; None: up to the present
    first_live_seq: int | None = None  # the first trade the stream delivered after the gap


def channel_key(channel: str) -> tuple[str, str] | None:
    """(instrument, family) of a market-data channel; None for lifecycle and other channels."""
    try:
        parsed = parse_channel(channel)
    except InvalidChannel:
        return None
    if parsed.kind not in FEED_FAMILIES or parsed.instrument is None:
        return None
    return parsed.instrument, parsed.kind.value


class GapRecorder(Events, Observer):
    """See the module docstring."""

    def __init__(
        self,
        *,
        feed: str,
        shard: int,
        metrics: Metrics,
        trades: TradeSequences,
        recover: Callable[[TradeRecovery], None] | None = None,
        resync: Callable[[str], None] | None = None,
        stale_after: dict[str, float] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feed = feed
        self.shard = shard
        self._metrics = metrics
        self._trades = trades
        self._recover = recover
        self._resync = resync
        self._clock = clock
        self.staleness = Staleness(DEFAULT_STALE_AFTER if stale_after is None else stale_after)
        self.disconnected_gaps: dict[tuple[str, str], Gap] = {}
        self.book_gaps: dict[str, Gap] = {}
        self.stale_gaps: dict[tuple[str, str], Gap] = {}
        self.recoveries: dict[str, TradeRecovery] = {}  # instrument -> recovery after a disconnect
        self._last_seen: dict[tuple[str, str], float] = {}
        self._rows: deque[tables.Row] = deque()
        self._wake = asyncio.Event()
        self.opened = 0
        self.recovered_trades = 0

    # ----------------------------------------------------------------- writing rows

    def record(self, gap: Gap, *, opened: bool = False) -> None:
        if gap.end is not None and gap.traced is None:
            gap.traced = self._trace(gap)
        if opened:
            gap.announced = True
            self.opened += 1
            self._metrics.gaps_total.labels(gap.family, gap.reason).inc()
        self._rows.append(
            gap_row(
                gap.gap_id,
                channel=gap.family,
                reason=gap.reason,
                start=gap.start,
                end=gap.end,
                now=self._clock(),
                instrument=gap.instrument,
                feed=self.feed,
                shard=self.shard,
                seq_from=gap.seq_from,
                seq_to=gap.seq_to,
                rows_recovered=gap.recovered,
            )
        )
        self._wake.set()

    def _trace(self, gap: Gap) -> trace.SpanContext:
        """A span covering the gap, from its start to its end (both already known)."""
        assert gap.end is not None
        attributes: dict[str, str | int] = {
            "optionfeed.gap.id": str(gap.gap_id),
            "optionfeed.gap.reason": gap.reason,
            "optionfeed.channel": gap.family,
        }
        if gap.instrument is not None:
            attributes["optionfeed.instrument"] = gap.instrument
        if gap.seq_from is not None:
            attributes["optionfeed.gap.seq_from"] = gap.seq_from
        if gap.seq_to is not None:
            attributes["optionfeed.gap.seq_to"] = gap.seq_to
        span = tracer.start_span(
            "optionfeed.gap",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a trace of its own
            attributes=attributes,
            start_time=int(gap.start * 1e9),
        )
        span.end(end_time=int(max(gap.end, gap.start) * 1e9))
        return span.get_span_context()

    async def run(self, rows: RowSink, *, sweep_every: float = 5.0) -> None:
        """Write queued gap rows and look for stale channels, until cancelled."""
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + sweep_every
        while True:
            while self._rows:
                await rows.put(tables.GAPS, self._rows.popleft())
            timeout = max(0.0, next_sweep - loop.time())
            self._wake.clear()
            if not await wait_set(self._wake, timeout):
                self.sweep(self._clock())
                next_sweep = loop.time() + sweep_every

    async def flush(self, rows: RowSink) -> None:
        while self._rows:
            await rows.put(tables.GAPS, self._rows.popleft())

    # ----------------------------------------------------------------- connections

    def disconnected(
        self, conn: ExchangeConnection, channels: frozenset[str], reason: str, last_frame_at: float
    ) -> None:
        gap_reason: GapReason = "stale" if reason == "stale" else "disconnect"
        for channel in channels:
            key = channel_key(channel)
            if key is None or key in self.disconnected_gaps:
                continue
            instrument, family = key
            self.staleness.forget(instrument, family)
            stale = self.stale_gaps.pop(key, None)
            if stale is not None:  # the session's gap takes over from its last frame
                stale.end = max(stale.start, last_frame_at)
                self.record(stale)
            gap = Gap(family, instrument, last_frame_at, gap_reason)
            if family == "trades":
                last = self._trades.last.get(instrument)
                gap.seq_from = None if last is None else last + 1
            self.disconnected_gaps[key] = gap
            self.record(gap, opened=True)

    def connected(self, conn: ExchangeConnection, channels: frozenset[str], at: float) -> None:
        for channel in channels:
            key = channel_key(channel)
            if key is None:
                continue
            instrument, family = key
            self.staleness.expect(instrument, family, at)
            gap = self.disconnected_gaps.pop(key, None)
            if gap is None:
                continue
            gap.end = at
            self.record(gap)
            if family == "trades" and self._recover is not None:
                recovery = TradeRecovery(
                    instrument,
                    gap,
                    after_seq=None if gap.seq_from is None else gap.seq_from - 1,
                    upto_seq=None,
                )
                self.recoveries[instrument] = recovery
                self._recover(recovery)

    def restarted(self, instrument: str, last_seq: int, last_ts: float, at: float) -> None:
        """The database holds trades up to ``last_seq``: fetch what happened while we were away.

        The ``outage`` gap is written only if trades were in fact missed.
        """
        self._trades.seed(instrument, last_seq)
        gap = Gap("trades", instrument, last_ts, "outage", end=at, seq_from=last_seq + 1)
        recovery = TradeRecovery(instrument, gap, after_seq=last_seq, upto_seq=None)
        self.recoveries[instrument] = recovery
        if self._recover is not None:
            self._recover(recovery)

    # ----------------------------------------------------------------- the router's events

    def seen(self, instrument: str, family: str, at: float) -> None:
        key = (instrument, family)
        self._last_seen[key] = at
        span = self.staleness.seen(instrument, family, at)
        if span is not None:
            gap = self.stale_gaps.pop(key, None)
            if gap is not None:
                gap.end = at
                self.record(gap)

    def trade_seen(self, instrument: str, trade_seq: int, at: float) -> None:
        self.seen(instrument, "trades", at)
        recovery = self.recoveries.get(instrument)
        if recovery is not None and recovery.first_live_seq is None:
            recovery.first_live_seq = trade_seq

    def trade_gap(self, gap: SequenceGap, at: float) -> None:
        recovery = self.recoveries.get(gap.instrument)
        if recovery is not None:
            # The jump a reconnect leaves: the disconnect's recovery already fetches these.
            recovery.upto_seq = max(recovery.upto_seq or 0, gap.last_missing)
            return
        start = self._last_seen.get((gap.instrument, "trades"), at)
        record = Gap(
            "trades",
            gap.instrument,
            start,
            "sequence",
            end=at,
            seq_from=gap.first_missing,
            seq_to=gap.last_missing,
        )
        self.record(record, opened=True)
        log.warning(
            "trades of %s skipped trade_seq %d..%d; fetching them",
            gap.instrument,
            gap.first_missing,
            gap.last_missing,
        )
        if self._recover is not None:
            self._recover(
                TradeRecovery(
                    gap.instrument,
                    record,
                    after_seq=gap.first_missing - 1,
                    upto_seq=gap.last_missing,
                )
            )

    def book_break(self, brk: BookBreak, channel: str, at: float) -> None:
        start = self._last_seen.get((brk.instrument, "book"), at)
        gap = Gap("book", brk.instrument, start, "sequence")
        gap.seq_from, gap.seq_to = brk.expected_prev, brk.got_prev
        self.book_gaps[brk.instrument] = gap
        self.record(gap, opened=True)
        log.warning(
            "book of %s broke (expected prev_change_id %s, got %s); resubscribing that channel",
            brk.instrument,
            brk.expected_prev,
            brk.got_prev,
        )
        if self._resync is not None:
            self._resync(channel)

    def book_resynced(self, instrument: str, at: float) -> None:
        gap = self.book_gaps.pop(instrument, None)
        if gap is not None:
            gap.end = at
            self.record(gap)

    # ----------------------------------------------------------------- staleness

    def sweep(self, now: float) -> None:
        for span in self.staleness.sweep(now):
            key = (span.instrument, span.channel)
            if key in self.disconnected_gaps:
                continue  # already a disconnect gap
            gap = Gap(span.channel, span.instrument, span.since, "stale")
            self.stale_gaps[key] = gap
            self.record(gap, opened=True)

    def forget(self, instrument: str) -> None:
        """An instrument left the feed: stop watching it, and end its open gaps now."""
        now = self._clock()
        left: list[Gap | None] = [self.book_gaps.pop(instrument, None)]
        for family in FEED_CHANNELS:
            key = (instrument, family)
            self.staleness.forget(instrument, family)
            self._last_seen.pop(key, None)
            left += [self.stale_gaps.pop(key, None), self.disconnected_gaps.pop(key, None)]
        for gap in left:
            if gap is not None:
                gap.end = max(gap.start, now)
                self.record(gap)

    # ----------------------------------------------------------------- recoveries

    def recovered(self, recovery: TradeRecovery, count: int, seqs: tuple[int, int] | None) -> None:
        """The backfiller fetched ``count`` missed trades (trade_seq range ``seqs``)."""
        if self.recoveries.get(recovery.instrument) is recovery:
            del self.recoveries[recovery.instrument]
        gap = recovery.gap
        if not gap.announced and count == 0:
            return  # a restart that missed nothing is not a gap
        gap.recovered += count
        if seqs is not None:
            low, high = seqs
            gap.seq_from = low if gap.seq_from is None else min(gap.seq_from, low)
            gap.seq_to = high if gap.seq_to is None else max(gap.seq_to, high)
        self.recovered_trades += count
        self._metrics.backfilled_rows_total.labels(tables.TRADES.name).inc(count)
        self.record(gap, opened=not gap.announced)

    def silent(self) -> dict[str, int]:
        """Instrument channels without data now, by family: disconnected, or stale."""
        counts: dict[str, int] = {}
        for _, family in (*self.disconnected_gaps, *self.stale_gaps):
            counts[family] = counts.get(family, 0) + 1
        return counts

    def open_gaps(self) -> list[Gap]:
        return [
            *self.disconnected_gaps.values(),
            *self.book_gaps.values(),
            *self.stale_gaps.values(),
        ]
