"""Reads the collector needs from its own tables."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg


async def last_trades(
    connection: asyncpg.Connection, instruments: Sequence[str], *, days: int = 7
) -> dict[str, tuple[int, float]]:
    """The highest stored ``trade_seq`` per instrument, and that trade's time (epoch seconds).

    Only the last ``days`` of partitions are read: a collector that was away longer starts afresh
    rather than fetching a week of history at start.
    """
    rows = await connection.fetch(
        """
        SELECT DISTINCT ON (instrument) instrument, trade_seq, extract(epoch FROM ts) AS ts
        FROM option_trades
        WHERE instrument = ANY($1::text[]) AND ts > now() - make_interval(days => $2)
        ORDER BY instrument, trade_seq DESC
        """,
        list(instruments),
        days,
    )
    return {r["instrument"]: (int(r["trade_seq"]), float(r["ts"])) for r in rows}
