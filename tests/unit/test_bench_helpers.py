"""The benchmark's judges: loss against the ledger, metrics arithmetic, the ceiling's mix."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from bench import bench_e2e, profile_collector, run


def ledger(channels: dict[str, tuple[str | None, int, int]]) -> dict[str, object]:
    """A ledger report with only what the comparison reads: (instrument, notifications, trades)."""
    return {
        "channels": {
            name: {"instrument": instrument, "notifications": n, "trades": trades}
            for name, (instrument, n, trades) in channels.items()
        }
    }


def test_stored_rows_equal_to_what_was_sent_is_no_loss() -> None:
    sent = ledger(
        {
            "ticker.A.raw": ("A", 10, 0),
            "ticker.B.raw": ("B", 5, 0),
            "trades.A.raw": ("A", 3, 4),  # three frames carrying four trades: four rows
            "instrument.state.any.any": (None, 7, 0),  # currency-wide: not a table's rows
        }
    )
    stored = {"ticker": {"A": 10, "B": 5}, "trades": {"A": 4}}
    report = bench_e2e.compare_with_ledger(sent, stored)
    assert report["ticker"] == {
        "sent": 15, "stored": 15, "missing": 0, "extra": 0, "instruments_differing": 0,
    }  # fmt: skip
    assert report["trades"]["sent"] == 4
    assert report["trades"]["missing"] == 0


def test_missing_and_extra_rows_are_counted_per_instrument_not_netted() -> None:
    sent = ledger({"book.A.raw": ("A", 10, 0), "book.B.raw": ("B", 10, 0)})
    # Two rows short on A and two too many on B: the totals agree, the stage still failed.
    report = bench_e2e.compare_with_ledger(sent, {"book": {"A": 8, "B": 12, "C": 1}})
    assert report["book"]["sent"] == 20
    assert report["book"]["stored"] == 21
    assert report["book"]["missing"] == 2
    assert report["book"]["extra"] == 3
    assert report["book"]["instruments_differing"] == 3


def test_a_channel_sent_on_two_connections_adds_up() -> None:
    sent = {
        "channels": {
            "ticker.A.raw": {"instrument": "A", "notifications": 6, "trades": 0},
            "ticker.A.100ms": {"instrument": "A", "notifications": 4, "trades": 0},
        }
    }
    report = bench_e2e.compare_with_ledger(sent, {"ticker": {"A": 10}})
    assert report["ticker"]["missing"] == report["ticker"]["extra"] == 0


def scrape_of(registry: CollectorRegistry) -> bench_e2e.Samples:
    return bench_e2e.parse_metrics(generate_latest(registry).decode())


def test_counters_are_summed_over_the_labels_asked_for() -> None:
    registry = CollectorRegistry()
    messages = Counter("optionfeed_messages_total", "m", ["channel"], registry=registry)
    messages.labels("ticker").inc(5)
    messages.labels("book").inc(3)
    messages.labels("quote").inc(100)
    samples = scrape_of(registry)
    assert bench_e2e.messages(samples, ["ticker", "book"]) == 8
    assert bench_e2e.metric_sum(samples, "optionfeed_messages_total") == 108
    assert bench_e2e.metric_sum(samples, "optionfeed_messages_total", channel="quote") == 100


def test_the_lag_histogram_is_summed_over_tables_bucket_by_bucket() -> None:
    registry = CollectorRegistry()
    lag = Histogram(
        "optionfeed_commit_lag_seconds", "l", ["table"], buckets=(0.1, 1.0), registry=registry
    )
    lag.labels("option_tickers").observe(0.05)
    lag.labels("option_book").observe(0.5)
    lag.labels("option_book").observe(5.0)
    assert bench_e2e.lag_buckets(scrape_of(registry)) == ((0.1, 1.0), (1.0, 2.0), (math.inf, 3.0))


def test_the_ceiling_is_read_from_bench_copy_output() -> None:
    output = """
table             normalise CPU µs/msg   raw COPY rows/s  staging+merge rows/s   Writer.put rows/s
option_tickers                    3.62            68,289                44,683              52,023
option_trades                     1.21            85,761                78,880              39,045
option_book                       3.04            49,398                36,505              41,379
"""
    ceiling = run.parse_ceiling(output)
    assert ceiling["option_tickers"] == {
        "normalise_us": 3.62, "raw": 68_289, "merge": 44_683, "writer": 52_023,
    }  # fmt: skip
    assert set(ceiling) == {"option_tickers", "option_trades", "option_book"}


def test_the_ceiling_of_a_mix_is_the_harmonic_mean_weighted_by_rows() -> None:
    ceiling = {"a": {"raw": 100.0}, "b": {"raw": 50.0}}
    # 100 rows of a take 1 s, 100 rows of b take 2 s: 200 rows in 3 s.
    assert run.mixed_ceiling(ceiling, {"a": 100.0, "b": 100.0}) == pytest.approx(200 / 3)
    assert run.mixed_ceiling(ceiling, {"a": 10.0}) == pytest.approx(100.0)
    assert math.isnan(run.mixed_ceiling(ceiling, {"c": 10.0}))


def test_profile_samples_are_charged_to_the_innermost_component() -> None:
    stack = [
        "run (asyncio/runners.py)",
        "ExchangeConnection._read_frames (optionfeed/collector/connection.py)",
        "Router.notification (optionfeed/collector/router.py)",
        "ticker_row (optionfeed/collector/normalize.py)",
    ]
    assert profile_collector.component_of(stack) == "normalise (payload -> row)"
    assert profile_collector.component_of(stack[:3]) == "router (dispatch)"
    assert profile_collector.component_of(["main (x.py)"]) == profile_collector.OTHER
