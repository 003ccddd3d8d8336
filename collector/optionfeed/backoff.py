"""Capped exponential backoff with full jitter.

Each retry waits a uniformly random time between 0 and ``min(cap, base * 2**attempt)``. The
randomness is what keeps many connections that failed together (an exchange restart, a network
blip) from retrying in lock-step: they spread over the whole window instead of arriving as a storm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return float(min(self.cap, self.base * 2 ** min(self.attempt, 62)))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
