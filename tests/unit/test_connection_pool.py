"""The connection pool: where channels are placed, and what the exchange is asked for.

Placement is checked against a port nothing listens on (the connections keep retrying, which
placement does not depend on); subscribing and reading against a scripted exchange on a real
socket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness.faultproxy import FaultProxy
from harness.ports import free_port
from harness.scripted_exchange import ScriptedExchange
from optionfeed.collector.connection import ConnectionSettings
from optionfeed.collector.connection_pool import ConnectionPool, instrument_of
from optionfeed.telemetry.metrics import Metrics

CALL = "ETH-1JAN30-3000-C"
PUT = "ETH-1JAN30-3000-P"
OTHER = "ETH-1JAN30-4000-C"
STATE = "instrument.state.option.eth"


def channels_of(instrument: str) -> set[str]:
    return {f"ticker.{instrument}.100ms", f"trades.{instrument}.100ms"}


class Received:
    def __init__(self) -> None:
        self.notifications: list[tuple[str, Any]] = []
        self.rejections: list[tuple[str | None, str]] = []

    async def notification(self, channel: str, data: Any, raw: bytes, recv_ts: float) -> None:
        self.notifications.append((channel, data))

    async def rejected(
        self, raw: bytes, reason: str, detail: str, recv_ts: float, channel: str | None = None
    ) -> None:
        self.rejections.append((channel, reason))


def settings(url: str) -> ConnectionSettings:
    return ConnectionSettings(
        url=url, client_name="test", client_version="0", heartbeat_interval=10.0, backoff_cap=1.0
    )


@pytest.fixture
async def unreachable_pool() -> AsyncIterator[ConnectionPool]:
    url = f"ws://127.0.0.1:{free_port()}/ws/api/v2"
    pool = ConnectionPool(
        settings(url),
        Received(),
        metrics=Metrics(),
        channels_per_connection=4,
        max_connections=3,
        rng=random.Random(1),
    )
    async with pool:
        yield pool


def placement(pool: ConnectionPool) -> list[set[str]]:
    return [set(connection.held) for connection in pool.connections]


def test_the_instrument_of_a_channel() -> None:
    assert instrument_of(f"book.{CALL}.100ms") == CALL
    assert instrument_of(STATE) == ""
    assert instrument_of("platform_state") == ""
    assert instrument_of("not a channel") == ""


def test_budgets_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionPool(
            settings("ws://127.0.0.1:1"), Received(), metrics=Metrics(), max_connections=0
        )


async def test_channels_are_set_only_on_an_entered_pool() -> None:
    pool = ConnectionPool(settings("ws://127.0.0.1:1"), Received(), metrics=Metrics())
    with pytest.raises(RuntimeError, match="async with"):
        pool.set_channels({STATE})


async def test_an_instruments_channels_share_a_connection_within_the_budget(
    unreachable_pool: ConnectionPool,
) -> None:
    pool = unreachable_pool
    wanted = channels_of(CALL) | channels_of(PUT) | channels_of(OTHER) | {STATE}
    diff = pool.set_channels(wanted)
    assert diff.added == wanted
    assert not diff.removed
    assert pool.channels == wanted
    held = placement(pool)
    # The instrument-less channel opens the first connection; each instrument keeps its pair
    # together, and no connection goes over its budget of 4 while another may be opened.
    assert STATE in held[0]
    for instrument in (CALL, PUT, OTHER):
        assert sum(channels_of(instrument) <= h for h in held) == 1
    assert all(len(h) <= 4 for h in held)
    assert set().union(*held) == wanted
    assert not pool.subscribed  # nothing is connected


async def test_past_the_connection_limit_the_excess_is_shared_evenly(
    unreachable_pool: ConnectionPool,
) -> None:
    pool = unreachable_pool
    instruments = [f"ETH-1JAN30-{strike}-C" for strike in range(1000, 9000, 1000)]
    pool.set_channels(set().union(*(channels_of(i) for i in instruments)))
    sizes = sorted(len(h) for h in placement(pool))
    assert len(sizes) == 3  # max_connections
    assert sum(sizes) == 16
    assert sizes[-1] - sizes[0] <= 2  # one instrument's pair apart at most


async def test_setting_fewer_channels_unsubscribes_them_and_frees_the_instrument(
    unreachable_pool: ConnectionPool,
) -> None:
    pool = unreachable_pool
    pool.set_channels(channels_of(CALL) | channels_of(PUT))
    diff = pool.set_channels(channels_of(PUT) | {f"ticker.{CALL}.100ms"})
    assert diff.removed == {f"trades.{CALL}.100ms"}
    assert not diff.added
    diff = pool.set_channels(channels_of(PUT))
    assert diff.removed == {f"ticker.{CALL}.100ms"}
    assert set().union(*placement(pool)) == channels_of(PUT)
    assert not pool.set_channels(channels_of(PUT))  # no change: an empty diff


async def exchange_and_pool(
    exchange: ScriptedExchange, sink: Received
) -> ConnectionPool:  # helper for the tests below
    return ConnectionPool(
        settings(exchange.ws_url), sink, metrics=Metrics(), channels_per_connection=2
    )


async def until(condition: Any, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_the_exchange_is_asked_for_the_channels_and_acknowledges_them() -> None:
    sink = Received()
    async with ScriptedExchange() as exchange:
        pool = await exchange_and_pool(exchange, sink)
        async with pool:
            pool.set_channels(channels_of(CALL) | channels_of(PUT))
            await exchange.wait_subscribed(*channels_of(CALL), *channels_of(PUT))
            await until(lambda: pool.subscribed)
            assert pool.acknowledged == channels_of(CALL) | channels_of(PUT)
            assert len(pool.connections) == 2  # a budget of 2: one instrument each
            assert not pool.refused

            # The exchange sends it on both connections: the one holding the channel delivers
            # it, the other rejects it as a channel it did not subscribe to.
            await exchange.notify(f"ticker.{CALL}.100ms", {"instrument_name": CALL})
            await until(lambda: sink.notifications and sink.rejections)
            assert sink.notifications == [(f"ticker.{CALL}.100ms", {"instrument_name": CALL})]
            assert sink.rejections == [(f"ticker.{CALL}.100ms", "unsubscribed_channel")]

            pool.set_channels(channels_of(PUT))
            await until(lambda: not exchange.subscribed & channels_of(CALL))
            await until(lambda: pool.acknowledged == channels_of(PUT))
        assert all(not c.connected for c in pool.connections)


async def test_a_close_delivers_what_the_exchange_sent_before_it_saw_the_close_frame() -> None:
    """The exchange does not answer the unsubscribe in time: the collector sends its close frame
    while a notification is on its way to it. That notification is delivered, not discarded."""
    sink = Received()
    channel = f"ticker.{CALL}.100ms"
    async with ScriptedExchange() as exchange:
        with FaultProxy(exchange.port) as proxy:
            pool = ConnectionPool(
                dataclasses.replace(settings(proxy.url), drain_timeout=1.0),
                sink,
                metrics=Metrics(),
            )
            async with pool:
                pool.set_channels({channel})
                await exchange.wait_subscribed(channel)
                await until(lambda: pool.subscribed)
                proxy.hold(True)  # from here on the exchange's frames are on their way
                await exchange.notify(channel, {"instrument_name": CALL, "n": 1})
                closing = asyncio.create_task(pool.close())
                # The unsubscribe's answer is held too, so the collector gives up on it and sends
                # its close frame, which the exchange answers: the notification left before that.
                await until(lambda: exchange.connections == 0)
                proxy.hold(False)
                await closing
    assert sink.notifications == [(channel, {"instrument_name": CALL, "n": 1})]
