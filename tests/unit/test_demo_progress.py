"""The demo's figures from counter samples: rates, lag quantiles, the panel, the summary."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, Histogram

from optionfeed.demo.progress import (
    Buckets,
    Sample,
    View,
    baseline,
    bucket_delta,
    clock,
    fit,
    format_lag,
    histogram_quantile,
    lag_text,
    panel_lines,
    per_second,
    progress_line,
    summarize,
    summary_text,
)
from optionfeed.report.model import Facts, Hole, Span, TradeSpan, build
from optionfeed.report.window import Window
from optionfeed.telemetry.metrics import LATENCY_BUCKETS

INF = math.inf


def observed(values: list[float]) -> Buckets:
    """Cumulative buckets of a real prometheus_client histogram with the collector's bounds."""
    histogram = Histogram("lag", "lag", buckets=LATENCY_BUCKETS, registry=CollectorRegistry())
    for value in values:
        histogram.observe(value)
    return tuple(
        (float(s.labels["le"]), s.value)
        for metric in histogram.collect()
        for s in metric.samples
        if s.name.endswith("_bucket")
    )


def test_quantiles_interpolate_inside_the_bucket_that_holds_the_rank() -> None:
    # 100 observations spread evenly over (0.1, 0.25]: p50 is halfway through that bucket.
    buckets = observed([0.1 + 0.15 * (i + 1) / 100 for i in range(100)])
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.175)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.2485)
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.25)


def test_the_first_bucket_starts_at_zero() -> None:
    buckets = ((1.0, 10.0), (INF, 10.0))
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)


def test_a_quantile_beyond_the_last_bound_is_reported_as_such_not_invented() -> None:
    buckets = observed([0.01] * 98 + [120.0] * 2)
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01 / 2 + 0.005, rel=0.5)
    assert histogram_quantile(0.99, buckets) == INF
    assert format_lag(INF, buckets) == "> 1 min 00 s"


def test_no_observations_give_no_quantile() -> None:
    assert histogram_quantile(0.5, ()) is None
    assert histogram_quantile(0.5, observed([])) is None
    assert lag_text(observed([])) == "p50 -, p99 -"
    with pytest.raises(ValueError, match="between 0 and 1"):
        histogram_quantile(1.5, observed([1.0]))


def test_recent_lag_is_the_difference_between_two_readings() -> None:
    before = observed([5.0] * 50)
    after = observed([5.0] * 50 + [0.02] * 10)
    recent = bucket_delta(after, before)
    assert recent[-1] == (INF, 10.0)
    assert histogram_quantile(0.99, recent) == pytest.approx(0.0248, abs=1e-4)
    assert histogram_quantile(0.99, after) > 4.0  # the whole run still shows the slow start
    assert bucket_delta(after, ()) == after


def test_rates_use_the_oldest_sample_within_the_window() -> None:
    samples = [Sample(at=t, messages=100.0 * t) for t in (0.0, 1.0, 2.0, 6.0, 7.0)]
    assert baseline(samples, 5.0).at == 2.0
    assert baseline(samples[-1:], 5.0).at == 7.0
    assert per_second(200.0, 700.0, 5.0) == 100.0
    assert per_second(1.0, 2.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="no samples"):
        baseline([], 5.0)


def view(duration: float | None = 60.0) -> View:
    then = Sample(
        at=10.0,
        messages=1000.0,
        rows={"option_tickers": 500, "option_trades": 10},
        lag=observed([0.2] * 10),
        capacity=50_000,
    )
    now = Sample(
        at=15.0,
        messages=7000.0,
        rows={"option_tickers": 3500, "option_quotes": 1000, "option_trades": 20, "option_book": 2},
        lag=observed([0.2] * 10 + [0.05] * 100),
        buffered=1250,
        capacity=50_000,
        connections=1,
        channels_acked=200,
        channels_held=202,
        rejected=3,
    )
    return View(
        title="optionfeed demo: ETH top 50",
        now=now,
        then=then,
        elapsed=45.4,
        duration=duration,
        status="recording",
    )


