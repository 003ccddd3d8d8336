"""Failure drills: the collector against a hostile world, each with the figure it proves.

``make test`` runs them short; ``make drills`` (``OPTIONFEED_DRILLS=full``) at the full length
that README.md's Reliability section gives. Socket-level faults come from a TCP proxy of our own
(``harness.faultproxy``) that resets or blackholes connections the way a cable or a middlebox
does; the exchange's own faults (10028, malformed frames, a stalled data stream) come from the
simulator.

Completeness is judged against the simulator's ledger: what it sent must be stored, and every
trade it generated while the collector was recording must be stored (backfill included).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

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
from harness.drills import drills_full
from harness.faultproxy import FaultProxy
from harness.ports import free_port
from harness.postgres import TempPostgres
from harness.simulator import SimulatorProcess
from optionfeed.collector.app import Collector
from optionfeed.collector.config import LocalPlan

pytestmark = [pytest.mark.drill, pytest.mark.slow]


def length(short: float, full: float) -> float:
    return full if drills_full() else short


def sample(collector: Collector, name: str, labels: dict[str, str] | None = None) -> float:
    value = collector.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def trade_holes(url: str, ledger: dict[str, Any]) -> tuple[int, int, int]:
    """(trades stored, trades expected, holes): every trade_seq from the first one stored to the
    last one the simulator had sent by ``ledger`` time must be stored.

    Trades generated while the collector was away lie below that bound, so they must have been
    fetched by backfill. Trades generated after the last frame sent (an aggregated channel's next
    frame, never sent once the collector unsubscribed) are not owed.
    """
    sent = last_trades_sent(ledger)
    rows = await fetch(
        url,
        "SELECT instrument, array_agg(DISTINCT trade_seq ORDER BY trade_seq) AS seqs "
        "FROM option_trades GROUP BY instrument",
    )
    stored = expected = holes = 0
    for row in rows:
        seqs: list[int] = row["seqs"]
        last_sent = sent.get(row["instrument"])
        if last_sent is None or last_sent < seqs[0]:
            continue  # its first stored trade came after the ledger was read: nothing expected yet
        wanted = set(range(seqs[0], last_sent + 1))
        have = set(seqs) & wanted
        stored += len(have)
        expected += len(wanted)
        holes += len(wanted - have)
    return stored, expected, holes


def last_trades_sent(ledger: dict[str, Any]) -> dict[str, int]:
    """Per instrument, the trade_seq of the last trade the simulator had sent by ``ledger`` time."""
    sent: dict[str, int] = {}
    for name, channel in ledger["channels"].items():
        seq = channel["last_trade_seq"]
        if name.startswith("trades.") and channel["instrument"] and seq is not None:
            sent[channel["instrument"]] = max(seq, sent.get(channel["instrument"], seq))
    return sent


async def newest_trades_stored(url: str, ledger: dict[str, Any]) -> bool:
    """Every instrument with trades stored has stored the last trade sent by ``ledger`` time: the
    frames in flight then have arrived and been written (or fetched by backfill)."""
    sent = last_trades_sent(ledger)
    rows = await fetch(
        url, "SELECT instrument, max(trade_seq) AS newest FROM option_trades GROUP BY instrument"
    )
    return all(
        row["newest"] >= sent[row["instrument"]] for row in rows if row["instrument"] in sent
    )


async def settle(collector: Collector) -> None:
    """Until the collector's backfill queue is empty and its buffer written."""
    assert collector.backfill is not None
    assert collector.writer is not None
    await asyncio.wait_for(collector.backfill.idle(), 120)
    await asyncio.wait_for(collector.writer.flush(), 60)


# ---------------------------------------------------------------------------------- the drills


