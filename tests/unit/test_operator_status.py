import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from optionfeed_operator.api import ConditionStatus, ConditionType, Reason
from optionfeed_operator.status import (
    PassResult,
    Problem,
    ShardState,
    build_status,
    condition,
    evaluate,
    merge_conditions,
    shard_state,
    status_patch,
)

T0 = datetime(2025, 11, 21, 13, 0, tzinfo=UTC)


def deployment(
    *,
    replicas: int = 1,
    generation: int = 2,
    observed: int = 2,
    total: int = 1,
    updated: int = 1,
    available: int = 1,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {"name": "eth-shard-0", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": total,
            "updatedReplicas": updated,
            "availableReplicas": available,
            "conditions": conditions or [],
        },
    }


def by_type(conditions: list[Any]) -> dict[ConditionType, Any]:
    return {c.type: c for c in conditions}


def test_a_shard_is_ready_when_all_its_pods_are_updated_and_available() -> None:
    assert shard_state("s", deployment(), 1).ready
    assert not shard_state("s", None, 1).exists
    assert not shard_state("s", deployment(available=0), 1).ready
    assert shard_state("s", deployment(available=0), 1).rolling
    # The controller has not seen the latest spec yet.
    assert not shard_state("s", deployment(generation=3), 1).ready
    # An old pod is still around after a rollout.
    assert not shard_state("s", deployment(total=2), 1).ready
    # The Deployment wants fewer replicas than the feed (not applied yet).
    assert not shard_state("s", deployment(replicas=1), 2).ready
    # Suspended shards are never ready.
    assert not shard_state("s", deployment(replicas=0, total=0, updated=0, available=0), 0).ready


def test_a_stuck_rollout_is_reported() -> None:
    stuck = deployment(
        available=0,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet has timed out progressing.",
            }
        ],
    )
    state = shard_state("eth-shard-0", stuck, 1)
    assert state.failure == "ProgressDeadlineExceeded: ReplicaSet has timed out progressing."
    result = PassResult(generation=2, suspended=False, shards=[state])
    degraded = by_type(evaluate(result))[ConditionType.DEGRADED]
    assert (degraded.status, degraded.reason) == (ConditionStatus.TRUE, Reason.ROLLOUT_FAILED)
    assert "eth-shard-0" in degraded.message


def test_all_shards_ready_and_nothing_changed_is_ready_and_settled() -> None:
    shards = [ShardState(f"eth-shard-{i}", exists=True, ready=True) for i in range(3)]
    conditions = by_type(evaluate(PassResult(generation=4, suspended=False, shards=shards)))
    ready = conditions[ConditionType.READY]
    assert (ready.status, ready.reason, ready.message) == (
        ConditionStatus.TRUE,
        Reason.ALL_SHARDS_READY,
        "3 of 3 shards ready",
    )
    assert conditions[ConditionType.PROGRESSING].status is ConditionStatus.FALSE
    assert conditions[ConditionType.PROGRESSING].reason is Reason.ROLLOUT_COMPLETE
    assert conditions[ConditionType.DEGRADED].status is ConditionStatus.FALSE


def test_changes_and_rollouts_are_progress() -> None:
    shards = [
        ShardState("eth-shard-0", exists=True, ready=True),
        ShardState("eth-shard-1", exists=True, rolling=True),
    ]
    result = PassResult(generation=4, suspended=False, shards=shards, changed=["eth-shard-1"])
    conditions = by_type(evaluate(result))
    assert conditions[ConditionType.READY].status is ConditionStatus.FALSE
    assert conditions[ConditionType.READY].message == "1 of 2 shards ready"
    progressing = conditions[ConditionType.PROGRESSING]
    assert (progressing.status, progressing.reason) == (ConditionStatus.TRUE, Reason.ROLLING_OUT)
    assert "eth-shard-1" in progressing.message


def test_suspended_is_not_ready_and_not_progressing() -> None:
    shards = [ShardState("eth-shard-0", exists=True)]
    conditions = by_type(evaluate(PassResult(generation=4, suspended=True, shards=shards)))
    assert conditions[ConditionType.READY].reason is Reason.SUSPENDED
    assert conditions[ConditionType.READY].status is ConditionStatus.FALSE
    assert conditions[ConditionType.PROGRESSING].reason is Reason.SUSPENDED
    assert conditions[ConditionType.PROGRESSING].status is ConditionStatus.FALSE


