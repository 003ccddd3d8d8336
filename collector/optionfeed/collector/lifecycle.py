"""Listings, expiries and maintenance, handled live from the exchange's own announcements.

Deribit announces each instrument's state on ``instrument.state.{kind}.{currency}``: ``open`` when
it is listed, ``settlement`` at expiry, then ``delivered`` (real data also shows ``closed``,
``inactive``, ``archivized``). The collector keeps recording an expiring instrument through
settlement, so the final tickers (``state: closed``, ``estimated_delivery_price: "expired"``, the
``delivery_price``) are stored as sent, and unsubscribes it once it is delivered. ``platform_state``
announces maintenance; the connections then meet 11051 and reconnect with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from optionfeed.collector.router import Events
from optionfeed.deribit.instruments import GONE_STATES, LISTED_STATES, SETTLING_STATES
from optionfeed.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class Lifecycle(Events):
    """Turns ``instrument.state`` and ``platform_state`` into calls on the collector."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        listed: Callable[[str], None],
        settling: Callable[[str, int], None],
        gone: Callable[[str, str, int], None],
    ) -> None:
        self._metrics = metrics
        self._listed = listed
        self._settling = settling
        self._gone = gone
        self.maintenance = False

    def instrument_state(self, data: Any, at: float) -> None:
        name, state = data["instrument_name"], data.get("state")
        timestamp = data.get("timestamp")
        ts = timestamp if isinstance(timestamp, int) else int(at * 1000)
        if state in LISTED_STATES:
            self._listed(name)
        elif state in SETTLING_STATES:
            self._settling(name, ts)
        elif state in GONE_STATES:
            self._gone(name, str(state), ts)

    def platform_state(self, data: Any, at: float) -> None:
        if "maintenance" in data:
            self.maintenance = bool(data["maintenance"])
            self._metrics.exchange_maintenance.set(1 if self.maintenance else 0)
            if self.maintenance:
                log.warning("the exchange announced maintenance; connections will back off")
            else:
                log.info("the exchange's maintenance is over")
        if "price_index" in data:
            log.warning(
                "the exchange %s price index %s",
                "locked" if data.get("locked") else "unlocked",
                data["price_index"],
            )
