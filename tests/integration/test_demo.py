"""``optionfeed demo`` for real: the simulator, a collector and the embedded PostgreSQL, offline.

Each test runs the demo as a process, as a user would: through a pipe (progress lines) or on a
pseudo-terminal (the live panel, and Ctrl-C delivered to its process group the way a terminal
delivers it). The summary's figures are checked against the database it leaves behind.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from optionfeed.demo.exchange import ExchangeError, SimulatedExchange
from optionfeed.store import tables
from optionfeed.store.embedded import EmbeddedPostgres

pytestmark = pytest.mark.slow

TABLES = tuple(table.name for table in tables.BY_FAMILY.values())
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIONFEED_")}
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "optionfeed", "demo", "--top", "10", "--seed", "7", *args]


def summary_rows(stdout: str) -> dict[str, tuple[int, int]]:
    """TABLE -> (rows, instruments) from the summary table."""
    found = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r"  (option_\w+|total)\s+([\d,]+)\s+([\d,]+)", line)
        if match:
            found[match[1]] = (int(match[2].replace(",", "")), int(match[3].replace(",", "")))
    return found


def stop_order(log: str) -> list[int]:
    marks = [
        "collector stopped:",
        "simulator stopped (exit status 0)",
        "embedded PostgreSQL stopped",
    ]
    positions = [log.find(mark) for mark in marks]
    assert all(p >= 0 for p in positions), log[-3000:]
    return positions


def port_refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def stored_rows(pgdata: Path) -> dict[str, tuple[int, int]]:
    async with EmbeddedPostgres(pgdata) as embedded:
        connection = await asyncpg.connect(embedded.url)
        try:
            counts = {}
            for table in TABLES:
                row = await connection.fetchrow(
                    f"SELECT count(*) AS n, count(DISTINCT instrument) AS i FROM {table}"
                )
                counts[table] = (int(row["n"]), int(row["i"]))
            return counts
        finally:
            await connection.close()


def test_a_short_demo_prints_progress_and_a_summary_that_matches_the_database(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        demo_command("--duration", "5", "--progress-every", "1.5", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=180,
        env=demo_env(),
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    progress = [line for line in out.splitlines() if line.startswith("demo ")]
    assert len(progress) >= 2, out
    assert all(
        re.fullmatch(
            r"demo 0:0\d of 0:05: [\d,]+ msg/s, rows tickers [\d,]+, quotes [\d,]+, "
            r"trades [\d,]+, book [\d,]+ \([\d,]+/s\), buffer \d+%, lag p50 .+, p99 .+",
            line,
        )
        for line in progress
    ), progress
    assert "\x1b[" not in out  # no terminal codes in a pipe

    shown = summary_rows(out)
    assert set(shown) == {*TABLES, "total"}, out
    assert shown["option_tickers"][0] > 0
    assert shown["option_book"][0] > 0
    assert shown["total"][0] == sum(shown[t][0] for t in TABLES)
    assert re.search(r"^  instruments recorded +10 of 10$", out, re.M), out
    assert re.search(r"^  gaps recorded +0 \(0 open, 0 rows recovered\)$", out, re.M), out
    assert re.search(r"^  verdict +complete$", out, re.M), out
    pgdata = tmp_path / "demo" / "pgdata"
    assert f"  data    {pgdata} (embedded PostgreSQL, stopped)" in out

    # The summary is what the database holds (a fresh directory: this run's rows only).
    assert not (pgdata / "postmaster.pid").exists(), "the database was left running"
    stored = asyncio.run(stored_rows(pgdata))
    assert {t: shown[t] for t in TABLES} == stored

    # Stopped in order, and the simulator is gone.
    positions = stop_order(result.stderr)
    assert positions == sorted(positions)
    port = int(re.search(r"simulator: ws://127\.0\.0\.1:(\d+)/", out)[1])
    assert port_refused(port)


def test_on_a_terminal_a_live_panel_redraws_and_ctrl_c_stops_everything_in_order(
    tmp_path: Path,
) -> None:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        demo_command("--data-dir", str(tmp_path)),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=demo_env(COLUMNS="100", LINES="40", TERM="xterm"),
        cwd=tmp_path,
        start_new_session=True,  # a process group of its own, like a shell's foreground job
    )
    os.close(slave)
    output = b""

    def read_for(seconds: float, until: bytes | None = None, count: int = 1) -> None:
        nonlocal output
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until is not None and output.count(until) >= count:
                return
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the other side closed
                    return
                if not chunk:
                    return
                output += chunk

    try:
        # The panel is up and has been redrawn in place a few times.
        read_for(90, until=b"| recording", count=4)
        assert output.count(b"| recording") >= 4, output[-3000:]
        assert b"\x1b[?25l" in output  # the cursor is hidden while the panel is up
        assert re.search(rb"\r\x1b\[1[0-9]A\x1b\[J", output)  # back up over the panel, erase
        # Ctrl-C, as the terminal sends it: to the whole foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        read_for(60, until=b"  report  ")
        code = process.wait(timeout=60)
        read_for(1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = output.decode(errors="replace")
    assert code == 0, text[-3000:]
    assert "\x1b[?25h" in text  # the cursor is given back
    plain = ANSI.sub("", text).replace("\r", "")
    panel = [line for line in plain.splitlines() if "| recording" in line]
    assert panel[0].startswith("optionfeed demo: ETH top 10 (ticker, quote, trades, book) | 0:")
    # Panel lines are cut to the terminal's width, so that redrawing in place never wraps.
    drawn = [line for line in plain.splitlines() if "| recording" in line or "Ctrl-C" in line]
    assert max(len(line) for line in drawn) <= 100
    assert "SIGINT: stopping cleanly" in plain
    positions = stop_order(plain)
    assert positions == sorted(positions), plain[-3000:]
    shown = summary_rows(plain)
    assert shown["option_tickers"][0] > 0
    assert re.search(r"^  verdict +complete$", plain, re.M), plain[-2000:]
    assert not (tmp_path / "demo" / "pgdata" / "postmaster.pid").exists()


def test_a_database_that_cannot_start_ends_the_demo_with_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "pgdata").write_text("not a directory")
    result = subprocess.run(
        demo_command("--duration", "5", "--data-dir", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
        env=demo_env(),
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("optionfeed demo: error: the embedded PostgreSQL under "), last
    # The simulator had started beside it, and was stopped; the database never ran.
    assert "simulator stopped (exit status 0)" in result.stderr
    assert "embedded PostgreSQL stopped" not in result.stderr
    port = int(re.search(r"simulator listening on 127\.0\.0\.1:(\d+)", result.stderr)[1])
    assert port_refused(port)


async def test_a_simulator_that_exits_before_it_is_ready_is_reported_with_its_log(
    tmp_path: Path,
) -> None:
    exchange = SimulatedExchange(
        currency="NOPE", rate=10.0, seed=1, log_path=tmp_path / "sim.log", startup_timeout=30
    )
    await exchange.spawn()
    with pytest.raises(ExchangeError, match=r"exited with status 2 before it was ready") as info:
        await exchange.wait_ready()
    assert str(tmp_path / "sim.log") in str(info.value)
    assert "unknown currencies" in (tmp_path / "sim.log").read_text()
    assert await exchange.stop() == 2


async def test_the_simulated_exchange_runs_in_its_own_process_group_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    exchange = SimulatedExchange(currency="ETH", rate=10.0, seed=1, log_path=tmp_path / "s.log")
    await exchange.spawn()
    try:
        await exchange.wait_ready()
        assert exchange.process is not None
        assert os.getpgid(exchange.process.pid) == exchange.process.pid != os.getpgid(0)
        assert not port_refused(exchange.port)
    finally:
        code = await exchange.stop()
    assert code == 0
    assert port_refused(exchange.port)
