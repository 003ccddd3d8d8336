"""Choosing the top-N options of a currency: pure, shared by the collector and the operator.

Rank live options by ``volume_usd`` (default) or ``open_interest`` from
``public/get_book_summary_by_currency``, ties broken by name so every ranker agrees.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from enum import StrEnum

from optionfeed.deribit.instruments import InstrumentState
from optionfeed.deribit.messages import BookSummary, Instrument


class RankBy(StrEnum):
    VOLUME_USD = "volume_usd"
    OPEN_INTEREST = "open_interest"


def is_live_option(instrument: Instrument, now_ms: int | None = None) -> bool:
    """An active option that has not expired and whose book is open (when a state is given)."""
    if instrument.get("kind") != "option" or not instrument.get("is_active", False):
        return False
    if now_ms is not None and instrument["expiration_timestamp"] <= now_ms:
        return False
    state = instrument.get("state")
    return state is None or state == InstrumentState.OPEN


def score(summary: BookSummary | None, rank_by: RankBy) -> float:
    """The ranking score of one book summary; instruments without a summary score 0."""
    if summary is None:
        return 0.0
    if rank_by is RankBy.OPEN_INTEREST:
        return float(summary.get("open_interest") or 0.0)
    volume_usd = summary.get("volume_usd")
    if volume_usd is not None:
        return float(volume_usd)
    # Older responses lack volume_usd: option volume counts contracts of the base coin.
    return float(summary.get("volume") or 0.0) * float(summary.get("underlying_price") or 0.0)


def rank_instruments(
    instruments: Iterable[Instrument],
    summaries: Iterable[BookSummary],
    *,
    top_n: int | None,
    rank_by: RankBy | str = RankBy.VOLUME_USD,
    underlyings: Collection[str] | None = None,
    now_ms: int | None = None,
) -> list[str]:
    """Names of the ``top_n`` live options (all of them when ``top_n`` is None), best first."""
    if top_n is not None and top_n < 0:
        raise ValueError(f"top_n must be >= 0, got {top_n}")
    by = RankBy(rank_by)
    wanted = {u.upper() for u in underlyings} if underlyings else None
    by_name = {s["instrument_name"]: s for s in summaries}
    live = [
        i["instrument_name"]
        for i in instruments
        if is_live_option(i, now_ms) and (wanted is None or i["base_currency"].upper() in wanted)
    ]
    ranked = sorted(set(live), key=lambda name: (-score(by_name.get(name), by), name))
    return ranked if top_n is None else ranked[:top_n]
