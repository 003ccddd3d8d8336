"""The simulator speaks Deribit's protocol over real sockets.

What it follows is docs/deribit-protocol.md §2, §5, §8 and §9.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from harness.simulator import SimulatorProcess, WsClient


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--rate", "3000", "--min-heartbeat-interval", "0.2") as process:
        yield process


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(sim: SimulatorProcess, http: aiohttp.ClientSession) -> AsyncIterator[WsClient]:
    ws = await WsClient.connect(http, sim.ws_url)
    yield ws
    await ws.close()


def busiest(sim: SimulatorProcess, currency: str = "BTC", count: int = 3) -> list[str]:
    summaries = sim.rest("public/get_book_summary_by_currency", currency=currency)["result"]
    two_sided = [s for s in summaries if s["bid_price"] and s["ask_price"]]
    ranked = sorted(two_sided, key=lambda s: (-s["volume_usd"], s["instrument_name"]))
    return [s["instrument_name"] for s in ranked[:count]]


async def test_responses_carry_the_deribit_extras_and_echo_the_request_id(
    client: WsClient,
) -> None:
    await client.send(json.dumps({"jsonrpc": "2.0", "id": "my-id", "method": "public/test"}))
    response = await client.request("public/get_time")
    now_ms = time.time() * 1000
    assert abs(response["result"] - now_ms) < 5000
    assert response["usIn"] <= response["usOut"]
    assert response["usDiff"] == response["usOut"] - response["usIn"]
    assert response["testnet"] is False
    echoed = json.loads(next(f for f in client.raw_frames if '"my-id"' in f))
    assert echoed["result"] == {"version": "1.2.26"}


async def test_a_frame_over_32_kb_is_refused_with_32600(client: WsClient) -> None:
    padding = "x" * (33 * 1024)
    response = await client.request("public/test", {"padding": padding})
    assert response["error"]["code"] == -32600
    assert response["error"]["message"] == "request entity too large"
    assert (await client.request("public/test"))["result"] == {"version": "1.2.26"}


async def test_an_unknown_method_answers_32601(client: WsClient) -> None:
    response = await client.request("public/frobnicate")
    assert response["error"] == {"code": -32601, "message": "Method not found"}


async def test_invalid_params_answer_32602_with_the_reason_and_the_param(
    client: WsClient,
) -> None:
    response = await client.request("public/subscribe", {"channels": "ticker.x.100ms"})
    assert response["error"] == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"reason": "value must be a list", "param": "channels"},
    }
    response = await client.request("public/get_book_summary_by_currency", {})
    assert response["error"] == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"reason": "value required", "param": "currency"},
    }
    response = await client.request("public/get_book_summary_by_currency", {"currency": "any"})
    assert response["error"]["data"] == {"reason": "invalid currency", "param": "currency"}
    response = await client.request("public/ticker", {"instrument_name": "not an instrument"})
    assert response["error"]["data"] == {"reason": "wrong format", "param": "instrument_name"}
    response = await client.request("public/ticker", {"instrument_name": "BTC-1JAN20-9000-C"})
    assert response["error"]["code"] == 13020


async def test_subscribe_answers_in_its_own_order_and_silently_leaves_out_invalid_channels(
    sim: SimulatorProcess, client: WsClient
) -> None:
    names = sorted(busiest(sim, count=3))
    wanted = [f"{family}.{name}.100ms" for name in names for family in ("book", "ticker")]
    wanted += [f"quote.{names[0]}", "platform_state"]
    invalid = ["ticker.BTC-1JAN20-9000-C.100ms", "ticker.nonsense", "book.x.100ms.extra"]
    result = await client.result("public/subscribe", {"channels": wanted + invalid})
    assert sorted(result) == sorted(wanted)
    assert result != wanted
    # As in the real capture: trades, ticker, book, then the rest; names descending.
    tickers = [c for c in result if c.startswith("ticker.")]
    assert tickers == sorted(tickers, reverse=True)
    assert result.index(tickers[-1]) < min(result.index(c) for c in result if c.startswith("book"))
    gone = await client.result("public/unsubscribe", {"channels": [wanted[0], invalid[0]]})
    assert gone == [wanted[0]]
    assert await client.result("public/unsubscribe_all", {}) == "ok"
    assert await client.result("public/unsubscribe", {"channels": wanted}) == []


async def test_subscribe_takes_at_most_500_channels_per_request(
    sim: SimulatorProcess, client: WsClient
) -> None:
    names = [
        i["instrument_name"] for i in sim.rest("public/get_instruments", currency="BTC")["result"]
    ]
    channels = [f"ticker.{n}.100ms" for n in names[:300]] + [f"book.{n}.100ms" for n in names[:201]]
    response = await client.request("public/subscribe", {"channels": channels})
    assert response["error"]["code"] == -32602
    assert response["error"]["data"]["param"] == "channels"
    assert len(await client.result("public/subscribe", {"channels": channels[:500]})) == 500


async def test_a_raw_channel_without_authentication_fails_the_whole_request_with_13778(
    sim: SimulatorProcess, client: WsClient
) -> None:
    name = busiest(sim, count=1)[0]
    both = [f"ticker.{name}.100ms", f"trades.{name}.raw"]
    response = await client.request("public/subscribe", {"channels": both})
    assert response["error"] == {
        "code": 13778,
        "message": "raw_subscriptions_not_available_for_unauthorized",
    }
    # Nothing of the request was subscribed, not even the public channel.
    assert await client.result("public/unsubscribe", {"channels": both}) == []


async def test_an_authenticated_connection_may_subscribe_to_raw_channels(
    sim: SimulatorProcess, client: WsClient
) -> None:
    bad = await client.request(
        "public/auth",
        {"grant_type": "client_credentials", "client_id": sim.client_id, "client_secret": "no"},
    )
    assert bad["error"] == {"code": 13004, "message": "invalid_credentials"}
    token = await client.auth()
    assert token["token_type"] == "bearer"
    assert token["access_token"]
    name = busiest(sim, count=1)[0]
    channel = f"ticker.{name}.raw"
    assert await client.result("private/subscribe", {"channels": [channel]}) == [channel]
    note = await client.notification()
    assert note["channel"] == channel
    assert note["data"]["instrument_name"] == name


async def test_heartbeats_ask_for_a_test_and_close_the_connection_when_it_does_not_come(
    client: WsClient,
) -> None:
    too_short = await client.request("public/set_heartbeat", {"interval": 0.1})
    assert too_short["error"]["data"]["param"] == "interval"
    assert await client.result("public/set_heartbeat", {"interval": 0.2}) == "ok"
    for _ in range(3):
        beat = await asyncio.wait_for(client.heartbeats.get(), 5)
        assert beat == {"type": "test_request"}
        await client.result("public/test")
    await asyncio.wait_for(client.heartbeats.get(), 5)
    # No answer this time: the next beat closes the connection.
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 1000


async def test_disabling_heartbeats_stops_them(client: WsClient) -> None:
    await client.result("public/set_heartbeat", {"interval": 0.2})
    await asyncio.wait_for(client.heartbeats.get(), 5)
    assert await client.result("public/disable_heartbeat", {}) == "ok"
    await client.result("public/test")
    # Three intervals later the connection is still open and answers. The silence is what is
    # tested: there is no condition to wait for.
    await asyncio.sleep(0.6)
    assert not client.closed.is_set()
    assert await client.result("public/test") == {"version": "1.2.26"}


async def test_the_33rd_connection_from_one_address_is_refused_with_http_429(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    clients = [await WsClient.connect(http, sim.ws_url) for _ in range(32)]
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await WsClient.connect(http, sim.ws_url)
        assert refused.value.status == 429
        async with http.get(f"{sim.rest_url}/public/test") as response:
            assert response.status == 429
        # The simulator's own controls never count.
        assert sim.info()["connections"] == 32
        await clients.pop().close()
        clients.append(await WsClient.connect(http, sim.ws_url))
    finally:
        for c in clients:
            await c.close()


async def test_running_out_of_credits_answers_10028_and_ends_the_session(
    sim: SimulatorProcess, client: WsClient
) -> None:
    channel = f"ticker.{busiest(sim, count=1)[0]}.100ms"
    answers = []
    for _ in range(12):  # subscribe costs 3,000 of 30,000 credits
        try:
            answers.append(await client.request("public/subscribe", {"channels": [channel]}))
        except ConnectionError:
            break
    codes = [a.get("error", {}).get("code") for a in answers]
    assert codes[:10] == [None] * 10
    assert codes[10] == 10028
    await asyncio.wait_for(client.closed.wait(), 5)


async def test_rest_mirror_answers_get_and_post_and_refuses_websocket_only_methods(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    url = f"{sim.rest_url}/public/get_instruments"
    async with http.get(url, params={"currency": "ETH", "kind": "option", "expired": "false"}) as r:
        body = await r.json()
        assert r.status == 200
    assert "id" not in body
    assert {"usIn", "usOut", "usDiff", "testnet"} <= set(body)
    assert len(body["result"]) > 500
    request = {"jsonrpc": "2.0", "id": 77, "method": "public/get_instruments",
               "params": {"currency": "ETH", "kind": "option"}}  # fmt: skip
    async with http.post(url, json=request) as r:
        posted = await r.json()
    assert posted["id"] == 77
    assert len(posted["result"]) == len(body["result"])
    async with http.post(url, json={"currency": "ETH"}) as r:
        assert len((await r.json())["result"]) == len(body["result"])
    for method in ("public/subscribe", "public/set_heartbeat", "public/hello"):
        async with http.get(f"{sim.rest_url}/{method}") as r:
            refused = await r.json()
            assert r.status == 400
        assert refused["error"] == {"code": 10030, "message": "must_be_websocket_request"}
    async with http.get(f"{sim.rest_url}/public/nope") as r:
        assert (await r.json())["error"]["code"] == -32601


def instrument_names(instruments: list[dict[str, Any]]) -> list[str]:
    return sorted(i["instrument_name"] for i in instruments)


async def test_get_instruments_without_a_currency_lists_every_currency_like_any(
    sim: SimulatorProcess, client: WsClient, http: aiohttp.ClientSession
) -> None:
    per_currency = [
        name
        for currency in ("BTC", "ETH")
        for name in instrument_names(
            sim.rest("public/get_instruments", currency=currency)["result"]
        )
    ]
    # What a client loading every market sends (ccxt does by default): no parameters at all.
    async with http.get(f"{sim.rest_url}/public/get_instruments") as r:
        assert r.status == 200
        everything = instrument_names((await r.json())["result"])
    assert everything == sorted(per_currency)
    assert instrument_names(await client.result("public/get_instruments")) == everything
    assert instrument_names(await client.result("public/get_instruments", {})) == everything
    any_currency = await client.result("public/get_instruments", {"currency": "any"})
    assert instrument_names(any_currency) == everything
    options = await client.result("public/get_instruments", {"currency": "any", "kind": "option"})
    assert instrument_names(options) == everything
    assert {i["base_currency"] for i in options} == {"BTC", "ETH"}
    assert await client.result("public/get_instruments", {"kind": "future"}) == []
    expired = sim.rest("public/get_instruments", expired=True)
    assert isinstance(expired["result"], list)
    refused = await client.request("public/get_instruments", {"currency": "DOGE"})
    assert refused["error"]["data"] == {"reason": "invalid currency", "param": "currency"}


async def test_order_book_and_ticker_snapshots(sim: SimulatorProcess, client: WsClient) -> None:
    name = busiest(sim, count=1)[0]
    book = await client.result("public/get_order_book", {"instrument_name": name, "depth": 5})
    assert book["instrument_name"] == name
    assert isinstance(book["change_id"], int)
    assert 0 < len(book["bids"]) <= 5
    assert all(len(level) == 2 for level in book["bids"])
    prices = [p for p, _ in book["bids"]]
    assert prices == sorted(prices, reverse=True)
    assert book["bids"][0][0] < book["asks"][0][0]
    bad = await client.request("public/get_order_book", {"instrument_name": name, "depth": 7})
    assert bad["error"]["data"]["param"] == "depth"
    ticker = await client.result("public/ticker", {"instrument_name": name})
    assert ticker["instrument_name"] == name
    assert ticker["state"] == "open"


async def test_status_currencies_and_hello(client: WsClient) -> None:
    assert await client.result("public/status") == {"locked": "false", "locked_indices": []}
    currencies = await client.result("public/get_currencies")
    assert [c["currency"] for c in currencies] == ["BTC", "ETH"]
    hello = await client.request("public/hello", {"client_name": "t"})
    assert hello["error"]["data"]["param"] == "client_version"
    assert await client.result("public/hello", {"client_name": "t", "client_version": "1"}) == {
        "version": "1.2.26"
    }


async def test_book_subscription_starts_with_a_snapshot_then_chained_changes(
    sim: SimulatorProcess, client: WsClient
) -> None:
    name = busiest(sim, count=1)[0]
    channel = f"book.{name}.100ms"
    await client.result("public/subscribe", {"channels": [channel]})
    first = await client.notification()
    assert first["channel"] == channel
    assert first["data"]["type"] == "snapshot"
    previous = first["data"]["change_id"]
    for _ in range(3):
        note = await client.notification()
        assert note["data"]["type"] == "change"
        assert note["data"]["prev_change_id"] == previous
        previous = note["data"]["change_id"]
