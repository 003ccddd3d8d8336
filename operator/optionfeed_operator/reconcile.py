"""One reconcile pass: from an ``OptionFeed`` to its ConfigMap and shard Deployments, and back to
its status. Idempotent and level-triggered: every pass reads the feed and its children afresh, so
it does not matter what woke it (a change of the feed, the resync timer, a child edited or deleted
by hand, an operator restart).

The steps, each of which may end the pass early::

    read the feed  ──gone or deleting──► stop
    parse it       ──invalid──────────► Degraded (InvalidSpec), children untouched
    the selection  ──exchange failed──► Degraded; with no usable selection, children untouched
    apply the ConfigMap, then each shard Deployment (server-side apply, skipped when unchanged)
    delete shard Deployments beyond spec.shards
    write status (only when it changed) and post Events for what changed

Passes for one feed never overlap (a lock per feed), and a pass that is already waiting for the
lock absorbs any further request: it has not read anything yet, so it will see their changes too.

Each pass is a span, ``optionfeed.reconcile``, with a child for the ranking. When a pass writes a
new version of the assignment, the documents carry the pass's trace context (``traceparent``), so
the collectors' reload spans link back to it; a pass that changes nothing keeps the one stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from lightkube import ApiError
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from optionfeed.telemetry import tracing
from optionfeed_operator import api, assignment, manifests, ranking, status
from optionfeed_operator.api import Annotations, OptionFeedSpec, Reason
from optionfeed_operator.cluster import Cluster
from optionfeed_operator.metrics import OperatorMetrics

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

Object = Mapping[str, Any]


class EventSink(Protocol):
    """Posts a Kubernetes Event about a feed (kopf's poster in the operator)."""

    def __call__(self, feed: Object, *, type: str, reason: str, message: str) -> None: ...


def _meta(obj: Object | None) -> Object:
    return (obj or {}).get("metadata") or {}


def _subset(wanted: Mapping[str, str], live: Mapping[str, str] | None) -> bool:
    live = live or {}
    return all(live.get(key) == value for key, value in wanted.items())


def _owner_refs(obj: Object) -> list[Object]:
    return list(_meta(obj).get("ownerReferences") or ())


def _owned_by(obj: Object, feed: OptionFeedSpec) -> bool:
    return any(r.get("kind") == api.KIND and r.get("name") == feed.name for r in _owner_refs(obj))


def _owner_current(obj: Object, feed: OptionFeedSpec) -> bool:
    return any(r.get("uid") == feed.uid for r in _owner_refs(obj))


def _ours(obj: Object | None, feed: OptionFeedSpec) -> Object | None:
    """``obj`` if this very feed (by uid) owns it; a Deployment left by an earlier feed of the same
    name, not yet adopted, is no shard of this one and must not count as ready."""
    return obj if obj is not None and _owner_current(obj, feed) else None


def feed_reference(body: Object) -> dict[str, Any]:
    """The parts of a feed an Event needs to point at it."""
    meta = _meta(body)
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta},
    }


