"""A feed's status, computed from what a reconcile pass saw and did. Pure.

:func:`shard_state` reads one Deployment; :func:`evaluate` turns the pass's findings into the
three conditions (see :class:`~optionfeed_operator.api.ConditionType` for their meaning);
:func:`merge_conditions` keeps each condition's ``lastTransitionTime`` while its status holds;
:func:`status_patch` returns the merge patch to send, or None when nothing changed, so a pass that
changes nothing writes nothing and starts no event storm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from optionfeed_operator.api import (
    ConditionJSON,
    ConditionStatus,
    ConditionType,
    OptionFeedStatusJSON,
    Reason,
    format_time,
)

STATUS_KEYS = (
    "observedGeneration",
    "conditions",
    "shards",
    "readyShards",
    "instruments",
    "assignmentHash",
    "lastRankedAt",
    "selector",
)


@dataclass(frozen=True, slots=True)
class ShardState:
    """One shard Deployment as seen at the end of a pass."""

    name: str
    exists: bool
    ready: bool = False
    rolling: bool = False
    failure: str | None = None


def _deployment_failure(status: Mapping[str, Any]) -> str | None:
    for condition in status.get("conditions") or ():
        kind, state = condition.get("type"), condition.get("status")
        stuck = kind == "Progressing" and state == "False"
        if stuck or (kind == "ReplicaFailure" and state == "True"):
            reason = condition.get("reason", kind)
            return f"{reason}: {condition.get('message', '')}".rstrip(": ")
    return None


def shard_state(name: str, deployment: Mapping[str, Any] | None, replicas: int) -> ShardState:
    """Whether a shard's Deployment exists, runs ``replicas`` updated and available pods (ready),
    is still rolling out, or reports a failed rollout."""
    if deployment is None:
        return ShardState(name=name, exists=False)
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    observed = int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
    wanted = int(spec.get("replicas", 1))
    total = int(status.get("replicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    settled = observed and updated >= wanted and available >= wanted and total == updated
    return ShardState(
        name=name,
        exists=True,
        ready=settled and wanted == replicas and replicas > 0,
        rolling=not settled or total > wanted,
        failure=_deployment_failure(status),
    )


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a pass could not do all its work; becomes ``Degraded=True``."""

    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class PassResult:
    """What a reconcile pass found and did; the input of :func:`evaluate`."""

    generation: int
    suspended: bool
    shards: Sequence[ShardState]
    extra_shards: int = 0
    changed: Sequence[str] = ()
    problem: Problem | None = None
    instruments: int | None = None
    assignment_hash: str | None = None
    ranked_at: datetime | None = None
    selector: str = ""


@dataclass(frozen=True, slots=True)
class Condition:
    type: ConditionType
    status: ConditionStatus
    reason: Reason
    message: str