async def test_drill_the_exchange_drops_every_connection_every_5_seconds(
    database_url: str, figure: Any
) -> None:
    duration = length(30, 120)
    with (
        SimulatorProcess("--rate", "3000", "--currencies", "ETH") as sim,
        FaultProxy(sim.port) as proxy,
    ):
        config = local_config(
            assignment_path=None,
            local=LocalPlan("ETH", 40, ("ticker", "trades", "book"), "100ms"),
            exchange_url=proxy.url,
            database_url=database_url,
        )
        async with running_collector(config) as collector:
            drops = 0
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                await asyncio.sleep(5)  # the drop period under test: nothing to wait for
                drops += proxy.abort_all() > 0
            assert collector.pool is not None
            pool = collector.pool

            async def reconnected() -> bool:
                return pool.subscribed and sum(c.sessions for c in pool.connections) > drops

            await wait_for(reconnected, within=60, what="the last reconnect")
            # What the market generated by now must be stored once in-flight frames have
            # arrived and every backfill has run.
            ledger = sim.ledger()

            async def caught_up_with_ledger() -> bool:
                await settle(collector)
                return await newest_trades_stored(database_url, ledger)

            await wait_for(caught_up_with_ledger, within=60, what="the trades sent by now")
            sessions = sum(c.sessions for c in pool.connections)
        stored, expected, holes = await trade_holes(database_url, ledger)
    gaps = await fetch(
        database_url,
        "SELECT channel, count(*) AS n, count(gap_end) AS closed, sum(rows_recovered) AS recovered "
        "FROM data_gaps WHERE reason = 'disconnect' GROUP BY channel",
    )
    by_channel = {g["channel"]: g for g in gaps}
    recovered = by_channel["trades"]["recovered"] if "trades" in by_channel else 0
    figure(
        f"{drops} drops in {duration:g} s; trades stored {stored}/{expected} "
        f"({100 * stored / max(1, expected):.2f} %), {holes} missing; "
        f"disconnect gaps recorded {sum(g['n'] for g in gaps)}, "
        f"trades recovered by backfill {recovered}"
    )
    assert drops >= duration // 5 - 1
    assert sessions >= drops + 1
    assert expected > 0
    assert holes == 0, "every trade is stored after backfill"
    for family in ("ticker", "trades", "book"):
        # Every instrument's channel has one closed gap per lost session.
        assert by_channel[family]["n"] == 40 * (sessions - 1)
        assert by_channel[family]["closed"] == by_channel[family]["n"]
    assert by_channel["trades"]["recovered"] > 0


async def _resubscribed(collector: Collector) -> bool:
    return collector.pool is not None and collector.pool.subscribed


async def test_drill_a_stale_stream_is_detected_within_two_heartbeat_intervals(
    database_url: str, figure: Any
) -> None:
    heartbeat = 2.0
    sim_args = ("--rate", "2000", "--currencies", "ETH", "--min-heartbeat-interval", "1")
    with SimulatorProcess(*sim_args) as sim, FaultProxy(sim.port) as proxy:
        config = local_config(
            assignment_path=None,
            local=LocalPlan("ETH", 20, ("ticker", "trades"), "100ms"),
            exchange_url=proxy.url,
            database_url=database_url,
            heartbeat_interval=heartbeat,
            data_timeout=1.5 * heartbeat,
        )
        async with running_collector(config) as collector:
            await wait_for(lambda: _resubscribed(collector), within=30, what="subscription")
            results = []
            # 1. A dead link: nothing flows, not even heartbeats (the cable).
            proxy.blackhole(True)
            started = time.monotonic()
            await wait_for(lambda: _stale_reconnects(collector, 1), within=30, what="detection")
            results.append(("dead link", time.monotonic() - started))
            proxy.blackhole(False)
            await wait_for(lambda: _resubscribed(collector), within=30, what="resubscription")
            # 2. The exchange stops data but keeps answering heartbeats (a stalled stream).
            sim.set_faults(stale={"fraction": 1.0})
            started = time.monotonic()
            await wait_for(lambda: _stale_reconnects(collector, 2), within=30, what="detection")
            results.append(("data stall", time.monotonic() - started))
            sim.set_faults(unstale={})
            await wait_for(lambda: _resubscribed(collector), within=30, what="resubscription")
    stale_gaps = await fetch(
        database_url, "SELECT count(*) AS n FROM data_gaps WHERE reason = 'stale'"
    )
    figure(
        ", ".join(f"{what} detected in {seconds:.1f} s" for what, seconds in results)
        + f" (bound: 2 heartbeat intervals = {2 * heartbeat:g} s); "
        f"{stale_gaps[0]['n']} stale gaps recorded"
    )
    for _, seconds in results:
        assert seconds <= 2 * heartbeat + 0.5  # the bound, plus the probe's polling step
    assert stale_gaps[0]["n"] >= 2 * 40


