"""The report's time window: ``--since 1h``, or ``--from ISO [--to ISO]``.

A window is half-open, ``[start, end)``, in UTC, matching how the time tables are partitioned (by
day on ``ts``, each partition ``[00:00, next 00:00)``): a window that ends at midnight does not
touch the next day's partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class WindowError(ValueError):
    """A window that cannot be used: malformed, empty, or reversed."""


@dataclass(frozen=True, slots=True)
class Window:
    """``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise WindowError("window bounds must carry a time zone")
        if not self.start < self.end:
            raise WindowError(
                f"the window is empty: {format_instant(self.start)} is not before "
                f"{format_instant(self.end)}"
            )

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h``, ``1h30m``, ``2d`` or ``1w``; more than 0."""
    raw = text.strip().lower()
    if not raw:
        raise WindowError("expected a duration such as 15m, 1h or 2d, got ''")
    try:
        seconds = float(raw)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _PART.finditer(raw):
            if match.start() != pos:
                break
            seconds += float(match[1]) * _UNITS[match[2]]
            pos = match.end()
        if pos != len(raw) or pos == 0:
            raise WindowError(
                f"expected a duration such as 90s, 15m, 1h30m or 2d, got {text!r}"
            ) from None
    if not seconds > 0:
        raise WindowError(f"the duration must be more than 0, got {text!r}")
    return seconds


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date or date-time; without a zone it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise WindowError(
            f"expected an ISO 8601 time such as 2024-06-01T12:00:00Z, got {text!r}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def resolve(
    now: datetime, *, since: str | None, start: str | None, end: str | None, default_since: str
) -> Window:
    """The window the flags ask for. ``--since`` and ``--from``/``--to`` exclude each other."""
    if since is not None and (start is not None or end is not None):
        raise WindowError("give either --since, or --from (and optionally --to), not both")
    if end is not None and start is None:
        raise WindowError("--to needs --from")
    if start is not None:
        stop = parse_instant(end) if end is not None else now
        return Window(parse_instant(start), stop)
    seconds = parse_duration(since if since is not None else default_since)
    return Window(now - timedelta(seconds=seconds), now)


def format_instant(value: datetime) -> str:
    """``2024-06-01 12:00:00Z`` (UTC, whole seconds): for tables."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(value: datetime) -> str:
    """``2024-06-01T12:00:00.123456Z``: for JSON."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_seconds(seconds: float) -> str:
    """For people: ``850 ms``, ``12.5 s``, ``4 min 10 s``, ``3 h 05 min``, ``2 d 4 h``."""
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"
