"""The feed's selection: its top-N live options, ranked over REST at ``spec.exchange.url``.

The ranking itself is :func:`optionfeed.deribit.ranking.rank_instruments` (the collector ranks
the same way in local mode); this module calls it through the shared REST client and turns the
exchange's failures into :class:`RankingFailed`, which says whether the exchange could not be
reached at all or answered with something unusable. Either way the reconciler keeps the running
shards as they are. :class:`Selector` decides when a feed needs ranking at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp

from optionfeed.deribit.errors import ExchangeUnreachable, ProtocolError, RpcError
from optionfeed.deribit.rest import RestClient, fetch_ranking, rest_base_url
from optionfeed_operator.api import OptionFeedSpec, Reason

logger = logging.getLogger(__name__)


class RankingFailed(Exception):
    """The selection could not be computed; ``reason`` is the condition reason to report."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Selection:
    """The instruments a feed records, which ranking inputs chose them, and when."""

    instruments: frozenset[str]
    key: str
    ranked_at: datetime


def ranking_key(feed: OptionFeedSpec) -> str:
    """A hash of everything the selection depends on. A stored selection with another key is not
    this feed's selection any more (``topN`` or the exchange changed) and must be recomputed."""
    try:
        exchange = rest_base_url(feed.exchange_url)
    except ValueError:
        exchange = feed.exchange_url
    facts = {
        "currency": feed.currency,
        "underlyings": sorted(feed.underlyings),
        "topN": feed.top_n,
        "rankBy": str(feed.rank_by),
        "exchange": exchange,
    }
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


async def rank(feed: OptionFeedSpec, session: aiohttp.ClientSession) -> Selection:
    """Rank the feed's currency at its exchange now; raises :class:`RankingFailed`."""
    try:
        client = RestClient(feed.exchange_url, session)
    except ValueError as exc:
        raise RankingFailed(Reason.INVALID_SPEC, str(exc)) from exc
    try:
        ranked, _ = await fetch_ranking(
            client,
            feed.currency,
            top_n=feed.top_n,
            rank_by=feed.rank_by,
            underlyings=feed.underlyings or None,
        )
    except ExchangeUnreachable as exc:
        raise RankingFailed(Reason.EXCHANGE_UNREACHABLE, str(exc)) from exc
    except RpcError as exc:
        raise RankingFailed(Reason.EXCHANGE_ERROR, f"{client.base_url}: {exc}") from exc
    except ProtocolError as exc:
        raise RankingFailed(Reason.EXCHANGE_ERROR, f"{client.base_url}: {exc}") from exc
    if not ranked:
        raise RankingFailed(
            Reason.EXCHANGE_ERROR,
            f"{client.base_url} lists no live {feed.currency} options"
            + (f" for {', '.join(feed.underlyings)}" if feed.underlyings else ""),
        )
    return Selection(
        instruments=frozenset(ranked), key=ranking_key(feed), ranked_at=datetime.now(UTC)
    )


# --- choosing the selection a pass works with ------------------------------------------------

BACKOFF_INITIAL = 5.0
BACKOFF_MAX = 300.0


Ranker = Callable[[OptionFeedSpec, aiohttp.ClientSession], Awaitable[Selection]]


@dataclass(frozen=True, slots=True)
class Choice:
    """What :meth:`Selector.choose` decided for one pass."""

    # The selection for the feed's current ranking inputs, None when there is none yet.
    selection: Selection | None
    # Why a ranking that was due did not happen (the selection, if any, is then the last one).
    failure: RankingFailed | None = None
    # Whether the selection was ranked just now, and the one it replaces.
    ranked: bool = False
    replaced: Selection | None = None


@dataclass(frozen=True, slots=True)
class _Retry:
    key: str
    failures: int
    not_before: datetime
    failure: RankingFailed


class Selector:
    """Each feed's selection, asking the exchange only when it must.

    In order: the selection this process holds for the feed; the one stored beside the assignment
    (so that a restarted operator neither asks the exchange nor moves anything); a ranking at
    the exchange, when there is no selection for the feed's current ranking inputs or the
    ``refreshInterval`` has passed. After a failed ranking the next attempt waits, from 5 s
    doubling up to 5 minutes, however often passes run meanwhile.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ranker: Ranker | None = None,
    ) -> None:
        self._session = session
        self._clock = clock
        self._rank: Ranker = ranker or rank
        self._held: dict[str, Selection] = {}
        self._retries: dict[str, _Retry] = {}

    async def choose(self, feed: OptionFeedSpec, stored: Selection | None) -> Choice:
        key = ranking_key(feed)
        now = self._clock()
        current = self._held.get(feed.uid)
        if (current is None or current.key != key) and stored is not None and stored.key == key:
            current = self._held[feed.uid] = stored
        usable = current if current is not None and current.key == key else None
        if usable is not None and now - usable.ranked_at < timedelta(seconds=feed.refresh_seconds):
            return Choice(usable)

        retry = self._retries.get(feed.uid)
        if retry is not None and retry.key != key:
            retry = None
        if retry is not None and now < retry.not_before:
            return Choice(usable, failure=retry.failure)
        try:
            fresh = await self._rank(feed, self._session)
        except RankingFailed as exc:
            failures = retry.failures + 1 if retry is not None else 1
            delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (failures - 1))
            self._retries[feed.uid] = _Retry(
                key, failures, now + timedelta(seconds=delay), failure=exc
            )
            logger.warning(
                "%s/%s: ranking failed (attempt %d, next in %.0fs): %s",
                feed.namespace,
                feed.name,
                failures,
                delay,
                exc.message,
            )
            return Choice(usable, failure=exc)
        self._retries.pop(feed.uid, None)
        self._held[feed.uid] = fresh
        return Choice(fresh, ranked=True, replaced=usable)

    def forget(self, uid: str) -> None:
        self._held.pop(uid, None)
        self._retries.pop(uid, None)
