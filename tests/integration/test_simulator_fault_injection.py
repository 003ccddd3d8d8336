"""Faults injected at run time (``POST /sim/faults``) and from the command line."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from harness.collector import wait_for
from harness.simulator import SimulatorProcess, WsClient

CLEAR = {
    "maintenance": False,
    "malformed_rate": 0.0,
    "errors": [],
    "drop_every": None,
    "close_code": 1000,
    "slow_consumer_bytes": 32 * 1024 * 1024,
    "unstale": {},
}


@pytest.fixture(scope="module")
def shared() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--rate", "4000", "--min-heartbeat-interval", "0.2") as process:
        yield process


@pytest.fixture
def sim(shared: SimulatorProcess) -> Iterator[SimulatorProcess]:
    yield shared
    shared.set_faults(**CLEAR)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(http: aiohttp.ClientSession, sim: SimulatorProcess) -> tuple[WsClient, int]:
    """A client and its connection id in the simulator's ledger."""
    client = await WsClient.connect(http, sim.ws_url)
    await client.result("public/test")
    sockname = client.ws.get_extra_info("sockname")
    peer = f"127.0.0.1:{sockname[1]}"
    connections = sim.ledger(instrument="-")["connections"]
    conn_id = next(int(i) for i, c in connections.items() if c["peer"] == peer)
    return client, conn_id


def busy_channels(sim: SimulatorProcess, count: int, family: str = "ticker") -> list[str]:
    summaries = sim.rest("public/get_book_summary_by_currency", currency="BTC")["result"]
    ranked = sorted(summaries, key=lambda s: (-s["volume_usd"], s["instrument_name"]))
    return [f"{family}.{s['instrument_name']}.100ms" for s in ranked[:count]]


