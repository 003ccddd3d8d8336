"""The market runs on the wall clock: gaps are real and recoverable, and expiries happen."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from harness.simulator import SimulatorProcess, WsClient
from optionfeed.deribit.rest import RestClient


async def trade_seqs(client: WsClient, channel: str, count: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < count:
        note = await client.notification(within=15)
        if note["channel"] == channel:
            seqs.extend(t["trade_seq"] for t in note["data"])
    return seqs


async def test_a_client_away_for_5_s_finds_the_missing_trades_by_trade_seq() -> None:
    with SimulatorProcess(
        "--currencies", "BTC", "--rate", "4000", "--trade-fraction", "0.3"
    ) as sim:
        async with aiohttp.ClientSession() as http:
            scout = await WsClient.connect(http, sim.ws_url)
            await scout.result("public/subscribe", {"channels": ["trades.option.BTC.100ms"]})
            seen: Counter[str] = Counter()
            while not seen or seen.most_common(1)[0][1] < 3:
                note = await scout.notification()
                seen.update(t["instrument_name"] for t in note["data"])
            await scout.close()
            name = seen.most_common(1)[0][0]
            channel = f"trades.{name}.100ms"

            before = await WsClient.connect(http, sim.ws_url)
            await before.result("public/subscribe", {"channels": [channel]})
            last_seen = max(await trade_seqs(before, channel, 2))
            await before.close()

            await asyncio.sleep(5.0)  # away: the market does not wait

            after = await WsClient.connect(http, sim.ws_url)
            await after.result("public/subscribe", {"channels": [channel]})
            first_after = min(await trade_seqs(after, channel, 1))
            await after.close()
            missed = first_after - last_seen - 1
            assert missed > 3, f"only {missed} trades of {name} while the client was away"

            rest = RestClient(sim.ws_url, http)
            recovered: list[int] = []
            start, pages = last_seen + 1, 0
            while True:
                page = await rest.get_last_trades_by_instrument(
                    name, start_seq=start, end_seq=first_after - 1, count=3, sorting="asc"
                )
                pages += 1
                recovered.extend(t["trade_seq"] for t in page["trades"])
                if not page["has_more"]:
                    break
                start = recovered[-1] + 1
            assert recovered == list(range(last_seen + 1, first_after)), (last_seen, first_after)
            assert pages > 1, f"{missed} trades fit in one page of 3"
            generated = sim.ledger(instrument=name)["generated"][name]
            assert generated["first_trade_seq"] == 1
            assert generated["last_trade_seq"] >= first_after


async def test_instruments_expire_and_new_ones_are_listed_during_a_run() -> None:
    with SimulatorProcess(
        "--currencies", "BTC", "--rate", "500", "--expire-in", "2", "--settlement-delay", "0.5"
    ) as sim:
        instruments = sim.rest("public/get_instruments", currency="BTC")["result"]
        soonest = min(i["expiration_timestamp"] for i in instruments)
        expiring = sorted(
            i["instrument_name"] for i in instruments if i["expiration_timestamp"] == soonest
        )
        assert soonest % 86_400_000 == 8 * 3_600_000  # 08:00 UTC
        async with aiohttp.ClientSession() as http:
            client = await WsClient.connect(http, sim.ws_url)
            watched = f"ticker.{expiring[0]}.100ms"
            await client.result(
                "public/subscribe", {"channels": ["instrument.state.option.BTC", watched]}
            )
            states: dict[str, list[str]] = {}
            final_ticker = None
            while not (
                final_ticker is not None
                and all(states.get(n, [])[-1:] == ["delivered"] for n in expiring)
                and any(s == ["open"] for s in states.values())
            ):
                note = await client.notification(within=15)
                data = note["data"]
                if note["channel"] == watched:
                    if data["state"] == "closed":
                        final_ticker = data
                    continue
                assert data["timestamp"] >= soonest
                states.setdefault(data["instrument_name"], []).append(data["state"])
            await client.close()
        for name in expiring:
            assert states[name] == ["settlement", "delivered"]
        listed = [n for n, s in states.items() if s == ["open"]]
        assert all(n not in expiring for n in listed)
        assert final_ticker["estimated_delivery_price"] == "expired"
        assert isinstance(final_ticker["delivery_price"], float)
        live = {
            i["instrument_name"]
            for i in sim.rest("public/get_instruments", currency="BTC")["result"]
        }
        assert not live & set(expiring)
        assert set(listed) <= live
        expired = sim.rest("public/get_instruments", currency="BTC", expired=True)["result"]
        assert {i["instrument_name"] for i in expired} == set(expiring)
        assert all(not i["is_active"] for i in expired)
        ticker = sim.rest("public/ticker", instrument_name=expiring[0])["result"]
        assert ticker["state"] == "closed"
        generated = sim.ledger(instrument=expiring[0])["generated"][expiring[0]]
        assert generated["state"] == "delivered"


@pytest.mark.parametrize("currency", ["ETH", "USDC"])
async def test_trade_ids_are_strings_unique_per_currency(currency: str) -> None:
    with SimulatorProcess(
        "--currencies", currency, "--rate", "3000", "--trade-fraction", "0.5"
    ) as sim:
        async with aiohttp.ClientSession() as http:
            client = await WsClient.connect(http, sim.ws_url)
            await client.result(
                "public/subscribe", {"channels": [f"trades.option.{currency}.100ms"]}
            )
            ids: list[str] = []
            while len(ids) < 50:
                ids.extend(t["trade_id"] for t in (await client.notification())["data"])
            await client.close()
        assert len(set(ids)) == len(ids)
        assert all(i.startswith(f"{currency}-") for i in ids)
