"""Shapes of Deribit's market-data payloads, as TypedDicts (docs/deribit-protocol.md §3 to §7).

These describe what arrives on the wire, quirks included: ``estimated_delivery_price`` may be the
string ``"expired"``, ``last_price`` may be ``null``, empty book sides may be ``0.0`` or ``null``,
and every id (``trade_id``, ``block_trade_id``) is a string. Nothing here does I/O.
"""

# No `from __future__ import annotations` here: TypedDict needs real annotations at run time to
# tell required keys from NotRequired ones (``__required_keys__``), and tests read them.
from typing import Literal, NotRequired, TypedDict


class Greeks(TypedDict):
    delta: float
    gamma: float
    vega: float
    theta: float
    rho: float


class Stats(TypedDict):
    volume: float | None
    low: float | None
    high: float | None
    price_change: float | None
    volume_usd: NotRequired[float | None]
    volume_notional: NotRequired[float | None]


class Ticker(TypedDict):
    """``ticker.{instrument}.{interval}`` data and the ``public/ticker`` result."""

    instrument_name: str
    timestamp: int
    state: str
    stats: Stats
    open_interest: float
    index_price: float
    best_bid_price: float | None
    best_bid_amount: float | None
    best_ask_price: float | None
    best_ask_amount: float | None
    min_price: float
    max_price: float
    mark_price: float
    last_price: float | None
    estimated_delivery_price: float | Literal["expired"]
    settlement_price: NotRequired[float]
    delivery_price: NotRequired[float]
    underlying_price: NotRequired[float]
    underlying_index: NotRequired[str]
    interest_rate: NotRequired[float]
    bid_iv: NotRequired[float | None]
    ask_iv: NotRequired[float | None]
    mark_iv: NotRequired[float]
    greeks: NotRequired[Greeks]


class Quote(TypedDict):
    """``quote.{instrument}`` data."""

    instrument_name: str
    timestamp: int
    best_bid_price: float | None
    best_bid_amount: float | None
    best_ask_price: float | None
    best_ask_amount: float | None


class Trade(TypedDict):
    """One element of ``trades.*`` data and of the trade-history results."""

    trade_id: str
    trade_seq: int
    instrument_name: str
    timestamp: int
    price: float
    amount: float
    direction: Literal["buy", "sell"]
    tick_direction: int
    index_price: float
    mark_price: float
    iv: NotRequired[float]
    contracts: NotRequired[float]
    liquidation: NotRequired[str]
    block_trade_id: NotRequired[str]
    block_trade_leg_count: NotRequired[int]
    combo_id: NotRequired[str]
    combo_trade_id: NotRequired[str]
    block_rfq_id: NotRequired[int]


class TradesPage(TypedDict):
    """``public/get_last_trades_by_instrument[_and_time]`` result."""

    trades: list[Trade]
    has_more: bool


# A level of ``book.{instrument}.{interval}``: [action, price, amount], action new|change|delete.
BookLevel = tuple[Literal["new", "change", "delete"], float, float]


class BookChange(TypedDict):
    """``book.{instrument}.{interval}`` data: a snapshot first, then changes chained by id."""

    type: Literal["snapshot", "change"]
    timestamp: int
    instrument_name: str
    change_id: int
    prev_change_id: NotRequired[int]
    bids: list[BookLevel]
    asks: list[BookLevel]


class OrderBook(Ticker):
    """``public/get_order_book`` result: the ticker fields plus [[price, amount], ...] levels."""

    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    change_id: int


class Instrument(TypedDict):
    """An element of ``public/get_instruments``: the 2021 key set plus the newer fields."""

    instrument_name: str
    kind: str
    base_currency: str
    quote_currency: str
    min_trade_amount: float
    is_active: bool
    settlement_period: str
    creation_timestamp: int
    tick_size: float
    expiration_timestamp: int
    contract_size: float
    option_type: NotRequired[Literal["call", "put"]]
    strike: NotRequired[float]
    maker_commission: NotRequired[float]
    taker_commission: NotRequired[float]
    block_trade_commission: NotRequired[float]
    block_trade_min_trade_amount: NotRequired[float]
    block_trade_tick_size: NotRequired[float]
    instrument_id: NotRequired[int]
    price_index: NotRequired[str]
    counter_currency: NotRequired[str]
    settlement_currency: NotRequired[str]
    instrument_type: NotRequired[Literal["linear", "reversed"]]
    state: NotRequired[str]
    tick_size_steps: NotRequired[list[dict[str, float]]]
    rfq: NotRequired[bool]


class BookSummary(TypedDict):
    """An element of ``public/get_book_summary_by_currency``."""

    instrument_name: str
    base_currency: str
    quote_currency: str
    volume: float
    volume_usd: NotRequired[float]
    open_interest: float
    high: float | None
    low: float | None
    last: float | None
    price_change: NotRequired[float | None]
    bid_price: float | None
    ask_price: float | None
    mid_price: float | None
    mark_price: float
    mark_iv: NotRequired[float]
    interest_rate: NotRequired[float]
    underlying_index: NotRequired[str]
    underlying_price: NotRequired[float]
    estimated_delivery_price: NotRequired[float | str]
    creation_timestamp: int


class InstrumentState(TypedDict):
    """``instrument.state.{kind}.{currency}`` data."""

    timestamp: int
    state: str
    instrument_name: str


class PlatformState(TypedDict, total=False):
    """``platform_state`` data: an index lock, or the start of maintenance."""

    price_index: str
    locked: bool
    maintenance: bool
