"""Following the assignment file while the collector runs.

The operator rewrites the file when the ranking or the shard count changes; each new generation
is applied in place: the difference is subscribed and unsubscribed on the live connections, with
no restart. Each load and reload is a span linked to the operator's pass that wrote it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from opentelemetry import trace

from optionfeed.collector.assignment import read_assignment, watch_assignment
from optionfeed.collector.plan import plan_from_assignment
from optionfeed.collector.subscriptions import Subscriptions
from optionfeed.shard_document import ShardDocument
from optionfeed.telemetry import tracing

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


def trace_load(assignment: ShardDocument) -> None:
    """A span for the assignment the collector started with, linked to the operator's pass."""
    tracer.start_span(
        "optionfeed.assignment.load",
        links=tracing.link_to(assignment.traceparent),
        attributes={
            "optionfeed.assignment.generation": assignment.generation,
            "optionfeed.instruments": len(assignment.instruments),
        },
    ).end()


async def follow_assignment(path: Path, subscriptions: Subscriptions, default_url: str) -> None:
    """Apply each new generation of the file at ``path``, for as long as it runs."""
    current = read_assignment(path)
    async for assignment in watch_assignment(path, current):
        with tracer.start_as_current_span(
            "optionfeed.assignment.reload",
            links=tracing.link_to(assignment.traceparent),
            attributes={
                "optionfeed.assignment.generation": assignment.generation,
                "optionfeed.instruments": len(assignment.instruments),
            },
        ) as span:
            added, removed = apply_assignment(assignment, subscriptions, default_url)
            span.set_attributes(
                {"optionfeed.channels.added": added, "optionfeed.channels.removed": removed}
            )


def apply_assignment(
    assignment: ShardDocument, subscriptions: Subscriptions, default_url: str
) -> tuple[int, int]:
    """Subscribe and unsubscribe the difference; (channels added, channels removed)."""
    plan = plan_from_assignment(assignment, default_url)
    held = subscriptions.plan.exchange_url
    if plan.exchange_url != held:
        log.error(
            "the assignment now names exchange %s; a running collector keeps %s "
            "(restart it to switch)",
            plan.exchange_url,
            held,
        )
        plan.exchange_url = held
    diff = subscriptions.hold(plan)
    log.info(
        "assignment generation %d: %d instruments; subscribing %d and unsubscribing %d "
        "channels on the live connections",
        assignment.generation,
        len(plan.instruments),
        len(diff.added),
        len(diff.removed),
    )
    return len(diff.added), len(diff.removed)
