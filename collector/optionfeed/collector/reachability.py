"""Calling the exchange's REST API until it answers, or until the collector is asked to stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from optionfeed.backoff import Backoff
from optionfeed.collector.waiting import wait_set
from optionfeed.deribit.errors import ExchangeUnreachable, ProtocolError, RpcError

log = logging.getLogger(__name__)

T = TypeVar("T")


async def until_reachable(
    call: Callable[[], Awaitable[T]], what: str, stop: asyncio.Event
) -> T | None:
    """Run ``call`` until it succeeds, retrying with backoff while the exchange is away.

    None when ``stop`` is set first. An error the exchange gives for good is raised.
    """
    backoff = Backoff(base=1.0, cap=60.0)
    while not stop.is_set():
        try:
            return await call()
        except (ExchangeUnreachable, RpcError, ProtocolError) as exc:
            if isinstance(exc, RpcError) and not exc.transient:
                raise
            delay = backoff.next_delay()
            log.warning(
                "cannot %s: %s; retrying in %.1f s (attempt %d)",
                what,
                exc,
                delay,
                backoff.attempt,
            )
            await wait_set(stop, delay)
    return None
