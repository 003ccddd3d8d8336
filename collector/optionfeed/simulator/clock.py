"""Where the simulator's time comes from.

The market, the sessions and the response extras (``usIn``/``usOut``) all read one
:class:`Clock`. In a server it is the wall clock, optionally shifted (``--clock-offset``, used to
bring an 08:00 UTC expiry into a test run); unit tests drive a :class:`ManualClock` so that hours
of market pass without sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch, as the exchange sees it."""
        ...


class WallClock:
    """The machine's clock plus a fixed offset in seconds."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def now(self) -> float:
        return time.time() + self.offset


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        self._now += seconds
        return self._now

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError(f"a clock does not go back ({when} < {self._now})")
        self._now = when


def to_us(seconds: float) -> int:
    return int(seconds * 1_000_000.0)
