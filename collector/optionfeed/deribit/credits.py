"""Deribit's credit buckets (docs/deribit-protocol.md §8), shared by the simulator and the client.

A bucket holds up to ``capacity`` credits and refills continuously at ``refill_per_second``. Each
request costs ``cost``. The simulator answers 10028 and closes the session when a request finds the
bucket short; the collector asks :meth:`CreditBucket.delay` how long to wait so that never happens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CreditBucket:
    capacity: float
    refill_per_second: float
    credits: float
    updated: float

    @classmethod
    def full(cls, capacity: float, refill_per_second: float, now: float) -> CreditBucket:
        return cls(capacity, refill_per_second, capacity, now)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.credits = min(self.capacity, self.credits + elapsed * self.refill_per_second)
        self.updated = now

    def try_spend(self, cost: float, now: float) -> bool:
        """Take ``cost`` credits if the bucket holds them; report whether it did."""
        self._refill(now)
        if self.credits + 1e-9 < cost:
            return False
        self.credits -= cost
        return True

    def delay(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` credits are available (0 when they already are)."""
        self._refill(now)
        missing = cost - self.credits
        return 0.0 if missing <= 0 else missing / self.refill_per_second


@dataclass(frozen=True, slots=True)
class CreditPolicy:
    cost: float
    capacity: float
    refill_per_second: float

    def bucket(self, now: float) -> CreditBucket:
        return CreditBucket.full(self.capacity, self.refill_per_second, now)


# Non-matching-engine requests: 500 from 50,000 at 10,000/s (~20 req/s sustained, burst 100).
DEFAULT_POLICY = CreditPolicy(cost=500, capacity=50_000, refill_per_second=10_000)
# public/subscribe: 3,000 from 30,000 at 10,000/s (~3.3 req/s sustained, burst 10).
SUBSCRIBE_POLICY = CreditPolicy(cost=3_000, capacity=30_000, refill_per_second=10_000)
# public/get_instruments: 10,000 from 500,000 at 10,000/s (1 req/s sustained, burst 50).
GET_INSTRUMENTS_POLICY = CreditPolicy(cost=10_000, capacity=500_000, refill_per_second=10_000)

METHOD_POLICIES: dict[str, CreditPolicy] = {
    "public/subscribe": SUBSCRIBE_POLICY,
    "private/subscribe": SUBSCRIBE_POLICY,
    "public/get_instruments": GET_INSTRUMENTS_POLICY,
}


def policy_for(method: str) -> CreditPolicy:
    return METHOD_POLICIES.get(method, DEFAULT_POLICY)
