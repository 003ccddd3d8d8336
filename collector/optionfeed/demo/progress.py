"""What the demo shows while it runs and when it ends: pure functions of counter samples.

The runner takes a :class:`Sample` of the collector's counters twice a second. Rates and lag
quantiles over the last few seconds are differences between two samples, the way Prometheus'
``rate()`` and ``histogram_quantile()`` work on scrapes; the summary's quantiles use the whole
run's histogram. Nothing here reads a clock or writes to a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optionfeed.report.columns import number, render_table
from optionfeed.report.model import Report
from optionfeed.report.window import format_seconds
from optionfeed.store import tables

TABLES = tuple(table.name for table in tables.BY_FAMILY.values())

Buckets = tuple[tuple[float, float], ...]  # cumulative (upper bound, count), ending at +Inf


@dataclass(frozen=True, slots=True)
class Sample:
    """The collector's counters at one moment (``at``: monotonic seconds)."""

    at: float
    messages: float = 0.0  # notifications received, all channels
    rows: Mapping[str, int] = field(default_factory=dict)  # rows committed per table
    lag: Buckets = ()  # exchange -> commit, all tables
    buffered: int = 0
    capacity: int = 1
    connections: int = 0
    channels_acked: int = 0
    channels_held: int = 0
    rejected: int = 0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def baseline(samples: Sequence[Sample], seconds: float) -> Sample:
    """The oldest sample no more than ``seconds`` older than the newest (the newest if alone)."""
    if not samples:
        raise ValueError("no samples")
    newest = samples[-1]
    for sample in samples:
        if newest.at - sample.at <= seconds:
            return sample
    return newest


def per_second(before: float, after: float, seconds: float) -> float:
    """The rate of a counter between two readings; 0 when no time passed."""
    return (after - before) / seconds if seconds > 0 else 0.0


def bucket_delta(newer: Buckets, older: Buckets) -> Buckets:
    """Observations between two readings of one cumulative histogram."""
    if not older:
        return newer
    earlier = dict(older)
    return tuple((bound, count - earlier.get(bound, 0.0)) for bound, count in newer)


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile (0..1) of cumulative buckets, as Prometheus estimates it.

    Linear interpolation inside the bucket holding the rank; the first bucket starts at 0. None
    when there were no observations; ``math.inf`` when the rank falls in the ``+Inf`` bucket, so
    that a caller can say "more than the last bound" instead of inventing a figure.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return math.inf
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return math.inf


def last_finite_bound(buckets: Buckets) -> float | None:
    finite = [bound for bound, _ in buckets if not math.isinf(bound)]
    return finite[-1] if finite else None


def format_lag(value: float | None, buckets: Buckets) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        top = last_finite_bound(buckets)
        return "over the histogram" if top is None else f"> {format_seconds(top)}"
    return format_seconds(value)


def lag_text(buckets: Buckets) -> str:
    """``p50 180 ms, p99 460 ms`` (``-`` while nothing was committed)."""
    p50 = format_lag(histogram_quantile(0.5, buckets), buckets)
    p99 = format_lag(histogram_quantile(0.99, buckets), buckets)
    return f"p50 {p50}, p99 {p99}"


def clock(seconds: float) -> str:
    """``0:07``, ``12:30``, ``1:02:03``."""
    whole = max(0, int(seconds))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fill_text(sample: Sample) -> str:
    ratio = sample.buffered / sample.capacity if sample.capacity else 0.0
    return f"{ratio:.0%}"


@dataclass(frozen=True, slots=True)
class View:
    """Two samples and what the display needs around them."""

    title: str
    now: Sample
    then: Sample  # the baseline for rates and recent lag
    elapsed: float  # seconds since recording began
    duration: float | None
    status: str

    @property
    def seconds(self) -> float:
        return self.now.at - self.then.at

    def rate(self, before: float, after: float) -> float:
        return per_second(before, after, self.seconds)

    @property
    def recent_lag(self) -> Buckets:
        return bucket_delta(self.now.lag, self.then.lag)

    @property
    def progress(self) -> str:
        if self.duration is None:
            return clock(self.elapsed)
        return f"{clock(self.elapsed)} of {clock(self.duration)}"


def panel_lines(view: View) -> list[str]:
    """The live panel for a terminal: a few aligned lines, redrawn in place."""
    now, then = view.now, view.then
    msg_rate = view.rate(then.messages, now.messages)
    row_rate = view.rate(then.total_rows, now.total_rows)
    per_table = render_table(
        ["TABLE", "ROWS", "ROWS/S"],
        [
            [
                table,
                number(now.rows.get(table, 0)),
                number(round(view.rate(then.rows.get(table, 0), now.rows.get(table, 0)))),
            ]
            for table in TABLES
        ],
        right={1, 2},
        indent="  ",
    ).splitlines()
    return [
        f"{view.title} | {view.progress} | {view.status}",
        f"  messages  {number(round(msg_rate))}/s, {number(int(now.messages))} received, "
        f"{number(now.rejected)} rejected",
        f"  rows      {number(round(row_rate))}/s, {number(now.total_rows)} committed",
        *per_table,
        f"  buffer    {fill_text(now)} ({number(now.buffered)} of {number(now.capacity)} rows)",
        f"  lag       {lag_text(view.recent_lag)} (exchange to commit, last "
        f"{format_seconds(view.seconds)})",
        f"  exchange  {now.connections} connection{'s' if now.connections != 1 else ''}, "
        f"{number(now.channels_acked)}/{number(now.channels_held)} channels acknowledged",
        "  Ctrl-C stops cleanly: the collector drains and flushes, then the simulator and the "
        "database stop.",
    ]


