"""Waiting for an event with a time limit: its answer, and a cancellation that is never lost."""

from __future__ import annotations

import asyncio

import pytest

from optionfeed.collector.waiting import wait_set


async def test_an_event_set_in_time_is_true_and_one_never_set_is_false_after_the_limit() -> None:
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    started = loop.time()
    assert await wait_set(event, 0.05) is False
    assert loop.time() - started >= 0.05
    loop.call_later(0.01, event.set)
    assert await wait_set(event, 5) is True
    assert await wait_set(event, 0) is True  # already set: no wait


@pytest.mark.parametrize("turns", range(4))
async def test_a_cancel_in_the_turns_after_the_event_is_set_is_never_lost(turns: int) -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_set(event, 60))
    await asyncio.sleep(0.01)  # parked on the event
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)  # one turn of the loop each
    if waiter.cancel():
        with pytest.raises(asyncio.CancelledError):
            await waiter
    else:  # it had already returned: nothing to cancel
        assert waiter.result() is True
