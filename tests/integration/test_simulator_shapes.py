"""What the simulator sends has the keys and JSON types of real Deribit messages.

The expected shapes are read from the real captures in tests/data/deribit: for every key of a
captured ticker, book message or get_instruments element, the set of JSON types it takes there.
The simulator's messages must carry every captured key with one of those types. Keys and types
the captures do not show (newer fields, and the documented quirks: null prices, the string
``"expired"``) must be declared in the protocol's TypedDicts (optionfeed.deribit.messages), and
messages the captures hold no sample of (trades, quotes, book summaries, trade history) are
checked against those TypedDicts alone.
"""

from __future__ import annotations

import re
import time
import types
import typing
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from harness.simulator import SimulatorProcess, WsClient
from optionfeed.deribit import messages

DATA = Path(__file__).parents[1] / "data" / "deribit"
_RECEIVED = re.compile(r"^\d+(?:\.\d+)?: (?P<json>.*)$")
_REST = re.compile(r"^\S+://\S+ -> \d+(?:\.\d+)?: (?P<json>.*)$")
Shape = dict[str, set[str]]


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def shape_of(samples: Iterable[dict[str, Any]]) -> Shape:
    """key -> JSON types seen, nested objects as ``outer.inner``."""
    found: Shape = defaultdict(set)

    def walk(obj: dict[str, Any], prefix: str) -> None:
        for key, value in obj.items():
            found[prefix + key].add(json_type(value))
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    for sample in samples:
        walk(sample, "")
    return dict(found)


