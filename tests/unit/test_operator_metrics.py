"""The operator's metrics: reconcile counts and durations, and each feed's conditions."""

from __future__ import annotations

import aiohttp
from lightkube import ApiError
from prometheus_client.parser import text_string_to_metric_families

from optionfeed.telemetry.health import HealthServer
from optionfeed_operator.metrics import OperatorMetrics


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def conditions(ready: str, progressing: str, degraded: str) -> list[dict[str, str]]:
    return [
        {"type": "Ready", "status": ready},
        {"type": "Progressing", "status": progressing},
        {"type": "Degraded", "status": degraded},
    ]


def test_a_pass_counts_by_result_and_an_error_by_kind() -> None:
    metrics = OperatorMetrics()
    assert value(metrics, "optionfeed_operator_reconciles_total", result="error") == 0
    metrics.reconciled(0.2)
    metrics.reconciled(0.1, RuntimeError("boom"))
    assert value(metrics, "optionfeed_operator_reconciles_total", result="success") == 1
    assert value(metrics, "optionfeed_operator_reconciles_total", result="error") == 1
    assert value(metrics, "optionfeed_operator_reconcile_errors_total", kind="other") == 1
    assert value(metrics, "optionfeed_operator_reconcile_duration_seconds_count") == 2
    assert (value(metrics, "optionfeed_operator_last_reconcile_timestamp_seconds") or 0) > 0


def test_an_api_server_refusal_counts_as_a_kubernetes_error() -> None:
    metrics = OperatorMetrics()
    error = ApiError.__new__(ApiError)  # lightkube builds it from a response; only its type counts
    metrics.reconciled(0.1, error)
    assert value(metrics, "optionfeed_operator_reconcile_errors_total", kind="kubernetes") == 1
    assert value(metrics, "optionfeed_operator_last_reconcile_timestamp_seconds") == 0


def test_each_condition_of_a_feed_has_one_status_at_1() -> None:
    metrics = OperatorMetrics()
    metrics.set_conditions("md", "eth", conditions("False", "True", "False"))
    metrics.set_conditions("md", "eth", conditions("True", "False", "True"))
    name = "optionfeed_operator_feed_condition"
    feed = {"namespace": "md", "feed": "eth"}
    assert value(metrics, name, **feed, condition="Degraded", status="True") == 1
    assert value(metrics, name, **feed, condition="Degraded", status="False") == 0
    assert value(metrics, name, **feed, condition="Ready", status="True") == 1
    assert value(metrics, name, **feed, condition="Progressing", status="Unknown") == 0
    assert value(metrics, "optionfeed_operator_feeds") == 1


def test_a_deleted_feed_loses_its_series() -> None:
    metrics = OperatorMetrics()
    metrics.set_conditions("md", "eth", conditions("True", "False", "False"))
    metrics.set_conditions("md", "btc", conditions("True", "False", "False"))
    metrics.forget_feed("md", "eth")
    metrics.forget_feed("md", "never-seen")
    feeds = {
        s.labels["feed"]
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
        if s.name == "optionfeed_operator_feed_condition"
    }
    assert feeds == {"btc"}
    assert value(metrics, "optionfeed_operator_feeds") == 1


async def test_the_server_serves_the_metrics_and_the_process_metrics() -> None:
    metrics = OperatorMetrics()
    async with (
        HealthServer(0, metrics, host="127.0.0.1") as server,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{server.port}"
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        # kopf serves the operator's liveness probe on a port of its own; this one is metrics only.
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 404
    assert "optionfeed_operator_reconciles_total" in text
    assert "process_resident_memory_bytes" in text
