"""What the report knows, and what it concludes: pure data and pure functions, no I/O.

:mod:`.queries` reads the database into :class:`Facts`; :func:`build` turns them into a
:class:`Report` (one :class:`Line` per instrument and channel, with a :class:`Verdict`);
:mod:`.render` prints it.

How a missing trade or a broken book chain is judged "recorded": a ``data_gaps`` row of the same
instrument (or one without an instrument: a whole connection) and of the same channel family (or
of no known family) covers it, either in sequence numbers (``seq_from..seq_to`` overlaps the
missing ``trade_seq`` range, or the ``change_id`` span of the break) or in time (the gap's interval
overlaps the time between the rows on either side of the hole, give or take
:data:`TIME_SLACK` seconds, because gap bounds are the collector's clock and rows carry the
exchange's). What no gap covers is *unrecorded*: data lost without a trace, the one outcome the
collector promises never to produce.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from optionfeed.deribit.instruments import InvalidInstrumentName, parse_option_name
from optionfeed.report.window import Window
from optionfeed.store import tables

FAMILIES: tuple[str, ...] = tables.FAMILIES
TABLE_OF: dict[str, str] = {family: table.name for family, table in tables.BY_FAMILY.items()}
# A collector writes its heartbeat every 15 s; four missed ones and it no longer looks alive.
ALIVE_WITHIN = 60.0
TIME_SLACK = 2.0


def family_of(channel: str) -> str | None:
    """``trades`` for ``trades``, ``trades.ETH-…`` or ``trades.option.ETH.100ms``; else None."""
    head = channel.split(".", 1)[0]
    return head if head in FAMILIES else None


def instrument_order(name: str) -> tuple[Any, ...]:
    """Options by underlying, expiry, strike, then call before put; other names after, by name."""
    try:
        option = parse_option_name(name)
    except InvalidInstrumentName:
        return (1, name)
    return (0, option.base, option.quote or "", option.expiry, option.strike, option.option_type)


# ----------------------------------------------------------------------------- facts


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One ``collector_status`` row."""

    feed: str
    shard: int
    pod: str
    started_at: datetime
    last_seen: datetime
    version: str | None
    instruments: int | None
    connections: int | None
    counters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Gap:
    """One ``data_gaps`` row."""

    gap_id: str
    feed: str | None
    shard: int | None
    instrument: str | None
    channel: str
    start: datetime
    end: datetime | None
    reason: str
    seq_from: int | None
    seq_to: int | None
    rows_recovered: int

    @property
    def family(self) -> str | None:
        return family_of(self.channel)

    @property
    def open(self) -> bool:
        return self.end is None

    def overlaps(self, start: datetime, end: datetime, slack: float = TIME_SLACK) -> bool:
        pad = timedelta(seconds=slack)
        return self.start <= end + pad and (self.end is None or self.end >= start - pad)

    def covers_sequence(self, low: int, high: int) -> bool:
        return (
            self.seq_from is not None
            and self.seq_to is not None
            and self.seq_from <= high
            and self.seq_to >= low
        )


@dataclass(frozen=True, slots=True)
class Span:
    """Rows of one instrument in one table over the window."""

    instrument: str
    rows: int
    first_ts: datetime
    last_ts: datetime


@dataclass(frozen=True, slots=True)
class Hole:
    """Trades ``after_seq + 1 .. before_seq - 1`` are absent between two stored trades."""

    after_seq: int
    before_seq: int
    after_ts: datetime
    before_ts: datetime

    @property
    def first_missing(self) -> int:
        return self.after_seq + 1

    @property
    def last_missing(self) -> int:
        return self.before_seq - 1

    @property
    def size(self) -> int:
        return self.before_seq - self.after_seq - 1


@dataclass(frozen=True, slots=True)
class TradeSpan:
    """Trades of one instrument over the window, by ``trade_seq``."""

    instrument: str
    rows: int
    first_ts: datetime
    last_ts: datetime
    first_seq: int
    last_seq: int
    distinct_seqs: int
    holes: tuple[Hole, ...] = ()

    @property
    def expected(self) -> int:
        return self.last_seq - self.first_seq + 1

    @property
    def missing(self) -> int:
        return self.expected - self.distinct_seqs


@dataclass(frozen=True, slots=True)
class Break:
    """A book change whose ``prev_change_id`` is not the ``change_id`` stored before it."""

    change_id: int
    prev_change_id: int | None
    stored_prev: int
    ts: datetime
    stored_prev_ts: datetime