async def _stale_reconnects(collector: Collector, n: int) -> bool:
    return sample(collector, "optionfeed_reconnects_total", {"reason": "stale"}) >= n


async def test_drill_postgresql_stopped_under_load_loses_no_row(
    postgres: TempPostgres, database_url: str, tmp_path: Path, figure: Any
) -> None:
    # Short: 60 s down. Full: a 15-minute outage at about 10,000 msg/s.
    outage = length(60, 900)
    rate, top = ("30000", 400) if drills_full() else ("8000", 100)
    with SimulatorProcess("--rate", rate, "--currencies", "ETH") as sim:
        config = local_config(
            assignment_path=None,
            local=LocalPlan("ETH", top, ("ticker", "trades", "book", "quote"), "100ms"),
            exchange_url=sim.ws_url,
            database_url=database_url,
            spool_dir=tmp_path / "spool",
        )
        async with running_collector(config) as collector:
            await wait_for(lambda: _flowing(database_url), within=60, what="rows to flow")
            assert collector.router is not None
            messages_before = sample_messages(collector)
            postgres.stop()
            down_at = time.monotonic()
            try:
                await asyncio.sleep(outage)  # the outage under test: nothing to wait for
                assert collector.spool is not None
                spooled = sample(collector, "optionfeed_spooled_rows_total")
                peak_spool = collector.spool.used_bytes
                rate_during = (sample_messages(collector) - messages_before) / (
                    time.monotonic() - down_at
                )
            finally:
                postgres.start()
            started = time.monotonic()
            await wait_for(lambda: _drained(collector), within=1800, what="the spool to drain")
            drained_in = time.monotonic() - started
            # Recording goes on after the drain: what was read since is written directly.
            assert collector.writer is not None
            await asyncio.wait_for(collector.writer.flush(), 60)
        ledger = sim.ledger()
    lost = 0
    total = 0
    for family, table in TABLE_OF.items():
        sent = sent_per_instrument(ledger, family)
        stored = await stored_per_instrument(database_url, table)
        lost += sum(max(0, n - stored.get(i, 0)) for i, n in sent.items())
        total += sum(sent.values())
    figure(
        f"PostgreSQL down {outage:g} s at {rate_during:,.0f} msg/s: {spooled:,.0f} rows spooled "
        f"({peak_spool / 1e6:.1f} MB on disk), replayed in {drained_in:.1f} s; "
        f"{total:,} rows sent, {lost} lost"
    )
    assert spooled > 0
    assert lost == 0
    assert sample(collector, "optionfeed_dropped_rows_total", {"reason": "shutdown"}) == 0


def sample_messages(collector: Collector) -> float:
    return sum(
        sample(collector, "optionfeed_messages_total", {"channel": family})
        for family in ("ticker", "quote", "trades", "book")
    )


async def _flowing(url: str) -> bool:
    return await count(url, "option_tickers") > 2000


async def _drained(collector: Collector) -> bool:
    return collector.spool is not None and not collector.spool.engaged


async def _caught_up(url: str) -> bool:
    """The newest ticker stored is under 2 s old: the collector reads what is sent now."""
    rows = await fetch(
        url, "SELECT extract(epoch FROM now() - max(ts))::float8 AS behind FROM option_tickers"
    )
    return rows[0]["behind"] is not None and rows[0]["behind"] < 2.0


