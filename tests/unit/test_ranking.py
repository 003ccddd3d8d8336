from typing import Any

import pytest

from optionfeed.deribit.ranking import rank_instruments


def inst(name: str, **kw: Any) -> Any:
    base = name.split("-")[0].split("_")[0]
    return {
        "instrument_name": name,
        "kind": "option",
        "is_active": True,
        "base_currency": base,
        "expiration_timestamp": 2_000_000_000_000,
        **kw,
    }


def summary(name: str, **kw: Any) -> Any:
    return {"instrument_name": name, **kw}


def test_ranks_by_volume_usd_with_ties_broken_by_name() -> None:
    instruments = [inst("ETH-1JAN30-1-C"), inst("ETH-1JAN30-2-C"), inst("ETH-1JAN30-3-C")]
    summaries = [
        summary("ETH-1JAN30-1-C", volume_usd=5.0),
        summary("ETH-1JAN30-2-C", volume_usd=9.0),
        summary("ETH-1JAN30-3-C", volume_usd=5.0),
    ]
    assert rank_instruments(instruments, summaries, top_n=None) == [
        "ETH-1JAN30-2-C",
        "ETH-1JAN30-1-C",
        "ETH-1JAN30-3-C",
    ]
    assert rank_instruments(instruments, summaries, top_n=2) == ["ETH-1JAN30-2-C", "ETH-1JAN30-1-C"]


def test_ranks_by_open_interest_when_asked() -> None:
    instruments = [inst("BTC-1JAN30-1-C"), inst("BTC-1JAN30-2-C")]
    summaries = [
        summary("BTC-1JAN30-1-C", volume_usd=1.0, open_interest=10.0),
        summary("BTC-1JAN30-2-C", volume_usd=9.0, open_interest=1.0),
    ]
    assert rank_instruments(instruments, summaries, top_n=1, rank_by="open_interest") == [
        "BTC-1JAN30-1-C"
    ]


def test_expired_inactive_and_non_options_are_left_out() -> None:
    instruments = [
        inst("BTC-1JAN30-1-C"),
        inst("BTC-1JAN20-1-C", expiration_timestamp=1),
        inst("BTC-1JAN30-2-C", is_active=False),
        inst("BTC-PERPETUAL", kind="future"),
        inst("BTC-1JAN30-3-C", state="closed"),
    ]
    assert rank_instruments(instruments, [], top_n=None, now_ms=1000) == ["BTC-1JAN30-1-C"]


def test_missing_volume_usd_falls_back_to_volume_times_underlying_price() -> None:
    instruments = [inst("ETH-1JAN30-1-C"), inst("ETH-1JAN30-2-C")]
    summaries = [
        summary("ETH-1JAN30-1-C", volume=10.0, underlying_price=2000.0),
        summary("ETH-1JAN30-2-C", volume_usd=15_000.0),
    ]
    assert rank_instruments(instruments, summaries, top_n=1) == ["ETH-1JAN30-1-C"]


def test_usdc_feed_filters_by_underlying() -> None:
    instruments = [inst("SOL_USDC-1JAN30-100-C"), inst("XRP_USDC-1JAN30-1d5-C")]
    assert rank_instruments(instruments, [], top_n=None, underlyings=["sol"]) == [
        "SOL_USDC-1JAN30-100-C"
    ]


def test_negative_top_n_is_an_error() -> None:
    with pytest.raises(ValueError, match="top_n"):
        rank_instruments([], [], top_n=-1)
