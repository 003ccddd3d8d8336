"""What to record: a feed's identity, its instruments and channel families, and where from.

A plan comes from the assignment file the operator writes, or, in local mode, from ranking the
currency's live options on the exchange.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from optionfeed.collector.config import LocalPlan
from optionfeed.collector.reachability import until_reachable
from optionfeed.deribit import channels as ch
from optionfeed.deribit.messages import Instrument
from optionfeed.deribit.rest import RestClient, fetch_ranking
from optionfeed.shard_document import ShardDocument

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Plan:
    """What to record: the feed's identity, its instruments and their channel families."""

    feed: str
    shard: int
    currency: str
    instruments: tuple[str, ...]
    families: tuple[str, ...]
    interval: str
    exchange_url: str

    def channels(self, leaving: set[str] | frozenset[str] = frozenset()) -> frozenset[str]:
        """Every channel to hold: each family of each instrument not ``leaving``, and lifecycle."""
        data = {
            ch.feed_channel(family, instrument, self.interval)
            for instrument in self.instruments
            if instrument not in leaving
            for family in self.families
        }
        return frozenset(data) | lifecycle_channels(self.currency)


def plan_from_assignment(assignment: ShardDocument, default_url: str) -> Plan:
    return Plan(
        feed=assignment.feed,
        shard=assignment.shard,
        currency=assignment.currency,
        instruments=assignment.instruments,
        families=assignment.channels,
        interval=assignment.interval,
        exchange_url=assignment.exchange_url or default_url,
    )


def local_plan(local: LocalPlan, instruments: tuple[str, ...], exchange_url: str) -> Plan:
    return Plan(
        feed=local.feed,
        shard=0,
        currency=local.currency,
        instruments=instruments,
        families=local.channels,
        interval=local.interval,
        exchange_url=exchange_url,
    )


def lifecycle_channels(currency: str) -> frozenset[str]:
    """Channels every collector holds besides market data: listings/expiries, platform state."""
    return frozenset({ch.instrument_state(currency), ch.PLATFORM_STATE})


@dataclass(frozen=True, slots=True)
class Ranking:
    names: tuple[str, ...]  # the top-N live options, best first
    instruments: list[Instrument]  # the listing they were ranked from


async def rank(rest: RestClient, local: LocalPlan, stop: asyncio.Event) -> Ranking | None:
    """Local mode: the top-N live options by the configured key; None if ``stop`` came first."""
    result = await until_reachable(
        lambda: fetch_ranking(rest, local.currency, top_n=local.top, rank_by=local.rank_by),
        f"rank {local.currency} options",
        stop,
    )
    if result is None:
        return None
    ranked, instruments = result
    if not ranked:
        log.warning("the exchange lists no live %s options; nothing to record", local.currency)
    return Ranking(tuple(ranked), instruments)
