"""Deribit notification payloads to table rows: pure functions on the hot path.

Each function takes the ``data`` of one notification (already parsed JSON) and the time the frame
was received (``time.time()``), and returns a row tuple in the column order of its table in
:mod:`optionfeed.store.tables`: ``ticker_row`` (``option_tickers``), ``quote_row``
(``option_quotes``), ``book_row`` (``option_book``), ``trade_row``/``trade_rows``
(``option_trades``) and ``instrument_row`` (``instruments``, from ``get_instruments``).
:func:`normalize` dispatches on the channel name.

What is stored is what Deribit sent:

- A JSON ``null`` becomes NULL and a ``0.0`` stays 0.0. Option tickers mark an empty book side
  with ``0.0`` price, amount and IV, or with ``null`` as the docs say; both are kept as sent (no
  option trades at 0, so 0.0 means "no bid/ask", like NULL).
- ``estimated_delivery_price`` is a number, or the string ``"expired"`` once the instrument has
  expired: that becomes NULL plus ``expired = true``.
- ``underlying_index`` is text (``index_price``, a future name, or ``SYN.<future>``).
- ``last_price`` and the ``stats`` values may be null; newer fields (``stats.volume_usd``) and
  fields only some messages carry (``delivery_price``, greeks) may be absent: NULL.
- Fields without a column of their own are kept in ``extra`` (jsonb), so nothing is lost when
  Deribit adds one.
- Book levels are stored exactly as sent, ``[[action, price, amount], ...]``, as jsonb.

A payload that is not the shape the protocol promises (a missing required field, a string where
a number belongs, a timestamp out of range) raises :class:`NormalizeError`, whose ``reason`` is a
short label from a fixed set (for the ``rejected_messages_total`` metric) and whose ``detail`` says
which field was wrong (for the ``rejected_messages`` row). Every row this module returns can be
COPYed: the writer never meets a value it cannot encode.

What is rejected is one element, never more: a bad element must not cost the good ones beside it.
An element is the unit that becomes one row, or that is only meaningful whole:

- ``ticker.*``, ``quote.*``: the notification (one object, one row).
- ``book.*``: the notification. Its ``bids`` and ``asks`` are one change, chained to the next by
  ``change_id``; storing some of its levels would record a book the exchange never had, so one bad
  level rejects the change (and the chain's break then resyncs the book).
- ``trades.*`` and the REST trade pages (``get_last_trades_by_instrument[_and_time]``): each trade.
  :func:`split_trades` returns the rows of the good ones and each bad one apart; only ``data``
  that is not an array is rejected whole.
- ``get_instruments``: each instrument (:func:`instrument_row` takes one).

Speed: the common case reads all of a message's fields with one ``operator.itemgetter`` call (C,
one pass), checks the numeric fields' types in one pass over a tuple, and builds the row tuple
directly. Messages that lack an optional field take a slower path that fills the gaps and then
joins the fast one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any, Final, NamedTuple

import orjson

from optionfeed.store.tables import BOOK, QUOTES, TICKERS, TRADES, Row, Table

__all__ = [
    "BadElement",
    "NormalizeError",
    "Split",
    "book_row",
    "instrument_row",
    "normalize",
    "quote_row",
    "split_trades",
    "ticker_row",
    "trade_row",
    "trade_rows",
]

# Reasons (metric label values).
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
BAD_VALUE: Final = "bad_value"
UNKNOWN_CHANNEL: Final = "unknown_channel"

# Exchange timestamps must fall between Deribit's launch and 2100: anything else is corrupt, and
# would otherwise create a partition for a nonsensical day.
TS_MIN_MS: Final = 1_451_606_400_000  # 2016-01-01
TS_MAX_MS: Final = 4_102_444_800_000  # 2100-01-01

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

_NoneType = type(None)
# A numeric field may hold a JSON number or null. bool is excluded on purpose: type(True) is bool.
_NUMERIC: Final = frozenset({float, int, _NoneType})
_TEXT: Final = frozenset({str, _NoneType})


class NormalizeError(ValueError):
    """A payload that cannot become a row. ``reason`` is a metric label, ``detail`` the why."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(detail)


