"""The pure part of fetching missed trades: which page to ask for, what a page answer holds,
where the next page starts, and which stored trades count as recovered.

:class:`~optionfeed.collector.backfill.Backfiller` does the requests, the pacing and the
retries; everything it decides is decided here, from plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import Any, ClassVar

from optionfeed.collector.gaps import TradeRecovery
from optionfeed.deribit.errors import ProtocolError
from optionfeed.store import tables
from optionfeed.store.tables import Row

PAGE = 1000
BY_SEQ = "public/get_last_trades_by_instrument"
BY_TIME = "public/get_last_trades_by_instrument_and_time"

_SEQ = tables.index_of(tables.TRADES, "trade_seq")


@dataclass(frozen=True, slots=True)
class BySeq:
    """Trades ``start_seq..end_seq`` (``end_seq`` None: up to the present), ascending."""

    method: ClassVar[str] = BY_SEQ
    start_seq: int
    end_seq: int | None
    count: int = PAGE


@dataclass(frozen=True, slots=True)
class ByTime:
    """Trades from ``start_timestamp`` to ``end_timestamp`` (milliseconds), ascending."""

    method: ClassVar[str] = BY_TIME
    start_timestamp: int
    end_timestamp: int
    count: int = PAGE


def page_request(recovery: TradeRecovery, after: int | None, now: float) -> BySeq | ByTime:
    """The page of ``recovery`` that follows trade_seq ``after``.

    Without a sequence number to start from, the trades are asked for by time, from the gap's
    start to its end (``now`` while it is still open), the end millisecond included.
    """
    if after is None:
        end = recovery.gap.end or now
        return ByTime(int(recovery.gap.start * 1000), int(end * 1000) + 1)
    return BySeq(after + 1, recovery.upto_seq)


def page_of(method: str, result: Any) -> tuple[list[Any], bool]:
    """The trades of an answer to ``method`` (each unchecked), and whether more follow."""
    if not isinstance(result, dict) or not isinstance(result.get("trades"), list):
        raise ProtocolError(
            f"{method} answered {type(result).__name__}, not an object with a trades array"
        )
    return result["trades"], bool(result.get("has_more"))


def rows_after(rows: list[Row], after: int | None) -> list[Row]:
    """The trade rows past trade_seq ``after`` (all when None), in trade_seq order."""
    if after is not None:
        rows = [row for row in rows if row[_SEQ] > after]
    return sorted(rows, key=itemgetter(_SEQ))


def resume_after(page: list[Any], after: int | None) -> int | None:
    """The trade_seq the next page follows: the highest on ``page``, malformed trades included.

    None when paging should stop: the page is empty, or it does not move past ``after``.
    """
    seqs: list[int] = [
        trade["trade_seq"]
        for trade in page
        if isinstance(trade, dict) and type(trade.get("trade_seq")) is int
    ]
    last = max(seqs, default=None)
    if last is None or (after is not None and last <= after):
        return None
    return last


def recovered(stored: list[int], recovery: TradeRecovery) -> tuple[int, tuple[int, int] | None]:
    """How many of the stored trade_seqs the stream had missed, and their lowest and highest.

    A stored trade counts when it lies past ``after_seq``, within ``upto_seq`` when that is
    known, and before the first trade the stream delivered after the gap.
    """
    missed = [seq for seq in stored if _was_missed(seq, recovery)]
    return len(missed), (min(missed), max(missed)) if missed else None


def _was_missed(trade_seq: int, recovery: TradeRecovery) -> bool:
    if recovery.after_seq is not None and trade_seq <= recovery.after_seq:
        return False
    if recovery.upto_seq is not None and trade_seq > recovery.upto_seq:
        return False
    return recovery.first_live_seq is None or trade_seq < recovery.first_live_seq