async def test_drill_sigterm_under_load_loses_nothing_that_was_sent(
    database_url: str, figure: Any
) -> None:
    with SimulatorProcess("--rate", "20000") as sim, CollectorProcess(
        "--currency", "ETH", "--top", "150", "--channels", "ticker,trades,book,quote",
        "--exchange-url", sim.ws_url, "--database-url", database_url, "--metrics-port", "0",
    ) as collector:  # fmt: skip
        await wait_for(lambda: _flowing(database_url), within=60, what="rows to flow")
        await asyncio.sleep(length(2, 20))  # the load under test: nothing to wait for
        collector.signal(signal.SIGTERM)
        started = time.monotonic()
        assert collector.wait(60) == 0, collector.output
        stopped_in = time.monotonic() - started
        ledger = sim.ledger()
    assert "stopped cleanly" in collector.output
    total = lost = 0
    for family, table in TABLE_OF.items():
        sent = sent_per_instrument(ledger, family)
        stored = await stored_per_instrument(database_url, table)
        assert stored == sent, f"{family}: rows lost at shutdown"
        total += sum(sent.values())
        lost += sum(max(0, n - stored.get(i, 0)) for i, n in sent.items())
    figure(f"SIGTERM under load: {total} rows sent, {lost} lost; stopped in {stopped_in:.1f} s")
    assert total > 2000


async def test_drill_sigterm_while_the_exchange_stalls_loses_nothing_that_was_sent(
    database_url: str, figure: Any
) -> None:
    """The exchange freezes as the collector stops: the unsubscribe goes unanswered, so the
    collector closes while the exchange, once it runs again, is still sending."""
    with SimulatorProcess("--rate", "20000") as sim, CollectorProcess(
        "--currency", "ETH", "--top", "150", "--channels", "ticker,trades,book,quote",
        "--exchange-url", sim.ws_url, "--database-url", database_url, "--metrics-port", "0",
    ) as collector:  # fmt: skip
        await wait_for(lambda: _flowing(database_url), within=60, what="rows to flow")
        assert sim.process is not None
        sim.process.send_signal(signal.SIGSTOP)
        try:
            collector.signal(signal.SIGTERM)
            await wait_for(
                lambda: _gave_up_unsubscribing(collector),
                within=30,
                what="the collector to close without an answer to its unsubscribe",
            )
        finally:
            sim.process.send_signal(signal.SIGCONT)
        assert collector.wait(60) == 0, collector.output
        ledger = sim.ledger()
    total = lost = 0
    for family, table in TABLE_OF.items():
        sent = sent_per_instrument(ledger, family)
        stored = await stored_per_instrument(database_url, table)
        total += sum(sent.values())
        lost += sum(max(0, n - stored.get(i, 0)) for i, n in sent.items())
    figure(f"SIGTERM while the exchange stalls: {total} rows sent, {lost} lost")
    assert lost == 0
    assert total > 2000


async def _gave_up_unsubscribing(collector: CollectorProcess) -> bool:
    return "no clean unsubscribe before closing" in collector.output


