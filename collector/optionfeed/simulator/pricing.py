"""Black-76 prices, greeks and implied volatility, as Deribit quotes its options.

Deribit prices an option off its underlying *forward* (``underlying_price``) with Black-76 and no
discounting (``interest_rate`` is 0.0). The real capture in ``tests/data/deribit`` pins the
conventions down, and the unit tests check them against it:

* the USD price is ``F*N(d1) - K*N(d2)`` for a call, ``K*N(-d2) - F*N(-d1)`` for a put;
* an inverse (BTC, ETH) option's ``mark_price`` is that USD price divided by ``F`` (coin units),
  a linear (USDC) option's is the USD price itself;
* greeks are in USD whatever the quote currency: ``delta`` is ``N(d1)`` (``N(d1) - 1`` for a
  put), ``gamma`` per USD, ``vega`` per volatility point, ``theta`` per calendar day (365) -
  except in an option's last day, where it is all the time value left (the capture shows
  ``-0.00146`` where the analytic theta would be ``-0.032``),
  ``rho`` per percentage point, ``K*T*N(d2)/100`` (``-K*T*N(-d2)/100`` for a put);
* IVs are in percent with two decimals, greeks are rounded to five decimals.

Everything here is pure arithmetic on floats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

YEAR_SECONDS = 365.0 * 86400.0
MIN_T = 1e-7  # years (about 3 s): below this an option is priced at intrinsic value
DAY = 1.0 / 365.0
MIN_VOL = 0.01
MAX_VOL = 5.0
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_erf = math.erf
_exp = math.exp
_log = math.log
_sqrt = math.sqrt


class Greeks(NamedTuple):
    delta: float
    gamma: float
    vega: float
    theta: float
    rho: float


ZERO_GREEKS = Greeks(0.0, 0.0, 0.0, 0.0, 0.0)


class Valuation(NamedTuple):
    """The undiscounted USD price of one option and its USD greeks."""

    price: float
    greeks: Greeks


def intrinsic(forward: float, strike: float, is_call: bool) -> float:
    return max(forward - strike, 0.0) if is_call else max(strike - forward, 0.0)


def price(forward: float, strike: float, t: float, vol: float, is_call: bool) -> float:
    """Black-76 price in USD (no discounting)."""
    if t <= MIN_T or vol <= 0.0:
        return intrinsic(forward, strike, is_call)
    sd = vol * _sqrt(t)
    d1 = _log(forward / strike) / sd + 0.5 * sd
    d2 = d1 - sd
    if is_call:
        return forward * 0.5 * (1.0 + _erf(d1 / _SQRT2)) - strike * 0.5 * (1.0 + _erf(d2 / _SQRT2))
    return strike * 0.5 * (1.0 - _erf(d2 / _SQRT2)) - forward * 0.5 * (1.0 - _erf(d1 / _SQRT2))


def value(forward: float, strike: float, t: float, vol: float, is_call: bool) -> Valuation:
    """Price and greeks in one pass (they share d1 and d2)."""
    if t <= MIN_T or vol <= 0.0:
        itm = (forward > strike) if is_call else (forward < strike)
        delta = (1.0 if is_call else -1.0) if itm else 0.0
        return Valuation(intrinsic(forward, strike, is_call), Greeks(delta, 0.0, 0.0, 0.0, 0.0))
    sqrt_t = _sqrt(t)
    sd = vol * sqrt_t
    d1 = _log(forward / strike) / sd + 0.5 * sd
    d2 = d1 - sd
    n_d1 = 0.5 * (1.0 + _erf(d1 / _SQRT2))
    n_d2 = 0.5 * (1.0 + _erf(d2 / _SQRT2))
    pdf = _INV_SQRT_2PI * _exp(-0.5 * d1 * d1)
    gamma = pdf / (forward * sd)
    vega = forward * pdf * sqrt_t / 100.0
    theta = -forward * pdf * vol / (2.0 * sqrt_t) / 365.0
    if is_call:
        p = forward * n_d1 - strike * n_d2
        delta = n_d1
        rho = strike * t * n_d2 / 100.0
    else:
        p = strike * (1.0 - n_d2) - forward * (1.0 - n_d1)
        delta = n_d1 - 1.0
        rho = -strike * t * (1.0 - n_d2) / 100.0
    if t < DAY:
        theta = intrinsic(forward, strike, is_call) - p
    return Valuation(p, Greeks(delta, gamma, vega, theta, rho))


def implied_vol(
    target: float, forward: float, strike: float, t: float, is_call: bool, guess: float = 0.6
) -> float | None:
    """The volatility at which the Black-76 price equals ``target`` (USD), or None.

    None when no volatility in [MIN_VOL, MAX_VOL] reaches the price (at or below intrinsic value,
    or above what a 500% volatility gives). Newton steps from ``guess`` (the caller passes a
    nearby volatility, so two or three steps are usual), kept inside a bracket that bisection
    shrinks whenever a step would leave it. The result is accurate to about 1e-7 in volatility.
    """
    if t <= MIN_T or target <= intrinsic(forward, strike, is_call):
        return None
    lo, hi = MIN_VOL, MAX_VOL
    vol = min(max(guess, lo), hi)
    sqrt_t = _sqrt(t)
    log_fk = _log(forward / strike)
    checked = False
    for _ in range(60):
        sd = vol * sqrt_t
        d1 = log_fk / sd + 0.5 * sd
        d2 = d1 - sd
        if is_call:
            p = forward * 0.5 * (1.0 + _erf(d1 / _SQRT2)) - strike * 0.5 * (1.0 + _erf(d2 / _SQRT2))
        else:
            p = strike * 0.5 * (1.0 - _erf(d2 / _SQRT2)) - forward * 0.5 * (1.0 - _erf(d1 / _SQRT2))
        vega = forward * _INV_SQRT_2PI * _exp(-0.5 * d1 * d1) * sqrt_t
        diff = p - target
        if abs(diff) <= vega * 1e-7 + 1e-14:
            return vol
        if abs(diff) <= vega * 1e-4:
            # One Newton step from this close leaves an error of order (diff/vega)^2: done.
            return vol - diff / vega
        if diff > 0.0:
            hi = vol
        else:
            lo = vol
            if not checked:
                checked = True
                if price(forward, strike, t, MAX_VOL, is_call) < target:
                    return None
        step = vol - diff / vega if vega > 1e-300 else -1.0
        vol = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo < 1e-9:
            return vol
    return vol
