"""Reference data and the instrument lifecycle.

Reference data (one ``instruments`` row per option) is stored at the start and every
``refresh_interval``; in local mode the options are re-ranked then too. Listings, expiries and
deliveries arrive live on ``instrument.state`` (see :mod:`~optionfeed.collector.lifecycle`): a
listing refreshes at once, an expiring instrument is recorded through settlement, a delivered one
is unsubscribed and stored as such.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from optionfeed.collector.config import LocalPlan
from optionfeed.collector.normalize import MISSING_FIELD, BadElement, NormalizeError, instrument_row
from optionfeed.collector.plan import rank
from optionfeed.collector.reachability import until_reachable
from optionfeed.collector.router import Router
from optionfeed.collector.subscriptions import Subscriptions
from optionfeed.collector.waiting import wait_set
from optionfeed.deribit.instruments import InstrumentState
from optionfeed.deribit.messages import Instrument
from optionfeed.deribit.rest import RestClient
from optionfeed.store import tables
from optionfeed.store.writer import Writer

log = logging.getLogger(__name__)

GET_INSTRUMENTS = "public/get_instruments"


class InstrumentCatalog:
    """The options seen in listings, by name: their reference data."""

    def __init__(self) -> None:
        self.by_name: dict[str, Instrument] = {}

    def remember(self, instruments: list[Instrument]) -> list[BadElement]:
        """Keep the options of a listing by name; those without a name are returned."""
        unnamed: list[BadElement] = []
        for index, instrument in enumerate(instruments):
            if (
                not isinstance(instrument, dict)
                or type(instrument.get("instrument_name")) is not str
            ):
                detail = "instrument: not an object with an instrument_name string"
                unnamed.append(BadElement(index, instrument, NormalizeError(MISSING_FIELD, detail)))
            elif instrument.get("kind", "option") == "option":
                self.by_name[instrument["instrument_name"]] = instrument
        return unnamed


class ReferenceData:
    """Keeps the stored reference data and the held instruments in step with the exchange."""

    def __init__(
        self,
        catalog: InstrumentCatalog,
        *,
        rest: RestClient,
        writer: Writer,
        router: Router,
        subscriptions: Subscriptions,
        local: LocalPlan | None,
        refresh_interval: float,
        stop: asyncio.Event,
    ) -> None:
        self.catalog = catalog
        self._rest = rest
        self._writer = writer
        self._router = router
        self._subscriptions = subscriptions
        self._local = local
        self._refresh_interval = refresh_interval
        self._stop = stop
        self._refresh_soon = asyncio.Event()
        self._writes: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- refresh

    async def run(self) -> None:
        """Reference data now and every ``refresh_interval``; local mode also re-ranks then."""
        first = True
        while True:
            instruments = await until_reachable(
                lambda: self._rest.get_instruments(self._subscriptions.plan.currency),
                "list instruments",
                self._stop,
            )
            if instruments:
                unnamed = self.catalog.remember(instruments)
                if unnamed:
                    await self._router.reject_elements(
                        unnamed, len(instruments), time.time(), GET_INSTRUMENTS
                    )
                await self.store(list(self.catalog.by_name.values()))
                if first:
                    log.info("stored reference data of %d instruments", len(self.catalog.by_name))
            if not first and self._local is not None:
                await self._rerank(self._local)
            first = False
            self._refresh_soon.clear()
            await wait_set(self._refresh_soon, self._refresh_interval)

    async def store(self, instruments: list[Instrument], *, expired: bool = False) -> None:
        """Store each instrument that normalises; each one that does not is a rejection."""
        now = time.time()
        bad: list[BadElement] = []
        for index, instrument in enumerate(instruments):
            try:
                row = instrument_row(instrument, now, expired=expired)
            except NormalizeError as exc:
                bad.append(BadElement(index, instrument, exc))
                continue
            await self._writer.put(tables.INSTRUMENTS, row)
        if bad:
            # The list is what this collector knows, not one listing: no positions.
            await self._router.reject_elements(bad, None, now, GET_INSTRUMENTS)

    async def _rerank(self, local: LocalPlan) -> None:
        ranking = await rank(self._rest, local, self._stop)
        if ranking is None:
            return
        self.catalog.remember(ranking.instruments)
        plan = self._subscriptions.plan
        if ranking.names == plan.instruments:
            return
        plan.instruments = ranking.names
        diff = self._subscriptions.hold(plan)
        log.info(
            "re-ranked: %d instruments; subscribing %d and unsubscribing %d channels",
            len(ranking.names),
            len(diff.added),
            len(diff.removed),
        )

    # ----------------------------------------------------------------- lifecycle hooks

    def listed(self, name: str) -> None:
        if name not in self.catalog.by_name:
            log.info("%s was listed", name)
            self._refresh_soon.set()  # reference data now, and (local mode) a re-rank

    def settling(self, name: str, ts_ms: int) -> None:
        # Keep recording through settlement: the final tickers carry the delivery price.
        instrument = self.catalog.by_name.get(name)
        if instrument is not None:
            expired: Instrument = {**instrument, "state": InstrumentState.SETTLEMENT}
            self._write(self.store([expired], expired=True))

    def gone(self, name: str, state: str, ts_ms: int) -> None:
        diff = self._subscriptions.retire(name)
        if diff is None:
            return
        if name in self._subscriptions.plan.instruments:
            log.info("%s is %s: unsubscribed its %d channels", name, state, len(diff.removed))
        instrument = self.catalog.by_name.get(name)
        if instrument is not None:
            delivered: Instrument = {**instrument, "state": state, "is_active": False}
            self._write(self.store([delivered], expired=True))

    def _write(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a short write from a synchronous hook; :meth:`settle` awaits it."""
        task = asyncio.create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def settle(self) -> None:
        """Until every write started by a hook is done (the connections may still call them
        while they drain, so this runs after they closed)."""
        await asyncio.gather(*self._writes, return_exceptions=True)
