"""Rows the collector makes itself: rejected frames, gaps and heartbeats.

Each function returns a row in the column order of its table in :mod:`optionfeed.store.tables`,
ready for ``Writer.put``. Ids are made here (uuid4), so a row can be written twice (a retry, a
spool replay) and still be stored once, and a gap can be written when it opens and updated when
it closes.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import orjson

from optionfeed.store.tables import Row

GapReason = Literal["disconnect", "sequence", "stale", "outage"]


def printable(raw: bytes | str) -> str:
    """``raw`` as text PostgreSQL accepts: undecodable bytes and NUL become ``\\xNN`` escapes."""
    text = raw.decode("utf-8", errors="backslashreplace") if isinstance(raw, bytes) else raw
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text


def rejected_row(reason: str, raw: bytes | str, recv_ts: float, channel: str | None = None) -> Row:
    """A ``rejected_messages`` row: why, what arrived (verbatim where PostgreSQL allows), when."""
    return (
        uuid.uuid4(),
        recv_ts,
        None if channel is None else printable(channel),
        printable(reason),
        printable(raw),
    )


def gap_row(
    gap_id: uuid.UUID,
    *,
    channel: str,
    reason: GapReason,
    start: float,
    end: float | None,
    now: float,
    instrument: str | None = None,
    feed: str | None = None,
    shard: int | None = None,
    seq_from: int | None = None,
    seq_to: int | None = None,
    rows_recovered: int = 0,
) -> Row:
    """A ``data_gaps`` row. Put it again with the same ``gap_id`` to record its end or recovery."""
    return (
        gap_id,
        feed,
        shard,
        instrument,
        channel,
        start,
        end,
        reason,
        seq_from,
        seq_to,
        rows_recovered,
        now,
        now,
    )


def status_row(
    *,
    feed: str,
    shard: int,
    pod: str,
    started_at: float,
    now: float,
    version: str,
    instruments: int,
    connections: int,
    counters: dict[str, Any],
) -> Row:
    """A ``collector_status`` heartbeat row."""
    return (
        feed,
        shard,
        pod,
        started_at,
        now,
        version,
        instruments,
        connections,
        orjson.dumps(counters),
    )
