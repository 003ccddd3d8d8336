"""The demo's runner without the processes: signals, and samples read from a collector."""

from __future__ import annotations

import asyncio
import io
import signal
from pathlib import Path

import pytest

from optionfeed.collector.app import Collector
from optionfeed.collector.config import CollectorConfig, LocalPlan
from optionfeed.demo.progress import histogram_quantile
from optionfeed.demo.runner import Demo, DemoConfig, read_lag, read_messages, take_sample
from optionfeed.demo.terminal import PlainProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def quiet_demo(clock: Clock | None = None, **changes: object) -> Demo:
    config = DemoConfig(**changes)
    return Demo(
        config,
        out=io.StringIO(),
        display=PlainProgress(io.StringIO(), 5.0),
        monotonic=clock or Clock(),
    )


def idle_collector() -> Collector:
    return Collector(CollectorConfig(local=LocalPlan("ETH", 5, ("ticker",), "100ms")))


def test_the_demo_keeps_its_state_apart_from_what_collect_records() -> None:
    config = DemoConfig(data_dir=Path("/var/lib/of"), currency="BTC", top=7)
    assert config.home == Path("/var/lib/of/demo")
    assert config.title == "optionfeed demo: BTC top 7 (ticker, quote, trades, book)"


async def test_the_first_signal_stops_cleanly_and_a_second_cuts_only_the_drain() -> None:
    clock = Clock()
    demo = quiet_demo(clock)
    collector = demo.collector = idle_collector()
    draining = asyncio.create_task(asyncio.sleep(60))
    demo.collector_task = draining

    demo.shutdown.signal(signal.SIGINT)
    assert demo.stopping
    assert collector.stopping
    assert demo.status.startswith("stopping")
    demo.shutdown.signal(signal.SIGINT)  # a copy of the same Ctrl-C
    await asyncio.sleep(0)
    assert not draining.done()

    clock.now += 2.0
    demo.shutdown.signal(signal.SIGINT)
    await asyncio.wait([draining])
    assert draining.cancelled()

    clock.now += 2.0
    demo.shutdown.signal(signal.SIGTERM)  # nothing left to cut: no error, no change
    assert demo.stopping


async def test_a_second_signal_after_the_drain_cancels_nothing() -> None:
    clock = Clock()
    demo = quiet_demo(clock)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    demo.collector_task = done
    demo.shutdown.signal(signal.SIGTERM)
    clock.now += 2.0
    demo.shutdown.signal(signal.SIGTERM)
    assert not done.cancelled()
    assert not demo.shutdown.insisted


def test_samples_of_a_collector_that_has_not_started_are_zero() -> None:
    sample = take_sample(idle_collector(), at=3.0)
    assert sample.at == 3.0
    assert (sample.messages, sample.total_rows, sample.buffered, sample.rejected) == (0, 0, 0, 0)
    assert sample.capacity == 50_000
    assert histogram_quantile(0.5, sample.lag) is None


def test_samples_add_messages_over_channels_and_lag_over_tables() -> None:
    collector = idle_collector()
    m = collector.metrics
    m.messages_total.labels("ticker").inc(7)
    m.messages_total.labels("book").inc(3)
    for _ in range(9):
        m.commit_lag_seconds.labels("option_tickers").observe(0.2)
    m.commit_lag_seconds.labels("option_book").observe(3.0)
    assert read_messages(collector) == 10
    lag = read_lag(collector)
    assert dict(lag)[0.25] == 9
    assert lag[-1] == (float("inf"), 10)
    assert histogram_quantile(0.5, lag) == pytest.approx(0.1 + 0.15 * 5 / 9)
    assert 2.5 < histogram_quantile(0.99, lag) <= 5.0
