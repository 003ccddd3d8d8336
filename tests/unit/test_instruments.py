import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from optionfeed.deribit.instruments import (
    InvalidInstrumentName,
    OptionType,
    format_option_name,
    format_strike,
    parse_option_name,
)

SAMPLES = Path(__file__).parents[1] / "data" / "deribit"


def test_inverse_option_name_parses_into_its_parts() -> None:
    name = parse_option_name("BTC-27DEC24-100000-C")
    assert name.base == "BTC"
    assert name.quote is None
    assert name.currency == "BTC"
    assert name.expiry == datetime(2024, 12, 27, 8, 0, tzinfo=UTC)
    assert name.strike == Decimal("100000")
    assert name.option_type is OptionType.CALL


def test_linear_option_name_carries_quote_and_decimal_strike() -> None:
    name = parse_option_name("XRP_USDC-30JUN23-0d625-C")
    assert (name.base, name.quote, name.currency) == ("XRP", "USDC", "USDC")
    assert name.strike == Decimal("0.625")
    assert str(name) == "XRP_USDC-30JUN23-0d625-C"


def test_single_digit_day_has_no_leading_zero() -> None:
    name = parse_option_name("ETH-9NOV25-3375-P")
    assert name.expiry.day == 9
    assert name.option_type is OptionType.PUT
    assert str(name) == "ETH-9NOV25-3375-P"


@pytest.mark.parametrize(
    "bad",
    ["BTC-PERPETUAL", "BTC-25MAR23", "BTC-09NOV25-3375-P", "BTC-31FEB25-1-C", "btc-1JAN25-1-C", ""],
)
def test_names_that_are_not_outright_options_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidInstrumentName):
        parse_option_name(bad)


def test_strike_formatting_uses_d_for_the_decimal_point() -> None:
    assert format_strike(40000.0) == "40000"
    assert format_strike(Decimal("1.02")) == "1d02"
    assert format_option_name("SOL", datetime(2026, 1, 2).date(), 140, "put", quote="USDC") == (
        "SOL_USDC-2JAN26-140-P"
    )


def test_every_option_in_the_real_instrument_capture_round_trips() -> None:
    names = []
    for line in (SAMPLES / "rest-get_instruments-2021-2022.txt").read_text().splitlines():
        if " -> " not in line:
            continue
        body = json.loads(line.split(": ", 1)[1])
        names += [i for i in body["result"] if i["kind"] == "option"]
    assert len(names) > 900
    for instrument in names:
        parsed = parse_option_name(instrument["instrument_name"])
        assert str(parsed) == instrument["instrument_name"]
        assert float(parsed.strike) == instrument["strike"]
        assert parsed.option_type.value == instrument["option_type"]
        assert int(parsed.expiry.timestamp() * 1000) == instrument["expiration_timestamp"]
