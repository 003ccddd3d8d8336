"""Which expiries are listed at a given moment (docs/deribit-protocol.md §3.2, §10 item 14).

Every expiry is at 08:00 UTC. A currency lists the next few daily expiries, the next few Fridays
(weekly), the last Friday of the next few months (monthly) and of the next few quarter months
(March, June, September, December). A date in several series belongs to the longest one; Deribit
files quarterlies under ``settlement_period`` ``month``. As time passes, the nearest expiry drops
out at its 08:00 and a new one joins at the far end: :func:`listed_expiries` is a pure function of
the time, so listing and expiry need no state of their own.
"""

from __future__ import annotations

import calendar as _calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import IntEnum

from optionfeed.deribit.instruments import EXPIRY_TIME, format_expiry

FRIDAY = 4
QUARTER_MONTHS = (3, 6, 9, 12)


class Series(IntEnum):
    """Expiry series, shortest first; a date in two series belongs to the longer one."""

    DAY = 0
    WEEK = 1
    MONTH = 2
    QUARTER = 3

    @property
    def settlement_period(self) -> str:
        return ("day", "week", "month", "month")[self]

    @property
    def horizon(self) -> timedelta:
        """About how long before expiry an expiry of this series is listed."""
        return (timedelta(days=4), timedelta(weeks=4), timedelta(days=100), timedelta(days=370))[
            self
        ]


@dataclass(frozen=True, slots=True)
class SeriesCounts:
    """How many expiries of each series a currency lists."""

    daily: int
    weekly: int
    monthly: int
    quarterly: int


@dataclass(frozen=True, slots=True, order=True)
class Expiry:
    day: date
    series: Series

    @property
    def moment(self) -> datetime:
        return datetime.combine(self.day, EXPIRY_TIME)

    @property
    def timestamp_ms(self) -> int:
        return int(self.moment.timestamp()) * 1000

    @property
    def code(self) -> str:
        """``27DEC24``, as in instrument names."""
        return format_expiry(self.day)


def expiry_ms(day: date) -> int:
    return int(datetime.combine(day, EXPIRY_TIME).timestamp()) * 1000


def _first_day_after(now_ms: int) -> date:
    """The first date whose 08:00 UTC is strictly after ``now_ms``."""
    today = datetime.fromtimestamp(now_ms / 1000.0, UTC).date()
    return today if expiry_ms(today) > now_ms else today + timedelta(days=1)


def last_friday(year: int, month: int) -> date:
    last = date(year, month, _calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - FRIDAY) % 7)


def _months_from(start: date) -> list[tuple[int, int]]:
    year, month = start.year, start.month
    out = []
    for _ in range(60):
        out.append((year, month))
        month += 1
        if month == 13:
            year, month = year + 1, 1
    return out


def listed_expiries(now_ms: int, counts: SeriesCounts) -> list[Expiry]:
    """The expiries listed at ``now_ms``, soonest first."""
    first = _first_day_after(now_ms)
    found: dict[date, Series] = {}

    def add(day: date, series: Series) -> None:
        if series > found.get(day, Series.DAY) or day not in found:
            found[day] = series

    for i in range(counts.daily):
        add(first + timedelta(days=i), Series.DAY)
    friday = first + timedelta(days=(FRIDAY - first.weekday()) % 7)
    for i in range(counts.weekly):
        add(friday + timedelta(weeks=i), Series.WEEK)
    months = _months_from(first)
    monthly = [d for d in (last_friday(y, m) for y, m in months) if d >= first]
    for day in monthly[: counts.monthly]:
        add(day, Series.MONTH)
    quarterly = [
        d for d in (last_friday(y, m) for y, m in months if m in QUARTER_MONTHS) if d >= first
    ]
    for day in quarterly[: counts.quarterly]:
        add(day, Series.QUARTER)
    return sorted(Expiry(day, series) for day, series in found.items())
