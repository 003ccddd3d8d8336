"""The operator's own Prometheus metrics (served by ``optionfeed.telemetry.health.HealthServer``).

Alert rules and the dashboard rely on these names (README.md lists them):

- ``optionfeed_operator_reconciles_total{result}``: reconcile passes, ``success`` or ``error``
  (the pass raised, and kopf retries it);
- ``optionfeed_operator_reconcile_errors_total{kind}``: passes that raised, ``kubernetes`` (the
  API server refused a request) or ``other``;
- ``optionfeed_operator_reconcile_duration_seconds``: how long a pass took;
- ``optionfeed_operator_last_reconcile_timestamp_seconds``: when the last pass finished without
  raising, so that an operator that stopped reconciling shows;
- ``optionfeed_operator_feeds``: feeds this process has reconciled and still knows;
- ``optionfeed_operator_feed_condition{namespace, feed, condition, status}``: 1 for each feed's
  current status of ``Ready``, ``Progressing`` and ``Degraded``, 0 for the other statuses, the
  way kube-state-metrics reports pod conditions. Feeds are few, so a label per feed is cheap.

The registry is the process's own (not prometheus_client's global one) and also carries the
standard ``process_*`` metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from lightkube import ApiError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest

from optionfeed_operator.api import ConditionStatus, ConditionType

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OperatorMetrics:
    """The operator's metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.reconciles_total = Counter(
            "optionfeed_operator_reconciles_total",
            "Reconcile passes, by result (success, error).",
            ["result"],
            registry=r,
        )
        self.reconcile_errors_total = Counter(
            "optionfeed_operator_reconcile_errors_total",
            "Reconcile passes that raised, by kind (kubernetes, other).",
            ["kind"],
            registry=r,
        )
        self.reconcile_duration_seconds = Histogram(
            "optionfeed_operator_reconcile_duration_seconds",
            "Time one reconcile pass took.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.last_reconcile_timestamp_seconds = Gauge(
            "optionfeed_operator_last_reconcile_timestamp_seconds",
            "Unix time the last reconcile pass finished without raising.",
            registry=r,
        )
        self.feed_condition = Gauge(
            "optionfeed_operator_feed_condition",
            "1 for each feed's current status of each condition, 0 for the other statuses.",
            ["namespace", "feed", "condition", "status"],
            registry=r,
        )
        self._feeds: set[tuple[str, str]] = set()
        self.feeds = Gauge(
            "optionfeed_operator_feeds", "Feeds this operator reconciles.", registry=r
        )
        self.feeds.set_function(lambda: len(self._feeds))
        for result in ("success", "error"):
            self.reconciles_total.labels(result)
        for kind in ("kubernetes", "other"):
            self.reconcile_errors_total.labels(kind)

    def reconciled(self, seconds: float, error: BaseException | None = None) -> None:
        """One pass ended after ``seconds``, raising ``error`` or not."""
        self.reconcile_duration_seconds.observe(seconds)
        if error is None:
            self.reconciles_total.labels("success").inc()
            self.last_reconcile_timestamp_seconds.set(time.time())
            return
        self.reconciles_total.labels("error").inc()
        kind = "kubernetes" if isinstance(error, ApiError) else "other"
        self.reconcile_errors_total.labels(kind).inc()

    def set_conditions(
        self, namespace: str, feed: str, conditions: Iterable[Mapping[str, Any]]
    ) -> None:
        """The feed's conditions as just written (or confirmed) in its status."""
        self._feeds.add((namespace, feed))
        current = {str(c.get("type")): str(c.get("status")) for c in conditions}
        for kind in ConditionType:
            now = current.get(kind.value, ConditionStatus.UNKNOWN.value)
            for status in ConditionStatus:
                self.feed_condition.labels(namespace, feed, kind.value, status.value).set(
                    1 if status.value == now else 0
                )

    def forget_feed(self, namespace: str, feed: str) -> None:
        """The feed is gone: drop its series."""
        if (namespace, feed) not in self._feeds:
            return
        self._feeds.discard((namespace, feed))
        for kind in ConditionType:
            for status in ConditionStatus:
                self.feed_condition.remove(namespace, feed, kind.value, status.value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
