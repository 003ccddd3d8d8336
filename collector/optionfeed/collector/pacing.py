"""Pacing requests to Deribit's credit buckets, so the exchange never has to refuse one.

Deribit charges each request credits from per-method pools (``optionfeed.deribit.credits``) and
ends the session with 10028 when a pool runs dry. One :class:`RequestPacer` is shared by every
connection of a collector: public limits are counted per IP, not per connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from optionfeed.deribit.credits import CreditBucket, CreditPolicy, policy_for


class RequestPacer:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: Callable[[str], CreditPolicy] = policy_for,
    ) -> None:
        self._clock = clock
        self._policy = policy
        self._buckets: dict[CreditPolicy, tuple[CreditBucket, asyncio.Lock]] = {}

    def _bucket(self, policy: CreditPolicy) -> tuple[CreditBucket, asyncio.Lock]:
        entry = self._buckets.get(policy)
        if entry is None:
            entry = self._buckets[policy] = (policy.bucket(self._clock()), asyncio.Lock())
        return entry

    async def acquire(self, method: str) -> None:
        """Wait until ``method`` can be sent without overdrawing its pool, then spend its cost."""
        policy = self._policy(method)
        bucket, lock = self._bucket(policy)
        # One lock per pool keeps its waiters in order (a burst of subscribes leaves in the order
        # it came) without a subscribe waiting for credits ever delaying a heartbeat answer.
        async with lock:
            while True:
                delay = bucket.delay(policy.cost, self._clock())
                if delay <= 0:
                    bucket.try_spend(policy.cost, self._clock())
                    return
                await asyncio.sleep(delay)