def progress_line(view: View) -> str:
    """One line for logs and pipes, printed every few seconds."""
    now, then = view.now, view.then
    rows = ", ".join(f"{t.removeprefix('option_')} {number(now.rows.get(t, 0))}" for t in TABLES)
    return (
        f"demo {view.progress}: {number(round(view.rate(then.messages, now.messages)))} msg/s, "
        f"rows {rows} ({number(round(view.rate(then.total_rows, now.total_rows)))}/s), "
        f"buffer {fill_text(now)}, lag {lag_text(view.recent_lag)}"
    )


def fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` columns, so that a terminal never wraps it."""
    if width <= 1 or len(line) <= width:
        return line
    return line[: width - 1] + "…"


@dataclass(frozen=True, slots=True)
class Summary:
    """What the demo recorded, for the closing table."""

    title: str
    recorded_seconds: float
    rows: Mapping[str, int]  # per table, in the database, from this run
    instruments_per_table: Mapping[str, int]
    instruments: int
    planned_instruments: int
    gaps: int
    open_gaps: int
    rows_recovered: int
    rejected: int
    trades_expected: int
    trades_seen: int
    book_links: int
    book_breaks: int
    unrecorded: int
    verdict: str
    messages: int
    lag: Buckets
    data_dir: str
    report_command: str


def summarize(
    *,
    title: str,
    recorded_seconds: float,
    planned_instruments: int,
    last: Sample,
    report: Report | None,
    data_dir: str,
    report_command: str,
) -> Summary:
    """The closing figures: from the report over the run's window when the database could be
    read, else from the collector's own counters (and the verdict says it is unknown)."""
    common: dict[str, Any] = {
        "title": title,
        "recorded_seconds": recorded_seconds,
        "planned_instruments": planned_instruments,
        "messages": int(last.messages),
        "lag": last.lag,
        "data_dir": data_dir,
        "report_command": report_command,
    }
    if report is None:
        return Summary(
            rows={t: last.rows.get(t, 0) for t in TABLES},
            instruments_per_table={},
            instruments=0,
            gaps=0,
            open_gaps=0,
            rows_recovered=0,
            rejected=last.rejected,
            trades_expected=0,
            trades_seen=0,
            book_links=0,
            book_breaks=0,
            unrecorded=0,
            verdict="unknown (the database could not be read)",
            **common,
        )
    per_table: dict[str, int] = {}
    for line in report.lines:
        if line.table is not None and line.rows > 0:
            per_table[line.table] = per_table.get(line.table, 0) + 1
    sequences = [line.sequence for line in report.lines if line.sequence is not None]
    chains = [line.chain for line in report.lines if line.chain is not None]
    t = report.totals
    return Summary(
        rows=dict(t.rows),
        instruments_per_table=per_table,
        instruments=t.instruments,
        gaps=t.gaps,
        open_gaps=t.open_gaps,
        rows_recovered=t.rows_recovered,
        rejected=t.rejected,
        trades_expected=sum(s.expected for s in sequences),
        trades_seen=sum(s.seen for s in sequences),
        book_links=sum(c.checked for c in chains),
        book_breaks=sum(c.breaks for c in chains),
        unrecorded=t.unrecorded,
        verdict=report.verdict.label,
        **common,
    )


def summary_text(s: Summary) -> str:
    table = render_table(
        ["TABLE", "ROWS", "INSTRUMENTS"],
        [
            *(
                [t, number(s.rows.get(t, 0)), number(s.instruments_per_table.get(t, 0))]
                for t in TABLES
            ),
            ["total", number(sum(s.rows.get(t, 0) for t in TABLES)), number(s.instruments)],
        ],
        right={1, 2},
        indent="  ",
    )
    missing = s.trades_expected - s.trades_seen
    rate = s.messages / s.recorded_seconds if s.recorded_seconds > 0 else 0.0
    facts = render_table(
        ["", ""],
        [
            ["instruments recorded", f"{number(s.instruments)} of {number(s.planned_instruments)}"],
            [
                "gaps recorded",
                f"{number(s.gaps)} ({number(s.open_gaps)} open, "
                f"{number(s.rows_recovered)} rows recovered)",
            ],
            ["rejected frames", number(s.rejected)],
            [
                "trades by trade_seq",
                f"{number(s.trades_seen)} of {number(s.trades_expected)} "
                f"expected ({number(missing)} missing)",
            ],
            [
                "book chain",
                f"{number(s.book_links)} links checked, {number(s.book_breaks)} "
                f"break{'s' if s.book_breaks != 1 else ''}",
            ],
            ["missing, in no gap", number(s.unrecorded)],
            ["messages", f"{number(s.messages)} ({number(round(rate))}/s)"],
            ["lag, exchange to commit", f"{lag_text(s.lag)} (whole run)"],
            ["verdict", s.verdict],
        ],
        indent="  ",
    ).splitlines()[1:]  # no header row
    return (
        "\n".join(
            [
                f"{s.title}: recorded {format_seconds(s.recorded_seconds)}",
                "",
                table,
                "",
                *facts,
                "",
                f"  data    {s.data_dir} (embedded PostgreSQL, stopped)",
                f"  report  {s.report_command}",
            ]
        )
        + "\n"
    )