@dataclass(frozen=True, slots=True)
class BookSpan:
    """Book messages of one instrument over the window, chained by change_id."""

    instrument: str
    rows: int
    first_ts: datetime
    last_ts: datetime
    snapshots: int
    checked: int  # changes with a stored predecessor in the window, whose link was checked
    breaks: tuple[Break, ...] = ()


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything read from the database, in one snapshot."""

    window: Window
    taken_at: datetime
    heartbeats: tuple[Heartbeat, ...] = ()
    tickers: tuple[Span, ...] = ()
    quotes: tuple[Span, ...] = ()
    trades: tuple[TradeSpan, ...] = ()
    books: tuple[BookSpan, ...] = ()
    gaps: tuple[Gap, ...] = ()
    rejected: int = 0
    feed: str | None = None
    instruments: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- conclusions


class Verdict(enum.Enum):
    """How complete one instrument's channel is over the window, from best to worst."""

    COMPLETE = "complete"  # no gap, no missing trade, no broken chain
    RECOVERED = "recovered"  # trades: gaps were recorded and backfill left nothing missing
    GAPS_RECORDED = "gaps_recorded"  # data is missing, and every missing piece is in data_gaps
    NO_DATA = "no_data"  # nothing stored in the window (an instrument asked for by name)
    GAP_OPEN = "gap_open"  # a gap without an end: data is being missed now, or was never closed
    UNRECORDED_LOSS = "unrecorded_loss"  # missing data that no data_gaps row accounts for

    @property
    def severity(self) -> int:
        return list(Verdict).index(self)

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


def worst(verdicts: Iterable[Verdict], default: Verdict = Verdict.COMPLETE) -> Verdict:
    return max(verdicts, key=lambda v: v.severity, default=default)


@dataclass(frozen=True, slots=True)
class GapSummary:
    count: int = 0
    open: int = 0
    seconds: float = 0.0  # of the window covered by the gaps (overlaps counted once)
    rows_recovered: int = 0
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SequenceCheck:
    """Trades: ``trade_seq`` from first to last, expected (max - min + 1) against seen."""

    first: int
    last: int
    expected: int
    seen: int
    missing: int
    holes: int
    unrecorded: int


@dataclass(frozen=True, slots=True)
class ChainCheck:
    """Book: changes whose ``prev_change_id`` was checked against the change stored before."""

    checked: int
    snapshots: int
    breaks: int
    unrecorded: int


@dataclass(frozen=True, slots=True)
class Line:
    """One instrument and channel over the window."""

    instrument: str
    channel: str  # a family of FAMILIES, or a gap's own channel name when it names none
    rows: int
    first_ts: datetime | None
    last_ts: datetime | None
    gaps: GapSummary
    verdict: Verdict
    sequence: SequenceCheck | None = None
    chain: ChainCheck | None = None

    @property
    def table(self) -> str | None:
        return TABLE_OF.get(self.channel)


@dataclass(frozen=True, slots=True)
class CollectorLine:
    heartbeat: Heartbeat
    age: float
    alive: bool


@dataclass(frozen=True, slots=True)
class Totals:
    rows: dict[str, int]
    instruments: int
    gaps: int
    open_gaps: int
    gap_seconds: float
    rows_recovered: int
    missing_trades: int
    book_breaks: int
    unrecorded: int
    rejected: int


@dataclass(frozen=True, slots=True)
class Report:
    window: Window
    taken_at: datetime
    feed: str | None
    instruments: tuple[str, ...]
    collectors: tuple[CollectorLine, ...]
    lines: tuple[Line, ...]
    gaps: tuple[Gap, ...]  # every gap overlapping the window
    connection_gaps: tuple[Gap, ...]  # those without an instrument
    totals: Totals
    verdict: Verdict


def covered_seconds(
    intervals: Iterable[tuple[datetime, datetime | None]], window: Window, now: datetime
) -> float:
    """Seconds of ``window`` inside the union of ``intervals``; an open end runs to ``now``."""
    clipped = []
    for start, end in intervals:
        low = max(start, window.start)
        high = min(end if end is not None else now, window.end)
        if high > low:
            clipped.append((low, high))
    clipped.sort()
    total = 0.0
    current: tuple[datetime, datetime] | None = None
    for low, high in clipped:
        if current is not None and low <= current[1]:
            current = (current[0], max(current[1], high))
            continue
        if current is not None:
            total += (current[1] - current[0]).total_seconds()
        current = (low, high)
    if current is not None:
        total += (current[1] - current[0]).total_seconds()
    return total