def test_an_unreachable_exchange_is_degraded_with_its_reason() -> None:
    shards = [ShardState("eth-shard-0", exists=True, ready=True)]
    problem = Problem(Reason.EXCHANGE_UNREACHABLE, "cannot reach the exchange at http://x: refused")
    conditions = by_type(
        evaluate(PassResult(generation=4, suspended=False, shards=shards, problem=problem))
    )
    degraded = conditions[ConditionType.DEGRADED]
    assert (degraded.status, degraded.reason) == (
        ConditionStatus.TRUE,
        Reason.EXCHANGE_UNREACHABLE,
    )
    assert degraded.message == problem.message
    # The shards that run keep running, and say so.
    assert conditions[ConditionType.READY].status is ConditionStatus.TRUE


def test_nothing_created_yet_because_of_a_problem_is_not_progress() -> None:
    shards = [ShardState("eth-shard-0", exists=False)]
    problem = Problem(Reason.EXCHANGE_UNREACHABLE, "refused")
    conditions = by_type(
        evaluate(PassResult(generation=1, suspended=False, shards=shards, problem=problem))
    )
    assert conditions[ConditionType.PROGRESSING].status is ConditionStatus.FALSE
    assert conditions[ConditionType.PROGRESSING].reason is Reason.EXCHANGE_UNREACHABLE


def test_last_transition_time_holds_while_the_status_holds() -> None:
    ready = [ShardState("eth-shard-0", exists=True, ready=True)]
    first = merge_conditions(
        [], evaluate(PassResult(generation=1, suspended=False, shards=ready)), generation=1, now=T0
    )
    later = T0 + timedelta(minutes=5)
    # Same statuses, new generation: times stay, observedGeneration moves.
    second = merge_conditions(
        first,
        evaluate(PassResult(generation=2, suspended=False, shards=ready)),
        generation=2,
        now=later,
    )
    assert [c["lastTransitionTime"] for c in second] == ["2025-11-21T13:00:00Z"] * 3
    assert {c["observedGeneration"] for c in second} == {2}
    # Ready flips: only Ready gets the new time.
    rolling = [ShardState("eth-shard-0", exists=True, rolling=True)]
    third = merge_conditions(
        second,
        evaluate(PassResult(generation=3, suspended=False, shards=rolling)),
        generation=3,
        now=later,
    )
    times = {c["type"]: c["lastTransitionTime"] for c in third}
    assert times == {
        "Ready": "2025-11-21T13:05:00Z",
        "Progressing": "2025-11-21T13:05:00Z",
        "Degraded": "2025-11-21T13:00:00Z",
    }


def test_status_is_patched_only_when_something_changed() -> None:
    shards = [ShardState(f"eth-shard-{i}", exists=True, ready=True) for i in range(2)]
    result = PassResult(
        generation=5,
        suspended=False,
        shards=shards,
        instruments=50,
        assignment_hash="abc",
        ranked_at=T0,
        selector="app.kubernetes.io/name=optionfeed-collector,optionfeed.io/feed=eth",
    )
    first = build_status(result, {}, now=T0)
    assert first["shards"] == 2
    assert first["readyShards"] == 2
    assert first["instruments"] == 50
    assert first["lastRankedAt"] == "2025-11-21T13:00:00Z"
    patch = status_patch({}, first)
    assert patch is not None
    assert set(patch["status"]) == {
        "observedGeneration",
        "conditions",
        "shards",
        "readyShards",
        "instruments",
        "assignmentHash",
        "lastRankedAt",
        "selector",
    }
    # The same pass an hour later writes nothing, and leaves kopf's own keys alone.
    current = {**first, "kopf": {"progress": {}}}
    again = build_status(result, current, now=T0 + timedelta(hours=1))
    assert status_patch(current, again) is None
    # One shard drops: only what changed is sent.
    fewer = dataclasses.replace(
        result, shards=[shards[0], ShardState("eth-shard-1", exists=True, rolling=True)]
    )
    patch = status_patch(current, build_status(fewer, current, now=T0 + timedelta(hours=1)))
    assert patch is not None
    assert set(patch["status"]) == {"conditions", "readyShards"}
    assert condition(patch["status"], ConditionType.READY) is not None


def test_a_field_that_disappears_is_removed_by_the_patch() -> None:
    current = {"assignmentHash": "abc", "instruments": 5}
    result = PassResult(generation=1, suspended=False, shards=())
    patch = status_patch(current, build_status(result, current, now=T0))
    assert patch is not None
    assert patch["status"]["assignmentHash"] is None
    assert patch["status"]["instruments"] is None