async def test_maintenance_locks_the_platform_and_halts_the_market(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    client, _ = await connect(http, sim)
    channel = busy_channels(sim, 1)[0]
    await client.result("public/subscribe", {"channels": ["platform_state"]})
    sim.set_faults(maintenance=True)
    note = await client.notification()
    assert note == {"channel": "platform_state", "data": {"maintenance": True}}
    for method, params in (
        ("public/get_instruments", {"currency": "BTC"}),
        ("public/subscribe", {"channels": [channel]}),
        ("public/ticker", {"instrument_name": channel.split(".")[1]}),
    ):
        response = await client.request(method, params)
        assert response["error"] == {"code": 11051, "message": "system_maintenance"}, method
    status = await client.result("public/status")
    assert status["locked"] == "true"
    assert "btc_usd" in status["locked_indices"]
    assert sim.rest("public/get_book_summary_by_currency", currency="BTC")["error"]["code"] == 11051
    events = sim.ledger(instrument="-")["totals"]["events"]
    assert await client.result("public/test") == {"version": "1.2.26"}
    assert sim.ledger(instrument="-")["totals"]["events"] == events  # halted
    sim.set_faults(maintenance=False)
    assert await client.result("public/status") == {"locked": "false", "locked_indices": []}
    assert await client.result("public/subscribe", {"channels": [channel]}) == [channel]
    await client.notification()  # the market runs again
    await client.close()


async def test_dropping_a_connection_resets_it_and_leaves_the_others(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    victim, victim_id = await connect(http, sim)
    bystander, _ = await connect(http, sim)
    answer = sim.set_faults(drop={"connections": [victim_id]})
    assert answer["dropped"] == [victim_id]
    await asyncio.wait_for(victim.closed.wait(), 5)
    assert victim.close_code == 1006  # no close frame: the TCP connection was reset
    assert await bystander.result("public/test") == {"version": "1.2.26"}
    assert sim.ledger(instrument="-")["connections"][str(victim_id)]["reason"] == "dropped"
    await bystander.close()


async def test_a_dropped_connection_can_be_closed_with_a_chosen_close_code(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    client, conn_id = await connect(http, sim)
    sim.set_faults(close_code=4321, drop={"connections": [conn_id], "mode": "close"})
    await asyncio.wait_for(client.closed.wait(), 5)
    assert client.close_code == 4321


async def test_connections_are_dropped_every_n_seconds(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    first, _ = await connect(http, sim)
    sim.set_faults(drop_every=0.3, drop_fraction=1.0)
    await asyncio.wait_for(first.closed.wait(), 5)
    second, _ = await connect(http, sim)
    await asyncio.wait_for(second.closed.wait(), 5)
    sim.set_faults(drop_every=None)
    third, _ = await connect(http, sim)
    await asyncio.sleep(0.7)  # the quiet under test, over two former drop periods: no condition
    assert await third.result("public/test") == {"version": "1.2.26"}
    await third.close()


async def test_a_stale_connection_stays_open_and_answers_but_sends_no_data(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    client, conn_id = await connect(http, sim)
    await client.result("public/subscribe", {"channels": busy_channels(sim, 10)})
    await client.notification()
    answer = sim.set_faults(stale={"connections": [conn_id]})
    assert answer["stale"] == [conn_id]
    assert answer["stale_connections"] == [conn_id]
    await client.result("public/test")  # anything sent before the fault is in by now
    while not client.notifications.empty():
        client.notifications.get_nowait()
    sent = sim.ledger(instrument="-")["connections"][str(conn_id)]["notifications"]
    await client.result("public/set_heartbeat", {"interval": 0.2})
    for _ in range(3):  # 0.6 s: heartbeats and responses flow, data does not
        assert await asyncio.wait_for(client.heartbeats.get(), 5) == {"type": "test_request"}
        await client.result("public/test")
    assert client.notifications.empty()
    assert sim.ledger(instrument="-")["connections"][str(conn_id)]["notifications"] == sent
    sim.set_faults(unstale={"connections": [conn_id]})
    await client.notification()
    await client.close()


async def test_malformed_frames_arrive_at_the_rate_set_and_the_ledger_counts_them(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    sim.set_faults(malformed_rate=0.25)
    client, conn_id = await connect(http, sim)
    await client.result("public/subscribe", {"channels": busy_channels(sim, 20)})
    good = 0
    while good < 60:
        await client.notification()
        good += 1
    await client.close()
    record = sim.ledger(instrument="-")["connections"][str(conn_id)]
    assert record["malformed"] == len(client.unparsed) > 3
    notes = [f for f in client.raw_frames if f.startswith('{"jsonrpc":"2.0","method":"subs')]
    assert record["notifications"] == len(notes) - len(client.unparsed)
    for frame in client.unparsed:
        with pytest.raises(json.JSONDecodeError):
            json.loads(frame)


async def test_requests_can_be_answered_with_a_chosen_error(
    sim: SimulatorProcess, http: aiohttp.ClientSession
) -> None:
    sim.set_faults(errors=[{"code": 10040, "methods": ["public/get_instruments"], "count": 2}])
    client, _ = await connect(http, sim)
    params = {"currency": "ETH"}
    first = await client.request("public/get_instruments", params)
    assert first["error"] == {"code": 10040, "message": "retry"}
    assert await client.result("public/get_time")  # other methods are untouched
    assert sim.rest("public/get_instruments", currency="ETH")["error"]["code"] == 10040
    assert len(await client.result("public/get_instruments", params)) > 100
    assert sim.faults()["errors"] == []
    await client.close()


async def test_a_reader_that_falls_behind_is_disconnected_as_too_slow(
    sim: SimulatorProcess,
) -> None:
    """A raw-socket client that subscribes to a lot and then reads nothing."""
    sim.set_faults(slow_consumer_bytes=256 * 1024)
    names = [
        i["instrument_name"] for i in sim.rest("public/get_instruments", currency="BTC")["result"]
    ][:400]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room in the kernel
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", sim.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/api/v2 HTTP/1.1\r\nHost: 127.0.0.1:{sim.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    for i, family in enumerate(("ticker", "book")):
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "public/subscribe",
                "params": {"channels": [f"{family}.{n}.100ms" for n in names]},
            }
        ).encode()
        mask = os.urandom(4)
        header = bytes((0x81, 0x80 | 126)) + len(body).to_bytes(2, "big") + mask
        writer.write(header + bytes(b ^ mask[j % 4] for j, b in enumerate(body)))
    await writer.drain()
    connections_before = set(sim.faults()["connections"])
    assert connections_before

    async def disconnected_as_too_slow() -> bool:
        reasons = {c["reason"] for c in sim.ledger(instrument="-")["connections"].values()}
        return "connection_too_slow" in reasons

    await wait_for(disconnected_as_too_slow, within=20, what="the slow reader's disconnection")
    writer.close()
