"""What the collector keeps and what it rejects, against an exchange whose frames the test writes.

A real collector, a real PostgreSQL and real sockets; the exchange is
:class:`harness.scripted_exchange.ScriptedExchange`, because the simulator only ever sends
well-formed market data on the channels it was asked for.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.collector import (
    assignment_doc,
    count,
    fetch,
    local_config,
    running_collector,
    wait_for,
    write_atomically,
)
from harness.scripted_exchange import ScriptedExchange
from optionfeed.collector.app import Collector

INSTRUMENT = "ETH-1JAN30-3000-C"
TRADES = f"trades.{INSTRUMENT}.100ms"
TICKER = f"ticker.{INSTRUMENT}.100ms"


def trade(seq: int, **changes: Any) -> dict[str, Any]:
    return {
        "trade_seq": seq,
        "trade_id": f"ETH-{1000 + seq}",
        "timestamp": int(time.time() * 1000),
        "tick_direction": 0,
        "price": 0.05,
        "mark_price": 0.05,
        "iv": 60.0,
        "instrument_name": INSTRUMENT,
        "index_price": 3000.0,
        "direction": "buy",
        "amount": 1.0,
        **changes,
    }


def ticker(instrument: str = INSTRUMENT) -> dict[str, Any]:
    return {
        "instrument_name": instrument,
        "timestamp": int(time.time() * 1000),
        "state": "open",
        "stats": {"volume": 1.0, "low": 0.04, "high": 0.06, "price_change": 1.5},
        "open_interest": 10.0,
        "index_price": 3000.0,
        "best_bid_price": 0.049,
        "best_bid_amount": 5.0,
        "best_ask_price": 0.051,
        "best_ask_amount": 5.0,
        "min_price": 0.001,
        "max_price": 0.2,
        "mark_price": 0.05,
        "last_price": 0.05,
        "estimated_delivery_price": 3000.0,
    }


@pytest.fixture
async def exchange() -> AsyncIterator[ScriptedExchange]:
    async with ScriptedExchange() as scripted:
        yield scripted


def collector_on(
    exchange: ScriptedExchange, database_url: str, tmp_path: Path, channels: tuple[str, ...]
) -> Any:
    path = tmp_path / "assignment.json"
    doc = assignment_doc([INSTRUMENT], exchange_url=exchange.ws_url, channels=channels)
    write_atomically(path, doc)
    return running_collector(
        local_config(assignment_path=path, database_url=database_url, spool_dir=tmp_path / "spool")
    )


async def rows_in(database_url: str, table: str, n: int, *, what: str) -> None:
    async def enough() -> bool:
        return await count(database_url, table) >= n

    await wait_for(enough, within=30, what=what)


def rejected_metric(collector: Collector, reason: str) -> float:
    value = collector.metrics.registry.get_sample_value(
        "optionfeed_rejected_messages_total", {"reason": reason}
    )
    return value or 0.0


# ------------------------------------------------------------------------- one bad element


async def test_a_trades_message_with_one_bad_element_stores_the_good_ones_and_backfill_counts_only_stored_rows(  # noqa: E501
    database_url: str, tmp_path: Path, exchange: ScriptedExchange
) -> None:
    bad = trade(2, amount="2.0")

    def page(query: dict[str, str]) -> dict[str, Any]:
        # The gap the bad element leaves is 2..3; the exchange's history still has it bad.
        assert (query["start_seq"], query["end_seq"]) == ("2", "3"), query
        return {"trades": [bad, trade(3)], "has_more": False}

    exchange.rest["public/get_last_trades_by_instrument"] = page
    async with collector_on(exchange, database_url, tmp_path, ("trades",)) as collector:
        await exchange.wait_subscribed(TRADES)
        await exchange.notify(TRADES, [trade(1), bad])
        await rows_in(database_url, "option_trades", 1, what="the good trade of the message")
        await exchange.notify(TRADES, [trade(4)])
        await rows_in(database_url, "option_trades", 3, what="the backfilled and the live trade")

        async def recovery_recorded() -> bool:
            gaps = await fetch(
                database_url, "SELECT rows_recovered FROM data_gaps WHERE reason = 'sequence'"
            )
            return bool(gaps) and collector.backfill is not None and collector.backfill.pending == 0

        await wait_for(recovery_recorded, within=30, what="the backfill to finish")
        assert rejected_metric(collector, "wrong_type") == 2
    stored = await fetch(database_url, "SELECT trade_seq FROM option_trades ORDER BY trade_seq")
    assert [r["trade_seq"] for r in stored] == [1, 3, 4]
    rejected = await fetch(database_url, "SELECT channel, reason, raw FROM rejected_messages")
    assert len(rejected) == 2, rejected  # the stream's bad element and the REST page's
    for row in rejected:
        assert "amount is str" in row["reason"], row["reason"]
        assert '"amount":"2.0"' in row["raw"], row["raw"]
        assert '"trade_seq":2' in row["raw"], row["raw"]
        assert '"trade_seq":1' not in row["raw"]  # the element alone, not the good ones with it
    assert {r["channel"] for r in rejected} == {TRADES, "public/get_last_trades_by_instrument"}
    gaps = await fetch(
        database_url,
        "SELECT seq_from, seq_to, rows_recovered FROM data_gaps WHERE reason = 'sequence'",
    )
    assert [tuple(g) for g in gaps] == [(2, 3, 1)]  # trade 3 stored; trade 2 refused again


async def test_backfill_stores_the_good_trades_of_a_page_and_counts_as_recovered_only_those(
    database_url: str, tmp_path: Path, exchange: ScriptedExchange
) -> None:
    exchange.rest["public/get_last_trades_by_instrument"] = {
        "trades": [trade(2, amount="2.0"), trade(3)],
        "has_more": False,
    }
    async with collector_on(exchange, database_url, tmp_path, ("trades",)) as collector:
        await exchange.wait_subscribed(TRADES)
        await exchange.notify(TRADES, [trade(1)])
        await rows_in(database_url, "option_trades", 1, what="the first trade")
        await exchange.notify(TRADES, [trade(4)])  # skips 2 and 3: backfill fetches them

        async def recovery_recorded() -> bool:
            gaps = await fetch(
                database_url, "SELECT 1 FROM data_gaps WHERE reason = 'sequence' AND seq_to = 3"
            )
            return bool(gaps) and collector.backfill is not None and collector.backfill.pending == 0

        await wait_for(recovery_recorded, within=30, what="the backfill to finish")
        assert rejected_metric(collector, "wrong_type") == 1
    stored = await fetch(database_url, "SELECT trade_seq FROM option_trades ORDER BY trade_seq")
    assert [r["trade_seq"] for r in stored] == [1, 3, 4]
    rejected = await fetch(database_url, "SELECT channel, reason, raw FROM rejected_messages")
    assert [r["channel"] for r in rejected] == ["public/get_last_trades_by_instrument"]
    assert "amount is str" in rejected[0]["reason"]
    assert '"trade_seq":2' in rejected[0]["raw"]
    gaps = await fetch(
        database_url,
        "SELECT seq_from, seq_to, rows_recovered FROM data_gaps WHERE reason = 'sequence'",
    )
    assert [tuple(g) for g in gaps] == [(2, 3, 1)]


async def test_each_bad_instrument_of_a_listing_is_rejected_and_the_others_are_stored(
    database_url: str, tmp_path: Path, exchange: ScriptedExchange
) -> None:
    listed = {"instrument_name": INSTRUMENT, "kind": "option", "strike": 3000.0}
    bad_strike = {"instrument_name": "ETH-1JAN30-3100-C", "kind": "option", "strike": "3100"}
    nameless = {"kind": "option", "strike": 3200.0}
    exchange.rest["public/get_instruments"] = [listed, bad_strike, nameless]
    async with collector_on(exchange, database_url, tmp_path, ("ticker",)):
        await rows_in(database_url, "rejected_messages", 2, what="both bad instruments")
        await rows_in(database_url, "instruments", 1, what="the good instrument")
    stored = await fetch(database_url, "SELECT instrument FROM instruments")
    assert [r["instrument"] for r in stored] == [INSTRUMENT]
    rejected = await fetch(
        database_url, "SELECT channel, reason FROM rejected_messages ORDER BY reason"
    )
    assert {r["channel"] for r in rejected} == {"public/get_instruments"}
    reasons = [r["reason"] for r in rejected]
    assert "strike is str" in reasons[1], reasons
    assert "instrument_name" in reasons[0], reasons
    assert "element 3 of 3" in reasons[0], reasons  # its place in the listing that arrived


# ------------------------------------------------------------------------- channels and frames


async def test_a_notification_on_a_channel_never_subscribed_is_rejected_naming_the_channel(
    database_url: str, tmp_path: Path, exchange: ScriptedExchange
) -> None:
    stranger = "ETH-1JAN30-3100-C"
    async with collector_on(exchange, database_url, tmp_path, ("ticker",)) as collector:
        await exchange.wait_subscribed(TICKER)
        await exchange.notify(f"ticker.{stranger}.100ms", ticker(stranger))
        await exchange.notify(TICKER, ticker())
        await rows_in(database_url, "option_tickers", 1, what="the subscribed ticker")
        await rows_in(database_url, "rejected_messages", 1, what="the stranger's ticker")
        assert rejected_metric(collector, "unsubscribed_channel") == 1
    stored = await fetch(database_url, "SELECT instrument FROM option_tickers")
    assert [r["instrument"] for r in stored] == [INSTRUMENT]
    rejected = await fetch(database_url, "SELECT channel, reason, raw FROM rejected_messages")
    assert len(rejected) == 1
    assert rejected[0]["channel"] == f"ticker.{stranger}.100ms"
    assert f"ticker.{stranger}.100ms" in rejected[0]["reason"]
    assert "not subscribe" in rejected[0]["reason"]
    assert stranger in rejected[0]["raw"]


FRAMES = [
    (b'{"jsonrpc": "2.0", "result": "\xff"}', "not_utf8", "not UTF-8: invalid start byte"),
    (b'{"jsonrpc": "2.0", "method": "subscr', "not_json", "not JSON: "),
    (b"[1, 2]", "not_jsonrpc", "not a JSON-RPC frame: "),
    (
        b'{"jsonrpc": "2.0", "method": "subscription", "params": {"data": {}}}',
        "not_jsonrpc",
        "not a JSON-RPC notification: no params.channel",
    ),
    (
        b'{"jsonrpc": "2.0", "method": "subscription", "params": {"channel": "x.y"}}',
        "not_jsonrpc",
        "not a JSON-RPC notification: no params.data",
    ),
    (
        b'{"jsonrpc": "2.0", "id": 999999, "result": 1}',
        "unknown_response",
        "a response to no request",
    ),
    (
        b'{"jsonrpc": "2.0", "method": "surprise", "params": {}}',
        "unexpected_notification",
        "unexpected notification 'surprise'",
    ),
]


async def test_frames_the_connection_cannot_use_are_rejected_saying_what_was_wrong(
    database_url: str, tmp_path: Path, exchange: ScriptedExchange
) -> None:
    async with collector_on(exchange, database_url, tmp_path, ("ticker",)) as collector:
        await exchange.wait_subscribed(TICKER)
        for frame, _, _ in FRAMES:
            await exchange.send_raw(frame)
        await exchange.send_raw(b'{"jsonrpc": "2.0"}', binary=True)
        await exchange.notify(TICKER, ticker())
        await rows_in(database_url, "option_tickers", 1, what="the ticker after the bad frames")
        await rows_in(database_url, "rejected_messages", len(FRAMES) + 1, what="every bad frame")
        for label in {label for _, label, _ in FRAMES} | {"binary_frame"}:
            assert rejected_metric(collector, label) >= 1, label
    rows = await fetch(database_url, "SELECT reason, raw FROM rejected_messages")
    by_raw = {r["raw"]: r["reason"] for r in rows}
    for frame, _, says in FRAMES:
        reason = by_raw[frame.decode(errors="backslashreplace")]
        assert reason.startswith(says), (frame, reason)
        assert "malformed" not in reason
    assert (
        "invalid start byte at position 30 (byte 0xff)"
        in by_raw['{"jsonrpc": "2.0", "result": "\\xff"}']
    )
    assert any(r.startswith("a binary frame") for r in by_raw.values()), by_raw