def keys_of(sample: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in sample.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= keys_of(value, f"{prefix}{key}.")
    return keys


def _annotation_types(annotation: Any, lenient: bool) -> set[str]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_annotation_types(a, lenient) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {json_type(a) for a in typing.get_args(annotation)}
    if annotation is type(None):
        return {"null"}
    if annotation is bool:
        return {"boolean"}
    if annotation is int:
        return {"integer"}
    if annotation is float:
        # PEP 484 accepts an int where a float is declared; where a capture shows the key, the
        # capture decides between 4714.0 and 4714.
        return {"number", "integer"} if lenient else {"number"}
    if annotation is str:
        return {"string"}
    if origin in (list, tuple) or annotation in (list, tuple):
        return {"array"}
    return {"object"}


def declared(typed: Any, prefix: str = "", *, lenient: bool = True) -> Shape:
    """key -> JSON types a TypedDict from optionfeed.deribit.messages declares."""
    found: Shape = {}
    for key, annotation in typing.get_type_hints(typed).items():
        found[prefix + key] = _annotation_types(annotation, lenient)
        if typing.is_typeddict(annotation):
            found.update(declared(annotation, f"{prefix}{key}.", lenient=lenient))
    return found


def required(typed: Any) -> set[str]:
    """The keys a TypedDict requires (read from the hints: the module uses PEP 563)."""
    if not typed.__total__:
        return set()
    hints = typing.get_type_hints(typed, include_extras=True)
    return {k for k, a in hints.items() if typing.get_origin(a) is not typing.NotRequired}


def check(samples: list[dict[str, Any]], captured: Shape | None, typed: Any, what: str) -> None:
    """Every sample has the captured keys (or the TypedDict's required ones) with allowed types."""
    assert samples, f"no {what} to check"
    allowed = declared(typed)
    strict = declared(typed, lenient=False)
    must = set(captured) if captured is not None else required(typed)
    for sample in samples:
        keys = keys_of(sample)
        assert must <= keys, f"{what} lacks {sorted(must - keys)}"
        for key, types_seen in shape_of([sample]).items():
            if captured is not None and key in captured:
                ok = captured[key] | strict.get(key, set())
            else:
                ok = allowed.get(key, set())
            assert ok, f"{what} has a key no capture or TypedDict knows: {key}"
            assert types_seen <= ok, f"{what}.{key} is {types_seen}, expected one of {ok}"


def captured_notifications(family: str) -> list[dict[str, Any]]:
    found = []
    for line in (DATA / "ws-options-2021-07-22.txt").read_text().splitlines():
        match = _RECEIVED.match(line)
        if match is None:
            continue
        message = orjson.loads(match["json"])
        if message.get("method") == "subscription" and message["params"]["channel"].startswith(
            family + "."
        ):
            found.append(message["params"]["data"])
    return found


def captured_instruments() -> list[dict[str, Any]]:
    found = []
    for line in (DATA / "rest-get_instruments-2021-2022.txt").read_text().splitlines():
        match = _REST.match(line)
        if match is not None:
            found.extend(i for i in orjson.loads(match["json"])["result"] if i["kind"] == "option")
    return found


def level_shapes(books: Iterable[dict[str, Any]]) -> set[tuple[str, ...]]:
    return {
        tuple(json_type(v) for v in level)
        for book in books
        for side in ("bids", "asks")
        for level in book.get(side, [])
    }


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(
        "--currencies", "BTC,ETH,USDC", "--rate", "6000", "--trade-fraction", "0.3"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def streamed(sim: SimulatorProcess) -> dict[str, list[Any]]:
    """Notifications of every family for a spread of instruments, gathered once."""

    async def gather() -> dict[str, list[Any]]:
        names: list[str] = []
        for currency in ("BTC", "ETH", "USDC"):
            result = sim.rest("public/get_instruments", currency=currency)["result"]
            names += [i["instrument_name"] for i in result[:: max(1, len(result) // 60)]]
        channels = [f"{f}.{n}.100ms" for n in names for f in ("ticker", "book")]
        channels += [f"quote.{n}" for n in names]
        channels += ["trades.option.any.100ms"]
        got: dict[str, list[Any]] = defaultdict(list)
        async with aiohttp.ClientSession() as http:
            client = await WsClient.connect(http, sim.ws_url)
            for start in range(0, len(channels), 500):
                await client.result("public/subscribe", {"channels": channels[start : start + 500]})
            wanted = {"ticker": 150, "book": 150, "quote": 150, "trades": 8}
            while any(len(got[k]) < n for k, n in wanted.items()):
                note = await client.notification()
                got[note["channel"].split(".")[0]].append(note["data"])
            await client.close()
        return got

    import asyncio

    return asyncio.run(gather())


def test_tickers_have_the_keys_and_types_of_the_captured_ones(
    streamed: dict[str, list[Any]],
) -> None:
    captured = shape_of(captured_notifications("ticker"))
    assert len(captured) == 23 + 4 + 5  # 23 keys, plus the keys of stats and greeks
    check(streamed["ticker"], captured, messages.Ticker, "ticker")
    # The documented quirks show up: prices null or 0.0 on empty sides, null last_price. Which of
    # the sampled instruments have an empty side at this moment depends on the wall-clock market,
    # so both forms are pinned by the market's unit test (test_the_quirks_of_real_data_appear);
    # here, every empty side on the wire is one of the two.
    seen = shape_of(streamed["ticker"])
    assert seen["best_bid_price"] <= {"null", "number"}
    empty_bids = [t["best_bid_price"] for t in streamed["ticker"] if not t["best_bid_amount"]]
    assert all(price in (None, 0.0) for price in empty_bids)
    assert "null" in seen["last_price"]
    assert "number" in seen["last_price"]
    assert {t["underlying_index"].split("-")[0] for t in streamed["ticker"]} >= {
        "index_price",
        "BTC",
        "SYN.BTC",
    }


def test_book_messages_have_the_keys_and_types_of_the_captured_ones(
    streamed: dict[str, list[Any]],
) -> None:
    captured = captured_notifications("book")
    snapshots = [b for b in streamed["book"] if b["type"] == "snapshot"]
    changes = [b for b in streamed["book"] if b["type"] == "change"]
    check(
        snapshots,
        shape_of(b for b in captured if b["type"] == "snapshot"),
        messages.BookChange,
        "book snapshot",
    )
    check(
        changes,
        shape_of(b for b in captured if b["type"] == "change"),
        messages.BookChange,
        "book change",
    )
    assert (
        level_shapes(streamed["book"]) == level_shapes(captured) == {("string", "number", "number")}
    )


def test_trades_and_quotes_have_the_declared_shapes(streamed: dict[str, list[Any]]) -> None:
    trades = [t for batch in streamed["trades"] for t in batch]
    check(trades, None, messages.Trade, "trade")
    check(streamed["quote"], None, messages.Quote, "quote")


def test_get_instruments_has_the_keys_and_types_of_the_captured_responses(
    sim: SimulatorProcess,
) -> None:
    captured = shape_of(captured_instruments())
    for currency in ("BTC", "ETH", "USDC"):
        result = sim.rest("public/get_instruments", currency=currency, kind="option")["result"]
        check(result, captured, messages.Instrument, f"{currency} instrument")


def traded_instrument(
    sim: SimulatorProcess, summaries: list[dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """One of the 20 busiest instruments with trades in this run's history, and its last trades.

    The summaries' 24 h volume includes the day before the simulator started, so the busiest by
    volume may not have traded yet; this waits (up to 60 s) until one has.
    """
    busiest = [s["instrument_name"] for s in sorted(summaries, key=lambda s: -s["volume"])[:20]]
    deadline = time.monotonic() + 60
    while True:
        for name in busiest:
            page = sim.rest("public/get_last_trades_by_instrument", instrument_name=name, count=5)
            if page["result"]["trades"]:
                return name, page
        assert time.monotonic() < deadline, "no trade in 60 s among the 20 busiest instruments"
        time.sleep(0.5)


def test_book_summaries_and_trade_history_have_the_declared_shapes(sim: SimulatorProcess) -> None:
    summaries = sim.rest("public/get_book_summary_by_currency", currency="BTC")["result"]
    check(summaries, None, messages.BookSummary, "book summary")
    traded, page = traded_instrument(sim, summaries)
    check([page["result"]], None, messages.TradesPage, "trade history")
    check(page["result"]["trades"], None, messages.Trade, "trade in history")
    by_time = sim.rest(
        "public/get_last_trades_by_instrument_and_time", instrument_name=traded, end_timestamp=2**41
    )["result"]
    check(by_time["trades"], None, messages.Trade, "trade in history by time")
