"""A :class:`~optionfeed.report.model.Report` as text for a terminal, or as JSON.

Both are pure functions of the report; the JSON shape is documented in :mod:`optionfeed.report`.
"""

from __future__ import annotations

from typing import Any

from optionfeed.report.columns import number, render_table
from optionfeed.report.model import (
    FAMILIES,
    TABLE_OF,
    CollectorLine,
    Gap,
    GapSummary,
    Line,
    Report,
)
from optionfeed.report.window import format_instant, format_seconds, iso

JSON_VERSION = 1


# ----------------------------------------------------------------------------- text


def continuity(line: Line) -> str:
    """``seq 12/14, 2 missing`` for trades, ``chain 3,208/3,209, 1 break`` for books."""
    if line.sequence is not None:
        s = line.sequence
        text = f"seq {number(s.seen)}/{number(s.expected)}"
        if s.missing:
            text += f", {number(s.missing)} missing"
        if s.unrecorded:
            text += f" ({number(s.unrecorded)} unrecorded)"
        return text
    if line.chain is not None:
        c = line.chain
        text = f"chain {number(c.checked - c.breaks)}/{number(c.checked)}"
        if c.breaks:
            text += f", {number(c.breaks)} break" + ("s" if c.breaks != 1 else "")
        if c.unrecorded:
            text += f" ({number(c.unrecorded)} unrecorded)"
        return text
    return ""


def gap_count(summary: GapSummary) -> str:
    if not summary.count:
        return ""
    text = number(summary.count)
    return f"{text} ({summary.open} open)" if summary.open else text


def _collectors_table(lines: tuple[CollectorLine, ...]) -> str:
    rows = [
        [
            c.heartbeat.feed,
            str(c.heartbeat.shard),
            c.heartbeat.pod,
            c.heartbeat.version or "",
            format_instant(c.heartbeat.started_at),
            format_instant(c.heartbeat.last_seen),
            format_seconds(c.age),
            "" if c.heartbeat.instruments is None else number(c.heartbeat.instruments),
            "" if c.heartbeat.connections is None else number(c.heartbeat.connections),
            "alive"
            if c.alive
            else ("stopped" if c.heartbeat.counters.get("state") == "stopped" else "SILENT"),
        ]
        for c in lines
    ]
    headers = ["FEED", "SHARD", "POD", "VERSION", "STARTED", "LAST SEEN", "AGO", "INSTRUMENTS"]
    headers += ["CONNECTIONS", "STATE"]
    return render_table(headers, rows, right={1, 6, 7, 8})


def _lines_table(lines: tuple[Line, ...]) -> str:
    rows = [
        [
            line.instrument,
            line.channel,
            number(line.rows),
            continuity(line),
            gap_count(line.gaps),
            ", ".join(line.gaps.reasons),
            format_seconds(line.gaps.seconds) if line.gaps.count else "",
            number(line.gaps.rows_recovered) if line.gaps.count else "",
            line.verdict.label,
        ]
        for line in lines
    ]
    headers = ["INSTRUMENT", "CHANNEL", "ROWS", "CONTINUITY", "GAPS", "REASONS", "GAP TIME"]
    headers += ["RECOVERED", "VERDICT"]
    return render_table(headers, rows, right={2, 4, 6, 7})


def _gaps_table(gaps: tuple[Gap, ...]) -> str:
    rows = [
        [
            g.feed or "",
            "" if g.shard is None else str(g.shard),
            g.channel,
            g.reason,
            format_instant(g.start),
            "open" if g.end is None else format_instant(g.end),
            "" if g.end is None else format_seconds((g.end - g.start).total_seconds()),
            number(g.rows_recovered),
        ]
        for g in gaps
    ]
    headers = ["FEED", "SHARD", "CHANNEL", "REASON", "START", "END", "LASTED", "RECOVERED"]
    return render_table(headers, rows, right={1, 6, 7})