def _missing(what: str, exc: KeyError) -> NormalizeError:
    return NormalizeError(MISSING_FIELD, f"{what}: missing field {exc.args[0]!r}")


def _not_object(what: str, value: Any) -> NormalizeError:
    return NormalizeError(WRONG_TYPE, f"{what}: expected an object, got {type(value).__name__}")


def _bad_numbers(what: str, names: tuple[str, ...], values: tuple[Any, ...]) -> NormalizeError:
    for name, value in zip(names, values, strict=True):
        if type(value) not in _NUMERIC:
            return NormalizeError(
                WRONG_TYPE, f"{what}: {name} is {type(value).__name__}, expected a number"
            )
    return NormalizeError(WRONG_TYPE, f"{what}: a numeric field has the wrong type")


def _check_ts(what: str, ts: Any) -> None:
    if type(ts) is not int:
        raise NormalizeError(
            WRONG_TYPE, f"{what}: timestamp is {type(ts).__name__}, expected integer milliseconds"
        )
    if not TS_MIN_MS <= ts < TS_MAX_MS:
        raise NormalizeError(BAD_VALUE, f"{what}: timestamp {ts} is out of range")


def _check_name(what: str, name: Any) -> None:
    if type(name) is not str:
        raise NormalizeError(
            WRONG_TYPE, f"{what}: instrument_name is {type(name).__name__}, expected a string"
        )
    if not name or "\x00" in name:
        raise NormalizeError(BAD_VALUE, f"{what}: instrument_name {name!r} is not a valid name")


def _check_text(what: str, field: str, value: Any) -> None:
    """``value`` must be a string without NUL (PostgreSQL text cannot hold one), or null."""
    if type(value) not in _TEXT:
        raise NormalizeError(
            WRONG_TYPE, f"{what}: {field} is {type(value).__name__}, expected a string"
        )
    if value is not None and "\x00" in value:
        raise NormalizeError(BAD_VALUE, f"{what}: {field} contains a NUL character")


def _check_int(what: str, field: str, value: Any, low: int, high: int, *, null: bool) -> None:
    if value is None and null:
        return
    if type(value) is not int:
        raise NormalizeError(
            WRONG_TYPE, f"{what}: {field} is {type(value).__name__}, expected an integer"
        )
    if not low <= value <= high:
        raise NormalizeError(BAD_VALUE, f"{what}: {field} {value} is out of range")