class Reconciler:
    """Runs reconcile passes for every feed; one instance per operator process."""

    def __init__(
        self,
        cluster: Cluster,
        selector: ranking.Selector,
        *,
        events: EventSink,
        image: str = manifests.DEFAULT_IMAGE,
        collector_tracing: manifests.CollectorTracing | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._cluster = cluster
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self._selector = selector
        self._events = events
        self._image = image
        self._collector_tracing = collector_tracing
        self._clock = clock
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._waiting: dict[tuple[str, str], int] = {}
        # (namespace, Deployment) -> (uid, input hash, metadata.generation) right after this
        # process applied it. A later generation of the same object with the same hash means
        # someone else changed its spec; after a restart each shard is applied once to find out.
        self._applied: dict[tuple[str, str], tuple[str, str, int]] = {}

    async def reconcile(self, namespace: str, name: str, *, cause: str) -> None:
        """Bring the feed's children and status in line with its spec (see the module doc)."""
        key = (namespace, name)
        if self._waiting.get(key, 0):
            logger.debug("%s/%s: a pass is already queued (%s)", namespace, name, cause)
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        entered = False
        try:
            async with lock:
                self._waiting[key] -= 1
                entered = True
                started = time.monotonic()
                try:
                    with tracer.start_as_current_span(
                        "optionfeed.reconcile",
                        attributes={
                            "k8s.namespace.name": namespace,
                            "optionfeed.feed": name,
                            "optionfeed.reconcile.cause": cause,
                        },
                    ):
                        await self._pass(namespace, name, cause)
                except Exception as exc:
                    self.metrics.reconciled(time.monotonic() - started, exc)
                    raise
                self.metrics.reconciled(time.monotonic() - started)
        finally:
            if not entered:
                self._waiting[key] -= 1

    def _forget(self, namespace: str, name: str, uid: str | None) -> None:
        """Drop what this process remembers about a feed that is gone."""
        if not self._waiting.get((namespace, name)):
            self._waiting.pop((namespace, name), None)
            self._locks.pop((namespace, name), None)
        if uid is not None:
            self._selector.forget(uid)
        self.metrics.forget_feed(namespace, name)
        prefix = manifests.shard_name(name, 0).removesuffix("0")
        for key in [
            k
            for k in self._applied
            if k[0] == namespace and k[1].startswith(prefix) and k[1][len(prefix) :].isdigit()
        ]:
            del self._applied[key]

    # --- the pass ------------------------------------------------------------------------------

    async def _pass(self, namespace: str, name: str, cause: str) -> None:
        span = trace.get_current_span()
        body = await self._cluster.get_feed(namespace, name)
        if body is None or _meta(body).get("deletionTimestamp"):
            span.set_attribute("optionfeed.reconcile.outcome", "deleted")
            # Deleted: the garbage collector removes the children through their ownerReferences.
            self._forget(namespace, name, _meta(body).get("uid") if body else None)
            return
        generation = int(_meta(body).get("generation") or 0)
        try:
            feed = api.parse_feed(body)
        except api.InvalidOptionFeed as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.set_attribute("optionfeed.reconcile.outcome", "invalid")
            await self._finish(
                body,
                status.PassResult(
                    generation=generation,
                    suspended=False,
                    shards=(),
                    problem=status.Problem(Reason.INVALID_SPEC, str(exc)),
                    selector=manifests.feed_selector(name),
                ),
            )
            return
        logger.debug("%s/%s: pass for generation %d (%s)", namespace, name, generation, cause)

        live_cm: Object | None = await self._cluster.get_configmap(
            namespace, manifests.configmap_name(name)
        )
        live: dict[str, Object] = await self._cluster.list_deployments(
            namespace, {api.Labels.MANAGED_BY.value: api.FIELD_MANAGER, api.Labels.FEED.value: name}
        )
        stored = manifests.read_configmap(live_cm)
        span.set_attributes(
            {"optionfeed.feed.generation": generation, "optionfeed.shards": feed.shards}
        )
        with tracer.start_as_current_span(
            "optionfeed.ranking",
            attributes={
                "optionfeed.currency": feed.currency,
                "optionfeed.ranking.by": str(feed.rank_by),
            },
        ) as ranking_span:
            choice = await self._selector.choose(feed, self._stored_selection(stored))
            ranking_span.set_attribute("optionfeed.ranking.ranked", choice.ranked)
            if choice.selection is not None:
                ranking_span.set_attribute(
                    "optionfeed.ranking.selected", len(choice.selection.instruments)
                )
            if choice.failure is not None:
                ranking_span.set_status(Status(StatusCode.ERROR, choice.failure.message))
                ranking_span.set_attribute("optionfeed.ranking.failure", str(choice.failure.reason))
        problem = self._ranking_problem(choice, live_cm is not None)
        if choice.ranked:
            self._announce_ranking(body, feed, choice)

        expected = manifests.shard_names(feed.name, feed.shards)
        changed: list[str] = []
        extras = sum(1 for shard_name in live if shard_name not in expected)
        if choice.selection is not None:
            try:
                live_cm = await self._apply_configmap(
                    body, feed, choice.selection, live_cm, changed
                )
                for shard, shard_name in enumerate(expected):
                    live[shard_name] = await self._apply_shard(
                        body, feed, shard, live.get(shard_name), changed
                    )
                extras = await self._delete_orphan_shards(body, feed, live, expected, changed)
            except ApiError as exc:
                problem = status.Problem(
                    Reason.KUBERNETES_ERROR,
                    f"cannot write the children of {namespace}/{name}: {exc.status.message}",
                )
                logger.warning("%s/%s: %s", namespace, name, problem.message)
            stored = manifests.read_configmap(live_cm)

        span.set_attributes(
            {"optionfeed.applied": changed, "optionfeed.applied.count": len(changed)}
        )
        if stored is not None:
            span.set_attributes(
                {
                    "optionfeed.assignment.hash": stored.hash,
                    "optionfeed.assignment.instruments": stored.instruments,
                }
            )
        if problem is not None:
            span.set_status(Status(StatusCode.ERROR, problem.message))
            span.set_attribute("optionfeed.reconcile.problem", str(problem.reason))
        await self._finish(
            body,
            status.PassResult(
                generation=feed.generation,
                suspended=feed.suspend,
                shards=[
                    status.shard_state(shard_name, _ours(live.get(shard_name), feed), feed.replicas)
                    for shard_name in expected
                ],
                extra_shards=extras,
                changed=changed,
                problem=problem,
                instruments=stored.instruments if stored else None,
                assignment_hash=stored.hash if stored else None,
                ranked_at=stored.ranked_at if stored else None,
                selector=manifests.feed_selector(feed.name),
            ),
        )

    # --- the selection --------------------------------------------------------------------------

    @staticmethod
    def _stored_selection(stored: manifests.StoredAssignment | None) -> ranking.Selection | None:
        if stored is None or stored.selection is None:
            return None
        return ranking.Selection(
            stored.selection, key=stored.ranking_key, ranked_at=stored.ranked_at
        )

    @staticmethod
    def _ranking_problem(choice: ranking.Choice, running: bool) -> status.Problem | None:
        if choice.failure is None:
            return None
        kept = "; running shards are left as they are" if running else ""
        return status.Problem(choice.failure.reason, f"{choice.failure.message}{kept}")

    def _announce_ranking(self, body: Object, feed: OptionFeedSpec, choice: ranking.Choice) -> None:
        assert choice.selection is not None
        fresh = choice.selection.instruments
        before = choice.replaced.instruments if choice.replaced is not None else frozenset()
        if fresh == before:
            return
        self._events(
            feed_reference(body),
            type="Normal",
            reason="Ranked",
            message=f"{len(fresh)} {feed.currency} options by {feed.rank_by}"
            f" ({len(fresh - before)} in, {len(before - fresh)} out)",
        )

    # --- children ------------------------------------------------------------------------------

    async def _apply_configmap(
        self,
        body: Object,
        feed: OptionFeedSpec,
        selection: ranking.Selection,
        live: Object | None,
        changed: list[str],
    ) -> Object:
        def render(traceparent: str | None) -> tuple[assignment.Assignment, dict[str, Any]]:
            plan = assignment.build_assignment(feed, selection.instruments, traceparent=traceparent)
            desired = manifests.render_configmap(
                feed,
                plan,
                ranking_key=selection.key,
                ranked_at=api.format_time(selection.ranked_at),
            )
            return plan, desired

        # First with the trace context already stored: a pass that changes nothing else must not
        # rewrite the documents (and make every collector reload) only to carry its own.
        stored_traceparent = assignment.stored_traceparent((live or {}).get("data"))
        plan, desired = render(stored_traceparent)
        if live is not None and self._configmap_matches(live, desired, feed):
            return live
        traceparent = tracing.current_traceparent()
        if traceparent != stored_traceparent:
            plan, desired = render(traceparent)
        applied = await self._cluster.apply(desired)
        if live is not None and _meta(live).get("resourceVersion") == _meta(applied).get(
            "resourceVersion"
        ):
            return applied  # re-checked, and it was already as rendered
        name = desired["metadata"]["name"]
        changed.append(name)
        counts = f"{plan.instruments} instruments on {feed.shards} shard(s)"
        live_hash = (_meta(live).get("annotations") or {}).get(Annotations.ASSIGNMENT_HASH)
        if live is None:
            reason, message = "AssignmentCreated", f"created {name}: {counts}"
        elif live_hash != plan.hash:
            reason, message = "AssignmentUpdated", f"updated {name}: {counts}"
        else:
            reason, message = "DriftCorrected", f"restored {name}, which was changed by hand"
        self._events(feed_reference(body), type="Normal", reason=reason, message=message)
        return applied

    @staticmethod
    def _configmap_matches(live: Object, desired: Object, feed: OptionFeedSpec) -> bool:
        # Keys someone else added are theirs (server-side apply leaves them); the operator's keys
        # must hold what it rendered.
        meta, want = _meta(live), desired["metadata"]
        return (
            _subset(desired["data"], live.get("data"))
            and _subset(want["labels"], meta.get("labels"))
            and _subset(want["annotations"], meta.get("annotations"))
            and _owner_current(live, feed)
        )

    async def _apply_shard(
        self,
        body: Object,
        feed: OptionFeedSpec,
        shard: int,
        live: Object | None,
        changed: list[str],
    ) -> Object:
        desired = manifests.render_deployment(
            feed, shard, image=self._image, tracing=self._collector_tracing
        )
        want_hash = desired["metadata"]["annotations"][Annotations.INPUT_HASH]
        name = desired["metadata"]["name"]
        live_hash = (_meta(live).get("annotations") or {}).get(Annotations.INPUT_HASH)
        if live is not None:
            meta = _meta(live)
            if meta.get("deletionTimestamp"):
                return live  # going away; a later pass recreates it once it is gone
            seen = (str(meta.get("uid")), want_hash, int(meta.get("generation") or 0))
            untouched = (
                live_hash == want_hash
                and self._applied.get((feed.namespace, name)) == seen
                and _subset(desired["metadata"]["labels"], meta.get("labels"))
                and _owner_current(live, feed)
            )
            if untouched:
                return live
        applied = await self._cluster.apply(desired)
        applied_meta = _meta(applied)
        self._applied[(feed.namespace, name)] = (
            str(applied_meta.get("uid")),
            want_hash,
            int(applied_meta.get("generation") or 0),
        )
        if live is None:
            reason, message = "ShardCreated", f"created {name} ({feed.replicas} replica(s))"
        elif live_hash != want_hash:
            reason, message = "ShardUpdated", f"updated {name} ({feed.replicas} replica(s))"
        elif _meta(live).get("resourceVersion") != applied_meta.get("resourceVersion"):
            reason, message = "DriftCorrected", f"restored {name}, which was changed by hand"
        else:
            return applied  # re-checked after a restart: it was already as rendered
        changed.append(name)
        self._events(feed_reference(body), type="Normal", reason=reason, message=message)
        return applied

    async def _delete_orphan_shards(
        self,
        body: Object,
        feed: OptionFeedSpec,
        live: dict[str, Object],
        expected: list[str],
        changed: list[str],
    ) -> int:
        """Delete this feed's Deployments that are not among ``expected`` (the same function
        named both); returns how many are still on their way out."""
        remaining = 0
        for name in sorted(set(live) - set(expected)):
            obj = live.pop(name)
            self._applied.pop((feed.namespace, name), None)
            if not _owned_by(obj, feed):
                continue
            if _meta(obj).get("deletionTimestamp"):
                remaining += 1
                continue
            await self._cluster.delete_deployment(feed.namespace, name)
            changed.append(name)
            self._events(
                feed_reference(body),
                type="Normal",
                reason="ShardDeleted",
                message=f"deleted {name}: the feed has {feed.shards} shard(s)",
            )
        return remaining

    # --- status and events ------------------------------------------------------------------------

    async def _finish(self, body: Object, result: status.PassResult) -> None:
        """Report a problem that is new, then write the status if it changed."""
        previous = body.get("status") or {}
        self._report_problem(body, previous, result.problem)
        desired = status.build_status(result, previous, now=self._clock())
        patch = status.status_patch(previous, desired)
        meta = _meta(body)
        if patch is not None:
            await self._cluster.patch_status(meta["namespace"], meta["name"], patch)
        self.metrics.set_conditions(meta["namespace"], meta["name"], desired["conditions"])

    def _report_problem(
        self, body: Object, previous: Object, problem: status.Problem | None
    ) -> None:
        """A Warning Event when the feed becomes degraded or the reason changes (not on every
        retry, which would flood the namespace's events), a Normal one when it recovers."""
        before = status.condition(previous, api.ConditionType.DEGRADED)
        was_degraded = before is not None and before.get("status") == api.ConditionStatus.TRUE
        before_reason = before.get("reason") if before is not None else None
        if problem is not None:
            if not was_degraded or before_reason != problem.reason:
                self._events(
                    feed_reference(body),
                    type="Warning",
                    reason=str(problem.reason),
                    message=problem.message,
                )
        elif was_degraded and before_reason != Reason.ROLLOUT_FAILED:
            self._events(
                feed_reference(body),
                type="Normal",
                reason="Recovered",
                message=f"recovered from {before_reason}",
            )