async def test_drill_kill_9_of_one_of_two_redundant_collectors_loses_nothing(
    database_url: str, tmp_path: Path, figure: Any
) -> None:
    with SimulatorProcess("--rate", "6000", "--currencies", "ETH") as sim:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{sim.rest_url}/public/get_instruments", params={"currency": "ETH"}
            ) as response,
        ):
            names = sorted(i["instrument_name"] for i in (await response.json())["result"])[:80]
        path = tmp_path / "assignment.json"
        write_atomically(path, assignment_doc(names, exchange_url=sim.ws_url,
                                              channels=("ticker", "trades", "book")))  # fmt: skip
        ports = [free_port(), free_port()]
        common = ["--assignment", str(path), "--database-url", database_url,
                  "--metrics-host", "127.0.0.1"]  # fmt: skip
        with CollectorProcess(*common, "--metrics-port", str(ports[0]),
                              "--data-dir", str(tmp_path / "a")) as victim, CollectorProcess(
            *common, "--metrics-port", str(ports[1]), "--data-dir", str(tmp_path / "b")
        ) as survivor:  # fmt: skip
            await wait_for(lambda: _flowing(database_url), within=60, what="rows to flow")
            await asyncio.sleep(length(3, 20))  # both under load, for the time under test
            victim.signal(signal.SIGKILL)
            assert victim.wait(30) == -signal.SIGKILL
            await asyncio.sleep(length(3, 20))  # the survivor alone, for the time under test
            ledger = sim.ledger()  # every trade generated by now must be stored
            await wait_for(
                lambda: newest_trades_stored(database_url, ledger),
                within=60,
                what="the trades in flight to be stored",
            )
            metrics = await _scrape(ports[1])
            survivor.signal(signal.SIGTERM)
            assert survivor.wait(60) == 0, survivor.output
            final = sim.ledger()
    # The survivor's connection is the one still open when the victim was gone.
    open_ids = [cid for cid, c in ledger["connections"].items() if c["closed"] is None]
    assert len(open_ids) == 1
    survivor_id = open_ids[0]
    short = 0
    checked = 0
    for family, table in TABLE_OF.items():
        if family == "quote":
            continue
        stored = await stored_per_instrument(database_url, table)
        for channel, stats in final["channels"].items():
            if channel.split(".")[0] != family or stats["instrument"] is None:
                continue
            got = stats["connections"].get(survivor_id, 0)
            if family == "trades":
                continue  # trade objects per connection are not split in the ledger; see below
            checked += got
            short += max(0, got - stored.get(stats["instrument"], 0))
    stored_trades, expected_trades, holes = await trade_holes(database_url, ledger)
    errors = _metric(metrics, "optionfeed_write_errors_total")
    figure(
        f"kill -9 of one of two collectors: {checked} ticker/book rows the survivor received, "
        f"{short} missing; trades {stored_trades}/{expected_trades}, {holes} missing; "
        f"survivor write errors {errors:.0f}"
    )
    assert short == 0
    assert holes == 0
    assert errors == 0


async def _scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_drill_one_percent_malformed_frames_are_all_kept_and_nothing_crashes(
    database_url: str, figure: Any
) -> None:
    with SimulatorProcess("--rate", "4000", "--currencies", "ETH",
                          "--malformed-rate", "0.01") as sim:  # fmt: skip
        config = local_config(
            assignment_path=None,
            local=LocalPlan("ETH", 60, ("ticker", "trades", "book"), "100ms"),
            exchange_url=sim.ws_url,
            database_url=database_url,
        )
        async with running_collector(config):
            await asyncio.sleep(length(15, 60))  # the recording under test: nothing to wait for
        ledger = sim.ledger()
    rejected = await count(database_url, "rejected_messages")
    malformed = ledger["totals"]["malformed"]
    tickers_sent = sum(sent_per_instrument(ledger, "ticker").values())
    tickers = await count(database_url, "option_tickers")
    figure(
        f"{malformed} malformed frames among {ledger['totals']['notifications']} "
        f"({100 * malformed / max(1, ledger['totals']['notifications']):.2f} %): "
        f"{rejected} in rejected_messages; tickers {tickers}/{tickers_sent}; 0 crashes"
    )
    assert malformed > 0
    assert rejected == malformed
    assert tickers == tickers_sent