def uncovered_count(low: int, high: int, ranges: Iterable[tuple[int, int]]) -> int:
    """How many integers of ``low..high`` (inclusive) lie in none of ``ranges`` (inclusive)."""
    if high < low:
        return 0
    clipped = sorted((max(a, low), min(b, high)) for a, b in ranges if a <= high and b >= low)
    covered = 0
    reach = low - 1  # highest integer counted so far
    for a, b in clipped:
        a = max(a, reach + 1)
        if b >= a:
            covered += b - a + 1
            reach = b
    return (high - low + 1) - covered


def unrecorded_trades(holes: Iterable[Hole], gaps: Sequence[Gap]) -> int:
    """Missing trades that no gap accounts for (see the module docstring)."""
    total = 0
    ranges = [
        (g.seq_from, g.seq_to) for g in gaps if g.seq_from is not None and g.seq_to is not None
    ]
    for hole in holes:
        if any(g.overlaps(hole.after_ts, hole.before_ts) for g in gaps):
            continue
        total += uncovered_count(hole.first_missing, hole.last_missing, ranges)
    return total


def unrecorded_breaks(breaks: Iterable[Break], gaps: Sequence[Gap]) -> int:
    """Book breaks that no gap accounts for (see the module docstring)."""
    return sum(
        1
        for b in breaks
        if not any(
            g.overlaps(b.stored_prev_ts, b.ts) or g.covers_sequence(b.stored_prev, b.change_id)
            for g in gaps
        )
    )


def summarize_gaps(gaps: Sequence[Gap], window: Window, now: datetime) -> GapSummary:
    return GapSummary(
        count=len(gaps),
        open=sum(1 for g in gaps if g.open),
        seconds=covered_seconds(((g.start, g.end) for g in gaps), window, now),
        rows_recovered=sum(g.rows_recovered for g in gaps),
        reasons=tuple(sorted({g.reason for g in gaps})),
    )


def line_verdict(
    channel: str, rows: int, *, missing: int, unrecorded: int, gaps: GapSummary
) -> Verdict:
    if unrecorded > 0:
        return Verdict.UNRECORDED_LOSS
    if gaps.open > 0:
        return Verdict.GAP_OPEN
    if rows == 0:
        return Verdict.NO_DATA
    if missing > 0:
        return Verdict.GAPS_RECORDED
    if gaps.count > 0:
        # Only trades can be fetched back; a missed ticker or book change is gone for good.
        return Verdict.RECOVERED if channel == "trades" else Verdict.GAPS_RECORDED
    return Verdict.COMPLETE


def collector_lines(
    heartbeats: Iterable[Heartbeat], window: Window, now: datetime
) -> tuple[CollectorLine, ...]:
    """Per feed and shard: every pod heard from within the window, else the last one heard."""
    by_shard: dict[tuple[str, int], list[Heartbeat]] = {}
    for hb in heartbeats:
        by_shard.setdefault((hb.feed, hb.shard), []).append(hb)
    lines = []
    for key in sorted(by_shard):
        beats = sorted(by_shard[key], key=lambda h: h.last_seen, reverse=True)
        shown = [h for h in beats if h.last_seen >= window.start] or beats[:1]
        for hb in sorted(shown, key=lambda h: h.pod):
            age = max(0.0, (now - hb.last_seen).total_seconds())
            # A collector that stopped cleanly says so in its last heartbeat.
            stopped = hb.counters.get("state") == "stopped"
            lines.append(CollectorLine(hb, age, age <= ALIVE_WITHIN and not stopped))
    return tuple(lines)


