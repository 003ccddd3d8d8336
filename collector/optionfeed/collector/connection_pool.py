"""A collector's channels, spread over connections by a per-connection budget.

Why 1,000 channels per connection by default:

- Deribit accepts at most 500 channels per subscribe and about 3.3 subscribes per second, so a
  connection of 1,000 is resubscribed in two requests, well inside one second of credits, after a
  reconnect.
- A reconnect opens a gap on the channels of one connection only: a smaller budget makes each
  gap narrower, a larger one uses fewer of the 32 connections Deribit allows per IP. Every pod of a
  cluster behind one NAT address shares those 32, with the REST calls of backfill and ranking.
  2,000 instruments with ticker, trades and book take 6 connections at 1,000.
- Deribit disconnects connections that cannot keep up (``connection_too_slow``); 1,000 channels at
  100 ms is at most 10,000 notifications/s on one socket, which one reader keeps up with.

Channels are placed by instrument: all of an instrument's channels share a connection, so a
reconnect leaves whole instruments with a gap rather than halves of many. Channels without an
instrument (``instrument.state.*``, ``platform_state``) go on the first connection.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

import aiohttp

from optionfeed.collector.connection import (
    ConnectionSettings,
    ExchangeConnection,
    Observer,
    Sink,
)
from optionfeed.collector.pacing import RequestPacer
from optionfeed.deribit.channels import InvalidChannel, parse_channel
from optionfeed.telemetry.metrics import Metrics

DEFAULT_CHANNELS_PER_CONNECTION = 1_000
DEFAULT_MAX_CONNECTIONS = 8


@dataclass(frozen=True, slots=True)
class ChannelDiff:
    added: frozenset[str]
    removed: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def instrument_of(channel: str) -> str:
    """The instrument a channel belongs to, or ``""`` for channels without one."""
    try:
        return parse_channel(channel).instrument or ""
    except InvalidChannel:
        return ""


class ConnectionPool:
    """The connections of one collector and the channels they hold."""

    def __init__(
        self,
        settings: ConnectionSettings,
        sink: Sink,
        *,
        metrics: Metrics,
        observer: Observer | None = None,
        channels_per_connection: int = DEFAULT_CHANNELS_PER_CONNECTION,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pacer: RequestPacer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if channels_per_connection < 1 or max_connections < 1:
            raise ValueError("channels_per_connection and max_connections must be at least 1")
        self.settings = settings
        self._sink = sink
        self._metrics = metrics
        self._observer = observer
        self._budget = channels_per_connection
        self._max_connections = max_connections
        self._rng = rng or random.Random()
        self._pacer = pacer or RequestPacer()
        self._session: aiohttp.ClientSession | None = None
        self.connections: list[ExchangeConnection] = []
        self._placement: dict[str, ExchangeConnection] = {}  # instrument -> its connection
        self._channels: set[str] = set()

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ConnectionPool:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.settings.connect_timeout,
                sock_connect=self.settings.connect_timeout,
            )
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop reading: every connection drains what the exchange already sent, then closes."""
        try:
            await asyncio.gather(*(c.close() for c in self.connections))
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    # ----------------------------------------------------------------- channels

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    def set_channels(self, channels: Iterable[str]) -> ChannelDiff:
        """Make the pool hold exactly ``channels``; subscribes and unsubscribes the difference."""
        if self._session is None:
            raise RuntimeError("enter the pool (async with) before setting its channels")
        wanted = set(channels)
        diff = ChannelDiff(frozenset(wanted - self._channels), frozenset(self._channels - wanted))
        self._remove(diff.removed)
        self._add(diff.added)
        self._channels = wanted
        return diff

    def _remove(self, channels: frozenset[str]) -> None:
        by_connection: dict[ExchangeConnection, list[str]] = {}
        for channel in channels:
            instrument = instrument_of(channel)
            connection = self._placement.get(instrument)
            if connection is not None:
                by_connection.setdefault(connection, []).append(channel)
        for connection, gone in by_connection.items():
            connection.remove(gone)
        still_used = {instrument_of(c) for c in self._channels - channels}
        for instrument in list(self._placement):
            if instrument not in still_used:
                del self._placement[instrument]

    def _add(self, channels: frozenset[str]) -> None:
        by_instrument: dict[str, list[str]] = {}
        for channel in sorted(channels):
            by_instrument.setdefault(instrument_of(channel), []).append(channel)
        for instrument, group in by_instrument.items():
            connection = self._placement.get(instrument)
            if connection is None:
                connection = self._first() if instrument == "" else self._least_loaded(len(group))
                self._placement[instrument] = connection
            connection.add(group)

    def _first(self) -> ExchangeConnection:
        return self.connections[0] if self.connections else self._open()

    def _least_loaded(self, extra: int) -> ExchangeConnection:
        if self.connections:
            best = min(self.connections, key=lambda c: (len(c.held), c.index))
            if len(best.held) + extra <= self._budget:
                return best
        if len(self.connections) < self._max_connections:
            return self._open()
        # Every connection is at its budget and no more are allowed: share the excess evenly.
        return min(self.connections, key=lambda c: (len(c.held), c.index))

    def _open(self) -> ExchangeConnection:
        assert self._session is not None  # set_channels checked it
        connection = ExchangeConnection(
            len(self.connections),
            self.settings,
            self._session,
            self._sink,
            pacer=self._pacer,
            metrics=self._metrics,
            observer=self._observer,
            rng=random.Random(self._rng.random()),
        )
        self.connections.append(connection)
        connection.start()
        return connection

    def resubscribe(self, channel: str) -> None:
        """Ask the exchange for ``channel`` afresh (a new book snapshot), on its own connection."""
        connection = self._placement.get(instrument_of(channel))
        if connection is not None:
            connection.resubscribe([channel])

    # ----------------------------------------------------------------- state

    @property
    def subscribed(self) -> bool:
        """Every channel is acknowledged by the exchange (or refused for good, and reported)."""
        return bool(self.connections) and all(
            c.connected and not c.pending for c in self.connections
        )

    @property
    def acknowledged(self) -> frozenset[str]:
        return frozenset().union(*(c.acked for c in self.connections))

    @property
    def refused(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for connection in self.connections:
            merged.update(connection.refused)
        return merged
