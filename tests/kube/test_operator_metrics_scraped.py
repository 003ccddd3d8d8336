"""The operator's metrics, scraped by a real Prometheus while the operator runs against the real
control plane: every operator metric the README documents, and the operator's alert rules, one
of which fires for real (a feed whose exchange cannot be reached turns Degraded), then the other
(the operator stops).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.control_plane import ControlPlane
from harness.ports import free_port
from harness.prometheus import (
    PrometheusServer,
    alert_rules,
    documented_metrics,
    rules_with_short_for,
    series_selector,
    static_job,
)
from harness.simulator import SimulatorProcess
from kube.operator_fixtures import (  # noqa: F401
    Kube,
    OperatorProcess,
    exchange_fixture,
    is_condition,
    kube_fixture,
    optionfeed_crd_fixture,
    wait_for,
)

# Each operator alert's expression without its threshold, which a healthy operator must return.
OPERATOR_PROBES = {
    "OptionfeedFeedDegraded": (
        'max by (namespace, feed) (optionfeed_operator_feed_condition{condition="Degraded"})'
    ),
    "OptionfeedOperatorNotReconciling": (
        "time() - optionfeed_operator_last_reconcile_timestamp_seconds"
    ),
}


def test_prometheus_scrapes_the_operator_and_a_degraded_feed_fires_its_alert(
    control_plane: ControlPlane,
    namespace: str,
    optionfeed_crd: str,
    kube: Kube,
    exchange: SimulatorProcess,
    tmp_path: Path,
    figure: Any,
) -> None:
    port = free_port()
    operator = OperatorProcess(control_plane, namespace, tmp_path, metrics_port=port)
    rules = rules_with_short_for(tmp_path / "rules.yaml", "2s")
    try:
        operator.start()
        scrape = [static_job("optionfeed-operator", port)]
        with PrometheusServer(scrape, rule_files=[rules]) as prom:
            kube.create_feed("btc", currency="BTC", topN=4, exchange={"url": exchange.ws_url})
            dead = f"ws://127.0.0.1:{free_port()}/ws/api/v2"
            kube.create_feed("eth", currency="ETH", topN=4, exchange={"url": dead})

            def degraded_firing() -> list[dict[str, Any]]:
                return [
                    a
                    for a in prom.alerts()
                    if a["labels"]["alertname"] == "OptionfeedFeedDegraded"
                    and a["state"] == "firing"
                ]

            alerts = wait_for(degraded_firing, "OptionfeedFeedDegraded to fire", log=operator)
            assert {a["labels"]["feed"] for a in alerts} == {"eth"}
            assert is_condition(kube.feed("eth"), "Degraded", "True")
            figure(f"fired OptionfeedFeedDegraded {alerts[0]['labels']}")

            def scraped_passes() -> bool:
                return bool(prom.query("sum(optionfeed_operator_reconciles_total) > 2"))

            wait_for(scraped_passes, "Prometheus to scrape reconcile passes", log=operator)
            missing = []
            for name in documented_metrics("optionfeed_operator_"):
                count = len(prom.query(series_selector(name)))
                figure(f"metric {name}: {count} series")
                if count == 0:
                    missing.append(name)
            assert not missing, f"documented operator metrics not scraped: {missing}"

            rules_by_name = alert_rules()
            for name, probe in OPERATOR_PROBES.items():
                alert_series = len(prom.query(rules_by_name[name]["expr"]))
                probe_series = len(prom.query(probe))
                figure(
                    f"alert {name}: expr {alert_series} series, without threshold {probe_series}"
                )
                assert probe_series > 0, f"{name}: {probe} returned nothing"
            firing = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
            assert "OptionfeedOperatorNotReconciling" not in firing

            # The operator goes away while feeds exist: it is not reconciling.
            assert operator.stop() == 0

            def not_reconciling() -> list[dict[str, Any]]:
                return [
                    a
                    for a in prom.alerts()
                    if a["labels"]["alertname"] == "OptionfeedOperatorNotReconciling"
                    and a["state"] == "firing"
                ]

            (alert,) = wait_for(not_reconciling, "OptionfeedOperatorNotReconciling to fire")
            figure(f"fired OptionfeedOperatorNotReconciling {alert['labels']}")
    finally:
        operator.stop()
