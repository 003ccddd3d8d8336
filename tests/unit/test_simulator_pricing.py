"""Black-76 as Deribit quotes it, checked against the real tickers of the 2021 capture."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import orjson
import pytest

from optionfeed.deribit.instruments import parse_option_name
from optionfeed.simulator import pricing

CAPTURE = Path(__file__).parents[1] / "data" / "deribit" / "ws-options-2021-07-22.txt"
_RECEIVED = re.compile(r"^\d+(?:\.\d+)?: (?P<json>.*)$")


def captured_tickers() -> list[dict]:
    tickers = []
    for line in CAPTURE.read_text().splitlines():
        match = _RECEIVED.match(line)
        if match is None:
            continue
        message = orjson.loads(match["json"])
        if message.get("method") == "subscription" and message["params"]["channel"].startswith(
            "ticker."
        ):
            tickers.append(message["params"]["data"])
    return tickers


def _years(ticker: dict) -> tuple[float, float, bool]:
    name = parse_option_name(ticker["instrument_name"])
    expiry_ms = int(name.expiry.timestamp() * 1000)
    years = (expiry_ms - ticker["timestamp"]) / 1000.0 / pricing.YEAR_SECONDS
    return years, float(name.strike), name.option_type == "call"


def test_the_capture_holds_tickers_to_check_against() -> None:
    assert len(captured_tickers()) == 89


@pytest.mark.parametrize("ticker", captured_tickers(), ids=lambda t: t["instrument_name"])
def test_mark_price_and_greeks_of_real_tickers_follow_black76_on_the_forward(ticker: dict) -> None:
    years, strike, is_call = _years(ticker)
    forward = ticker["underlying_price"]
    valuation = pricing.value(forward, strike, years, ticker["mark_iv"] / 100.0, is_call)
    # Inverse options: the mark is the USD price in coins of the forward.
    assert valuation.price / forward == pytest.approx(ticker["mark_price"], rel=2e-3, abs=2e-6)
    greeks = ticker["greeks"]
    for name in ("delta", "gamma", "vega", "theta", "rho"):
        expected = greeks[name]
        got = getattr(valuation.greeks, name)
        assert got == pytest.approx(expected, rel=5e-3, abs=2e-5), name


def test_implied_vol_inverts_the_price_across_strikes_expiries_and_vols() -> None:
    rng = random.Random(5)
    checked = 0
    for _ in range(3000):
        forward = rng.uniform(0.5, 100_000)
        strike = forward * math.exp(rng.gauss(0, 0.4))
        years = rng.uniform(0.002, 2.0)
        vol = rng.uniform(0.1, 2.5)
        is_call = rng.random() < 0.5
        price = pricing.price(forward, strike, years, vol, is_call)
        if price - pricing.intrinsic(forward, strike, is_call) < 1e-9 * forward:
            continue  # no time value left to invert
        solved = pricing.implied_vol(price, forward, strike, years, is_call, rng.uniform(0.2, 2))
        assert solved == pytest.approx(vol, abs=1e-6)
        checked += 1
    assert checked > 2000


def test_prices_outside_what_a_volatility_can_give_have_no_implied_vol() -> None:
    assert pricing.implied_vol(5.0, 100.0, 95.0, 0.5, True) is None  # below intrinsic (5.0)
    assert pricing.implied_vol(100.0, 100.0, 100.0, 0.5, True) is None  # a call worth the forward
    assert pricing.implied_vol(0.0, 100.0, 100.0, 0.5, True) is None


def test_put_call_parity_holds_without_discounting() -> None:
    for strike in (50.0, 100.0, 150.0):
        call = pricing.price(100.0, strike, 0.3, 0.8, True)
        put = pricing.price(100.0, strike, 0.3, 0.8, False)
        assert call - put == pytest.approx(100.0 - strike, abs=1e-9)


def test_an_expired_option_is_worth_its_intrinsic_value_with_no_time_greeks() -> None:
    valuation = pricing.value(110.0, 100.0, 0.0, 0.8, True)
    assert valuation.price == 10.0
    assert valuation.greeks == pricing.Greeks(1.0, 0.0, 0.0, 0.0, 0.0)


def test_theta_in_the_last_day_is_the_time_value_left() -> None:
    years = 0.4 / 365.0
    valuation = pricing.value(2005.38, 2300.0, years, 1.114, True)
    assert valuation.greeks.theta == pytest.approx(-valuation.price)
