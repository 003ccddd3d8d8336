"""An option's ticker: its mark, IVs and greeks (Black-76), and its best bid and ask.

The ticker dict of each option is kept up to date in place, in the key order of the real
captures, and serialised as it stands. :func:`revalue` reprices the option on the forward of its
expiry whenever its index has moved (the mark, ``mark_iv`` and greeks agree: the mark is the
Black-76 price at ``mark_iv``, rounded as Deribit rounds it); :func:`refresh_book_fields` writes
the best bid and ask and solves their IVs. Empty sides are written as ``0.0`` or, on the options
that use the documented variant, ``null``.
"""

from __future__ import annotations

import math
from typing import Any

from optionfeed.deribit.instruments import InstrumentState
from optionfeed.simulator import pricing
from optionfeed.simulator.option import Option, fround

YEAR_MS = pricing.YEAR_SECONDS * 1000.0
# ``ask_iv`` Deribit shows for an expired option (real 2020 capture), and the cap of any IV.
IV_CAP = 500.0
# The ticker's empty-side value when the null variant is not used (docs/deribit-protocol.md §10,
# item 2).
ZERO = 0.0
_floor = math.floor


def revalue(option: Option, now_ms: int) -> None:
    und = option.und
    spec = und.spec
    years = max(option.expiry_ms - now_ms, 0) / YEAR_MS
    forward = und.index * math.exp(spec.basis * years) if spec.basis else und.index
    eff = max(years, 1.0 / (365.0 * 24.0))
    atm = und.atm_iv + spec.short_iv_premium * math.exp(-years / 0.05)
    x = math.log(option.strike / forward) / (atm * math.sqrt(eff))
    x = -4.0 if x < -4.0 else 4.0 if x > 4.0 else x
    iv = atm + spec.skew * x + spec.smile * x * x
    iv_pct = fround(min(max(iv, 0.05), 3.0) * 100.0, 100.0)
    vol = iv_pct / 100.0
    valuation = pricing.value(forward, option.strike, years, vol, option.is_call)
    option.forward = forward
    option.t = years
    option.vol = vol
    option.mark = valuation.price if spec.linear else valuation.price / forward
    option.version = und.version
    tk = option.ticker
    if tk:
        write_mark(option, tk, iv_pct, valuation.greeks)


def write_mark(option: Option, tk: dict[str, Any], iv_pct: float, greeks: pricing.Greeks) -> None:
    und = option.und
    scale = und.index_scale
    mark = option.mark
    tk["underlying_price"] = _floor(option.forward * scale + 0.5) / scale
    tk["mark_price"] = _floor(mark * option.mark_scale + 0.5) / option.mark_scale
    tk["mark_iv"] = iv_pct
    index = _floor(und.index * scale + 0.5) / scale
    tk["index_price"] = index
    tk["estimated_delivery_price"] = index
    g = tk["greeks"]
    g["vega"] = _floor(greeks.vega * 1e5 + 0.5) / 1e5
    g["theta"] = _floor(greeks.theta * 1e5 + 0.5) / 1e5
    g["rho"] = _floor(greeks.rho * 1e5 + 0.5) / 1e5
    g["gamma"] = _floor(greeks.gamma * 1e5 + 0.5) / 1e5
    g["delta"] = _floor(greeks.delta * 1e5 + 0.5) / 1e5
    # Order price clamps around the mark, as Deribit publishes them (min_price, max_price).
    linear = und.spec.linear
    unit = option.forward if linear else 1.0
    coin = mark / unit
    floor_price = option.tick if linear else option.tick / 5.0
    tick_scale = 10.0**option.price_decimals
    low = max(floor_price, (coin - 0.015 - 0.2 * coin) * unit)
    tk["min_price"] = _floor(low * tick_scale + 0.5) / tick_scale
    tk["max_price"] = _floor((coin + 0.02 + 0.25 * coin) * unit * tick_scale + 0.5) / tick_scale


