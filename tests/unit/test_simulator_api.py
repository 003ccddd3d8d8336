"""The methods' parameters, as Deribit takes them: ``Api.call`` over the synthetic market.

The calls go the REST way (no session), with a manual clock, so the market stands still
between calls unless a test moves it.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from optionfeed.simulator.api import Api, ApiSettings
from optionfeed.simulator.clock import ManualClock
from optionfeed.simulator.faults import Faults
from optionfeed.simulator.ledger import Ledger
from optionfeed.simulator.market import Market, MarketConfig
from optionfeed.simulator.publisher import Publisher
from optionfeed.simulator.source import MarketSource

# Ten seconds before the 15MAY24 08:00 UTC expiry, so a test can let some options expire.
START = datetime(2024, 5, 15, 7, 59, 50, tzinfo=UTC).timestamp()
CURRENCIES = ("BTC", "ETH", "USDC")


def build() -> tuple[Api, Market]:
    clock = ManualClock(START)
    market = Market(MarketConfig(currencies=CURRENCIES, rate=0.0, seed=5), clock)
    publisher = Publisher(Ledger())
    publisher.market = market
    market.listener = publisher
    settings = ApiSettings(credit_multiplier=0)
    api = Api(MarketSource(market), publisher, Faults(), settings, clock, random.Random(0))
    return api, market


@pytest.fixture(scope="module")
def api() -> Api:
    return build()[0]


def result(api: Api, method: str, **params: Any) -> Any:
    outcome = api.call(method, params, session=None, ip="127.0.0.1")
    assert outcome.error is None, outcome.error
    return outcome.result


def error(api: Api, method: str, **params: Any) -> dict[str, Any]:
    outcome = api.call(method, params, session=None, ip="127.0.0.1")
    assert outcome.error is not None, outcome.result
    return {
        "code": outcome.error.code,
        "message": outcome.error.message,
        **({"data": outcome.error.data} if outcome.error.data is not None else {}),
    }


def names(instruments: list[dict[str, Any]]) -> list[str]:
    return sorted(i["instrument_name"] for i in instruments)


def by_currency(api: Api, **params: Any) -> list[str]:
    found: list[str] = []
    for currency in CURRENCIES:
        found += names(result(api, "public/get_instruments", currency=currency, **params))
    return sorted(found)


def test_get_instruments_without_a_currency_lists_every_currency_as_any_does(api: Api) -> None:
    left_out = names(result(api, "public/get_instruments"))
    assert left_out == names(result(api, "public/get_instruments", currency="any"))
    assert left_out == by_currency(api)
    currencies = {i["base_currency"] for i in result(api, "public/get_instruments")}
    assert {"BTC", "ETH", "SOL", "XRP"} <= currencies


def test_get_instruments_with_any_filters_by_kind_across_currencies(api: Api) -> None:
    options = result(api, "public/get_instruments", currency="any", kind="option")
    assert names(options) == by_currency(api, kind="option")
    assert {i["kind"] for i in options} == {"option"}
    assert {i["settlement_currency"] for i in options} >= {"BTC", "ETH", "USDC"}
    # The market lists options only: other kinds are empty, not refused.
    assert result(api, "public/get_instruments", kind="future") == []
    assert result(api, "public/get_instruments", currency="any", kind="spot") == []
    assert error(api, "public/get_instruments", kind="any")["data"]["param"] == "kind"


def test_get_instruments_with_any_lists_the_expired_options_of_every_currency() -> None:
    api, market = build()
    # Past 08:00 in one go (a request catches the market up only 50 ms at a time).
    market.advance(START + 15.0)
    expired = result(api, "public/get_instruments", currency="any", expired=True)
    assert expired
    assert {i["instrument_name"].split("-")[1] for i in expired} == {"15MAY24"}
    assert names(expired) == names(result(api, "public/get_instruments", expired=True))
    assert names(expired) == by_currency(api, expired=True)
    assert {i["base_currency"] for i in expired} >= {"BTC", "ETH"}
    live = names(result(api, "public/get_instruments", currency="any"))
    assert not set(live) & set(names(expired))


def test_get_instruments_refuses_an_unknown_currency(api: Api) -> None:
    assert error(api, "public/get_instruments", currency="DOGE") == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"reason": "invalid currency", "param": "currency"},
    }


def test_get_book_summary_by_currency_still_requires_a_currency_and_refuses_any(
    api: Api,
) -> None:
    assert error(api, "public/get_book_summary_by_currency") == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"reason": "value required", "param": "currency"},
    }
    assert error(api, "public/get_book_summary_by_currency", currency="any") == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"reason": "invalid currency", "param": "currency"},
    }
    summaries = result(api, "public/get_book_summary_by_currency", currency="ETH", kind="option")
    assert summaries
    assert {s["base_currency"] for s in summaries} == {"ETH"}
