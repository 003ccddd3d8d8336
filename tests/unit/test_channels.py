import pytest

from optionfeed.deribit import channels
from optionfeed.deribit.channels import Channel, Interval, InvalidChannel, Kind, parse_channel


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "ticker.BTC-27DEC24-100000-C.100ms",
            Channel(Kind.TICKER, "BTC-27DEC24-100000-C", Interval.MS100),
        ),
        ("quote.ETH-9NOV25-3375-P", Channel(Kind.QUOTE, "ETH-9NOV25-3375-P")),
        (
            "trades.XRP_USDC-30JUN23-0d625-C.agg2",
            Channel(Kind.TRADES, "XRP_USDC-30JUN23-0d625-C", Interval.AGG2),
        ),
        ("book.BTC-24SEP21-8000-P.raw", Channel(Kind.BOOK, "BTC-24SEP21-8000-P", Interval.RAW)),
        (
            "trades.option.ETH.100ms",
            Channel(
                Kind.CURRENCY_TRADES,
                interval=Interval.MS100,
                currency="ETH",
                instrument_kind="option",
            ),
        ),
        (
            "book.BTC-PERPETUAL.none.10.100ms",
            Channel(Kind.GROUPED_BOOK, "BTC-PERPETUAL", Interval.MS100, group="none", depth="10"),
        ),
        (
            "instrument.state.option.BTC",
            Channel(Kind.INSTRUMENT_STATE, currency="BTC", instrument_kind="option"),
        ),
        ("platform_state", Channel(Kind.PLATFORM_STATE)),
    ],
)
def test_channel_names_parse_and_format_back(name: str, expected: Channel) -> None:
    parsed = parse_channel(name)
    assert parsed == expected
    assert parsed.name == name


@pytest.mark.parametrize(
    "bad",
    [
        "ticker.BTC-27DEC24-100000-C",
        "ticker.BTC-27DEC24-100000-C.1s",
        "trades.option.XYZ.100ms",
        "book.BTC-PERPETUAL.none.10.raw",
        "book..100ms",
        "nonsense",
        "instrument.state.widget.BTC",
    ],
)
def test_channels_deribit_would_not_serve_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidChannel):
        parse_channel(bad)


def test_feed_channel_builds_each_family() -> None:
    inst = "ETH-9NOV25-3375-P"
    assert channels.feed_channel("ticker", inst, "100ms") == f"ticker.{inst}.100ms"
    assert channels.feed_channel("quote", inst, "100ms") == f"quote.{inst}"
    assert channels.feed_channel("trades", inst, "agg2") == f"trades.{inst}.agg2"
    assert channels.feed_channel("book", inst, "100ms") == f"book.{inst}.100ms"
    with pytest.raises(ValueError, match="unknown channel family"):
        channels.feed_channel("candles", inst, "100ms")