def _list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def evaluate(result: PassResult) -> list[Condition]:
    """Ready, Progressing and Degraded for the pass, in that order."""
    wanted = len(result.shards)
    ready = [s for s in result.shards if s.ready]
    missing = [s.name for s in result.shards if not s.exists]
    rolling = [s.name for s in result.shards if s.exists and s.rolling]
    failures = [f"{s.name}: {s.failure}" for s in result.shards if s.failure]

    if result.suspended:
        ready_condition = Condition(
            ConditionType.READY,
            ConditionStatus.FALSE,
            Reason.SUSPENDED,
            "the feed is suspended: every shard is scaled to 0",
        )
    elif wanted and len(ready) == wanted:
        ready_condition = Condition(
            ConditionType.READY,
            ConditionStatus.TRUE,
            Reason.ALL_SHARDS_READY,
            f"{wanted} of {wanted} shards ready",
        )
    else:
        ready_condition = Condition(
            ConditionType.READY,
            ConditionStatus.FALSE,
            Reason.SHARDS_NOT_READY,
            f"{len(ready)} of {wanted} shards ready",
        )

    busy: list[str] = []
    if result.changed:
        busy.append("applied " + _list(list(result.changed)))
    if rolling:
        busy.append("rolling out " + _list(rolling))
    if result.extra_shards:
        busy.append(f"{result.extra_shards} extra shard(s) still terminating")
    if missing and result.problem is None:
        busy.append("creating " + _list(missing))
    if busy:
        progressing = Condition(
            ConditionType.PROGRESSING,
            ConditionStatus.TRUE,
            Reason.ROLLING_OUT if rolling else Reason.RECONCILING,
            "; ".join(busy),
        )
    elif result.suspended:
        progressing = Condition(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            Reason.SUSPENDED,
            "no collector runs while the feed is suspended",
        )
    elif result.problem is not None:
        progressing = Condition(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            result.problem.reason,
            "waiting until the problem in Degraded is resolved",
        )
    else:
        progressing = Condition(
            ConditionType.PROGRESSING,
            ConditionStatus.FALSE,
            Reason.ROLLOUT_COMPLETE,
            f"{wanted} shard(s) up to date",
        )

    if result.problem is not None:
        degraded = Condition(
            ConditionType.DEGRADED,
            ConditionStatus.TRUE,
            result.problem.reason,
            result.problem.message,
        )
    elif failures:
        degraded = Condition(
            ConditionType.DEGRADED, ConditionStatus.TRUE, Reason.ROLLOUT_FAILED, _list(failures)
        )
    else:
        degraded = Condition(
            ConditionType.DEGRADED,
            ConditionStatus.FALSE,
            Reason.AS_EXPECTED,
            "the last pass did its work",
        )
    return [ready_condition, progressing, degraded]


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    conditions: Sequence[Condition],
    *,
    generation: int,
    now: datetime,
) -> list[ConditionJSON]:
    """The conditions as JSON. ``lastTransitionTime`` moves only when a condition's status
    changes; a new reason or message alone keeps it."""
    before = {c.get("type"): c for c in previous}
    merged: list[ConditionJSON] = []
    for condition in conditions:
        old = before.get(condition.type)
        if (
            old is not None
            and old.get("status") == condition.status
            and old.get("lastTransitionTime")
        ):
            since = str(old["lastTransitionTime"])
        else:
            since = format_time(now)
        merged.append(
            {
                "type": str(condition.type),
                "status": str(condition.status),
                "reason": str(condition.reason),
                "message": condition.message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return merged


def build_status(
    result: PassResult, previous: Mapping[str, Any], *, now: datetime
) -> OptionFeedStatusJSON:
    """The full status block for the pass. ``previous`` is the feed's current status."""
    status: OptionFeedStatusJSON = {
        "observedGeneration": result.generation,
        "conditions": merge_conditions(
            previous.get("conditions") or (),
            evaluate(result),
            generation=result.generation,
            now=now,
        ),
        "shards": sum(1 for s in result.shards if s.exists) + result.extra_shards,
        "readyShards": sum(1 for s in result.shards if s.ready),
        "selector": result.selector,
    }
    if result.instruments is not None:
        status["instruments"] = result.instruments
    if result.assignment_hash is not None:
        status["assignmentHash"] = result.assignment_hash
    if result.ranked_at is not None:
        status["lastRankedAt"] = format_time(result.ranked_at)
    return status


def status_patch(
    current: Mapping[str, Any], desired: OptionFeedStatusJSON
) -> dict[str, Any] | None:
    """A JSON merge patch for ``/status`` that turns ``current`` into ``desired`` (for the keys
    this operator owns), or None when they already agree."""
    wanted = cast(Mapping[str, Any], desired)
    changes: dict[str, Any] = {}
    for key in STATUS_KEYS:
        if current.get(key) != wanted.get(key):
            changes[key] = wanted.get(key)
    return {"status": changes} if changes else None


def condition(status: Mapping[str, Any], kind: ConditionType) -> Mapping[str, Any] | None:
    """The condition of type ``kind`` in a status block, if any."""
    for item in status.get("conditions") or ():
        if item.get("type") == kind:
            return cast(Mapping[str, Any], item)
    return None
