"""The simulator's instruments: options, their underlyings, and their trades.

These are the market's state, mutated by :mod:`.market`, :mod:`.quoting` and :mod:`.ticker`
and read by the publisher and the methods. Prices are kept in whole ticks and turned into wire
floats through a per-underlying table, so that ``0.0015`` never comes out as
``0.0015000000000000002``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from optionfeed.deribit.instruments import InstrumentState, format_option_name
from optionfeed.simulator.book import Book
from optionfeed.simulator.calendar import Expiry, Series
from optionfeed.simulator.underlyings import UnderlyingSpec

MAX_LOTS = 4096  # order sizes precomputed per underlying, in lots
PRICE_TABLE_TICKS = 20_000  # prices precomputed per underlying, in ticks (extended on demand)
_floor = math.floor


def fround(value: float, scale: float) -> float:
    """``value`` rounded to ``1/scale`` (``scale`` a power of ten): round() without its cost.

    Both operands of the division are exact, so the result is the double nearest the decimal,
    the same float ``round`` gives except in exact-half cases.
    """
    return _floor(value * scale + 0.5) / scale


class TradeRecord:
    """One trade: its sequence number, time, and its wire form (a JSON object)."""

    __slots__ = ("amount", "direction", "payload", "price", "seq", "trade_id", "ts")

    def __init__(
        self,
        seq: int,
        ts: int,
        trade_id: str,
        price: float,
        amount: float,
        direction: str,
        payload: bytes,
    ) -> None:
        self.seq = seq
        self.ts = ts
        self.trade_id = trade_id
        self.price = price
        self.amount = amount
        self.direction = direction
        self.payload = payload


class Underlying:
    """One underlying's moving parts: the index and the ATM volatility level."""

    __slots__ = (
        "amounts",
        "atm_iv",
        "index",
        "index_scale",
        "mean_lots",
        "prices",
        "spec",
        "version",
    )

    def __init__(self, spec: UnderlyingSpec, index: float) -> None:
        self.spec = spec
        self.index = index
        self.atm_iv = spec.atm_iv
        self.version = 0
        self.index_scale = 10.0**spec.index_decimals
        # Wire prices by tick count: exact decimals without rounding on every event.
        self.prices: list[float] = []
        self.price(PRICE_TABLE_TICKS)
        # Order sizes by number of lots (amount steps), and their mean.
        step, dec = spec.amount_step, spec.amount_decimals
        self.amounts = [round(k * step, dec) for k in range(MAX_LOTS)]
        self.mean_lots = spec.typical_lots

    def price(self, ticks: int) -> float:
        prices = self.prices
        if ticks >= len(prices):
            tick, dec = self.spec.tick_size, self.spec.price_decimals
            prices.extend(round(k * tick, dec) for k in range(len(prices), ticks * 2 + 1))
        return prices[ticks]


class Option:
    """One option instrument and everything that changes about it."""

    __slots__ = (
        "amount_decimals",
        "amount_step",
        "ask_iv_key",
        "ask_vol",
        "bid_iv_key",
        "bid_vol",
        "book",
        "book_ts",
        "change_id",
        "created_ms",
        "currency",
        "delivery_price",
        "events",
        "expiry",
        "expiry_ms",
        "first_change_id",
        "first_trade_seq",
        "first_ts",
        "forward",
        "high",
        "instrument_id",
        "is_call",
        "ivs_pending",
        "last_price",
        "last_tick_direction",
        "last_ts",
        "liquidity",
        "low",
        "mark",
        "mark_decimals",
        "mark_scale",
        "name",
        "null_empty",
        "open_interest",
        "prev_change_id",
        "price_decimals",
        "pub",
        "ref_price",
        "state",
        "strike",
        "t",
        "tick",
        "ticker",
        "trade_prob",
        "trade_seq",
        "trades",
        "und",
        "underlying_index",
        "version",
        "vol",
        "volume",
        "volume_usd",
    )

    def __init__(
        self,
        und: Underlying,
        expiry: Expiry,
        strike: float,
        is_call: bool,
        instrument_id: int,
        created_ms: int,
    ) -> None:
        spec = und.spec
        self.und = und
        self.currency = spec.currency
        self.expiry = expiry
        self.expiry_ms = expiry.timestamp_ms
        self.strike = strike
        self.is_call = is_call
        self.instrument_id = instrument_id
        self.created_ms = created_ms
        self.name = format_option_name(
            spec.base,
            expiry.day,
            strike,
            "call" if is_call else "put",
            quote=spec.currency if spec.linear else None,
        )
        if spec.linear:
            self.underlying_index = "index_price"
        elif expiry.series is Series.DAY:
            self.underlying_index = f"SYN.{spec.base}-{expiry.code}"
        else:
            self.underlying_index = f"{spec.base}-{expiry.code}"
        self.tick = spec.tick_size
        self.price_decimals = spec.price_decimals
        self.mark_decimals = spec.price_decimals + 4
        self.mark_scale = 10.0**self.mark_decimals
        self.amount_step = spec.amount_step
        self.amount_decimals = spec.amount_decimals
        self.state: str = InstrumentState.OPEN
        self.book = Book()
        self.change_id = 0
        self.prev_change_id = 0
        self.book_ts = 0  # timestamp of the event that last changed the book
        self.first_change_id = 0
        self.trade_seq = 0
        self.first_trade_seq = 0
        self.trades: deque[TradeRecord] = deque()  # oldest first, contiguous trade_seq
        self.last_price: float | None = None
        self.last_tick_direction = 0
        self.ref_price: float | None = None  # first trade price: price_change is relative to it
        self.volume = 0.0
        self.volume_usd = 0.0
        self.high: float | None = None
        self.low: float | None = None
        self.open_interest = 0.0
        self.last_ts = 0
        self.first_ts = 0
        self.events = 0
        self.version = -1
        self.forward = und.index
        self.t = 0.0
        self.vol = spec.atm_iv
        self.mark = 0.0
        self.bid_iv_key: tuple[int, int] | None = None
        self.ask_iv_key: tuple[int, int] | None = None
        self.ivs_pending = 0  # best bid (1) / ask (2) IV to solve before the ticker is read
        self.bid_vol = 0.0  # the last solved side volatilities: the next solve starts there
        self.ask_vol = 0.0
        self.liquidity = 0  # 0 normal, 1 never bid, 2 no book at all
        self.null_empty = False
        self.trade_prob = 0.0
        self.delivery_price: float | None = None
        self.ticker: dict[str, Any] = {}
        self.pub: Any = None  # the publisher's per-option state

    @property
    def is_live(self) -> bool:
        return self.state == InstrumentState.OPEN

    def price_of(self, ticks: int) -> float:
        prices = self.und.prices
        return prices[ticks] if ticks < len(prices) else self.und.price(ticks)
