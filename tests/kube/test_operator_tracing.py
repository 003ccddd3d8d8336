"""Traces across the operator and its collectors, on the real control plane.

The operator runs with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at an OpenTelemetry Collector on
127.0.0.1. Its reconcile passes arrive there; the shard Deployment it writes passes the tracing
settings on to the collector; and the collector, run from that Deployment as a local process
(:mod:`kube.pod_runner`), links the spans of the assignment it loads and reloads to the reconcile
passes that wrote them (the pass's trace context rides in the assignment document).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.control_plane import ControlPlane
from harness.otlp import OtlpReceiver, Span, by_name
from harness.simulator import SimulatorProcess
from kube.operator_fixtures import (  # noqa: F401
    Kube,
    OperatorProcess,
    is_condition,
    kube_fixture,
    optionfeed_crd_fixture,
    wait_for,
)
from kube.pod_runner import Kubelet, local_pod, stop_all
from optionfeed import __version__

FEED = "traced"
DB_SECRET = "optionfeed-db"


@pytest.fixture(name="market")
def market_fixture() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--rate", "500", "--currencies", "ETH", seed=5) as simulator:
        yield simulator


def _reconciles(spans: list[Span]) -> dict[str, Span]:
    """The operator's reconcile passes of the test feed, by span id."""
    return {
        s.span_id: s
        for s in by_name(spans, "optionfeed.reconcile", service="optionfeed-operator")
        if s.attributes.get("optionfeed.feed") == FEED
    }


def _writer_of_assignment(spans: list[Span], traceparent: str) -> Span | None:
    """The reconcile span a ``traceparent`` names, once it has arrived."""
    _, trace_id, span_id, _ = traceparent.split("-")
    found = _reconciles(spans).get(span_id)
    return found if found is not None and found.trace_id == trace_id else None


def _traceparent(kube: Kube) -> str | None:
    configmap = kube.configmap(f"{FEED}-assignment")
    if configmap is None:
        return None
    value = json.loads(configmap["data"]["shard-0.json"]).get("traceparent")
    return value if isinstance(value, str) else None