def _extra(payload: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """The fields of ``payload`` that have no column of their own."""
    return {k: v for k, v in payload.items() if k not in known}


def _encode(what: str, value: Any) -> bytes:
    """JSON for a jsonb column; jsonb cannot hold a NUL character in a string.

    ``orjson.dumps`` hands back its output in the buffer it wrote into, which it never shrinks:
    at least 4 KB, and several times the text beyond that. A row keeps its JSON until the row is
    committed, so a full buffer of book rows (two sides each) would hold 8 KB per row, 400 MB for
    50,000 rows. The text is therefore copied into bytes of its own size (a UTF-8 decode and
    encode: about 50 ns for a book side).
    """
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:  # an integer beyond 64 bits
        raise NormalizeError(BAD_VALUE, f"{what}: {exc}") from None
    if b"\\u0000" in encoded:
        raise NormalizeError(BAD_VALUE, f"{what}: a string contains a NUL character")
    return encoded.decode().encode()


# ---------------------------------------------------------------------------------------- ticker

# The 23 keys every option ticker carries (docs/deribit-protocol.md §6.1; the 2021 capture has
# exactly these).
_TICKER_KEYS: Final = (
    "instrument_name",
    "timestamp",
    "state",
    "best_bid_price",
    "best_bid_amount",
    "best_ask_price",
    "best_ask_amount",
    "bid_iv",
    "ask_iv",
    "mark_price",
    "mark_iv",
    "last_price",
    "index_price",
    "underlying_price",
    "underlying_index",
    "open_interest",
    "interest_rate",
    "min_price",
    "max_price",
    "settlement_price",
    "estimated_delivery_price",
    "greeks",
    "stats",
)
_TICKER_FAST = itemgetter(*_TICKER_KEYS)
_TICKER_REQUIRED: Final = frozenset(
    {
        "instrument_name",
        "timestamp",
        "state",
        "stats",
        "open_interest",
        "index_price",
        "best_bid_price",
        "best_bid_amount",
        "best_ask_price",
        "best_ask_amount",
        "min_price",
        "max_price",
        "mark_price",
        "last_price",
        "estimated_delivery_price",
    }
)
_TICKER_KNOWN: Final = frozenset({*_TICKER_KEYS, "delivery_price"})
_TICKER_NUMBERS: Final = (
    "best_bid_price",
    "best_bid_amount",
    "best_ask_price",
    "best_ask_amount",
    "bid_iv",
    "ask_iv",
    "mark_price",
    "mark_iv",
    "last_price",
    "index_price",
    "underlying_price",
    "open_interest",
    "interest_rate",
    "min_price",
    "max_price",
    "settlement_price",
    "delivery_price",
    "estimated_delivery_price",
    "greeks.delta",
    "greeks.gamma",
    "greeks.vega",
    "greeks.theta",
    "greeks.rho",
    "stats.volume",
    "stats.volume_usd",
    "stats.volume_notional",
    "stats.low",
    "stats.high",
    "stats.price_change",
)
_GREEK_KEYS: Final = ("delta", "gamma", "vega", "theta", "rho")
_GREEKS = itemgetter(*_GREEK_KEYS)
_GREEKS_KNOWN: Final = frozenset(_GREEK_KEYS)
_STATS_KEYS: Final = ("volume", "low", "high", "price_change")
_STATS = itemgetter(*_STATS_KEYS)
# Today's stats: the four of the 2021 capture, and volume_usd.
_STATS_NOW = itemgetter(*_STATS_KEYS, "volume_usd")
_STATS_KNOWN: Final = frozenset({*_STATS_KEYS, "volume_usd", "volume_notional"})
_NO_GREEKS: Final = (None, None, None, None, None)


def ticker_row(data: Any, recv_ts: float) -> Row:
    """An ``option_tickers`` row from ``ticker.{instrument}.{interval}`` data."""
    try:
        (
            name,
            ts,
            state,
            bid,
            bid_amount,
            ask,
            ask_amount,
            bid_iv,
            ask_iv,
            mark,
            mark_iv,
            last,
            index,
            underlying,
            underlying_index,
            open_interest,
            interest_rate,
            min_price,
            max_price,
            settlement,
            estimated,
            greeks,
            stats,
        ) = _TICKER_FAST(data)
    except KeyError:
        return ticker_row(_complete_ticker(data), recv_ts)
    except TypeError:
        raise _not_object("ticker", data) from None
    # The checks' common outcome inline; the helpers, called only on a failure, say what is wrong.
    if type(name) is not str or not name or "\x00" in name:
        _check_name("ticker", name)
    if type(ts) is not int or not TS_MIN_MS <= ts < TS_MAX_MS:
        _check_ts("ticker", ts)
    if type(state) is not str or type(underlying_index) not in _TEXT:
        _check_text("ticker", "state", state)
        _check_text("ticker", "underlying_index", underlying_index)
    elif "\x00" in state or (underlying_index is not None and "\x00" in underlying_index):
        raise NormalizeError(BAD_VALUE, "ticker: a text field contains a NUL character")

    extra: dict[str, Any] | None = None
    delivery = None
    if len(data) != 23:
        delivery = data.get("delivery_price")
        if not data.keys() <= _TICKER_KNOWN:
            extra = _extra(data, _TICKER_KNOWN)

    expired = False
    if type(estimated) is str:
        if estimated != "expired":
            raise NormalizeError(
                BAD_VALUE, f"ticker: estimated_delivery_price is the string {estimated[:40]!r}"
            )
        estimated = None
        expired = True

    if greeks is None:
        delta, gamma, vega, theta, rho = _NO_GREEKS
    else:
        try:
            delta, gamma, vega, theta, rho = _GREEKS(greeks)
        except KeyError:
            delta, gamma, vega, theta, rho = (greeks.get(k) for k in _GREEK_KEYS)
        except TypeError:
            raise _not_object("ticker greeks", greeks) from None
        if len(greeks) != 5 and not greeks.keys() <= _GREEKS_KNOWN:
            extra = extra or {}
            extra["greeks"] = _extra(greeks, _GREEKS_KNOWN)

    if stats is None:
        volume = low = high = change = volume_usd = volume_notional = None
    else:
        try:
            volume, low, high, change, volume_usd = _STATS_NOW(stats)
            complete = len(stats) == 5
        except KeyError:
            try:
                volume, low, high, change = _STATS(stats)
                complete = len(stats) == 4
            except KeyError:
                volume, low, high, change = (stats.get(k) for k in _STATS_KEYS)
                complete = False
            volume_usd = None if complete else stats.get("volume_usd")
        except TypeError:
            raise _not_object("ticker stats", stats) from None
        if complete:
            volume_notional = None
        else:
            volume_notional = stats.get("volume_notional")
            if not stats.keys() <= _STATS_KNOWN:
                extra = extra or {}
                extra["stats"] = _extra(stats, _STATS_KNOWN)

    numbers = (
        bid,
        bid_amount,
        ask,
        ask_amount,
        bid_iv,
        ask_iv,
        mark,
        mark_iv,
        last,
        index,
        underlying,
        open_interest,
        interest_rate,
        min_price,
        max_price,
        settlement,
        delivery,
        estimated,
        delta,
        gamma,
        vega,
        theta,
        rho,
        volume,
        volume_usd,
        volume_notional,
        low,
        high,
        change,
    )
    if not _NUMERIC.issuperset(map(type, numbers)):
        raise _bad_numbers("ticker", _TICKER_NUMBERS, numbers)

    return (
        name,
        ts,
        recv_ts,
        state,
        bid,
        bid_amount,
        ask,
        ask_amount,
        bid_iv,
        ask_iv,
        mark,
        mark_iv,
        last,
        index,
        underlying,
        underlying_index,
        open_interest,
        interest_rate,
        min_price,
        max_price,
        settlement,
        delivery,
        estimated,
        expired,
        delta,
        gamma,
        vega,
        theta,
        rho,
        volume,
        volume_usd,
        volume_notional,
        low,
        high,
        change,
        None if extra is None else _encode("ticker extra", extra),
    )


def _complete_ticker(data: Any) -> dict[str, Any]:
    """A copy of ``data`` with absent optional fields set to null; raises if a required one is."""
    if not isinstance(data, dict):
        raise _not_object("ticker", data)
    for key in _TICKER_KEYS:
        if key not in data and key in _TICKER_REQUIRED:
            raise NormalizeError(MISSING_FIELD, f"ticker: missing field {key!r}")
    completed = dict.fromkeys(_TICKER_KEYS)
    completed.update(data)
    return completed


# ----------------------------------------------------------------------------------------- quote

_QUOTE_KEYS: Final = (
    "instrument_name",
    "timestamp",
    "best_bid_price",
    "best_bid_amount",
    "best_ask_price",
    "best_ask_amount",
)
_QUOTE_FAST = itemgetter(*_QUOTE_KEYS)
_QUOTE_KNOWN: Final = frozenset(_QUOTE_KEYS)


def quote_row(data: Any, recv_ts: float) -> Row:
    """An ``option_quotes`` row from ``quote.{instrument}`` data."""
    try:
        name, ts, bid, bid_amount, ask, ask_amount = _QUOTE_FAST(data)
    except KeyError as exc:
        raise _missing("quote", exc) from None
    except TypeError:
        raise _not_object("quote", data) from None
    _check_name("quote", name)
    _check_ts("quote", ts)
    numbers = (bid, bid_amount, ask, ask_amount)
    if not _NUMERIC.issuperset(map(type, numbers)):
        raise _bad_numbers("quote", _QUOTE_KEYS[2:], numbers)
    extra = None
    if len(data) != 6:
        extra = _encode("quote extra", _extra(data, _QUOTE_KNOWN))
    return (name, ts, recv_ts, bid, bid_amount, ask, ask_amount, extra)


# ------------------------------------------------------------------------------------------ book

_BOOK_KEYS: Final = ("instrument_name", "timestamp", "change_id", "bids", "asks")
_BOOK_FAST = itemgetter(*_BOOK_KEYS)
_BOOK_KNOWN: Final = frozenset({*_BOOK_KEYS, "type", "prev_change_id"})
_ACTIONS: Final = frozenset({"new", "change", "delete"})
_NUMBER: Final = frozenset({float, int})


def _check_levels(side: str, levels: Any, what: str) -> bytes:
    """Levels as jsonb text: ``[[action, price, amount], ...]``, or ``[[price, amount], ...]``.

    ``what`` names the side in an encoding error (``"book bids"``), given whole by the caller.
    """
    if type(levels) is not list:
        raise NormalizeError(
            WRONG_TYPE, f"book: {side} is {type(levels).__name__}, expected a list of levels"
        )
    for level in levels:
        if type(level) is not list:
            raise NormalizeError(
                WRONG_TYPE, f"book: a level of {side} is not a list: {level!r:.80}"
            )
        if len(level) == 3:
            action, price, amount = level
            if type(action) is not str or action not in _ACTIONS:
                raise NormalizeError(BAD_VALUE, f"book: unknown action in {side}: {level!r:.80}")
        elif len(level) == 2:
            price, amount = level
        else:
            raise NormalizeError(BAD_VALUE, f"book: a level of {side} has {len(level)} items")
        if type(price) not in _NUMBER or type(amount) not in _NUMBER:
            raise NormalizeError(WRONG_TYPE, f"book: a non-numeric level in {side}: {level!r:.80}")
    return _encode(what, levels)


def book_row(data: Any, recv_ts: float) -> Row:
    """An ``option_book`` row from ``book.{instrument}.{interval}`` data (snapshot or change)."""
    try:
        name, ts, change_id, bids, asks = _BOOK_FAST(data)
    except KeyError as exc:
        raise _missing("book", exc) from None
    except TypeError:
        raise _not_object("book", data) from None
    # The checks' common outcome inline; the helpers, called only on a failure, say what is wrong.
    if type(name) is not str or not name or "\x00" in name:
        _check_name("book", name)
    if type(ts) is not int or not TS_MIN_MS <= ts < TS_MAX_MS:
        _check_ts("book", ts)
    if type(change_id) is not int or not INT64_MIN <= change_id <= INT64_MAX:
        _check_int("book", "change_id", change_id, INT64_MIN, INT64_MAX, null=False)
    prev_change_id = data.get("prev_change_id")
    if prev_change_id is not None and (
        type(prev_change_id) is not int or not INT64_MIN <= prev_change_id <= INT64_MAX
    ):
        _check_int("book", "prev_change_id", prev_change_id, INT64_MIN, INT64_MAX, null=True)
    kind = data.get("type")
    if kind is not None and (type(kind) is not str or "\x00" in kind):
        _check_text("book", "type", kind)
    extra = None
    # Seven keys with type and prev_change_id among them are exactly the known ones.
    if (len(data) != 7 or kind is None or prev_change_id is None) and not (
        data.keys() <= _BOOK_KNOWN
    ):
        extra = _encode("book extra", _extra(data, _BOOK_KNOWN))
    return (
        name,
        ts,
        recv_ts,
        change_id,
        prev_change_id,
        kind,
        _check_levels("bids", bids, "book bids"),
        _check_levels("asks", asks, "book asks"),
        extra,
    )


# ---------------------------------------------------------------------------------------- trades

_TRADE_KEYS: Final = (
    "instrument_name",
    "timestamp",
    "trade_id",
    "trade_seq",
    "price",
    "amount",
    "direction",
    "tick_direction",
    "index_price",
    "mark_price",
)
_TRADE_FAST = itemgetter(*_TRADE_KEYS)
_TRADE_OPTIONAL: Final = (
    "contracts",
    "iv",
    "liquidation",
    "block_trade_id",
    "block_trade_leg_count",
    "combo_id",
    "combo_trade_id",
    "block_rfq_id",
)
_TRADE_KNOWN: Final = frozenset({*_TRADE_KEYS, *_TRADE_OPTIONAL})
_TRADE_NUMBERS: Final = ("price", "amount", "index_price", "mark_price", "contracts", "iv")
_DIRECTIONS: Final = frozenset({"buy", "sell"})


def _id_text(field: str, value: Any) -> str | None:
    # Ids are strings on the wire; the docs type combo_trade_id as a number, so accept integers.
    if value is None or type(value) is str:
        _check_text("trade", field, value)
        return value
    if type(value) is int:
        return str(value)
    raise NormalizeError(WRONG_TYPE, f"trade: {field} is {type(value).__name__}, expected a string")


def trade_row(trade: Any, recv_ts: float) -> Row:
    """An ``option_trades`` row from one element of ``trades.*`` data (or of a REST trade page)."""
    try:
        (
            name,
            ts,
            trade_id,
            trade_seq,
            price,
            amount,
            direction,
            tick_direction,
            index_price,
            mark_price,
        ) = _TRADE_FAST(trade)
    except KeyError as exc:
        raise _missing("trade", exc) from None
    except TypeError:
        raise _not_object("trade", trade) from None
    if type(name) is not str or not name or "\x00" in name:
        _check_name("trade", name)
    if type(ts) is not int or not TS_MIN_MS <= ts < TS_MAX_MS:
        _check_ts("trade", ts)
    if type(trade_id) is not str or not trade_id or "\x00" in trade_id:
        raise NormalizeError(WRONG_TYPE, f"trade: trade_id {trade_id!r:.40} is not a string id")
    _check_int("trade", "trade_seq", trade_seq, INT64_MIN, INT64_MAX, null=False)
    if type(direction) is not str or direction not in _DIRECTIONS:
        raise NormalizeError(BAD_VALUE, f"trade: direction {direction!r:.40} is not buy or sell")
    _check_int("trade", "tick_direction", tick_direction, INT32_MIN, INT32_MAX, null=True)
    get = trade.get
    contracts = get("contracts")
    iv = get("iv")
    numbers = (price, amount, index_price, mark_price, contracts, iv)
    if not _NUMERIC.issuperset(map(type, numbers)):
        raise _bad_numbers("trade", _TRADE_NUMBERS, numbers)
    liquidation = block_trade_id = leg_count = combo_id = combo_trade_id = rfq_id = None
    extra = None
    # Only contracts and iv are common; look for the rarer fields when there are more keys.
    if len(trade) > 10 + (contracts is not None) + (iv is not None):
        liquidation = get("liquidation")
        _check_text("trade", "liquidation", liquidation)
        block_trade_id = _id_text("block_trade_id", get("block_trade_id"))
        leg_count = get("block_trade_leg_count")
        _check_int("trade", "block_trade_leg_count", leg_count, INT32_MIN, INT32_MAX, null=True)
        combo_id = _id_text("combo_id", get("combo_id"))
        combo_trade_id = _id_text("combo_trade_id", get("combo_trade_id"))
        rfq_id = get("block_rfq_id")
        _check_int("trade", "block_rfq_id", rfq_id, INT64_MIN, INT64_MAX, null=True)
        if not trade.keys() <= _TRADE_KNOWN:
            extra = _encode("trade extra", _extra(trade, _TRADE_KNOWN))
    return (
        name,
        ts,
        recv_ts,
        trade_id,
        trade_seq,
        price,
        amount,
        contracts,
        direction,
        tick_direction,
        index_price,
        mark_price,
        iv,
        liquidation,
        block_trade_id,
        leg_count,
        combo_id,
        combo_trade_id,
        rfq_id,
        extra,
    )


def trade_rows(data: Any, recv_ts: float) -> list[Row]:
    """Rows for every trade of a ``trades.*`` notification (whose data is always an array).

    All or nothing: the first malformed element raises. The collector keeps the well-formed
    trades of a partly bad message with :func:`split_trades` instead.
    """
    _check_trade_list(data)
    return [trade_row(trade, recv_ts) for trade in data]


class BadElement(NamedTuple):
    """One element of a list payload that cannot become a row, and why."""

    position: int  # in the list, from 0
    value: Any  # the element as it arrived (parsed JSON)
    error: NormalizeError


class Split(NamedTuple):
    """A list payload sorted into the rows of its good elements and its bad elements."""

    rows: list[Row]  # in the order of the elements
    bad: list[BadElement]


def split_trades(data: Any, recv_ts: float) -> Split:
    """Rows for the well-formed trades of ``data`` (a ``trades.*`` array or a REST trade page);
    every malformed one becomes a :class:`BadElement` on its own.

    ``data`` that is not an array raises :class:`NormalizeError`: no element can be told apart.
    The common case, every trade well-formed, costs what :func:`trade_rows` does: elements are
    looked at one by one only after a first failure.
    """
    _check_trade_list(data)
    try:
        return Split([trade_row(trade, recv_ts) for trade in data], [])
    except NormalizeError:
        pass
    rows: list[Row] = []
    bad: list[BadElement] = []
    for position, trade in enumerate(data):
        try:
            rows.append(trade_row(trade, recv_ts))
        except NormalizeError as exc:
            bad.append(BadElement(position, trade, exc))
    return Split(rows, bad)


def _check_trade_list(data: Any) -> None:
    if type(data) is not list:
        raise NormalizeError(
            WRONG_TYPE, f"trades: data is {type(data).__name__}, expected an array of trades"
        )


# ----------------------------------------------------------------------------------- instruments

_INSTRUMENT_TEXT: Final = (
    "kind",
    "base_currency",
    "quote_currency",
    "counter_currency",
    "settlement_currency",
    "option_type",
)
_INSTRUMENT_NUMBERS_A: Final = ("strike",)
_INSTRUMENT_NUMBERS_B: Final = (
    "tick_size",
    "contract_size",
    "min_trade_amount",
    "maker_commission",
    "taker_commission",
    "block_trade_commission",
    "block_trade_min_trade_amount",
    "block_trade_tick_size",
    "max_leverage",
    "max_liquidation_commission",
)
_INSTRUMENT_KNOWN: Final = frozenset(
    {
        "instrument_name",
        *_INSTRUMENT_TEXT,
        *_INSTRUMENT_NUMBERS_A,
        *_INSTRUMENT_NUMBERS_B,
        "expiration_timestamp",
        "creation_timestamp",
        "settlement_period",
        "tick_size_steps",
        "instrument_id",
        "price_index",
        "instrument_type",
        "state",
        "is_active",
        "rfq",
    }
)


def _optional_bool(what: str, field: str, value: Any) -> bool | None:
    if value is None or type(value) is bool:
        return value
    raise NormalizeError(WRONG_TYPE, f"{what}: {field} is {type(value).__name__}, expected a bool")


def _optional_ms(what: str, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < TS_MAX_MS * 10:
        raise NormalizeError(WRONG_TYPE, f"{what}: {field} {value!r:.40} is not a time in ms")
    return value


def instrument_row(instrument: Any, seen_at: float, *, expired: bool = False) -> Row:
    """An ``instruments`` row from one element of ``public/get_instruments``.

    ``seen_at`` (``time.time()``) is both first and last seen: the upsert keeps the stored
    first_seen. ``expired`` marks rows from a ``get_instruments(expired=true)`` listing; the
    expiry time is then ``seen_at`` unless one is already stored.
    """
    what = "instrument"
    if not isinstance(instrument, dict):
        raise _not_object(what, instrument)
    get = instrument.get
    name = get("instrument_name")
    if name is None:
        raise NormalizeError(MISSING_FIELD, f"{what}: missing field 'instrument_name'")
    _check_name(what, name)
    for field in (
        *_INSTRUMENT_TEXT,
        "settlement_period",
        "price_index",
        "instrument_type",
        "state",
    ):
        _check_text(what, field, get(field))
    numbers = tuple(get(k) for k in (*_INSTRUMENT_NUMBERS_A, *_INSTRUMENT_NUMBERS_B))
    if not _NUMERIC.issuperset(map(type, numbers)):
        raise _bad_numbers(what, (*_INSTRUMENT_NUMBERS_A, *_INSTRUMENT_NUMBERS_B), numbers)
    instrument_id = get("instrument_id")
    _check_int(what, "instrument_id", instrument_id, INT64_MIN, INT64_MAX, null=True)
    steps = get("tick_size_steps")
    extra = None
    if not instrument.keys() <= _INSTRUMENT_KNOWN:
        extra = _encode("instrument extra", _extra(instrument, _INSTRUMENT_KNOWN))
    return (
        name,
        *(get(k) for k in _INSTRUMENT_TEXT),
        numbers[0],
        _optional_ms(what, "expiration_timestamp", get("expiration_timestamp")),
        _optional_ms(what, "creation_timestamp", get("creation_timestamp")),
        get("settlement_period"),
        numbers[1],
        None if steps is None else _encode("instrument tick_size_steps", steps),
        *numbers[2:],
        instrument_id,
        get("price_index"),
        get("instrument_type"),
        get("state"),
        _optional_bool(what, "is_active", get("is_active")),
        _optional_bool(what, "rfq", get("rfq")),
        extra,
        seen_at,
        seen_at,
        seen_at if expired else None,
    )


# -------------------------------------------------------------------------------------- dispatch

Builder = Callable[[Any, float], Row]


def _by_family(table: Table, build: Builder) -> tuple[str, tuple[Table, Builder]]:
    assert table.family is not None, f"{table.name} holds no channel family"
    return table.family, (table, build)


# The families whose notification is one row: family (the table's) -> its table and builder.
FAMILIES: Final[dict[str, tuple[Table, Builder]]] = dict(
    _by_family(table, build)
    for table, build in ((TICKERS, ticker_row), (QUOTES, quote_row), (BOOK, book_row))
)


def normalize(channel: str, data: Any, recv_ts: float) -> tuple[Table, list[Row]]:
    """The table and rows for one ``subscription`` notification on ``channel``.

    Covers the channels stored in the time tables (``ticker.*``, ``quote.*``, ``book.*``,
    ``trades.*``); any other channel raises ``NormalizeError`` with reason ``unknown_channel``.
    """
    family = channel.partition(".")[0]
    if family == "trades":
        return TRADES, trade_rows(data, recv_ts)
    found = FAMILIES.get(family)
    if found is None:
        raise NormalizeError(UNKNOWN_CHANNEL, f"no table for channel {channel[:80]!r}")
    table, build = found
    return table, [build(data, recv_ts)]