def render_text(report: Report, *, source: str) -> str:
    """The report as aligned tables, for a terminal or a pager."""
    w, t = report.window, report.totals
    out = [
        f"optionfeed report: {format_instant(w.start)} to {format_instant(w.end)} "
        f"({format_seconds(w.seconds)}), from {source}",
    ]
    narrowed = []
    if report.feed is not None:
        narrowed.append(f"feed {report.feed} (heartbeats and gaps; rows carry no feed)")
    if report.instruments:
        narrowed.append(f"instruments {', '.join(report.instruments)}")
    if narrowed:
        out.append("only " + "; ".join(narrowed))
    out.append("")
    out.append("Collectors (collector_status)")
    if report.collectors:
        out.append(_collectors_table(report.collectors))
    else:
        out.append("  no collector has written a heartbeat")
    out.append("")
    out.append("Completeness by instrument and channel")
    if report.lines:
        out.append(_lines_table(report.lines))
    else:
        out.append("  no rows and no gaps in this window")
    if report.connection_gaps:
        out.append("")
        out.append("Gaps of whole connections (no instrument)")
        out.append(_gaps_table(report.connection_gaps))
    out.append("")
    rows = ", ".join(f"{TABLE_OF[f]} {number(t.rows[TABLE_OF[f]])}" for f in FAMILIES)
    out.append(f"Rows:      {rows}")
    out.append(f"Instruments with rows: {number(t.instruments)}")
    if t.gaps:
        gaps = f"Gaps:      {number(t.gaps)} ({number(t.open_gaps)} open), covering "
        gaps += f"{format_seconds(t.gap_seconds)} of the window, "
        gaps += f"{number(t.rows_recovered)} rows recovered by backfill"
    else:
        gaps = "Gaps:      none recorded"
    out.append(gaps)
    breaks = "break" if t.book_breaks == 1 else "breaks"
    out.append(
        f"Missing:   {number(t.missing_trades)} trades by trade_seq, "
        f"{number(t.book_breaks)} book chain {breaks}; "
        f"{number(t.unrecorded)} of them in no recorded gap"
    )
    out.append(f"Rejected frames: {number(t.rejected)}")
    out.append(f"Verdict:   {report.verdict.label}")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- JSON


def _opt_iso(value: Any) -> str | None:
    return None if value is None else iso(value)


def gap_json(g: Gap) -> dict[str, Any]:
    return {
        "gap_id": g.gap_id,
        "feed": g.feed,
        "shard": g.shard,
        "instrument": g.instrument,
        "channel": g.channel,
        "reason": g.reason,
        "start": iso(g.start),
        "end": _opt_iso(g.end),
        "open": g.open,
        "seconds": None if g.end is None else (g.end - g.start).total_seconds(),
        "seq_from": g.seq_from,
        "seq_to": g.seq_to,
        "rows_recovered": g.rows_recovered,
    }


def line_json(line: Line) -> dict[str, Any]:
    s, c, g = line.sequence, line.chain, line.gaps
    return {
        "instrument": line.instrument,
        "channel": line.channel,
        "table": line.table,
        "rows": line.rows,
        "first_ts": _opt_iso(line.first_ts),
        "last_ts": _opt_iso(line.last_ts),
        "sequence": None
        if s is None
        else {
            "first": s.first,
            "last": s.last,
            "expected": s.expected,
            "seen": s.seen,
            "missing": s.missing,
            "holes": s.holes,
            "unrecorded": s.unrecorded,
        },
        "chain": None
        if c is None
        else {
            "checked": c.checked,
            "snapshots": c.snapshots,
            "breaks": c.breaks,
            "unrecorded": c.unrecorded,
        },
        "gaps": {
            "count": g.count,
            "open": g.open,
            "seconds": g.seconds,
            "rows_recovered": g.rows_recovered,
            "reasons": list(g.reasons),
        },
        "verdict": line.verdict.value,
    }


def to_json(report: Report, *, source: str) -> dict[str, Any]:
    """The report as plain JSON types (see the shape in :mod:`optionfeed.report`)."""
    w, t = report.window, report.totals
    return {
        "version": JSON_VERSION,
        "source": source,
        "generated_at": iso(report.taken_at),
        "window": {"from": iso(w.start), "to": iso(w.end), "seconds": w.seconds},
        "filters": {"feed": report.feed, "instruments": list(report.instruments)},
        "verdict": report.verdict.value,
        "collectors": [
            {
                "feed": c.heartbeat.feed,
                "shard": c.heartbeat.shard,
                "pod": c.heartbeat.pod,
                "version": c.heartbeat.version,
                "started_at": iso(c.heartbeat.started_at),
                "last_seen": iso(c.heartbeat.last_seen),
                "age_seconds": c.age,
                "alive": c.alive,
                "instruments": c.heartbeat.instruments,
                "connections": c.heartbeat.connections,
                "counters": c.heartbeat.counters,
            }
            for c in report.collectors
        ],
        "channels": [line_json(line) for line in report.lines],
        "gaps": [gap_json(g) for g in report.gaps],
        "totals": {
            "rows": dict(t.rows),
            "instruments": t.instruments,
            "gaps": t.gaps,
            "open_gaps": t.open_gaps,
            "gap_seconds": t.gap_seconds,
            "rows_recovered": t.rows_recovered,
            "missing_trades": t.missing_trades,
            "book_breaks": t.book_breaks,
            "unrecorded": t.unrecorded,
            "rejected_frames": t.rejected,
        },
    }
