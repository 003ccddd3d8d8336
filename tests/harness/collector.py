"""Running collectors in tests: in-process (to look inside) or as a real process (to signal it).

Both run against the simulator and a real PostgreSQL. Completeness is judged against the
simulator's ledger: what it sent on each channel must be what the database holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg

from optionfeed.collector.app import Collector
from optionfeed.collector.config import CollectorConfig
from optionfeed.store import tables


def assignment_doc(
    instruments: list[str],
    *,
    exchange_url: str,
    currency: str = "ETH",
    channels: tuple[str, ...] = ("ticker", "trades"),
    interval: str = "100ms",
    feed: str = "test-feed",
    shard: int = 0,
    shards: int = 1,
    generation: int = 1,
) -> dict[str, Any]:
    return {
        "feed": feed,
        "namespace": "test",
        "shard": shard,
        "shards": shards,
        "generation": generation,
        "currency": currency,
        "interval": interval,
        "channels": list(channels),
        "instruments": instruments,
        "exchangeUrl": exchange_url,
    }


def write_atomically(path: Path, doc: dict[str, Any]) -> None:
    """Replace ``path`` the way a kubelet or an editor does: write aside, then rename."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


# Collectors running in this event loop (``running_collector``): ``wait_for`` fails at once when
# one of them has stopped by itself, with its error, instead of polling until its time is up.
_RUNNING: set[asyncio.Task[None]] = set()


@contextlib.asynccontextmanager
async def running_collector(
    config: CollectorConfig, *, stop_within: float = 120
) -> AsyncIterator[Collector]:
    """A collector running in this event loop; stopped cleanly (and awaited) on exit.

    It must have stopped ``stop_within`` seconds after the exit, or the test fails with the stack
    of every task still running.
    """
    collector = Collector(config)
    task = asyncio.create_task(collector.run(), name="test-collector")
    _RUNNING.add(task)
    started = asyncio.ensure_future(collector.wait_started())
    done, _ = await asyncio.wait({task, started}, timeout=60, return_when="FIRST_COMPLETED")
    if task in done:
        _RUNNING.discard(task)
        started.cancel()
        task.result()  # raises what stopped it
        raise AssertionError("the collector returned before it started")
    if not done:
        _RUNNING.discard(task)
        task.cancel()
        raise AssertionError("the collector did not start within 60 s")
    try:
        yield collector
    finally:
        _RUNNING.discard(task)
        collector.stop()
        done, _ = await asyncio.wait({task}, timeout=stop_within)
        if not done:
            stacks = [f"{other.get_name()}: {awaiting(other)}" for other in asyncio.all_tasks()]
            task.cancel()
            raise AssertionError(
                f"the collector did not stop within {stop_within:g} s:\n" + "\n".join(stacks)
            )
        task.result()


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits, innermost first: each coroutine it awaits through, with its line."""
    where: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is None:  # a future: the end of this task's chain
            break
        where.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "ag_await", None)
    return " <- ".join(reversed(where))


def local_config(**changes: Any) -> CollectorConfig:
    base = CollectorConfig(metrics_port=0, stats_interval=3600.0, assignment_path=Path("unused"))
    return replace(base, **changes)


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.2
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await condition():
        for task in [t for t in _RUNNING if t.done()]:
            _RUNNING.discard(task)
            failure = None if task.cancelled() else task.exception()
            raise AssertionError(
                f"the collector stopped while waiting for {what}: {failure!r}"
            ) from failure
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(every)


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


async def count(url: str, table: str) -> int:
    """Rows in ``table``; 0 while the collector has not created it yet."""
    try:
        rows = await fetch(url, f"SELECT count(*) AS n FROM {table}")
    except asyncpg.UndefinedTableError:
        return 0
    return int(rows[0]["n"])


class CollectorProcess:
    """``optionfeed collect`` as a child process, for signals and exit codes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = env or {}
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in wait())
            prefix="optionfeed-collect-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)
        self.process: subprocess.Popen[bytes] | None = None
        self._final_output: str | None = None

    def start(self) -> CollectorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIONFEED_")}
        env.pop("DATABASE_URL", None)
        env.update(self.env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "optionfeed", "collect", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        return self

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 120) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    @property
    def output(self) -> str:
        """Everything the process printed (kept after the ``with`` block ends)."""
        if self._final_output is not None:
            return self._final_output
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._final_output = self.output
        with contextlib.suppress(OSError):
            self._log.close()
            self.log_path.unlink()


# ------------------------------------------------------------------ ledger vs database

TABLE_OF = {family: table.name for family, table in tables.BY_FAMILY.items()}


def sent_per_instrument(ledger: dict[str, Any], family: str) -> dict[str, int]:
    """Notifications (trade objects, for trades) the simulator sent per instrument."""
    sent: dict[str, int] = {}
    for channel, stats in ledger["channels"].items():
        if channel.split(".")[0] != family or stats["instrument"] is None:
            continue
        n = stats["trades"] if family == "trades" else stats["notifications"]
        sent[stats["instrument"]] = sent.get(stats["instrument"], 0) + n
    return {k: v for k, v in sent.items() if v}


async def stored_per_instrument(url: str, table: str) -> dict[str, int]:
    rows = await fetch(url, f"SELECT instrument, count(*) AS n FROM {table} GROUP BY instrument")
    return {r["instrument"]: int(r["n"]) for r in rows}
