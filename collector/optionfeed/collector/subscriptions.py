"""The plan in force and the channels the connection pool holds to match it.

Three things change what a collector holds while it runs: a new assignment, a re-ranking (local
mode), and an instrument delivered or closed, which is never subscribed again. Each goes through
:class:`Subscriptions`, which subscribes and unsubscribes the difference on the live connections
and forgets the sequence and gap state of the instruments no longer held.
"""

from __future__ import annotations

from optionfeed.collector.connection_pool import ChannelDiff, ConnectionPool, instrument_of
from optionfeed.collector.gaps import GapRecorder
from optionfeed.collector.plan import Plan
from optionfeed.collector.router import Router


class Subscriptions:
    def __init__(self, plan: Plan, pool: ConnectionPool, router: Router, gaps: GapRecorder) -> None:
        self.plan = plan
        self.gone: set[str] = set()  # instruments delivered/closed: never subscribed again
        self._pool = pool
        self._router = router
        self._gaps = gaps

    def hold(self, plan: Plan) -> ChannelDiff:
        """Make ``plan`` the one in force: hold its channels, less those of instruments gone."""
        self.plan = plan
        diff = self._pool.set_channels(plan.channels(self.gone))
        self._forget(diff.removed)
        return diff

    def retire(self, instrument: str) -> ChannelDiff | None:
        """``instrument`` is gone for good; the channels it no longer holds, or None if it was
        already gone."""
        if instrument in self.gone:
            return None
        self.gone.add(instrument)
        if instrument not in self.plan.instruments:
            return ChannelDiff(frozenset(), frozenset())
        return self.hold(self.plan)

    def _forget(self, channels: frozenset[str]) -> None:
        for instrument in {instrument_of(c) for c in channels} - {""}:
            self._router.trades.forget(instrument)
            self._router.books.forget(instrument)
            self._gaps.forget(instrument)
