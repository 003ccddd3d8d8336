"""Reading the facts of a report from PostgreSQL.

Every query over a time table filters on ``ts`` with the window's bounds, so PostgreSQL reads only
the daily partitions (or TimescaleDB chunks) the window touches. Trades are walked in
``(instrument, trade_seq)`` order and book messages in ``(instrument, change_id)`` order with
``lag()``, in one pass each: the holes in ``trade_seq`` and the breaks in the ``change_id`` chain
come back as arrays, one row per instrument, so the result stays small however many rows the
window holds. With ``--instrument`` the filter ``instrument = ANY(...)`` lets the planner use the
``(instrument, ts)`` keys and the ``(instrument, trade_seq)`` index.

All queries run in one read-only, repeatable-read transaction: the figures come from one snapshot
of the database even while collectors keep writing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from optionfeed.report.errors import NoSchema, QueryFailed
from optionfeed.report.model import (
    BookSpan,
    Break,
    Facts,
    Gap,
    Heartbeat,
    Hole,
    Span,
    TradeSpan,
)
from optionfeed.report.window import Window
from optionfeed.store import tables

REQUIRED_TABLES = tuple(
    t.name for t in (*tables.BY_FAMILY.values(), tables.GAPS, tables.STATUS, tables.REJECTED)
)

# $1, $2: the window. The instrument filter, when given, is always $3.
_INSTRUMENTS = " AND instrument = ANY($3::text[])"

SPAN_SQL = """
SELECT instrument, count(*) AS rows, min(ts) AS first_ts, max(ts) AS last_ts
FROM {table}
WHERE ts >= $1 AND ts < $2{filter}
GROUP BY instrument
"""

TRADES_SQL = """
SELECT instrument,
       count(*) AS rows,
       min(ts) AS first_ts,
       max(ts) AS last_ts,
       min(trade_seq) AS first_seq,
       max(trade_seq) AS last_seq,
       count(*) FILTER (WHERE prev_seq IS DISTINCT FROM trade_seq) AS distinct_seqs,
       array_agg(prev_seq ORDER BY trade_seq) FILTER (WHERE hole) AS after_seqs,
       array_agg(trade_seq ORDER BY trade_seq) FILTER (WHERE hole) AS before_seqs,
       array_agg(prev_ts ORDER BY trade_seq) FILTER (WHERE hole) AS after_ts,
       array_agg(ts ORDER BY trade_seq) FILTER (WHERE hole) AS before_ts
FROM (
    SELECT instrument, trade_seq, ts, prev_seq, prev_ts, trade_seq > prev_seq + 1 AS hole
    FROM (
        SELECT instrument, trade_seq, ts,
               lag(trade_seq) OVER w AS prev_seq,
               lag(ts) OVER w AS prev_ts
        FROM option_trades
        WHERE ts >= $1 AND ts < $2{filter}
        WINDOW w AS (PARTITION BY instrument ORDER BY trade_seq)
    ) walked
) marked
GROUP BY instrument
"""

BOOK_SQL = """
SELECT instrument,
       count(*) AS rows,
       min(ts) AS first_ts,
       max(ts) AS last_ts,
       count(*) FILTER (WHERE snapshot) AS snapshots,
       count(*) FILTER (WHERE NOT snapshot AND stored_prev IS NOT NULL) AS checked,
       array_agg(change_id ORDER BY change_id) FILTER (WHERE broken) AS break_ids,
       array_agg(prev_change_id ORDER BY change_id) FILTER (WHERE broken) AS break_prevs,
       array_agg(stored_prev ORDER BY change_id) FILTER (WHERE broken) AS stored_prevs,
       array_agg(ts ORDER BY change_id) FILTER (WHERE broken) AS break_ts,
       array_agg(stored_prev_ts ORDER BY change_id) FILTER (WHERE broken) AS stored_prev_ts
