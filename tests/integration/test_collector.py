"""The collector against the simulator and a real PostgreSQL, over real sockets.

Completeness is judged against the simulator's ledger: every notification it sent on a channel
must be in the database, no more and no less (the natural keys make "more" impossible).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.collector import (
    TABLE_OF,
    CollectorProcess,
    assignment_doc,
    count,
    fetch,
    local_config,
    running_collector,
    sent_per_instrument,
    stored_per_instrument,
    wait_for,
    write_atomically,
)
from harness.ports import free_port
from harness.simulator import SimulatorProcess
from optionfeed.collector.config import LocalPlan
from optionfeed.collector.gaps import channel_key

SAMPLES = Path(__file__).parents[1] / "data" / "deribit"


@pytest.mark.slow
async def test_a_60_second_run_over_200_instruments_stores_everything_that_was_sent(
    database_url: str,
) -> None:
    with SimulatorProcess("--rate", "3000") as sim:
        config = local_config(
            assignment_path=None,
            local=LocalPlan("BTC", 200, ("ticker", "trades", "book"), "100ms"),
            exchange_url=sim.ws_url,
            database_url=database_url,
            duration=None,
        )
        async with running_collector(config) as collector:
            assert collector.plan is not None
            instruments = set(collector.plan.instruments)
            assert len(instruments) == 200
            await asyncio.sleep(60)
        ledger = sim.ledger()
        history = {}
        async with aiohttp.ClientSession() as http:
            busiest = sorted(sent_per_instrument(ledger, "trades").items(), key=lambda kv: -kv[1])[
                :5
            ]
            for instrument, _ in busiest:
                async with http.get(
                    f"{sim.rest_url}/public/get_last_trades_by_instrument",
                    params={
                        "instrument_name": instrument,
                        "count": "1000",
                        "sorting": "asc",
                        "start_seq": "1",
                    },
                ) as response:
                    history[instrument] = (await response.json())["result"]["trades"]

    for family in ("ticker", "trades", "book"):
        sent = sent_per_instrument(ledger, family)
        stored = await stored_per_instrument(database_url, TABLE_OF[family])
        assert set(sent) <= instruments
        assert stored == sent, f"{family}: stored rows differ from what the simulator sent"
    tickers = await stored_per_instrument(database_url, "option_tickers")
    assert set(tickers) == instruments, "every instrument has ticker rows"

    books = await fetch(
        database_url,
        "SELECT instrument, max(change_id) AS last, count(DISTINCT change_id) AS n "
        "FROM option_book GROUP BY instrument",
    )
    for row in books:
        channel = ledger["channels"][f"book.{row['instrument']}.100ms"]
        assert row["last"] == channel["last_change_id"]
        assert row["n"] == channel["notifications"], "every book change_id is stored once"

    # Against REST: every trade_seq the exchange reports in the subscribed window is stored.
    for instrument, trades in history.items():
        seqs = await fetch(
            database_url,
            "SELECT trade_seq FROM option_trades WHERE instrument = $1 ORDER BY trade_seq",
            instrument,
        )
        stored_seqs = [r["trade_seq"] for r in seqs]
        assert stored_seqs, instrument
        window = [
            t["trade_seq"] for t in trades if stored_seqs[0] <= t["trade_seq"] <= stored_seqs[-1]
        ]
        assert stored_seqs == window, f"{instrument}: stored trade_seq differ from REST history"


def _capture_notifications() -> list[dict[str, Any]]:
    messages = []
    for line in (SAMPLES / "ws-options-2021-07-22.txt").read_text().splitlines():
        head, sep, body = line.partition(": ")
        if not sep or " " in head:
            continue
        message = json.loads(body)
        if message.get("method") == "subscription":
            messages.append(message["params"])
    return messages


async def test_the_real_capture_replayed_through_the_simulator_lands_field_for_field(
    database_url: str, tmp_path: Path
) -> None:
    notifications = _capture_notifications()
    instruments = sorted({p["data"]["instrument_name"] for p in notifications})
    with SimulatorProcess(
        "--replay", str(SAMPLES / "ws-options-2021-07-22.txt"),
        "--replay-instruments", str(SAMPLES / "rest-get_instruments-2021-2022.txt"),
        "--replay-speed", "10",
    ) as sim:  # fmt: skip
        path = tmp_path / "assignment.json"
        write_atomically(
            path,
            assignment_doc(instruments, exchange_url=sim.ws_url, currency="BTC",
                           channels=("ticker", "trades", "book")),
        )  # fmt: skip
        config = local_config(assignment_path=path, database_url=database_url)
        tickers = [p["data"] for p in notifications if p["channel"].startswith("ticker.")]
        books = [p["data"] for p in notifications if p["channel"].startswith("book.")]
        async with running_collector(config):

            async def all_stored() -> bool:
                return await count(database_url, "option_tickers") >= len(tickers) and await count(
                    database_url, "option_book"
                ) >= len(books)

            await wait_for(all_stored, within=60, what="the replayed capture to be stored")

    columns = {"instrument_name": "instrument", "timestamp": "ts"}
    for data in tickers:
        rows = await fetch(
            database_url,
            "SELECT *, (extract(epoch FROM ts) * 1000)::bigint AS ts_ms FROM option_tickers "
            "WHERE instrument = $1 AND ts = to_timestamp($2 / 1000.0)",
            data["instrument_name"], data["timestamp"],
        )  # fmt: skip
        assert len(rows) == 1
        row = dict(rows[0])
        for key, value in data.items():
            if key == "greeks":
                for greek, number in value.items():
                    assert row[greek] == number, (data["instrument_name"], greek)
            elif key == "stats":
                for stat, number in value.items():
                    assert row[f"stats_{stat}"] == number, (data["instrument_name"], stat)
            elif key == "timestamp":
                assert row["ts_ms"] == value
            elif key == "estimated_delivery_price" and value == "expired":
                assert row["expired"] is True
            else:
                assert row[columns.get(key, key)] == value, (data["instrument_name"], key)
        assert row["extra"] is None, "every key of the capture has a column"
    for data in books:
        rows = await fetch(
            database_url,
            "SELECT type, prev_change_id, bids, asks FROM option_book "
            "WHERE instrument = $1 AND change_id = $2",
            data["instrument_name"], data["change_id"],
        )  # fmt: skip
        assert len(rows) == 1
        assert rows[0]["type"] == data["type"]
        assert rows[0]["prev_change_id"] == data.get("prev_change_id")
        assert json.loads(rows[0]["bids"]) == data["bids"]
        assert json.loads(rows[0]["asks"]) == data["asks"]


async def test_reloading_the_assignment_changes_instruments_on_the_live_connection(
    database_url: str, tmp_path: Path
) -> None:
    with SimulatorProcess("--rate", "4000") as sim:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{sim.rest_url}/public/get_instruments",
                params={"currency": "ETH", "kind": "option"},
            ) as response,
        ):
            names = sorted(i["instrument_name"] for i in (await response.json())["result"])[:60]
        first, second = names[:40], names[20:60]
        path = tmp_path / "assignment.json"
        write_atomically(path, assignment_doc(first, exchange_url=sim.ws_url))
        config = local_config(assignment_path=path, database_url=database_url)
        async with running_collector(config) as collector:
            assert collector.pool is not None

            async def tickers_of(wanted: list[str]) -> bool:
                have = await stored_per_instrument(database_url, "option_tickers")
                return set(wanted) <= set(have)

            await wait_for(lambda: tickers_of(first), within=60, what="the first instruments")
            sessions_before = [c.sessions for c in collector.pool.connections]
            write_atomically(path, assignment_doc(second, exchange_url=sim.ws_url, generation=2))
            await wait_for(lambda: tickers_of(second), within=60, what="the new instruments")

            async def old_ones_unsubscribed() -> bool:
                acked = collector.pool.acknowledged if collector.pool else frozenset()
                return not any(f"ticker.{n}.100ms" in acked for n in first[:20])

            await wait_for(old_ones_unsubscribed, within=30, what="removed channels to go")
            assert [c.sessions for c in collector.pool.connections] == sessions_before
        ledger = sim.ledger()
    opened = ledger["connections"]
    assert len(opened) == 1, "one connection for the whole run: no reconnect"
    removed = {f"ticker.{n}.100ms" for n in first[:20]}
    stored = await stored_per_instrument(database_url, "option_tickers")
    for channel in removed:
        instrument = ledger["channels"][channel]["instrument"]
        assert stored[instrument] == ledger["channels"][channel]["notifications"]


async def test_probes_report_live_and_ready_and_metrics_carry_the_documented_names(
    database_url: str, simulator: SimulatorProcess
) -> None:
    port = free_port()
    config = local_config(
        assignment_path=None,
        local=LocalPlan("ETH", 10, ("ticker", "trades"), "100ms"),
        exchange_url=simulator.ws_url,
        database_url=database_url,
        metrics_port=port,
        metrics_host="127.0.0.1",
    )
    base = f"http://127.0.0.1:{port}"
    async with running_collector(config), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/livez") as response:
            assert response.status == 200

        answers: list[str] = []

        async def ready() -> bool:
            async with http.get(f"{base}/readyz") as response:
                answers.append(await response.text())
                return response.status == 200

        await wait_for(ready, within=30, what="/readyz to answer 200")
        text = answers[-1]
        assert "[+] subscribed" in text
        assert "[+] database" in text
        metrics = ""

        async def committed() -> bool:
            # Ready does not wait for a first commit; the per-table series follow one.
            nonlocal metrics
            async with http.get(f"{base}/metrics") as response:
                metrics = await response.text()
            return any(
                s.labels.get("table") == "option_tickers" and s.value > 0
                for family in text_string_to_metric_families(metrics)
                if family.name == "optionfeed_rows_written"
                for s in family.samples
            )

        await wait_for(committed, within=30, what="a first commit of tickers")
    for name in (
        'optionfeed_messages_total{channel="ticker"}',
        'optionfeed_rows_written_total{table="option_tickers"}',
        "optionfeed_buffer_fill_ratio",
        "optionfeed_write_duration_seconds_bucket",
        "optionfeed_commit_lag_seconds_bucket",
        "optionfeed_subscribed_channels",
        "optionfeed_connections 1.0",
    ):
        assert name in metrics, name


async def test_malformed_frames_become_rejected_rows_and_the_collector_keeps_going(
    database_url: str,
) -> None:
    with SimulatorProcess("--rate", "2000", "--malformed-rate", "0.05") as sim:
        config = local_config(
            assignment_path=None,
            local=LocalPlan("ETH", 30, ("ticker", "trades"), "100ms"),
            exchange_url=sim.ws_url,
            database_url=database_url,
        )
        async with running_collector(config):

            async def some_rejected() -> bool:
                return await count(database_url, "rejected_messages") >= 20

            await wait_for(some_rejected, within=60, what="rejected rows")
        ledger = sim.ledger()
    rejected = await fetch(database_url, "SELECT reason, raw FROM rejected_messages")
    assert len(rejected) == ledger["totals"]["malformed"]
    assert all(r["raw"] and r["reason"] for r in rejected)
    assert await count(database_url, "option_tickers") > 0


def test_an_unreachable_database_is_one_line_and_a_nonzero_exit(
    simulator: SimulatorProcess,
) -> None:
    dead = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/x"
    with CollectorProcess(
        "--currency", "ETH", "--exchange-url", simulator.ws_url, "--database-url", dead,
        "--metrics-port", "0",
    ) as collector:  # fmt: skip
        assert collector.wait(60) == 1
        lines = [line for line in collector.output.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, collector.output
    assert "secret" not in collector.output
    assert "Traceback" not in collector.output


def test_an_invalid_assignment_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"feed": "x"}')
    with CollectorProcess("--assignment", str(path), "--database-url", "postgresql://h/db",
                          "--metrics-port", "0") as collector:  # fmt: skip
        assert collector.wait(60) == 2
    assert "missing field" in collector.output
    assert "Traceback" not in collector.output


async def test_a_ctrl_c_delivered_twice_at_once_still_stops_cleanly(
    database_url: str, simulator: SimulatorProcess
) -> None:
    # A terminal's Ctrl-C reaches the whole process group and wrappers forward it again.
    with CollectorProcess(
        "--currency", "ETH", "--top", "10", "--exchange-url", simulator.ws_url,
        "--database-url", database_url, "--metrics-port", "0",
    ) as collector:  # fmt: skip

        async def flowing() -> bool:
            return await count(database_url, "option_tickers") > 0

        await wait_for(flowing, within=60, what="rows to flow")
        collector.signal(signal.SIGINT)
        collector.signal(signal.SIGINT)
        assert collector.wait(60) == 0, collector.output
    assert "stopped cleanly" in collector.output
    assert "without waiting for the drain" not in collector.output


async def test_a_stop_in_the_moment_a_gap_is_queued_ends_within_seconds_and_writes_the_gap(
    database_url: str, simulator: SimulatorProcess
) -> None:
    config = local_config(
        assignment_path=None,
        local=LocalPlan("ETH", 10, ("ticker", "trades"), "100ms"),
        exchange_url=simulator.ws_url,
        database_url=database_url,
    )
    async with running_collector(config, stop_within=30) as collector:
        pool, pipeline = collector.pool, collector.pipeline
        assert pool is not None
        assert pipeline is not None

        async def subscribed() -> bool:
            return pool.subscribed

        await wait_for(subscribed, within=30, what="subscription")
        await asyncio.sleep(0.5)  # the gap writer waits for rows again
        connection = pool.connections[0]
        channels = frozenset(c for c in connection.acked if channel_key(c) is not None)
        # In one step, as when a session ends just as the stop comes: the gap writer is woken and
        # cancelled on the same turn of the loop.
        pipeline.gaps.disconnected(connection, channels, "stale", time.time())
        collector.stop()
    rows = await fetch(database_url, "SELECT count(*) AS n FROM data_gaps WHERE reason = 'stale'")
    assert rows[0]["n"] == len(channels) == 20
