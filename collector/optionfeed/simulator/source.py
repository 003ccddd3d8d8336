"""Where the simulator's answers come from: the synthetic market, or a replayed capture.

The JSON-RPC methods (:mod:`.api`) ask a :class:`Source` for reference data, snapshots and trade
history, whichever is running. :class:`MarketSource` answers from :class:`~.market.Market` and
builds the payloads in the shapes and key orders of the real captures (get_instruments and
book summaries list their keys in reverse alphabetical order, as Deribit does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from optionfeed.simulator.ledger import Generated
from optionfeed.simulator.market import Market
from optionfeed.simulator.option import Option, TradeRecord
from optionfeed.simulator.ticker import settled

ORDER_BOOK_DEPTHS = (1, 5, 10, 20, 50, 100, 1000, 10000)
# A server catches up with the clock in slices of this much market time (so that it keeps
# answering while it does), and skips events rather than run them more than MAX_LAG late.
MAX_STEP_SECONDS = 0.05
MAX_LAG_SECONDS = 1.0
CURRENCY_INFO: dict[str, dict[str, Any]] = {
    "BTC": {"currency_long": "Bitcoin", "coin_type": "BITCOIN", "fee": 0.0001},
    "ETH": {"currency_long": "Ethereum", "coin_type": "ETHER", "fee": 0.0006},
    "USDC": {"currency_long": "USD Coin", "coin_type": "ETHER", "fee": 1.0},
}


class TradePage:
    """A page of trade history: each trade's JSON as generated, and whether more matched."""

    __slots__ = ("has_more", "trades")

    def __init__(self, trades: list[bytes], has_more: bool) -> None:
        self.trades = trades
        self.has_more = has_more

    def result(self) -> dict[str, Any]:
        return {"trades": [orjson.Fragment(t) for t in self.trades], "has_more": self.has_more}


class Source(Protocol):
    kind: str  # "market" or "replay"

    def advance(self) -> bool:
        """Bring the source up to the clock; False while it is still catching up."""
        ...

    def currencies(self) -> list[str]: ...

    def index_names(self) -> list[str]: ...

    def is_live(self, instrument: str) -> bool: ...

    def knows(self, instrument: str) -> bool: ...

    def instruments(self, currency: str, kind: str | None, expired: bool) -> list[Any]: ...

    def instrument(self, name: str) -> Any | None: ...

    def book_summaries(self, currency: str, kind: str | None) -> list[Any]: ...

    def ticker(self, name: str) -> dict[str, Any] | None: ...

    def order_book(self, name: str, depth: int) -> dict[str, Any] | None: ...

    def trades_by_seq(
        self, name: str, start: int | None, end: int | None, count: int, ascending: bool
    ) -> TradePage | None: ...

    def trades_by_time(
        self, name: str, start: int | None, end: int | None, count: int, ascending: bool
    ) -> TradePage | None: ...

    def generated(self) -> Iterable[Generated]: ...

    def totals(self) -> tuple[int, int]:
        """(events, trades) generated so far."""
        ...

    @property
    def skipped_ms(self) -> float:
        """Market time whose events were skipped because the server could not keep up."""
        ...

    @property
    def started_ms(self) -> int: ...

    @property
    def rate(self) -> float | None: ...


def page(trades: list[TradeRecord], count: int, ascending: bool) -> TradePage:
    """The first ``count`` trades in the requested order, and whether more matched."""
    if not ascending:
        trades = trades[::-1]
    return TradePage([t.payload for t in trades[:count]], len(trades) > count)


def instrument_payload(option: Option) -> dict[str, Any]:
    spec = option.und.spec
    live = option.is_live
    return {
        "tick_size_steps": [],
        "tick_size": spec.tick_size,
        "taker_commission": spec.taker_commission,
        "strike": float(option.strike),
        "state": option.state,
        "settlement_period": option.expiry.series.settlement_period,
        "settlement_currency": spec.settlement_currency,
        "rfq": False,
        "quote_currency": spec.quote_currency,
        "price_index": spec.index_name,
        "option_type": "call" if option.is_call else "put",
        "min_trade_amount": spec.min_trade_amount,
        "maker_commission": spec.maker_commission,
        "kind": "option",
        "is_active": live,
        "instrument_type": "linear" if spec.linear else "reversed",
        "instrument_name": option.name,
        "instrument_id": option.instrument_id,
        "expiration_timestamp": option.expiry_ms,
        "creation_timestamp": option.created_ms,
        "counter_currency": spec.counter_currency,
        "contract_size": 1.0,
        "block_trade_tick_size": spec.tick_size,
        "block_trade_min_trade_amount": 25 if not spec.linear else 100,
        "block_trade_commission": spec.block_trade_commission,
        "base_currency": spec.base,
    }


