"""Request parameters are read, defaulted and refused as Deribit does (``-32602`` and its data)."""

from __future__ import annotations

from typing import Any

import pytest

from optionfeed.deribit.errors import RpcError
from optionfeed.simulator.params import Params

ACCEPTED = ("BTC", "ETH", "USDC", "any")


def refusal(raw: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(RpcError) as info:
        Params(raw).currency(ACCEPTED, **kwargs)
    error = info.value
    return {"code": error.code, "message": error.message, "data": error.data}


def test_an_optional_currency_left_out_takes_its_default() -> None:
    assert Params({}).currency(ACCEPTED, default="any") == "any"
    # Some clients send null for a parameter they leave out.
    assert Params({"currency": None}).currency(ACCEPTED, default="any") == "any"


def test_a_given_currency_is_taken_as_it_is() -> None:
    assert Params({"currency": "ETH"}).currency(ACCEPTED, default="any") == "ETH"
    assert Params({"currency": "any"}).currency(ACCEPTED) == "any"


def test_a_required_currency_left_out_is_refused_as_deribit_refuses_it() -> None:
    # As Deribit answers a request that leaves out a required currency (testnet, 2025).
    assert refusal({}) == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"reason": "value required", "param": "currency"},
    }


@pytest.mark.parametrize("value", ["DOGE", "btc", "", 7, ["BTC"]])
def test_a_currency_outside_the_accepted_set_is_refused_as_an_invalid_currency(
    value: object,
) -> None:
    assert refusal({"currency": value}, default="any") == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"reason": "invalid currency", "param": "currency"},
    }


def test_any_required_parameter_left_out_answers_value_required() -> None:
    with pytest.raises(RpcError) as info:
        Params({}).required_string("instrument_name")
    assert info.value.data == {"reason": "value required", "param": "instrument_name"}
    with pytest.raises(RpcError) as info:
        Params({}).string_list("channels")
    assert info.value.data == {"reason": "value required", "param": "channels"}
