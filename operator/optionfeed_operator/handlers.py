"""The kopf wiring: which events start a reconcile pass, and the operator's kopf settings.

Every handler does the same thing, :meth:`Reconciler.reconcile` for one feed; they differ only in
what woke them:

- ``reconcile_feed``: the feed was created, its spec changed (also through the scale
  subresource), or the operator (re)started and resumes it;
- ``resync_feed``: a timer every ``resync_interval`` seconds. It corrects drift that no event
  reported and re-ranks when the feed's ``refreshInterval`` has passed (the pass decides; the
  timer only wakes it, since kopf fixes a timer's interval when it is registered);
- ``shard_changed`` / ``assignment_changed``: a Deployment or ConfigMap the operator made was
  changed or deleted (by the Deployment controller as pods come up, or by hand), so readiness
  reaches the status at once and hand edits are undone.

The handlers are registered on a fresh registry by :func:`build_registry`, with the intervals the
command line chose, so importing this module registers nothing anywhere.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import kopf
from lightkube import AsyncClient

from optionfeed.telemetry.health import HealthServer
from optionfeed_operator import api, manifests
from optionfeed_operator.cluster import Cluster
from optionfeed_operator.metrics import OperatorMetrics
from optionfeed_operator.ranking import Selector
from optionfeed_operator.reconcile import Reconciler

FINALIZER = f"{api.GROUP}/operator"
_MANAGED = {api.Labels.MANAGED_BY.value: api.FIELD_MANAGER}
_FEEDS = (api.GROUP, api.VERSION, api.PLURAL)


@dataclass(frozen=True, slots=True)
class OperatorOptions:
    """What ``optionfeed operator`` passes down from its command line."""

    image: str = manifests.DEFAULT_IMAGE
    resync_interval: float = 30.0
    metrics_port: int = 0  # 0: no metrics server
    collector_tracing: manifests.CollectorTracing | None = None


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf settings for this operator, applied before it starts."""
    # Handler progress and the last handled spec live in annotations with our own prefix; the
    # status subresource holds only what status.py writes.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # kopf's timers need a finalizer on each feed (to stop the timer before the feed goes); name
    # it after the project. It is removed as soon as the operator sees the deletion.
    settings.persistence.finalizer = FINALIZER
    # Events come from the reconciler, for what it did and why something failed; log lines of
    # handlers are not turned into Events.
    settings.posting.loggers = False
    settings.posting.reporting_component = api.FIELD_MANAGER
    # The operator knows its resources at start and needs no rights to list CRDs or namespaces.
    settings.scanning.disabled = True
    # Watch only the children the operator made, filtered by the API server.
    selector = f"{api.Labels.MANAGED_BY}={api.FIELD_MANAGER}"
    settings.watching.label_selectors["apps", "deployments"] = selector
    settings.watching.label_selectors["", "configmaps"] = selector


def _post_event(feed: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
    kopf.event(cast(kopf.Body, dict(feed)), type=type, reason=reason, message=message)


def _reconciler(memo: Any) -> Reconciler:
    reconciler = memo.get("reconciler")
    if not isinstance(reconciler, Reconciler):
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    return reconciler


def in_cluster_server(environ: Mapping[str, str], default: str) -> str:
    """The API server's URL from KUBERNETES_SERVICE_HOST/PORT, as in-cluster clients build it
    (an IPv6 address in brackets); `default` when the host is not set."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    if not host:
        return default
    port = environ.get("KUBERNETES_SERVICE_PORT", "") or "443"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def build_registry(options: OperatorOptions) -> kopf.OperatorRegistry:
    """A registry with every handler of the operator."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same precedence as lightkube's KubeConfig.from_env(), so that kopf's watches and the
        # reconciler's requests always act as the same identity: the pod's ServiceAccount when
        # there is one, else $KUBECONFIG or ~/.kube/config.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        if info is not None:
            # The same API server too: kopf names https://kubernetes.default.svc, which needs
            # cluster DNS; lightkube (and client-go) use the address the kubelet puts in every
            # pod's environment.
            return dataclasses.replace(info, server=in_cluster_server(os.environ, info.server))
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(id="open_clients", registry=registry)
    async def open_clients(memo: kopf.Memo, **_: Any) -> None:
        client = AsyncClient(field_manager=api.FIELD_MANAGER)
        session = aiohttp.ClientSession()
        memo["kube"] = client
        memo["http"] = session
        metrics = OperatorMetrics()
        memo["reconciler"] = Reconciler(
            Cluster(client),
            Selector(session),
            events=_post_event,
            image=options.image,
            metrics=metrics,
            collector_tracing=options.collector_tracing,
        )
        if options.metrics_port:
            server = HealthServer(options.metrics_port, metrics)
            memo["metrics_server"] = await server.__aenter__()

    @kopf.on.cleanup(id="close_clients", registry=registry)
    async def close_clients(memo: kopf.Memo, **_: Any) -> None:
        server = memo.get("metrics_server")
        if isinstance(server, HealthServer):
            await server.__aexit__(None, None, None)
        session = memo.get("http")
        if isinstance(session, aiohttp.ClientSession):
            await session.close()
        client = memo.get("kube")
        if isinstance(client, AsyncClient):
            await client.close()

    @kopf.on.resume(*_FEEDS, id="reconcile_feed", registry=registry, backoff=5)
    @kopf.on.create(*_FEEDS, id="reconcile_feed", registry=registry, backoff=5)
    @kopf.on.update(*_FEEDS, id="reconcile_feed", field="spec", registry=registry, backoff=5)
    async def reconcile_feed(
        *, name: str, namespace: str | None, memo: Any, reason: str, **_: Any
    ) -> None:
        if namespace:
            await _reconciler(memo).reconcile(namespace, name, cause=str(reason))

    @kopf.timer(
        *_FEEDS,
        id="resync_feed",
        interval=options.resync_interval,
        initial_delay=options.resync_interval,
        registry=registry,
    )
    async def resync_feed(*, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
        if namespace:
            await _reconciler(memo).reconcile(namespace, name, cause="resync")

    @kopf.on.event(
        "apps", "v1", "deployments", id="shard_changed", labels=_MANAGED, registry=registry
    )
    async def shard_changed(
        *, labels: Mapping[str, str], namespace: str | None, memo: Any, type: str, **_: Any
    ) -> None:
        feed = labels.get(api.Labels.FEED)
        if feed and namespace:
            await _reconciler(memo).reconcile(namespace, feed, cause=f"shard {type or 'listed'}")

    @kopf.on.event(
        "", "v1", "configmaps", id="assignment_changed", labels=_MANAGED, registry=registry
    )
    async def assignment_changed(
        *, labels: Mapping[str, str], namespace: str | None, memo: Any, type: str, **_: Any
    ) -> None:
        feed = labels.get(api.Labels.FEED)
        if feed and namespace:
            await _reconciler(memo).reconcile(
                namespace, feed, cause=f"assignment {type or 'listed'}"
            )

    return registry