def book_summary_payload(option: Option, now_ms: int) -> dict[str, Any]:
    tk = option.ticker
    spec = option.und.spec
    book = option.book
    bid = option.price_of(max(book.bids)) if book.bids else None
    ask = option.price_of(min(book.asks)) if book.asks else None
    mid = (
        round((bid + ask) / 2.0, option.mark_decimals)
        if bid is not None and ask is not None
        else None
    )
    stats = tk["stats"]
    return {
        "volume_usd": stats["volume_usd"] if stats["volume_usd"] is not None else 0.0,
        "volume": stats["volume"] if stats["volume"] is not None else 0.0,
        "underlying_price": tk["underlying_price"],
        "underlying_index": tk["underlying_index"],
        "quote_currency": spec.quote_currency,
        "price_change": stats["price_change"],
        "open_interest": tk["open_interest"],
        "mid_price": mid,
        "mark_price": tk["mark_price"],
        "mark_iv": tk["mark_iv"],
        "low": stats["low"],
        "last": tk["last_price"],
        "interest_rate": 0.0,
        "instrument_name": option.name,
        "high": stats["high"],
        "estimated_delivery_price": tk["estimated_delivery_price"],
        "creation_timestamp": now_ms,
        "bid_price": bid,
        "base_currency": spec.base,
        "ask_price": ask,
    }


class MarketSource:
    """The synthetic market as a :class:`Source`."""

    kind = "market"

    def __init__(self, market: Market) -> None:
        self.market = market

    @property
    def started_ms(self) -> int:
        return self.market.started_ms

    @property
    def rate(self) -> float | None:
        return self.market.rate

    def advance(self) -> bool:
        return self.market.advance(max_lag=MAX_LAG_SECONDS, max_step=MAX_STEP_SECONDS)

    def currencies(self) -> list[str]:
        return list(self.market.currencies)

    def index_names(self) -> list[str]:
        return sorted(u.spec.index_name for u in self.market.underlyings.values())

    def is_live(self, instrument: str) -> bool:
        option = self.market.option(instrument)
        return option is not None and option.is_live

    def knows(self, instrument: str) -> bool:
        return self.market.option(instrument) is not None

    def _options(self, currency: str, kind: str | None, expired: bool) -> list[Option]:
        if kind not in (None, "option", "any"):
            return []
        market = self.market
        found = market.expired_options(currency) if expired else market.live_options(currency)
        return found

    def instruments(self, currency: str, kind: str | None, expired: bool) -> list[Any]:
        return [instrument_payload(o) for o in self._options(currency, kind, expired)]

    def instrument(self, name: str) -> Any | None:
        option = self.market.option(name)
        return instrument_payload(option) if option is not None else None

    def book_summaries(self, currency: str, kind: str | None) -> list[Any]:
        now = self.market.now_ms
        return [book_summary_payload(o, now) for o in self._options(currency, kind, False)]

    def ticker(self, name: str) -> dict[str, Any] | None:
        option = self.market.option(name)
        return dict(settled(option)) if option is not None else None

    def order_book(self, name: str, depth: int) -> dict[str, Any] | None:
        option = self.market.option(name)
        if option is None:
            return None
        book = option.book
        result = dict(settled(option))
        result["change_id"] = option.change_id
        result["bids"] = [[option.price_of(p), a] for p, a in book.levels(True, depth)]
        result["asks"] = [[option.price_of(p), a] for p, a in book.levels(False, depth)]
        return result

    def trades_by_seq(
        self, name: str, start: int | None, end: int | None, count: int, ascending: bool
    ) -> TradePage | None:
        option = self.market.option(name)
        if option is None:
            return None
        return page(self.market.trades_between_seq(option, start, end), count, ascending)

    def trades_by_time(
        self, name: str, start: int | None, end: int | None, count: int, ascending: bool
    ) -> TradePage | None:
        option = self.market.option(name)
        if option is None:
            return None
        return page(self.market.trades_between_time(option, start, end), count, ascending)

    def generated(self) -> Iterable[Generated]:
        for option in self.market.options.values():
            yield Generated(
                instrument=option.name,
                currency=option.currency,
                state=option.state,
                expiration_timestamp=option.expiry_ms,
                events=option.events,
                first_timestamp=option.first_ts or None,
                last_timestamp=option.last_ts if option.events else None,
                trades=option.trade_seq,
                first_trade_seq=option.first_trade_seq or None,
                last_trade_seq=option.trade_seq or None,
                first_change_id=option.first_change_id,
                last_change_id=option.change_id,
            )

    def totals(self) -> tuple[int, int]:
        return self.market.events_total, self.market.trades_total

    @property
    def skipped_ms(self) -> float:
        return self.market.skipped_ms
