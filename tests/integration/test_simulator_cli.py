"""``optionfeed simulate --port P`` serves a plain WebSocket client."""

from __future__ import annotations

import json
import subprocess
import sys

import aiohttp

from harness.ports import free_port
from harness.simulator import SimulatorProcess


async def test_optionfeed_simulate_on_a_given_port_serves_a_plain_websocket_client() -> None:
    port = free_port()
    with SimulatorProcess(port=port) as sim:
        assert sim.port == port
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"ws://127.0.0.1:{port}/ws/api/v2") as ws,
        ):
            await ws.send_str(
                json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/test", "params": {}})
            )
            reply = json.loads(await ws.receive_str(timeout=10))
        assert reply["id"] == 1
        assert reply["result"] == {"version": "1.2.26"}
        assert reply["usDiff"] == reply["usOut"] - reply["usIn"]
        assert sim.stop() == 0  # SIGTERM ends it cleanly


def test_a_bad_flag_is_a_usage_error_that_names_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "optionfeed", "simulate", "--currencies", "DOGE"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "DOGE" in result.stderr
    assert "BTC, ETH, USDC" in result.stderr


def test_flags_also_come_from_the_environment() -> None:
    with SimulatorProcess(env={"OPTIONFEED_CURRENCIES": "USDC"}) as sim:
        assert sim.info()["currencies"] == ["USDC"]