def new_ticker(option: Option, t_ms: int) -> dict[str, Any]:
    """The ticker in the key order of the real captures."""
    tk: dict[str, Any] = {
        "underlying_price": 0.0,
        "underlying_index": option.underlying_index,
        "timestamp": t_ms,
        "stats": {
            "volume": None,
            "price_change": None,
            "low": None,
            "high": None,
            "volume_usd": None,
        },
        "state": InstrumentState.OPEN,
        "settlement_price": 0.0,
        "open_interest": option.open_interest,
        "min_price": 0.0,
        "max_price": 0.0,
        "mark_price": 0.0,
        "mark_iv": 0.0,
        "last_price": None,
        "interest_rate": 0.0,
        "instrument_name": option.name,
        "index_price": 0.0,
        "greeks": {"vega": 0.0, "theta": 0.0, "rho": 0.0, "gamma": 0.0, "delta": 0.0},
        "estimated_delivery_price": 0.0,
        "bid_iv": 0.0,
        "best_bid_price": 0.0,
        "best_bid_amount": 0.0,
        "best_ask_price": 0.0,
        "best_ask_amount": 0.0,
        "ask_iv": 0.0,
    }
    option.ticker = tk
    option.version = -1
    revalue(option, t_ms)
    return tk


def side_iv(option: Option, ticks: int, is_bid: bool) -> float:
    """The IV (percent) of a price on one side of the book."""
    target = ticks * option.tick
    if not option.und.spec.linear:
        target *= option.forward
    guess = (option.bid_vol if is_bid else option.ask_vol) or option.vol
    vol = pricing.implied_vol(
        target, option.forward, option.strike, option.t, option.is_call, guess
    )
    if vol is None:
        # A bid below intrinsic value has no IV; an ask beyond any volatility shows the cap.
        return 0.0 if is_bid else IV_CAP
    if is_bid:
        option.bid_vol = vol
    else:
        option.ask_vol = vol
    return fround(min(vol * 100.0, IV_CAP), 100.0)


def refresh_book_fields(option: Option, sides: int = 3) -> bool:
    """Write best bid/ask into the ticker; report whether the top changed.

    ``sides`` says which sides may have moved: 1 bids, 2 asks, 3 both (the mark moved, so
    both IVs need solving again). The IVs of the best prices are solved by :func:`settled`,
    when the ticker is read: a 100 ms subscriber's ticker then costs one solve per window, not
    one per event.
    """
    tk = option.ticker
    book = option.book
    bids, asks = book.bids, book.asks
    changed = False
    version = option.version
    if not sides & 1:
        pass
    elif bids:
        best = max(bids)
        price = option.price_of(best)
        amount = bids[best]
        if tk["best_bid_price"] != price or tk["best_bid_amount"] != amount:
            changed = True
            tk["best_bid_price"] = price
            tk["best_bid_amount"] = amount
        key = (best, version)
        if option.bid_iv_key != key:
            option.bid_iv_key = key
            option.ivs_pending |= 1
    else:
        empty = None if option.null_empty else ZERO
        if tk["best_bid_price"] != empty or tk["best_bid_amount"] != 0.0:
            changed = True
            tk["best_bid_price"] = empty
            tk["best_bid_amount"] = 0.0
        option.bid_iv_key = None
        option.ivs_pending &= ~1
        tk["bid_iv"] = 0.0
    if not sides & 2:
        pass
    elif asks:
        best = min(asks)
        price = option.price_of(best)
        amount = asks[best]
        if tk["best_ask_price"] != price or tk["best_ask_amount"] != amount:
            changed = True
            tk["best_ask_price"] = price
            tk["best_ask_amount"] = amount
        key = (best, version)
        if option.ask_iv_key != key:
            option.ask_iv_key = key
            option.ivs_pending |= 2
    else:
        empty = None if option.null_empty else ZERO
        if tk["best_ask_price"] != empty or tk["best_ask_amount"] != 0.0:
            changed = True
            tk["best_ask_price"] = empty
            tk["best_ask_amount"] = 0.0
        option.ask_iv_key = None
        option.ivs_pending &= ~2
        tk["ask_iv"] = 0.0
    return changed


def settled(option: Option) -> dict[str, Any]:
    """The option's ticker with every field up to date: read it through this, never directly."""
    pending = option.ivs_pending
    if pending:
        tk = option.ticker
        book = option.book
        if pending & 1 and book.bids:
            tk["bid_iv"] = side_iv(option, max(book.bids), True)
        if pending & 2 and book.asks:
            tk["ask_iv"] = side_iv(option, min(book.asks), False)
        option.ivs_pending = 0
    return option.ticker
