"""Deribit option instrument names: parsing and formatting (docs/deribit-protocol.md §3.2).

``BTC-27DEC24-100000-C`` is base ``BTC``, expiry 27 Dec 2024 08:00 UTC, strike 100000, call.
Linear (USDC-settled) options carry the quote in the name and write the decimal point as ``d``:
``XRP_USDC-30JUN23-0d625-C`` has strike 0.625.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import StrEnum

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
EXPIRY_TIME = time(8, 0, tzinfo=UTC)

_OPTION_NAME = re.compile(
    r"^(?P<base>[A-Z0-9]+)(?:_(?P<quote>[A-Z]+))?-(?P<day>[1-9]\d?)"
    r"(?P<mon>JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)(?P<yy>\d{2})"
    r"-(?P<strike>\d+(?:d\d+)?)-(?P<cp>[CP])$"
)


class InstrumentState(StrEnum):
    """An instrument's ``state`` in ``get_instruments``, tickers and ``instrument.state``.

    ``open`` while listed; at expiry ``settlement``, then ``delivered``. Real data also shows the
    others. A final ticker says ``closed``.
    """

    OPEN = "open"
    CREATED = "created"
    STARTED = "started"
    SETTLEMENT = "settlement"
    SETTLED = "settled"
    DELIVERED = "delivered"
    CLOSED = "closed"
    INACTIVE = "inactive"
    ARCHIVIZED = "archivized"
    TERMINATED = "terminated"
    DEACTIVATED = "deactivated"


# The states that mean an instrument is listed, being settled, or gone for good.
LISTED_STATES = frozenset({InstrumentState.OPEN, InstrumentState.CREATED, InstrumentState.STARTED})
SETTLING_STATES = frozenset({InstrumentState.SETTLEMENT, InstrumentState.SETTLED})
GONE_STATES = frozenset(
    {
        InstrumentState.DELIVERED,
        InstrumentState.CLOSED,
        InstrumentState.INACTIVE,
        InstrumentState.ARCHIVIZED,
        InstrumentState.TERMINATED,
        InstrumentState.DEACTIVATED,
    }
)


class OptionType(StrEnum):
    CALL = "call"
    PUT = "put"


@dataclass(frozen=True, slots=True)
class OptionName:
    """The parts of an outright option's name."""

    base: str
    quote: str | None
    expiry: datetime
    strike: Decimal
    option_type: OptionType

    @property
    def currency(self) -> str:
        """The ``currency`` Deribit files this option under: the base coin, or the quote (USDC)."""
        return self.quote if self.quote is not None else self.base

    def __str__(self) -> str:
        return format_option_name(
            self.base, self.expiry.date(), self.strike, self.option_type, quote=self.quote
        )


class InvalidInstrumentName(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"{name!r} is not a Deribit option name (expected e.g. BTC-27DEC24-100000-C "
            "or XRP_USDC-30JUN23-0d625-C)"
        )
        self.name = name


def parse_option_name(name: str) -> OptionName:
    """Parse an outright option name; raise :class:`InvalidInstrumentName` otherwise."""
    match = _OPTION_NAME.match(name)
    if match is None:
        raise InvalidInstrumentName(name)
    day = int(match["day"])
    month = MONTHS.index(match["mon"]) + 1
    year = 2000 + int(match["yy"])
    try:
        expiry = datetime.combine(date(year, month, day), EXPIRY_TIME)
    except ValueError:
        raise InvalidInstrumentName(name) from None
    return OptionName(
        base=match["base"],
        quote=match["quote"],
        expiry=expiry,
        strike=Decimal(match["strike"].replace("d", ".")),
        option_type=OptionType.CALL if match["cp"] == "C" else OptionType.PUT,
    )


def is_option_name(name: str) -> bool:
    return _OPTION_NAME.match(name) is not None


def format_expiry(day: date) -> str:
    """``27DEC24``: day without a leading zero, upper-case month, two-digit year."""
    return f"{day.day}{MONTHS[day.month - 1]}{day.year % 100:02d}"


def format_strike(strike: Decimal | float | int) -> str:
    """``100000`` for whole strikes, ``0d625`` for fractional ones."""
    value = Decimal(str(strike)).normalize()
    if value == value.to_integral_value():
        return str(int(value))
    return format(value, "f").replace(".", "d")


def format_option_name(
    base: str,
    expiry: date,
    strike: Decimal | float | int,
    option_type: OptionType | str,
    *,
    quote: str | None = None,
) -> str:
    cp = "C" if OptionType(option_type) is OptionType.CALL else "P"
    prefix = f"{base}_{quote}" if quote else base
    return f"{prefix}-{format_expiry(expiry)}-{format_strike(strike)}-{cp}"