def test_the_panel_shows_rates_rows_buffer_lag_and_the_exchange() -> None:
    assert panel_lines(view()) == [
        "optionfeed demo: ETH top 50 | 0:45 of 1:00 | recording",
        "  messages  1,200/s, 7,000 received, 3 rejected",
        "  rows      802/s, 4,522 committed",
        "  TABLE            ROWS  ROWS/S",
        "  option_tickers  3,500     600",
        "  option_quotes   1,000     200",
        "  option_trades      20       2",
        "  option_book         2       0",
        "  buffer    2% (1,250 of 50,000 rows)",
        "  lag       p50 38 ms, p99 50 ms (exchange to commit, last 5.0 s)",
        "  exchange  1 connection, 200/202 channels acknowledged",
        "  Ctrl-C stops cleanly: the collector drains and flushes, then the simulator and the "
        "database stop.",
    ]


def test_the_progress_line_fits_the_same_figures_on_one_line() -> None:
    assert progress_line(view(duration=None)) == (
        "demo 0:45: 1,200 msg/s, rows tickers 3,500, quotes 1,000, trades 20, book 2 (802/s), "
        "buffer 2%, lag p50 38 ms, p99 50 ms"
    )


def test_clock_and_fit() -> None:
    assert [clock(s) for s in (0, 7.9, 750, 3723)] == ["0:00", "0:07", "12:30", "1:02:03"]
    assert fit("abcdef", 4) == "abc…"
    assert fit("abc", 4) == "abc"


def test_the_summary_takes_its_figures_from_the_report_over_the_run() -> None:
    t0 = datetime(2024, 6, 3, 12, tzinfo=UTC)
    call, put = "ETH-28JUN24-3000-C", "ETH-28JUN24-3000-P"
    report = build(
        Facts(
            window=Window(t0, t0 + timedelta(minutes=1)),
            taken_at=t0 + timedelta(minutes=1),
            tickers=(Span(call, 40, t0, t0), Span(put, 30, t0, t0)),
            trades=(TradeSpan(call, 5, t0, t0, 10, 15, 5, (Hole(12, 14, t0, t0),)),),
            rejected=1,
        )
    )
    last = Sample(at=60.0, messages=80.0, lag=observed([0.1] * 10))
    summary = summarize(
        title="optionfeed demo: ETH top 2",
        recorded_seconds=40.0,
        planned_instruments=2,
        last=last,
        report=report,
        data_dir=".optionfeed/demo/pgdata",
        report_command="optionfeed report --data-dir .optionfeed/demo",
    )
    assert summary_text(summary) == "\n".join(
        [
            "optionfeed demo: ETH top 2: recorded 40.0 s",
            "",
            "  TABLE           ROWS  INSTRUMENTS",
            "  option_tickers    70            2",
            "  option_quotes      0            0",
            "  option_trades      5            1",
            "  option_book        0            0",
            "  total             75            2",
            "",
            "  instruments recorded     2 of 2",
            "  gaps recorded            0 (0 open, 0 rows recovered)",
            "  rejected frames          1",
            "  trades by trade_seq      5 of 6 expected (1 missing)",
            "  book chain               0 links checked, 0 breaks",
            "  missing, in no gap       1",
            "  messages                 80 (2/s)",
            "  lag, exchange to commit  p50 75 ms, p99 100 ms (whole run)",
            "  verdict                  unrecorded loss",
            "",
            "  data    .optionfeed/demo/pgdata (embedded PostgreSQL, stopped)",
            "  report  optionfeed report --data-dir .optionfeed/demo",
            "",
        ]
    )


def test_without_the_database_the_summary_falls_back_to_the_collectors_counters() -> None:
    last = Sample(at=1.0, messages=10.0, rows={"option_tickers": 7}, rejected=2)
    summary = summarize(
        title="t",
        recorded_seconds=1.0,
        planned_instruments=3,
        last=last,
        report=None,
        data_dir="d",
        report_command="r",
    )
    assert summary.rows["option_tickers"] == 7
    assert summary.rejected == 2
    assert summary.verdict == "unknown (the database could not be read)"
