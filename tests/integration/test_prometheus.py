"""A real Prometheus scrapes a running collector: every documented metric, every alert rule and
every dashboard panel's query is evaluated against what it scraped.

The collector records from the simulator into the test PostgreSQL; Prometheus (Debian's package,
tests/harness/prometheus.py) scrapes it every second with the labels the chart's PodMonitor gives
(job, feed, shard) and loads the shipped rules file with every ``for`` shortened to 2 s. Then the
simulator is stopped, and the no-data alert must fire; it is started again on the same port, and
the collector must reconnect, which gives the gap, reconnect and backfill panels their data.
Then the simulator drops the connection every second, refuses a subscribe and sends broken
frames: the reconnect-storm alert must fire, and the counters of reconnects, subscribe failures
and rejected messages, empty in a healthy run, get their series.
Last, the collector stops, and the shard no-data alert must fire.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from harness.collector import local_config, running_collector, wait_for
from harness.ports import free_port
from harness.prometheus import (
    PrometheusServer,
    alert_rules,
    dashboard_targets,
    documented_metrics,
    rules_with_short_for,
    series_selector,
    static_job,
)
from harness.simulator import SimulatorProcess
from optionfeed.collector.config import LocalPlan

# Each alert's expression without its threshold: what must return series from a healthy
# collector, where the alert itself (rightly) returns nothing. A new alert needs a line here.
COLLECTOR_PROBES = {
    "OptionfeedCompletenessLow": (
        "sum by (namespace, feed, shard) (increase(optionfeed_trade_sequences_seen_total[15m]))"
        " / sum by (namespace, feed, shard)"
        " (increase(optionfeed_trade_sequences_expected_total[15m]) > 0)"
    ),
    "OptionfeedShardNoData": (
        "time() - max by (namespace, feed, shard) (optionfeed_last_message_timestamp_seconds)"
    ),
    "OptionfeedInstrumentNoData": (
        "max by (namespace, feed, shard, channel) (optionfeed_silent_channels)"
    ),
    "OptionfeedCommitLagHigh": (
        "histogram_quantile(0.99, sum by (namespace, feed, shard, le)"
        " (rate(optionfeed_commit_lag_seconds_bucket[5m])))"
    ),
    "OptionfeedSpoolFilling": "max by (namespace, feed, shard) (optionfeed_spool_fill_ratio)",
    "OptionfeedSpoolAlmostFull": "max by (namespace, feed, shard) (optionfeed_spool_fill_ratio)",
    "OptionfeedReconnectStorm": (
        "sum by (namespace, feed, shard) (increase(optionfeed_reconnects_total[10m]))"
    ),
    "OptionfeedWriteErrors": (
        "sum by (namespace, feed, shard) (increase(optionfeed_write_errors_total[5m]))"
    ),
    "OptionfeedRowsDropped": (
        "sum by (namespace, feed, shard) (increase(optionfeed_dropped_rows_total[5m]))"
    ),
}
OPERATOR_ALERTS = {"OptionfeedFeedDegraded", "OptionfeedOperatorNotReconciling"}
# Counters whose labels appear with their first event: a healthy run has none; the reconnect
# storm below gives each its first.
ON_FIRST_EVENT = {
    "optionfeed_reconnects_total",
    "optionfeed_subscribe_failures_total",
    "optionfeed_rejected_messages_total",
}

# What Grafana puts in place of the dashboard's variables (every feed and shard; the rate
# interval of a few hours' range at a 1 s scrape interval).
VARIABLES = {"$__rate_interval": "15s", "$feed": ".*", "$shard": ".*"}


def _series(prom: PrometheusServer, expr: str) -> int:
    return len(prom.query(expr))


def _firing(prom: PrometheusServer, name: str) -> list[dict[str, Any]]:
    return [a for a in prom.alerts() if a["labels"]["alertname"] == name and a["state"] == "firing"]


@pytest.mark.slow
async def test_prometheus_sees_every_metric_alert_and_panel_of_a_running_collector(
    database_url: str, tmp_path: Path, figure: Any
) -> None:
    assert set(COLLECTOR_PROBES) | OPERATOR_ALERTS == set(alert_rules()), (
        "every alert of the rules file needs a probe here (or is the operator's)"
    )
    port = free_port()
    simulators = [SimulatorProcess("--rate", "400").start()]
    try:
        config = local_config(
            assignment_path=None,
            local=LocalPlan("ETH", 12, ("ticker", "trades", "book"), "100ms"),
            exchange_url=simulators[0].ws_url,
            database_url=database_url,
            data_dir=tmp_path / "data",
            metrics_port=port,
            metrics_host="127.0.0.1",
        )
        async with running_collector(config) as collector:
            assert collector.plan is not None
            labels = {"feed": collector.plan.feed, "shard": str(collector.plan.shard)}
            rules = rules_with_short_for(tmp_path / "rules.yaml", "2s")
            scrape = [static_job("optionfeed-collector", port, labels)]
            with PrometheusServer(scrape, rule_files=[rules]) as prom:
                await _check_healthy_run(prom, figure)
                await _fire_no_data_and_recover(prom, simulators, figure)
                await _check_dashboard(prom, figure)
                # The collector goes away: its shard has no data (it cannot be scraped).
                collector.stop()
                await _wait_firing(prom, "OptionfeedShardNoData", figure)
    finally:
        for sim in simulators:
            sim.stop()


async def _check_healthy_run(prom: PrometheusServer, figure: Any) -> None:
    async def recording() -> bool:
        # Rows committed, their lag observed, and trade sequences advancing between two scrapes.
        return all(
            prom.query(expr)
            for expr in (
                "sum(optionfeed_rows_written_total) > 0",
                "sum(rate(optionfeed_commit_lag_seconds_count[5s])) > 0",
                "sum(increase(optionfeed_trade_sequences_expected_total[15m])) > 0",
            )
        )

    await wait_for(recording, within=45, what="Prometheus to scrape rows, lag and trades")

    process = ["process_resident_memory_bytes", "process_cpu_seconds_total"]
    metrics = [*documented_metrics("optionfeed_"), *process]
    collector_metrics = [m for m in metrics if not m.startswith("optionfeed_operator_")]
    missing = []
    for name in collector_metrics:
        count = _series(prom, series_selector(name))
        if count == 0 and name not in ON_FIRST_EVENT:
            missing.append(name)
        figure(f"metric {name}: {count} series")
    assert not missing, f"documented metrics Prometheus did not scrape: {missing}"

    rules = alert_rules()
    for name, probe in COLLECTOR_PROBES.items():
        alert_series = _series(prom, rules[name]["expr"])
        probe_series = _series(prom, probe)
        figure(f"alert {name}: expr {alert_series} series, without threshold {probe_series}")
        # The reconnect counter's series appear with the first reconnect: checked below.
        assert probe_series > 0 or name == "OptionfeedReconnectStorm", f"{name}: {probe} is empty"
    # A healthy collector sets none of them off (the lag alert could, on a loaded machine).
    firing = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
    assert not firing - {"OptionfeedCommitLagHigh"}, firing


async def _fire_no_data_and_recover(
    prom: PrometheusServer, simulators: list[SimulatorProcess], figure: Any
) -> None:
    """Stop the exchange: the no-data alert fires. Start it again on the same port: the
    collector reconnects (and records the gaps) and the alert resolves."""
    sim_port = simulators[0].port
    simulators[0].stop()

    async def no_data_firing() -> bool:
        return bool(_firing(prom, "OptionfeedInstrumentNoData"))

    await wait_for(no_data_firing, within=30, what="OptionfeedInstrumentNoData to fire")
    for alert in _firing(prom, "OptionfeedInstrumentNoData"):
        figure(f"fired OptionfeedInstrumentNoData {alert['labels']} value {alert['value']}")

    simulators.append(SimulatorProcess("--rate", "400", port=sim_port).start())

    async def reconnected() -> bool:
        reconnects = prom.query("sum(optionfeed_reconnects_total)")
        silent = prom.query("sum(optionfeed_silent_channels)")
        return bool(reconnects) and bool(silent) and float(silent[0]["value"][1]) == 0

    await wait_for(reconnected, within=40, what="the collector to reconnect")

    async def resolved() -> bool:
        return not _firing(prom, "OptionfeedInstrumentNoData")

    await wait_for(resolved, within=15, what="OptionfeedInstrumentNoData to resolve")
    probe = COLLECTOR_PROBES["OptionfeedReconnectStorm"]
    figure(f"alert OptionfeedReconnectStorm without threshold: {_series(prom, probe)} series")
    assert _series(prom, probe) > 0

    # The exchange drops the connection every second: a reconnect storm. Meanwhile it refuses one
    # subscribe as transient and puts a broken frame before a share of notifications, so that
    # the counters whose series come with their first event have them.
    simulators[-1].set_faults(
        drop_every=1.0,
        errors=[{"code": 10040, "methods": ["public/subscribe"], "count": 1}],
        malformed_rate=0.05,
        malformed_mode="insert",
    )

    async def storm() -> bool:
        return bool(_firing(prom, "OptionfeedReconnectStorm")) and all(
            _series(prom, series_selector(name)) for name in ON_FIRST_EVENT
        )

    await wait_for(storm, within=40, what="OptionfeedReconnectStorm to fire")
    simulators[-1].set_faults(drop_every=None, malformed_rate=0.0)
    for alert in _firing(prom, "OptionfeedReconnectStorm"):
        figure(f"fired OptionfeedReconnectStorm {alert['labels']} value {alert['value']}")
    for name in sorted(ON_FIRST_EVENT):
        figure(f"metric {name} after the storm: {_series(prom, series_selector(name))} series")


async def _wait_firing(prom: PrometheusServer, name: str, figure: Any) -> None:
    """Poll Prometheus until ``name`` fires (``wait_for`` would stop at the collector's exit)."""
    deadline = time.monotonic() + 30
    while not (alerts := _firing(prom, name)):
        assert time.monotonic() < deadline, f"{name} did not fire within 30 s"
        await asyncio.sleep(0.5)
    for alert in alerts:
        figure(f"fired {name} {alert['labels']} value {alert['value']}")


async def _check_dashboard(prom: PrometheusServer, figure: Any) -> None:
    empty = []
    for title, ref, expr in dashboard_targets(VARIABLES):
        count = _series(prom, expr)
        figure(f"panel {title!r} {ref}: {count} series  {expr}")
        if count == 0:
            empty.append(f"{title} {ref}")
    assert not empty, f"dashboard queries that returned no data: {empty}"