FROM (
    SELECT instrument, change_id, prev_change_id, ts, stored_prev, stored_prev_ts, snapshot,
           NOT snapshot AND stored_prev IS NOT NULL
               AND prev_change_id IS DISTINCT FROM stored_prev AS broken
    FROM (
        SELECT instrument, change_id, prev_change_id, ts,
               -- A snapshot restarts the chain; old captures without a type mark one by having
               -- no prev_change_id (as the collector's BookChains does).
               coalesce(type = 'snapshot', prev_change_id IS NULL) AS snapshot,
               lag(change_id) OVER w AS stored_prev,
               lag(ts) OVER w AS stored_prev_ts
        FROM option_book
        WHERE ts >= $1 AND ts < $2{filter}
        WINDOW w AS (PARTITION BY instrument ORDER BY change_id)
    ) walked
) marked
GROUP BY instrument
"""

GAPS_SQL = """
SELECT gap_id::text AS gap_id, feed, shard, instrument, channel, gap_start, gap_end, reason,
       seq_from, seq_to, rows_recovered
FROM data_gaps
WHERE gap_start < $2 AND (gap_end IS NULL OR gap_end >= $1){filter}
ORDER BY gap_start, gap_id
"""

HEARTBEATS_SQL = """
SELECT feed, shard, pod, started_at, last_seen, version, instruments, connections,
       counters::text AS counters
FROM collector_status{filter}
ORDER BY feed, shard, pod
"""

REJECTED_SQL = "SELECT count(*) FROM rejected_messages WHERE recv_ts >= $1 AND recv_ts < $2"


def span_sql(table: str, *, instruments: bool) -> str:
    return SPAN_SQL.format(table=table, filter=_INSTRUMENTS if instruments else "")


def trades_sql(*, instruments: bool) -> str:
    return TRADES_SQL.format(filter=_INSTRUMENTS if instruments else "")


def book_sql(*, instruments: bool) -> str:
    return BOOK_SQL.format(filter=_INSTRUMENTS if instruments else "")


def gaps_sql(*, feed: bool, instruments: bool) -> tuple[str, int]:
    """The gaps query and its parameter count: $3 is the instruments, then the feed."""
    clauses = ""
    n = 2
    if instruments:
        n += 1
        clauses += f" AND (instrument IS NULL OR instrument = ANY(${n}::text[]))"
    if feed:
        n += 1
        clauses += f" AND feed = ${n}"
    return GAPS_SQL.format(filter=clauses), n


async def missing_tables(connection: asyncpg.Connection) -> list[str]:
    rows = await connection.fetch(
        "SELECT name FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n) "
        "WHERE to_regclass(name) IS NULL ORDER BY n",
        list(REQUIRED_TABLES),
    )
    return [r["name"] for r in rows]


async def check_schema(connection: asyncpg.Connection, where: str) -> None:
    missing = await missing_tables(connection)
    if missing:
        raise NoSchema(where, missing, of=len(REQUIRED_TABLES))


def _spans(rows: Sequence[asyncpg.Record]) -> tuple[Span, ...]:
    return tuple(Span(r["instrument"], int(r["rows"]), r["first_ts"], r["last_ts"]) for r in rows)


def _trade_spans(rows: Sequence[asyncpg.Record]) -> tuple[TradeSpan, ...]:
    spans = []
    for r in rows:
        holes = tuple(
            Hole(int(a), int(b), ta, tb)
            for a, b, ta, tb in zip(
                r["after_seqs"] or (),
                r["before_seqs"] or (),
                r["after_ts"] or (),
                r["before_ts"] or (),
                strict=True,
            )
        )
        spans.append(
            TradeSpan(
                instrument=r["instrument"],
                rows=int(r["rows"]),
                first_ts=r["first_ts"],
                last_ts=r["last_ts"],
                first_seq=int(r["first_seq"]),
                last_seq=int(r["last_seq"]),
                distinct_seqs=int(r["distinct_seqs"]),
                holes=holes,
            )
        )
    return tuple(spans)


def _book_spans(rows: Sequence[asyncpg.Record]) -> tuple[BookSpan, ...]:
    spans = []
    for r in rows:
        breaks = tuple(
            Break(int(c), None if p is None else int(p), int(s), t, st)
            for c, p, s, t, st in zip(
                r["break_ids"] or (),
                r["break_prevs"] or (),
                r["stored_prevs"] or (),
                r["break_ts"] or (),
                r["stored_prev_ts"] or (),
                strict=True,
            )
        )
        spans.append(
            BookSpan(
                instrument=r["instrument"],
                rows=int(r["rows"]),
                first_ts=r["first_ts"],
                last_ts=r["last_ts"],
                snapshots=int(r["snapshots"]),
                checked=int(r["checked"]),
                breaks=breaks,
            )
        )
    return tuple(spans)


def _gaps(rows: Sequence[asyncpg.Record]) -> tuple[Gap, ...]:
    return tuple(
        Gap(
            gap_id=r["gap_id"],
            feed=r["feed"],
            shard=r["shard"],
            instrument=r["instrument"],
            channel=r["channel"],
            start=r["gap_start"],
            end=r["gap_end"],
            reason=r["reason"],
            seq_from=r["seq_from"],
            seq_to=r["seq_to"],
            rows_recovered=int(r["rows_recovered"]),
        )
        for r in rows
    )


def _counters(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}


def _heartbeats(rows: Sequence[asyncpg.Record]) -> tuple[Heartbeat, ...]:
    return tuple(
        Heartbeat(
            feed=r["feed"],
            shard=int(r["shard"]),
            pod=r["pod"],
            started_at=r["started_at"],
            last_seen=r["last_seen"],
            version=r["version"],
            instruments=r["instruments"],
            connections=r["connections"],
            counters=_counters(r["counters"]),
        )
        for r in rows
    )


async def read_facts(
    connection: asyncpg.Connection,
    window: Window,
    *,
    now: datetime,
    feed: str | None = None,
    instruments: Sequence[str] = (),
    statement_timeout: float | None = None,
) -> Facts:
    """Everything the report needs over ``window``, read in one snapshot.

    ``feed`` narrows the heartbeats and the gaps (rows carry no feed); ``instruments`` narrows
    the rows and the gaps (gaps of a whole connection are kept). ``statement_timeout``, in
    seconds, bounds each query on the server.
    """
    names = list(dict.fromkeys(instruments))
    by_name = bool(names)
    base: list[Any] = [window.start, window.end]
    args = [*base, names] if by_name else base
    gap_query, gap_params = gaps_sql(feed=feed is not None, instruments=by_name)
    gap_args = [*base, *([names] if by_name else []), *([feed] if feed is not None else [])]
    assert len(gap_args) == gap_params
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            if statement_timeout is not None:
                milliseconds = max(1, round(statement_timeout * 1000))
                await connection.execute(f"SET LOCAL statement_timeout = {milliseconds}")
            tickers = await connection.fetch(span_sql("option_tickers", instruments=by_name), *args)
            quotes = await connection.fetch(span_sql("option_quotes", instruments=by_name), *args)
            trades = await connection.fetch(trades_sql(instruments=by_name), *args)
            books = await connection.fetch(book_sql(instruments=by_name), *args)
            gaps = await connection.fetch(gap_query, *gap_args)
            heartbeats = await connection.fetch(
                HEARTBEATS_SQL.format(filter=" WHERE feed = $1" if feed is not None else ""),
                *([feed] if feed is not None else []),
            )
            rejected = await connection.fetchval(REJECTED_SQL, *base)
    except asyncpg.QueryCanceledError as exc:
        limit = "their time limit" if statement_timeout is None else f"{statement_timeout:g} s"
        raise QueryFailed(
            f"the report's queries ran past {limit}: narrow the window or the instruments, "
            "or raise --timeout"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise QueryFailed(f"a report query failed: {exc}") from exc
    return Facts(
        window=window,
        taken_at=now,
        heartbeats=_heartbeats(heartbeats),
        tickers=_spans(tickers),
        quotes=_spans(quotes),
        trades=_trade_spans(trades),
        books=_book_spans(books),
        gaps=_gaps(gaps),
        rejected=int(rejected or 0),
        feed=feed,
        instruments=tuple(names),
    )
