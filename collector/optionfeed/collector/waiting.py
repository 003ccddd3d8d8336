"""Waiting with a time limit without losing a cancellation.

``asyncio.wait_for`` on Python 3.11 runs what it waits for as a task of its own; when the waiting
task is cancelled in the moment that inner task completes, it returns the result and drops the
cancellation. A loop that waits for an event with a timeout then runs on after it was cancelled,
and whatever awaits it (a task group on stop, a session's cleanup) waits forever.
``asyncio.timeout`` waits in the caller's own task and lets every cancellation through: the
collector waits with it, through :func:`wait_set` for events, and ruff bans ``asyncio.wait_for``
outside the tests.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, limit: float | None) -> bool:
    """Until ``event`` is set (True) or ``limit`` seconds have passed (False; None: no limit)."""
    try:
        async with asyncio.timeout(limit):
            await event.wait()
    except TimeoutError:
        return False
    return True
