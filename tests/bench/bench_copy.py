"""Benchmark (a): the ceiling. How fast can PostgreSQL take the collector's rows on this machine?

Run it from the repository root::

    uv run python tests/bench/bench_copy.py [--rows 200000] [--harness-settings]

It starts a throwaway PostgreSQL of its own (Debian's server, 127.0.0.1, a temporary directory),
with PostgreSQL's default durability (fsync, synchronous_commit and full_page_writes on, as a
production server runs) unless ``--harness-settings`` asks for the test harness's (all three off).
It builds realistic Deribit payloads (tickers for 2,000 options with greeks and stats, trades,
book changes of one to five levels), normalises them with ``optionfeed.collector.normalize``
(that timing is the normalisation micro-benchmark: microseconds per message), and then writes the
same rows into the same tables three ways, each into a fresh database:

1. raw: binary COPY straight into the (partitioned) table: the ceiling;
2. staging + merge: ``PostgresSink.write``, the writer's path: binary COPY into the connection's
   temporary staging table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``, one transaction
   per batch of ``--batch`` rows;
3. writer: ``Writer.put`` for every row, flushed by size and age, as the collector calls it.

It prints the machine, the command and the figures in rows/s. Bounded: about a minute at the
default size.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the harness

import asyncpg

from harness.postgres import TempPostgres
from optionfeed.collector import normalize
from optionfeed.store import migrations
from optionfeed.store.connection import SERVER_SETTINGS, prepare_connection
from optionfeed.store.sink import Batch, PostgresSink
from optionfeed.store.tables import BOOK, TICKERS, TRADES, Carry, Row, Table
from optionfeed.store.writer import Writer
from optionfeed.telemetry.metrics import Metrics

DEFAULT_DURABILITY = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------------- payloads


def instruments(n: int, rng: random.Random) -> list[str]:
    expiries = ["27DEC24", "31JAN25", "28FEB25", "28MAR25", "27JUN25", "26SEP25"]
    names = set()
    while len(names) < n:
        cur = rng.choice(["BTC", "ETH"])
        strike = rng.randrange(10, 200) * (1000 if cur == "BTC" else 50)
        names.add(f"{cur}-{rng.choice(expiries)}-{strike}-{rng.choice('CP')}")
    return sorted(names)


def ticker_payload(name: str, ts: int, rng: random.Random) -> dict[str, Any]:
    empty_bid = rng.random() < 0.15
    mark = rng.uniform(0.0005, 0.5)
    return {
        "underlying_price": rng.uniform(20000, 100000),
        "underlying_index": name.rsplit("-", 2)[0],
        "timestamp": ts,
        "stats": {
            "volume": rng.choice([None, rng.uniform(0, 1000)]),
            "price_change": rng.uniform(-50, 50),
            "low": rng.uniform(0.0005, 0.1),
            "high": rng.uniform(0.1, 0.5),
            "volume_usd": rng.uniform(0, 1e6),
        },
        "state": "open",
        "settlement_price": mark * 0.98,
        "open_interest": float(rng.randrange(0, 20000)),
        "min_price": 0.0001,
        "max_price": 0.5,
        "mark_price": mark,
        "mark_iv": rng.uniform(30, 150),
        "last_price": rng.choice([None, mark * 1.01]),
        "interest_rate": 0.0,
        "instrument_name": name,
        "index_price": rng.uniform(20000, 100000),
        "greeks": {
            "vega": rng.uniform(0, 100),
            "theta": rng.uniform(-100, 0),
            "rho": rng.uniform(-10, 10),
            "gamma": rng.uniform(0, 0.001),
            "delta": rng.uniform(-1, 1),
        },
        "estimated_delivery_price": rng.uniform(20000, 100000),
        "bid_iv": 0.0 if empty_bid else rng.uniform(30, 150),
        "best_bid_price": 0.0 if empty_bid else mark * 0.97,
        "best_bid_amount": 0.0 if empty_bid else float(rng.randrange(1, 500)),
        "best_ask_price": mark * 1.03,
        "best_ask_amount": float(rng.randrange(1, 500)),
        "ask_iv": rng.uniform(30, 150),
    }


def trade_payload(name: str, ts: int, seq: int, rng: random.Random) -> dict[str, Any]:
    return {
        "trade_seq": seq,
        "trade_id": f"{name[:3]}-{seq * 7919 + hash(name) % 1000}",
        "timestamp": ts,
        "tick_direction": rng.randrange(4),
        "price": rng.uniform(0.0005, 0.5),
        "mark_price": rng.uniform(0.0005, 0.5),
        "iv": rng.uniform(30, 150),
        "instrument_name": name,
        "index_price": rng.uniform(20000, 100000),
        "direction": rng.choice(["buy", "sell"]),
        "amount": float(rng.randrange(1, 100)),
        "contracts": float(rng.randrange(1, 100)),
    }


def book_payload(name: str, ts: int, change_id: int, rng: random.Random) -> dict[str, Any]:
    def levels() -> list[list[Any]]:
        return [
            [
                rng.choice(["new", "change", "delete"]),
                rng.uniform(0.0005, 0.5),
                float(rng.randrange(0, 500)),
            ]
            for _ in range(rng.randrange(0, 4))
        ]

    return {
        "type": "change",
        "timestamp": ts,
        "prev_change_id": change_id - 1,
        "instrument_name": name,
        "change_id": change_id,
        "bids": levels(),
        "asks": levels(),
    }


def make_rows(
    table: Table, count: int, names: list[str], start_ms: int, rng: random.Random
) -> tuple[list[Row], float]:
    """``count`` rows of ``table`` from generated payloads; also µs per normalise call."""
    payloads: list[dict[str, Any]] = []
    build: Callable[[Any, float], Row]
    for i in range(count):
        name = names[i % len(names)]
        ts = start_ms + (i // len(names)) * 100 + (i % 97)  # 100 ms cadence per instrument
        if table is TICKERS:
            payloads.append(ticker_payload(name, ts, rng))
        elif table is TRADES:
            payloads.append(trade_payload(name, ts, i, rng))
        else:
            payloads.append(book_payload(name, ts, 10_000_000 + i, rng))
    build = {TICKERS: normalize.ticker_row, TRADES: normalize.trade_row, BOOK: normalize.book_row}[
        table
    ]
    recv = time.time()
    rows = [build(p, recv) for p in payloads]
    # Timed apart, in CPU time (not wall time: the figure should not depend on what else the
    # machine runs), with the results dropped and the payloads frozen out of the garbage
    # collector's sight: a collector parses and normalises one message at a time, and never
    # holds hundreds of thousands of parsed payloads whose scanning would be charged here.
    gc.collect()
    gc.freeze()
    try:
        started = time.process_time()
        for payload in payloads:
            build(payload, recv)
        per_call = (time.process_time() - started) / count * 1e6
    finally:
        gc.unfreeze()
    return rows, per_call


def as_table_rows(table: Table, rows: list[Row]) -> list[Row]:
    """Rows with timestamps as datetimes, for a COPY straight into the table (not timed)."""
    converters: list[Callable[[Any], Any]] = []
    for column in table.columns:
        if column.carry is Carry.EPOCH_MS:
            converters.append(lambda v: None if v is None else EPOCH + timedelta(milliseconds=v))
        elif column.carry is Carry.EPOCH_S:
            converters.append(lambda v: None if v is None else datetime.fromtimestamp(v, UTC))
        else:
            converters.append(lambda v: v)
    return [tuple(f(v) for f, v in zip(converters, row, strict=True)) for row in rows]


# ------------------------------------------------------------------------------------- measures


async def fresh_database(pg: TempPostgres, name: str) -> str:
    url = pg.create_database(name)
    connection = await asyncpg.connect(url)
    try:
        await migrations.migrate(connection)
    finally:
        await connection.close()
    return url


async def bench_raw(url: str, table: Table, rows: list[Row], batch: int) -> float:
    sink = PostgresSink(url, tables=[table], migrate=False)
    await sink.open()  # creates the partitions of today and of the rows' days
    days = {r[1] // 86_400_000 for r in rows}
    connection = await asyncpg.connect(url, server_settings=SERVER_SETTINGS)
    try:
        await sink.partitions.ensure(connection, table, days)
        await prepare_connection(connection, [])
        table_rows = as_table_rows(table, rows)
        started = time.perf_counter()
        for i in range(0, len(table_rows), batch):
            async with connection.transaction():
                await connection.copy_records_to_table(
                    table.name, records=table_rows[i : i + batch], columns=table.column_names
                )
        return len(rows) / (time.perf_counter() - started)
    finally:
        await connection.close()
        await sink.close()


async def bench_merge(url: str, table: Table, rows: list[Row], batch: int) -> float:
    sink = PostgresSink(url, tables=[table], migrate=False)
    await sink.open()
    try:
        # Partitions for the rows' days exist before the clock starts, as they do in steady state.
        await sink.write(Batch(0, {table: rows[:1]}))
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            await sink.write(Batch(i, {table: rows[i : i + batch]}))
        return len(rows) / (time.perf_counter() - started)
    finally:
        await sink.close()


async def bench_writer(url: str, table: Table, rows: list[Row], batch: int) -> float:
    async with Writer.connect(
        url,
        metrics=Metrics(),
        tables=[table],
        migrate=False,
        batch_rows=batch,
        capacity_rows=batch * 5,
    ) as writer:
        await writer.put(table, rows[0])
        await writer.flush()
        started = time.perf_counter()
        put = writer.put
        for row in rows[1:]:
            await put(table, row)
        await writer.flush()
        return (len(rows) - 1) / (time.perf_counter() - started)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}{load}"
    )


async def main(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    names = instruments(2_000, rng)
    start_ms = int(time.time() * 1000) - 3_600_000
    counts = {TICKERS: args.rows, TRADES: args.rows // 4, BOOK: args.rows // 4}
    settings = {} if args.harness_settings else DEFAULT_DURABILITY
    print("optionfeed benchmark (a): the COPY ceiling")
    print(f"machine:  {machine()}")
    print(f"command:  uv run python tests/bench/bench_copy.py {shlex.join(sys.argv[1:])}".rstrip())
    with TempPostgres(settings=settings) as pg:
        version = pg.psql("SHOW server_version")
        durability = ", ".join(
            f"{k}={pg.psql(f'SHOW {k}')}"
            for k in ("fsync", "synchronous_commit", "full_page_writes")
        )
        print(f"postgres: {version} on 127.0.0.1 ({durability}, shared_buffers=256MB)")
        print(
            f"batch:    {args.batch} rows per transaction; rows: {counts[TICKERS]} tickers, "
            f"{counts[TRADES]} trades, {counts[BOOK]} book changes over {len(names)} instruments"
        )
        print()
        header = f"{'table':<16}{'normalise CPU µs/msg':>22}{'raw COPY rows/s':>18}"
        header += f"{'staging+merge rows/s':>22}{'Writer.put rows/s':>20}"
        print(header)
        for n, table in enumerate((TICKERS, TRADES, BOOK)):
            rows, micros = make_rows(table, counts[table], names, start_ms, rng)
            raw = await bench_raw(await fresh_database(pg, f"raw_{n}"), table, rows, args.batch)
            merge = await bench_merge(
                await fresh_database(pg, f"merge_{n}"), table, rows, args.batch
            )
            put = await bench_writer(
                await fresh_database(pg, f"writer_{n}"), table, rows, args.batch
            )
            print(f"{table.name:<16}{micros:>22.2f}{raw:>18,.0f}{merge:>22,.0f}{put:>20,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="ticker rows (trades, book: 1/4)")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per transaction")
    parser.add_argument(
        "--harness-settings",
        action="store_true",
        help="fsync, synchronous_commit and full_page_writes off, as the tests run",
    )
    started = time.monotonic()
    asyncio.run(main(parser.parse_args()))
    print(f"\n({time.monotonic() - started:.0f} s)")
