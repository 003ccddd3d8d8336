"""``optionfeed report`` against a real PostgreSQL seeded with rows whose every value we chose.

The seeded hour (2024-06-03 12:00 to 13:00 UTC) holds, besides rows before and after it:

- ETH-28JUN24-3000-C: 5 tickers (and a stale gap reaching 30 s into the window), 2 quotes,
  trades 100..113 without 104, 105 (a recorded sequence gap) and 110 (recorded nowhere);
- ETH-28JUN24-3500-P: 5 consecutive trades after a closed disconnect gap that recovered 2, and 7
  book messages with one broken prev_change_id link, inside a recorded book gap;
- ETH-28JUN24-4000-C: 3 tickers, then a stale gap still open; 3 book messages without a type
  (as old captures have them), one link broken inside a recorded gap;
- a disconnect of a whole connection; a gap of another feed (btc-all); gaps outside the window;
- heartbeats: one live pod, one pod silent since before the window, another feed's old pod.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from harness.postgres import TempPostgres, temp_database
from optionfeed.cli import main
from optionfeed.report import queries
from optionfeed.report.window import Window
from optionfeed.store import timescale
from optionfeed.store.command import migrate_database
from optionfeed.store.partitions import Partitions, day_of
from optionfeed.store.tables import TIME_TABLES

T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
WINDOW_ARGS = ["--from", "2024-06-03T12:00:00Z", "--to", "2024-06-03T13:00:00Z"]
CALL = "ETH-28JUN24-3000-C"
PUT = "ETH-28JUN24-3500-P"
HIGH = "ETH-28JUN24-4000-C"
BTC = "BTC-28JUN24-60000-C"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def seed(url: str) -> None:
    await migrate_database(url)
    connection = await asyncpg.connect(url)
    try:
        partitions = Partitions(TIME_TABLES)
        partitions.exclude(await timescale.hypertables(connection))  # they make their own chunks
        days = [day_of(int((T0 + timedelta(days=d)).timestamp() * 1000)) for d in (-1, 0, 1)]
        for table in TIME_TABLES:
            if partitions.manages(table):
                await partitions.ensure(connection, table, days)

        tickers = [(CALL, at(600 + i)) for i in range(5)] + [(HIGH, at(2400 + i)) for i in range(3)]
        tickers.append((CALL, at(-3600)))  # before the window
        await connection.executemany(
            "INSERT INTO option_tickers (instrument, ts, recv_ts) VALUES ($1, $2, $2)", tickers
        )
        await connection.executemany(
            "INSERT INTO option_quotes (instrument, ts, recv_ts) VALUES ($1, $2, $2)",
            [(CALL, at(700)), (CALL, at(701))],
        )
        seqs = [s for s in range(100, 114) if s not in (104, 105, 110)]
        trades = [(CALL, at(100 + s - 100 + 0.0), f"ETH-{s}", s) for s in seqs]
        trades += [(CALL, at(-1), "ETH-99", 99), (CALL, at(3600), "ETH-114", 114)]  # outside
        trades += [(PUT, at(1800 + s - 50), f"ETH-P{s}", s) for s in range(50, 55)]
        await connection.executemany(
            "INSERT INTO option_trades (instrument, ts, recv_ts, trade_id, trade_seq) "
            "VALUES ($1, $2, $2, $3, $4)",
            trades,
        )
        book = [
            (1000, None, "snapshot", 1200),
            (1001, 1000, "change", 1201),
            (1002, 1001, "change", 1202),
            (1005, 1003, "change", 1205),  # the break: 1003 is not the 1002 stored before it
            (1006, 1005, "change", 1206),
            (1010, None, "snapshot", 1210),  # the resync
            (1011, 1010, "change", 1211),
            (990, 989, "change", -86400),  # the day before, in another partition
        ]
        # Old captures carry no type: a message without prev_change_id starts the chain.
        untyped = [(2000, None, None, 2500), (2001, 2000, None, 2501), (2003, 2002, None, 2503)]
        await connection.executemany(
            "INSERT INTO option_book (instrument, ts, recv_ts, change_id, prev_change_id, type, "
            "bids, asks) VALUES ($1, $2, $2, $3, $4, $5, '[]', '[]')",
            [(PUT, at(t), c, p, kind) for c, p, kind, t in book]
            + [(HIGH, at(t), c, p, kind) for c, p, kind, t in untyped],
        )

        def gap(
            instrument: str | None,
            channel: str,
            reason: str,
            start: float,
            end: float | None,
            *,
            feed: str = "eth-top50",
            seq: tuple[int, int] | None = None,
            recovered: int = 0,
        ) -> tuple[Any, ...]:
            return (
                uuid.uuid4(),
                feed,
                0,
                instrument,
                channel,
                at(start),
                None if end is None else at(end),
                reason,
                None if seq is None else seq[0],
                None if seq is None else seq[1],
                recovered,
                at(start),
                at(start),
            )

        gaps = [
            gap(CALL, "ticker", "stale", -600, 30),
            gap(CALL, f"trades.{CALL}.100ms", "sequence", 103.5, 105.5, seq=(104, 105)),
            gap(PUT, f"book.{PUT}.100ms", "sequence", 1204, 1210),
            gap(PUT, "trades", "disconnect", 1740, 1770, recovered=2),
            gap(HIGH, "ticker", "stale", 2460, None),
            gap(HIGH, "book", "sequence", 2502, 2503),
            gap(None, "connection", "disconnect", 3000, 3030),
            gap(BTC, "trades", "disconnect", 900, 960, feed="btc-all"),
            gap(CALL, "trades", "disconnect", -7200, -6900),  # before the window
            gap(CALL, "trades", "disconnect", 3600, 3700),  # starts at the window's end
        ]
        await connection.executemany(
            "INSERT INTO data_gaps VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            gaps,
        )
        now = datetime.now(UTC)
        await connection.executemany(
            "INSERT INTO collector_status VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [
                ("eth-top50", 0, "pod-a", now - timedelta(hours=1), now - timedelta(seconds=5),
                 "0.1.0", 50, 1, '{"trades": 16}'),
                ("eth-top50", 0, "pod-old", at(-7200), at(-3600), "0.0.9", 50, 0, None),
                ("btc-all", 1, "pod-b", at(-9000), at(-7200), "0.1.0", 20, 1, "{}"),
            ],
        )  # fmt: skip
        await connection.executemany(
            "INSERT INTO rejected_messages VALUES ($1, $2, NULL, 'malformed', 'x')",
            [(uuid.uuid4(), at(300)), (uuid.uuid4(), at(360)), (uuid.uuid4(), at(7200))],
        )
    finally:
        await connection.close()


@pytest.fixture
def seeded(database_url: str) -> str:
    asyncio.run(seed(database_url))
    return database_url


def report_json(url: str, *extra: str, capsys: pytest.CaptureFixture[str]) -> Any:
    code = main(["report", "--database-url", url, *WINDOW_ARGS, "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the table under ``heading`` (split on runs of 2+ spaces)."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_the_json_report_has_the_seeded_figures_exactly(
    seeded: str, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = report_json(seeded, capsys=capsys)
    assert doc["window"] == {
        "from": "2024-06-03T12:00:00Z",
        "to": "2024-06-03T13:00:00Z",
        "seconds": 3600.0,
    }
    channels = {(c["instrument"], c["channel"]): c for c in doc["channels"]}
    assert [(c["instrument"], c["channel"], c["rows"], c["verdict"]) for c in doc["channels"]] == [
        (BTC, "trades", 0, "no_data"),
        (CALL, "ticker", 5, "gaps_recorded"),
        (CALL, "quote", 2, "complete"),
        (CALL, "trades", 11, "unrecorded_loss"),
        (PUT, "trades", 5, "recovered"),
        (PUT, "book", 7, "gaps_recorded"),
        (HIGH, "ticker", 3, "gap_open"),
        (HIGH, "book", 3, "gaps_recorded"),
    ]
    assert channels[CALL, "trades"]["sequence"] == {
        "first": 100,
        "last": 113,
        "expected": 14,
        "seen": 11,
        "missing": 3,
        "holes": 2,
        "unrecorded": 1,
    }
    assert channels[CALL, "trades"]["gaps"] == {
        "count": 1,
        "open": 0,
        "seconds": 2.0,
        "rows_recovered": 0,
        "reasons": ["sequence"],
    }
    assert channels[CALL, "ticker"]["gaps"]["seconds"] == 30.0  # clipped to the window
    assert channels[PUT, "trades"]["sequence"]["missing"] == 0
    assert channels[PUT, "trades"]["gaps"]["rows_recovered"] == 2
    assert channels[PUT, "book"]["chain"] == {
        "checked": 5,
        "snapshots": 2,
        "breaks": 1,
        "unrecorded": 0,
    }
    assert channels[HIGH, "book"]["chain"] == {
        "checked": 2,
        "snapshots": 1,
        "breaks": 1,
        "unrecorded": 0,
    }
    assert channels[HIGH, "ticker"]["gaps"] == {
        "count": 1,
        "open": 1,
        "seconds": 1140.0,
        "rows_recovered": 0,
        "reasons": ["stale"],
    }
    assert channels[CALL, "ticker"]["first_ts"] == "2024-06-03T12:10:00Z"
    assert len(doc["gaps"]) == 8
    assert [g["instrument"] for g in doc["gaps"] if g["instrument"] is None] == [None]
    assert doc["totals"] == {
        "rows": {"option_tickers": 8, "option_quotes": 2, "option_trades": 16, "option_book": 10},
        "instruments": 3,
        "gaps": 8,
        "open_gaps": 1,
        "gap_seconds": 1268.0,
        "rows_recovered": 2,
        "missing_trades": 3,
        "book_breaks": 2,
        "unrecorded": 1,
        "rejected_frames": 2,
    }
    assert doc["verdict"] == "unrecorded_loss"
    pods = [(c["feed"], c["pod"], c["alive"]) for c in doc["collectors"]]
    assert pods == [("btc-all", "pod-b", False), ("eth-top50", "pod-a", True)]
    assert doc["collectors"][1]["counters"] == {"trades": 16}


def test_the_report_reads_hypertables_as_it_reads_native_partitions(
    seeded: str, timescale_postgres: TempPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    with temp_database(timescale_postgres) as url:
        asyncio.run(seed(url))
        assert asyncio.run(hypertable_names(url)) == {t.name for t in TIME_TABLES}
        on_hypertables = report_json(url, capsys=capsys)
    native = report_json(seeded, capsys=capsys)
    # What differs by construction: the heartbeats (seeded relative to the time of each seed),
    # the gap ids (random), the database named and the time of the report.
    for doc in (on_hypertables, native):
        doc.pop("collectors")
        doc.pop("source")
        doc.pop("generated_at")
        for gap in doc["gaps"]:
            gap.pop("gap_id")
    assert on_hypertables == native
    assert on_hypertables["totals"]["rows"]["option_trades"] == 16


async def hypertable_names(url: str) -> set[str]:
    connection = await asyncpg.connect(url)
    try:
        return await timescale.hypertables(connection)
    finally:
        await connection.close()


def test_the_text_report_shows_the_same_figures_in_aligned_tables(
    seeded: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--database-url", seeded, *WINDOW_ARGS]) == 0
    text = capsys.readouterr().out
    assert table_rows(text, "Completeness by instrument and channel") == [
        ["INSTRUMENT", "CHANNEL", "ROWS", "CONTINUITY", "GAPS", "REASONS", "GAP TIME", "RECOVERED",
         "VERDICT"],
        [BTC, "trades", "0", "1", "disconnect", "1 min 00 s", "0", "no data"],
        [CALL, "ticker", "5", "1", "stale", "30.0 s", "0", "gaps recorded"],
        [CALL, "quote", "2", "complete"],
        [CALL, "trades", "11", "seq 11/14, 3 missing (1 unrecorded)", "1", "sequence", "2.0 s",
         "0", "unrecorded loss"],
        [PUT, "trades", "5", "seq 5/5", "1", "disconnect", "30.0 s", "2", "recovered"],
        [PUT, "book", "7", "chain 4/5, 1 break", "1", "sequence", "6.0 s", "0", "gaps recorded"],
        [HIGH, "ticker", "3", "1 (1 open)", "stale", "19 min 00 s", "0", "gap open"],
        [HIGH, "book", "3", "chain 1/2, 1 break", "1", "sequence", "1.0 s", "0", "gaps recorded"],
    ]  # fmt: skip
    assert table_rows(text, "Gaps of whole connections (no instrument)") == [
        ["FEED", "SHARD", "CHANNEL", "REASON", "START", "END", "LASTED", "RECOVERED"],
        ["eth-top50", "0", "connection", "disconnect", "2024-06-03 12:50:00Z",
         "2024-06-03 12:50:30Z", "30.0 s", "0"],
    ]  # fmt: skip
    collectors = table_rows(text, "Collectors (collector_status)")
    assert [(row[0], row[2], row[-1]) for row in collectors[1:]] == [
        ("btc-all", "pod-b", "SILENT"),
        ("eth-top50", "pod-a", "alive"),
    ]
    assert (
        "Rows:      option_tickers 8, option_quotes 2, option_trades 16, option_book 10\n" in text
    )
    missing = (
        "Missing:   3 trades by trade_seq, 2 book chain breaks; 1 of them in no recorded gap\n"
    )
    assert missing in text
    assert "Rejected frames: 2\n" in text
    assert text.endswith("Verdict:   unrecorded loss\n")


def test_feed_and_instrument_filters_narrow_what_is_reported(
    seeded: str, capsys: pytest.CaptureFixture[str]
) -> None:
    by_feed = report_json(seeded, "--feed", "eth-top50", capsys=capsys)
    assert [c["feed"] for c in by_feed["collectors"]] == ["eth-top50"]
    assert BTC not in {c["instrument"] for c in by_feed["channels"]}
    assert by_feed["totals"]["gaps"] == 7
    assert by_feed["filters"] == {"feed": "eth-top50", "instruments": []}

    one = report_json(seeded, "--instrument", CALL, "--instrument", f"{HIGH},{CALL}", capsys=capsys)
    assert one["filters"]["instruments"] == [CALL, HIGH]
    assert [(c["instrument"], c["channel"]) for c in one["channels"]] == [
        (CALL, "ticker"),
        (CALL, "quote"),
        (CALL, "trades"),
        (HIGH, "ticker"),
        (HIGH, "book"),
    ]
    # The whole connection's gap stays: it may explain any instrument's loss.
    assert sorted(g["instrument"] or "-" for g in one["gaps"]) == ["-", CALL, CALL, HIGH, HIGH]
    assert one["totals"]["rows"]["option_trades"] == 11

    nothing = report_json(seeded, "--instrument", "ETH-28JUN24-9000-C", capsys=capsys)
    assert [(c["channel"], c["verdict"]) for c in nothing["channels"]] == [("-", "no_data")]


def relations(plan: Any) -> set[str]:
    found = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Relation Name" in node:
                found.add(node["Relation Name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


async def test_the_queries_read_only_the_partitions_of_the_window(seeded: str) -> None:
    window = Window(T0, T0 + timedelta(hours=1))
    connection = await asyncpg.connect(seeded)
    try:
        for table, sql in [
            ("option_tickers", queries.span_sql("option_tickers", instruments=False)),
            ("option_trades", queries.trades_sql(instruments=False)),
            ("option_book", queries.book_sql(instruments=False)),
            ("option_trades", queries.trades_sql(instruments=True)),
        ]:
            args: list[Any] = [window.start, window.end]
            if "$3" in sql:
                args.append([CALL])
            plan = json.loads(await connection.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))
            assert relations(plan) == {f"{table}_p20240603"}, sql
    finally:
        await connection.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optionfeed", "report", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_database_without_tables_is_one_line_with_what_to_do(database_url: str) -> None:
    result = run_cli("--database-url", database_url)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("optionfeed report: the database at postgresql://")
    assert lines[0].endswith(
        " has no optionfeed tables yet: run optionfeed migrate or collect first"
    )


def test_an_unreachable_database_or_a_bad_window_is_one_line(tmp_path: Any) -> None:
    unreachable = run_cli("--database-url", "postgresql://me:secret@127.0.0.1:1/x")
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip().splitlines() == [
        "optionfeed report: cannot connect to the database at postgresql://me:***@127.0.0.1:1/x: "
        "connection refused (is PostgreSQL running and listening there?)"
    ]
    bad = run_cli("--since", "1h", "--from", "2024-06-03")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "optionfeed report: error: give either --since, or --from (and optionally --to), not both"
    ]
    nothing = run_cli("--data-dir", str(tmp_path))
    assert nothing.returncode == 1
    assert "there is no embedded database under" in nothing.stderr
    assert not (tmp_path / "pgdata").exists()