def build(facts: Facts) -> Report:
    """The report: one line per instrument and channel that has rows or gaps in the window."""
    window, now = facts.window, facts.taken_at
    instrument_gaps: dict[str, list[Gap]] = {}
    connection_gaps = []
    for gap in facts.gaps:
        if gap.instrument is None:
            connection_gaps.append(gap)
        else:
            instrument_gaps.setdefault(gap.instrument, []).append(gap)

    def gaps_for(instrument: str, family: str) -> list[Gap]:
        return [g for g in instrument_gaps.get(instrument, ()) if g.family in (None, family)]

    def accountable(instrument: str, family: str) -> list[Gap]:
        return gaps_for(instrument, family) + [
            g for g in connection_gaps if g.family in (None, family)
        ]

    lines: dict[tuple[str, str], Line] = {}
    for family, spans in (("ticker", facts.tickers), ("quote", facts.quotes)):
        for span in spans:
            summary = summarize_gaps(gaps_for(span.instrument, family), window, now)
            verdict = line_verdict(family, span.rows, missing=0, unrecorded=0, gaps=summary)
            lines[span.instrument, family] = Line(
                span.instrument, family, span.rows, span.first_ts, span.last_ts, summary, verdict
            )
    for trade in facts.trades:
        summary = summarize_gaps(gaps_for(trade.instrument, "trades"), window, now)
        lost = unrecorded_trades(trade.holes, accountable(trade.instrument, "trades"))
        sequence = SequenceCheck(
            first=trade.first_seq,
            last=trade.last_seq,
            expected=trade.expected,
            seen=trade.distinct_seqs,
            missing=trade.missing,
            holes=len(trade.holes),
            unrecorded=lost,
        )
        verdict = line_verdict(
            "trades", trade.rows, missing=trade.missing, unrecorded=lost, gaps=summary
        )
        lines[trade.instrument, "trades"] = Line(
            trade.instrument,
            "trades",
            trade.rows,
            trade.first_ts,
            trade.last_ts,
            summary,
            verdict,
            sequence=sequence,
        )
    for book in facts.books:
        summary = summarize_gaps(gaps_for(book.instrument, "book"), window, now)
        lost = unrecorded_breaks(book.breaks, accountable(book.instrument, "book"))
        chain = ChainCheck(
            checked=book.checked,
            snapshots=book.snapshots,
            breaks=len(book.breaks),
            unrecorded=lost,
        )
        verdict = line_verdict(
            "book", book.rows, missing=len(book.breaks), unrecorded=lost, gaps=summary
        )
        lines[book.instrument, "book"] = Line(
            book.instrument,
            "book",
            book.rows,
            book.first_ts,
            book.last_ts,
            summary,
            verdict,
            chain=chain,
        )
    # A gap of a channel with no rows in the window still gets a line. A gap naming no known
    # family already counts on every line of its instrument, so it gets one only when there is none.
    for instrument, gaps in instrument_gaps.items():
        known = {c for (i, c) in lines if i == instrument}
        pending: dict[str, list[Gap]] = {}
        for gap in gaps:
            channel = gap.family or gap.channel
            if channel not in known and (gap.family is not None or not known):
                pending.setdefault(channel, []).append(gap)
        for channel, own in pending.items():
            summary = summarize_gaps(own, window, now)
            verdict = line_verdict(channel, 0, missing=0, unrecorded=0, gaps=summary)
            lines[instrument, channel] = Line(instrument, channel, 0, None, None, summary, verdict)
    for instrument in facts.instruments:
        if not any(i == instrument for (i, _) in lines):
            lines[instrument, "-"] = Line(
                instrument, "-", 0, None, None, GapSummary(), Verdict.NO_DATA
            )

    order = {f: n for n, f in enumerate(FAMILIES)}
    ordered = tuple(
        lines[k]
        for k in sorted(
            lines, key=lambda k: (instrument_order(k[0]), order.get(k[1], len(order)), k[1])
        )
    )
    rows = {TABLE_OF[f]: 0 for f in FAMILIES}
    for line in ordered:
        if line.table is not None:
            rows[line.table] += line.rows
    all_gaps = tuple(sorted(facts.gaps, key=lambda g: (g.start, g.gap_id)))
    totals = Totals(
        rows=rows,
        instruments=len({line.instrument for line in ordered if line.rows > 0}),
        gaps=len(all_gaps),
        open_gaps=sum(1 for g in all_gaps if g.open),
        gap_seconds=covered_seconds(((g.start, g.end) for g in all_gaps), window, now),
        rows_recovered=sum(g.rows_recovered for g in all_gaps),
        missing_trades=sum(line.sequence.missing for line in ordered if line.sequence),
        book_breaks=sum(line.chain.breaks for line in ordered if line.chain),
        unrecorded=sum(line.sequence.unrecorded for line in ordered if line.sequence)
        + sum(line.chain.unrecorded for line in ordered if line.chain),
        rejected=facts.rejected,
    )
    connection_verdicts = [
        Verdict.GAP_OPEN if g.open else Verdict.GAPS_RECORDED for g in connection_gaps
    ]
    empty = not ordered and not connection_gaps
    verdict = (
        Verdict.NO_DATA
        if empty
        else worst([line.verdict for line in ordered] + connection_verdicts)
    )
    return Report(
        window=window,
        taken_at=now,
        feed=facts.feed,
        instruments=facts.instruments,
        collectors=collector_lines(facts.heartbeats, window, now),
        lines=ordered,
        gaps=all_gaps,
        connection_gaps=tuple(sorted(connection_gaps, key=lambda g: (g.start, g.gap_id))),
        totals=totals,
        verdict=verdict,
    )