async def test_drill_10028_storms_back_off_without_synchronised_reconnects(
    database_url: str, figure: Any
) -> None:
    with SimulatorProcess("--rate", "2000", "--currencies", "ETH") as sim:
        config = local_config(
            assignment_path=None,
            local=LocalPlan("ETH", 80, ("ticker", "trades"), "100ms"),
            exchange_url=sim.ws_url,
            database_url=database_url,
            channels_per_connection=20,
        )
        async with running_collector(config) as collector:
            await wait_for(lambda: _resubscribed(collector), within=60, what="subscription")
            storms = int(length(2, 6))
            for _ in range(storms):
                # Credits run out for everyone at once: every connection's next request gets
                # 10028 and its session is closed, as Deribit does.
                sim.set_faults(errors=[{"code": 10028, "count": 8}], drop={"fraction": 1.0})
                await wait_for(lambda: _storm_over(sim), within=60, what="the 8 answers 10028")
                await wait_for(lambda: _resubscribed(collector), within=120, what="recovery")
            rate_limited = sample(
                collector, "optionfeed_reconnects_total", {"reason": "rate_limited"}
            )
            reconnects = sum(
                sample(collector, "optionfeed_reconnects_total", {"reason": r})
                for r in ("rate_limited", "closed_by_exchange", "socket_error", "unreachable")
            )
        ledger = sim.ledger()
    opened = sorted(c["opened"] for c in ledger["connections"].values())
    later = opened[8:]  # the first 8 are the initial connections
    spread = statistics.pstdev(later) / 1000 if len(later) > 1 else 0.0
    together = sum(1 for a, b in itertools.pairwise(later) if b - a < 50)
    figure(
        f"{storms} storms over 8 connections: {reconnects:.0f} reconnects "
        f"({rate_limited:.0f} after 10028), reconnect times spread {spread:.2f} s (stdev), "
        f"{together} of {len(later)} reconnects within 50 ms of another"
    )
    assert rate_limited >= 1
    assert len(later) >= 8
    # Full jitter: the reconnects of one storm do not arrive together.
    assert spread > 0.3


async def _storm_over(sim: SimulatorProcess) -> bool:
    """The storm's error rule has answered all its requests (the simulator then drops it)."""
    return not sim.faults()["errors"]


async def test_drill_a_full_spool_raises_the_alarm_and_slows_reading_instead_of_dropping(
    postgres: TempPostgres, database_url: str, tmp_path: Path, figure: Any, caplog: Any
) -> None:
    with SimulatorProcess("--rate", "6000", "--currencies", "ETH",
                          "--slow-consumer-bytes", "2000000") as sim:  # fmt: skip
        config = local_config(
            assignment_path=None,
            local=LocalPlan("ETH", 80, ("ticker", "trades", "book"), "100ms"),
            exchange_url=sim.ws_url,
            database_url=database_url,
            spool_dir=tmp_path / "spool",
            spool_max_bytes=300_000,
            buffer_rows=5_000,
        )
        async with running_collector(config) as collector:
            await wait_for(lambda: _flowing(database_url), within=60, what="rows to flow")
            postgres.stop()
            peak_buffer = 0
            try:
                deadline = time.monotonic() + length(15, 60)
                while time.monotonic() < deadline:
                    assert collector.writer is not None
                    peak_buffer = max(peak_buffer, collector.writer.buffered_rows)
                    await asyncio.sleep(0.1)  # the sampling step over the outage under test
                fill = sample(collector, "optionfeed_spool_fill_ratio")
            finally:
                postgres.start()
            await wait_for(lambda: _drained(collector), within=300, what="the spool to drain")
            # The exchange may have dropped the slowed connection; the collector learns it only
            # when it has read what was sent before the close. Caught up, it has reconnected (a
            # gap, its trades fetched) and stores what is being sent now.
            await wait_for(
                lambda: _caught_up(database_url), within=120, what="the collector to catch up"
            )
            await wait_for(lambda: _resubscribed(collector), within=60, what="resubscription")
            await settle(collector)
            disconnects = sum(
                sample(collector, "optionfeed_reconnects_total", {"reason": r})
                for r in ("closed_by_exchange", "socket_error", "stale")
            )
            ledger = sim.ledger()
            dropped = sample(collector, "optionfeed_dropped_rows_total", {"reason": "shutdown"})
        stored, expected, holes = await trade_holes(database_url, ledger)
    gaps = await fetch(database_url, "SELECT count(*) AS n FROM data_gaps")
    figure(
        f"spool full: fill {fill:.0%}, alarm logged; buffer peaked at {peak_buffer} of "
        f"{config.buffer_rows} rows; {disconnects:.0f} disconnects by the exchange or as stale, "
        f"{gaps[0]['n']} gaps recorded; trades {stored}/{expected} after backfill; "
        f"{dropped:.0f} rows dropped"
    )
    assert fill == 1.0
    assert "100% full" in caplog.text
    assert peak_buffer <= config.buffer_rows
    assert dropped == 0
    assert holes == 0