def test_reconcile_and_collector_spans_arrive_linked(
    control_plane: ControlPlane,
    kube: Kube,
    market: SimulatorProcess,
    database_url: str,
    otlp_receiver: OtlpReceiver,
    tmp_path: Path,
) -> None:
    control_plane.api(
        "POST",
        f"/api/v1/namespaces/{kube.ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": DB_SECRET, "namespace": kube.ns},
            "stringData": {"url": database_url},
        },
    )
    operator = OperatorProcess(
        control_plane,
        kube.ns,
        tmp_path,
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    pods = []
    kubelet: Kubelet | None = None
    try:
        operator.start()
        kube.create_feed(
            FEED,
            currency="ETH",
            topN=6,
            shards=1,
            rankBy="open_interest",
            channels=["ticker", "trades"],
            exchange={"url": market.ws_url},
        )
        wait_for(
            lambda: is_condition(kube.feed(FEED), "Ready", "True"),
            f"{FEED} to be Ready",
            timeout=60,
            log=operator,
        )

        # 1. The pass that created the children arrived, with what it ranked and applied.
        first = _traceparent(kube)
        assert first is not None, "the assignment carries the trace context of its pass"
        spans = otlp_receiver.wait_for(
            lambda spans: _writer_of_assignment(spans, first) is not None,
            what="the reconcile pass that wrote the assignment",
        )
        created = _writer_of_assignment(spans, first)
        assert created is not None
        assert created.resource["service.name"] == "optionfeed-operator"
        assert created.resource["service.version"] == __version__
        assert created.attributes["k8s.namespace.name"] == kube.ns
        assert f"{FEED}-assignment" in created.attributes["optionfeed.applied"]
        assert f"{FEED}-shard-0" in created.attributes["optionfeed.applied"]
        assert created.attributes["optionfeed.assignment.instruments"] == 6
        assert created.attributes["optionfeed.shards"] == 1
        (ranking,) = [
            s for s in by_name(spans, "optionfeed.ranking") if s.parent_span_id == created.span_id
        ]
        assert ranking.attributes["optionfeed.ranking.selected"] == 6
        assert ranking.attributes["optionfeed.currency"] == "ETH"

        # 2. The Deployment hands the tracing settings to the collector.
        deployment = kube.deployments(FEED)[f"{FEED}-shard-0"]
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == otlp_receiver.endpoint
        assert env["OTEL_SERVICE_NAME"]["value"] == "optionfeed-collector"
        assert env["K8S_POD_NAME"]["valueFrom"] == {
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}
        }
        assert env["OTEL_RESOURCE_ATTRIBUTES"]["value"] == (
            f"optionfeed.feed={FEED},optionfeed.shard=0,k8s.namespace.name={kube.ns},"
            "k8s.pod.name=$(K8S_POD_NAME)"
        )

        # 3. The collector, run from that Deployment, links its start to the pass.
        pod = local_pod(control_plane, deployment, tmp_path / "shard-0")
        pods.append(pod)
        kubelet = Kubelet(control_plane, pods)
        kubelet.mount()
        pod.start()
        kubelet.start()
        _, trace_id, span_id, _ = first.split("-")
        spans = otlp_receiver.wait_for(
            lambda spans: any(
                (trace_id, span_id) in s.links
                for s in by_name(spans, "optionfeed.assignment.load", "optionfeed-collector")
            ),
            what="the collector's load span linked to the pass",
        )
        (load,) = by_name(spans, "optionfeed.assignment.load", "optionfeed-collector")
        assert load.resource["optionfeed.feed"] == FEED
        assert load.resource["optionfeed.shard"] == "0"
        assert load.resource["k8s.pod.name"] == pod.name
        assert load.resource["k8s.namespace.name"] == kube.ns
        assert load.resource["service.version"] == __version__

        # 4. A re-rank to more instruments: a new pass writes a new assignment, and the
        #    collector's reload links to that pass.
        kube.patch_feed(FEED, {"topN": 8})

        def new_traceparent() -> str | None:
            value = _traceparent(kube)
            return value if value != first else None

        second = wait_for(
            new_traceparent,
            "the assignment of the new pass",
            timeout=60,
            log=operator,
        )
        _, trace_id, span_id, _ = second.split("-")
        spans = otlp_receiver.wait_for(
            lambda spans: (
                _writer_of_assignment(spans, second) is not None
                and any(
                    (trace_id, span_id) in s.links
                    for s in by_name(spans, "optionfeed.assignment.reload", "optionfeed-collector")
                )
            ),
            what="the collector's reload span linked to the new pass",
        )
        updated = _writer_of_assignment(spans, second)
        assert updated is not None
        assert updated.attributes["optionfeed.assignment.instruments"] == 8
        assert f"{FEED}-assignment" in updated.attributes["optionfeed.applied"]
        reload = next(
            s
            for s in by_name(spans, "optionfeed.assignment.reload", "optionfeed-collector")
            if (trace_id, span_id) in s.links
        )
        changes = reload.attributes["optionfeed.channels.added"]
        assert changes - reload.attributes["optionfeed.channels.removed"] == 2 * 2
        assert reload.resource["k8s.pod.name"] == pod.name

        # 5. The collector's own spans arrived too: its sessions, subscribes and flushes.
        spans = otlp_receiver.wait_for(
            lambda spans: all(
                by_name(spans, name, "optionfeed-collector")
                for name in ("optionfeed.subscribe", "optionfeed.flush", "optionfeed.migrate")
            ),
            what="the collector's subscribe, flush and migrate spans",
        )
        counts: dict[str, int] = {}
        for span in spans:
            key = f"{span.service}/{span.name}"
            counts[key] = counts.get(key, 0) + 1
        print(f"spans received: {dict(sorted(counts.items()))}")
        passes = _reconciles(spans)
        quiet = [p for p in passes.values() if not p.attributes["optionfeed.applied"]]
        assert quiet, "resync passes that change nothing are traced too"
        assert _traceparent(kube) == second, "a pass that changes nothing keeps the stored context"
    finally:
        if kubelet is not None:
            kubelet.stop()
        stop_all(pods, grace=30)
        operator.stop()
