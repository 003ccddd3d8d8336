"""``--replay``: a real capture played to subscribers over a real socket, payloads intact."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from harness.simulator import SimulatorProcess, WsClient

DATA = Path(__file__).parents[1] / "data" / "deribit"
WS = DATA / "ws-options-2021-07-22.txt"
REST = DATA / "rest-get_instruments-2021-2022.txt"
_RECEIVED = re.compile(r"^\d+(?:\.\d+)?: (?P<json>.*)$")


def captured() -> list[tuple[str, str]]:
    """(channel, frame text) of each captured notification, as in the file."""
    found = []
    for line in WS.read_text().splitlines():
        match = _RECEIVED.match(line)
        if match and '"method":"subscription"' in match["json"]:
            found.append((orjson.loads(match["json"])["params"]["channel"], match["json"]))
    return found


@pytest.fixture
def sim() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(
        "--replay", str(WS), "--replay-instruments", str(REST), "--replay-speed", "50"
    ) as process:
        yield process


async def test_replay_sends_the_captured_payloads_to_100ms_subscribers(
    sim: SimulatorProcess,
) -> None:
    frames = captured()
    channels = sorted({c.replace(".raw", ".100ms") for c, _ in frames})
    async with aiohttp.ClientSession() as http:
        client = await WsClient.connect(http, sim.ws_url)
        result = await client.result("public/subscribe", {"channels": channels})
        assert sorted(result) == channels
        received = [await client.notification(within=10) for _ in frames]
        await client.close()
    notifications = [
        f for f in client.raw_frames if f.startswith('{"jsonrpc":"2.0","method":"subscription"')
    ]
    expected = [text.replace(f'"{c}"', f'"{c.replace(".raw", ".100ms")}"') for c, text in frames]
    assert notifications == expected  # byte for byte, but for the channel's interval suffix
    assert [n["channel"] for n in received] == [c.replace(".raw", ".100ms") for c, _ in frames]
    ledger = sim.ledger()
    assert ledger["source"] == "replay"
    assert ledger["totals"]["notifications"] == len(frames)
    assert sum(g["events"] for g in ledger["generated"].values()) == len(frames)


async def test_replay_serves_raw_channels_to_authenticated_clients_unchanged(
    sim: SimulatorProcess,
) -> None:
    frames = [(c, t) for c, t in captured() if "ETH-30JUL21-2800-C" in c]
    async with aiohttp.ClientSession() as http:
        client = await WsClient.connect(http, sim.ws_url)
        await client.auth()
        await client.result("public/subscribe", {"channels": sorted({c for c, _ in frames})})
        for _ in frames:
            await client.notification(within=10)
        await client.close()
    assert [f for f in client.raw_frames if '"subscription"' in f] == [t for _, t in frames]


def test_replay_serves_the_captured_instruments_and_their_state_over_rest(
    sim: SimulatorProcess,
) -> None:
    btc = sim.rest("public/get_instruments", currency="BTC", kind="option")["result"]
    assert len(btc) == 390
    assert btc[0]["instrument_name"] == "BTC-24SEP21-40000-P"
    sol = sim.rest("public/get_instruments", currency="SOL")["result"]
    assert len(sol) == 177
    summaries = sim.rest("public/get_book_summary_by_currency", currency="ETH", kind="option")
    ranked = sorted(summaries["result"], key=lambda s: -s["open_interest"])
    assert ranked[0]["instrument_name"] == "ETH-30JUL21-2800-C"  # open interest 12685
    ticker = sim.rest("public/ticker", instrument_name="BTC-24SEP21-8000-P")["result"]
    assert ticker["underlying_index"] == "BTC-24SEP21"
    book = sim.rest("public/get_order_book", instrument_name="BTC-31DEC21-300000-C")["result"]
    assert book["bids"][0] == [0.005, 2.1]
    assert book["change_id"] == 33195892355
