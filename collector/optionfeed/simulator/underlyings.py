"""The option underlyings the simulator lists, and how each one's strikes are laid out.

BTC and ETH options are inverse (priced in the coin, filed under their own currency); the USDC
options are linear (priced in USDC, filed under ``USDC``, named ``SOL_USDC-…`` with ``d`` for the
decimal point in strikes). Starting prices, volatilities and strike counts are of the order seen
on Deribit, and sized so that BTC, ETH and USDC together list well over 2,000 options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from optionfeed.simulator.calendar import Series, SeriesCounts

# Strikes span this many standard deviations of the forward on each side of it at listing.
STRIKE_SPAN_SD = 3.0
# Even the shortest expiry spans at least this fraction of the forward on each side.
MIN_STRIKE_SPAN = 0.08
NICE_STEPS = (1.0, 2.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class UnderlyingSpec:
    """Static description of one underlying and its option listings."""

    base: str
    currency: str  # what get_instruments files it under: the coin, or USDC
    linear: bool
    spot: float  # starting index price (USD or USDC)
    walk_vol: float  # realised annual volatility of the index random walk
    atm_iv: float  # implied ATM volatility (a fraction) for long-dated expiries
    short_iv_premium: float  # extra ATM volatility of the shortest expiries
    skew: float  # volatility change per unit of normalised log-moneyness (negative: put skew)
    smile: float  # volatility added per squared unit of normalised log-moneyness
    basis: float  # annual carry of the forward over the index (inverse options)
    index_decimals: int  # decimals of index and underlying prices on the wire
    tick_size: float
    min_trade_amount: float | int
    amount_step: float
    typical_lots: float  # mean order size in amount steps
    counts: SeriesCounts
    strikes: tuple[int, int, int, int]  # about this many strikes per DAY, WEEK, MONTH, QUARTER
    activity: float  # relative share of the market's events
    maker_commission: float
    taker_commission: float
    block_trade_commission: float

    @property
    def prefix(self) -> str:
        """The instrument-name prefix: ``BTC`` or ``SOL_USDC``."""
        return f"{self.base}_{self.currency}" if self.linear else self.base

    @property
    def index_name(self) -> str:
        return f"{self.base.lower()}_{'usdc' if self.linear else 'usd'}"

    @property
    def quote_currency(self) -> str:
        return self.currency

    @property
    def counter_currency(self) -> str:
        return "USDC" if self.linear else "USD"

    @property
    def settlement_currency(self) -> str:
        return self.currency

    @property
    def price_decimals(self) -> int:
        return decimals_of(self.tick_size)

    @property
    def amount_decimals(self) -> int:
        return decimals_of(self.amount_step)


def decimals_of(step: float) -> int:
    """Digits after the point needed to write multiples of ``step`` exactly."""
    text = format(Decimal(repr(step)).normalize(), "f")
    return len(text.split(".")[1]) if "." in text else 0


UNDERLYINGS: dict[str, UnderlyingSpec] = {
    "BTC": UnderlyingSpec(
        base="BTC", currency="BTC", linear=False, spot=65000.0, walk_vol=0.55, atm_iv=0.52,
        short_iv_premium=0.10, skew=-0.035, smile=0.025, basis=0.06, index_decimals=2,
        tick_size=0.0005,
        min_trade_amount=0.1, amount_step=0.1, typical_lots=25.0,
        counts=SeriesCounts(daily=4, weekly=3, monthly=3, quarterly=4), strikes=(28, 40, 50, 56),
        activity=1.0, maker_commission=0.0003, taker_commission=0.0003,
        block_trade_commission=0.0003,
    ),
    "ETH": UnderlyingSpec(
        base="ETH", currency="ETH", linear=False, spot=3400.0, walk_vol=0.70, atm_iv=0.62,
        short_iv_premium=0.12, skew=-0.03, smile=0.03, basis=0.055, index_decimals=2,
        tick_size=0.0005,
        min_trade_amount=1, amount_step=1.0, typical_lots=30.0,
        counts=SeriesCounts(daily=4, weekly=3, monthly=3, quarterly=3), strikes=(26, 36, 44, 50),
        activity=0.7, maker_commission=0.0003, taker_commission=0.0003,
        block_trade_commission=0.0003,
    ),
    "SOL": UnderlyingSpec(
        base="SOL", currency="USDC", linear=True, spot=150.0, walk_vol=0.90, atm_iv=0.80,
        short_iv_premium=0.15, skew=-0.02, smile=0.04, basis=0.0, index_decimals=4,
        tick_size=0.01,
        min_trade_amount=0.1, amount_step=0.1, typical_lots=40.0,
        counts=SeriesCounts(daily=2, weekly=2, monthly=2, quarterly=1), strikes=(16, 20, 24, 30),
        activity=0.15, maker_commission=0.0003, taker_commission=0.0005,
        block_trade_commission=0.0003,
    ),
    "XRP": UnderlyingSpec(
        base="XRP", currency="USDC", linear=True, spot=0.6, walk_vol=0.85, atm_iv=0.75,
        short_iv_premium=0.15, skew=-0.02, smile=0.04, basis=0.0, index_decimals=5,
        tick_size=0.0001,
        min_trade_amount=10, amount_step=10.0, typical_lots=20.0,
        counts=SeriesCounts(daily=2, weekly=2, monthly=2, quarterly=1), strikes=(16, 20, 24, 30),
        activity=0.1, maker_commission=0.0003, taker_commission=0.0005,
        block_trade_commission=0.0003,
    ),
}  # fmt: skip

# The option currencies of get_instruments, and the underlyings filed under each.
CURRENCIES: dict[str, tuple[str, ...]] = {"BTC": ("BTC",), "ETH": ("ETH",), "USDC": ("SOL", "XRP")}


def nice_step(raw: float) -> float:
    """The 1/2/2.5/5 x 10^k closest to ``raw`` (in ratio)."""
    if raw <= 0:
        raise ValueError(f"a strike step must be positive, got {raw}")
    exponent = math.floor(math.log10(raw))
    candidates = [m * 10.0**e for e in (exponent, exponent + 1) for m in NICE_STEPS]
    best = min(candidates, key=lambda step: abs(math.log(step / raw)))
    return round(best, 12)


def strike_grid(forward: float, atm_vol: float, years: float, target: int) -> list[float]:
    """About ``target`` evenly spaced round strikes spanning the forward's likely range."""
    sd = atm_vol * math.sqrt(max(years, 1.0 / 365.0))
    span = max(STRIKE_SPAN_SD * sd, MIN_STRIKE_SPAN)
    low, high = forward * math.exp(-span), forward * math.exp(span)
    step = nice_step((high - low) / max(target - 1, 1))
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    digits = max(0, -math.floor(math.log10(step)) + 2)
    return [round(k * step, digits) for k in range(max(first, 1), last + 1)]


def strike_target(spec: UnderlyingSpec, series: Series) -> int:
    return spec.strikes[int(series)]
