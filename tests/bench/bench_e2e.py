"""Benchmark (b): end to end, simulator → collector → PostgreSQL, at rising offered rates.

Run it from the repository root::

    uv run python tests/bench/bench_e2e.py [--rates 5000,10000,20000,30000,36000,45000]
        [--window 60] [--warmup 10] [--instruments 2000] [--json FILE]

The setting. One PostgreSQL (Debian's server on 127.0.0.1, a temporary directory) for the whole
run, with the durability of the COPY ceiling's default run (``bench_copy.py``: fsync,
synchronous_commit and full_page_writes on) plus ``track_commit_timestamp`` (see latency); a fresh
database per stage. Per stage, a fresh simulator (``optionfeed simulate`` listing BTC, ETH and
USDC options) and a collector in a process of its own (``python -m optionfeed collect
--assignment FILE``) recording ``--instruments`` options (BTC, ETH, then USDC names, in name
order) x ``--channels`` at ``--interval``. The default, ``raw``, is one notification per market
event on an authenticated connection. 2,000 instruments x 3 channels are 6,000 channels, on six
connections at the collector's default budget of 1,000. The simulator, the collector and
PostgreSQL share the machine's cores.

msg/s. Notifications received by the collector per second: the increase of
``optionfeed_messages_total`` over the measured window (ticker, trades and book notifications; a
trades notification may carry several trades, and each trade is a row), divided by the window's
length. The simulator's ``--rate`` is market events per second across all its options, of which a
subscriber gets its share; each stage starts the simulator at the ``--rate`` that should yield the
target msg/s (from the notifications per event of the stages before; first guess 1.95), steers it
during the warm-up (``settle_rate``), and reports what the collector actually received.
``--sim-rates`` pins the simulator's rate instead: each stage's "again" command does, so that a
figure can be reproduced alone under the same load.

Each stage waits until the collector is ready (every channel acknowledged, data flowing, database
writable), warms up for ``--warmup`` seconds, measures a window of ``--window`` seconds, then
stops the collector with SIGTERM (it stops reading, writes every buffered row, closes its pool),
and judges:

- loss: per instrument and family (ticker, trades, book), the rows stored must equal what the
  simulator's ledger says it sent over the whole run (trades: trade objects), the rule of
  ``tests/integration/test_collector.py``. A reconnect, a rejected frame or a non-zero exit
  also fails the stage.
- latency, exchange timestamp → commit, exactly and for every row: PostgreSQL keeps each
  transaction's commit time (``track_commit_timestamp``), and a row's ``xmin`` is the
  transaction that stored it, so ``pg_xact_commit_timestamp(xmin) - ts`` is each row's lag, with
  no buckets and no sampling; p50 and p99 are taken over every row whose exchange time falls in
  the window. The lag is split into exchange → receive (``recv_ts - ts``: the simulator and the
  socket) and receive → commit (inside the collector: buffer, COPY, merge). The collector's
  ``optionfeed_commit_lag_seconds`` histogram over the window, interpolated within its buckets as
  Prometheus' ``histogram_quantile`` does (``optionfeed.demo.progress``), is printed beside it as
  a cross-check, and shows how far bucket interpolation is from the true figure.
- peak RSS: ``VmHWM`` of the collector process, read until it exits.
- CPU: ``utime + stime`` of the collector process over the window, in seconds per 100,000
  notifications; the simulator's and PostgreSQL's CPU over the same window, in cores. Also the
  writer's batches and the share of the window spent in COPY + merge
  (``optionfeed_write_duration_seconds``), and the machine's load average.

A stage is *sustained* when nothing was lost, the collector kept pace (p99 lag over the window
at most ``--max-p99`` seconds, 1 s by default: a collector falling behind by even 2 % for 60 s
is over a second behind at the end) and the simulator delivered: when its ledger's
``overload_skipped_ms`` grew during the stage, the simulator (sharing the cores) could not
generate the rate, and the stage is reported as simulator-limited, not as a collector result
(under 1 % of the window's market time skipped is noted, not disqualifying).
The stages stop after the second one that is not sustained.

``--gc`` runs the collector under a small wrapper instead (the same CLI entry point): it counts
garbage-collector passes and their time during the window, and can apply ``gc.freeze()`` after
start-up or raised thresholds, for the GC experiment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/, for the harness
sys.path.insert(0, str(HERE))  # tests/bench, for bench_copy

import asyncpg  # noqa: E402
from bench_copy import DEFAULT_DURABILITY, machine  # noqa: E402

from harness.ports import free_port  # noqa: E402
from harness.postgres import TempPostgres  # noqa: E402
from harness.processes import die_with_parent  # noqa: E402
from harness.simulator import SimulatorProcess  # noqa: E402
from optionfeed.demo.progress import Buckets, bucket_delta, histogram_quantile  # noqa: E402
from optionfeed.store import tables  # noqa: E402

TABLE_OF = {family: table.name for family, table in tables.BY_FAMILY.items()}
FIRST_GUESS_MSGS_PER_EVENT = 1.95
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ pure helpers


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text exposition to ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_sum(samples: Samples, name: str, **match: str) -> float:
    """Sum of every sample called ``name`` whose labels include ``match``."""
    total = 0.0
    for (sample, labels), value in samples.items():
        if sample != name:
            continue
        have = dict(labels)
        if all(have.get(k) == v for k, v in match.items()):
            total += value
    return total


def lag_buckets(samples: Samples) -> Buckets:
    """The commit-lag histogram of one scrape, cumulative, summed over tables."""
    by_bound: dict[float, float] = {}
    for (sample, labels), value in samples.items():
        if sample == "optionfeed_commit_lag_seconds_bucket":
            bound = float(dict(labels)["le"])
            by_bound[bound] = by_bound.get(bound, 0.0) + value
    return tuple(sorted(by_bound.items()))


def compare_with_ledger(
    ledger: dict[str, Any], stored: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Per family, ``{"sent", "stored", "missing", "extra", "instruments_differing"}``.

    ``stored`` is ``{family: {instrument: rows}}``. Sent is what the ledger counts per instrument
    channel: notifications, or trade objects for trades.
    """
    sent: dict[str, dict[str, int]] = {family: {} for family in stored}
    for name, stats in ledger["channels"].items():
        family = name.split(".", 1)[0]
        instrument = stats.get("instrument")
        if family not in sent or instrument is None:
            continue
        n = stats["trades"] if family == "trades" else stats["notifications"]
        sent[family][instrument] = sent[family].get(instrument, 0) + n
    report: dict[str, dict[str, int]] = {}
    for family, rows in stored.items():
        missing = extra = differing = 0
        for instrument in set(sent[family]) | set(rows):
            want, have = sent[family].get(instrument, 0), rows.get(instrument, 0)
            if want != have:
                differing += 1
                missing += max(0, want - have)
                extra += max(0, have - want)
        report[family] = {
            "sent": sum(sent[family].values()),
            "stored": sum(rows.values()),
            "missing": missing,
            "extra": extra,
            "instruments_differing": differing,
        }
    return report


# ------------------------------------------------------------------------------ processes


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes; (0, 0) when the process is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def postgres_pids(pg: TempPostgres) -> list[int]:
    """The postmaster and its children (backends, checkpointer, WAL writer...)."""
    try:
        master = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [master]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == master:
            pids.append(int(entry.name))
    return pids


def log_size(pg: TempPostgres) -> int:
    try:
        return pg.logfile.stat().st_size
    except OSError:
        return 0


def checkpoints_since(pg: TempPostgres, offset: int) -> list[str]:
    """Checkpoints PostgreSQL started since ``offset`` of its log: "HH:MM:SS cause" each."""
    try:
        with pg.logfile.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        if "checkpoint starting:" in line:
            clock = line.split()[1] if len(line.split()) > 1 else "?"
            found.append(f"{clock.split('.')[0]} {line.split('checkpoint starting:')[1].strip()}")
    return found


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# The --gc wrapper: the collector's own entry point, with GC accounting (and a policy).
# Every second and at exit it writes {"passes": [gen0, gen1, gen2], "gc_seconds": ...,
# "longest_pass": ...} (totals since start) to $BENCH_GC_REPORT.
_GC_WRAPPER = r"""
import atexit, gc, json, os, sys, threading, time
policy = sys.argv.pop(1)
stats = {"policy": policy, "passes": [0, 0, 0], "gc_seconds": 0.0, "longest_pass": 0.0}
started = [0.0]
def _cb(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        took = time.perf_counter() - started[0]
        stats["passes"][info["generation"]] += 1
        stats["gc_seconds"] += took
        stats["longest_pass"] = max(stats["longest_pass"], took)
gc.callbacks.append(_cb)
for part in policy.split("+"):
    if part.startswith("threshold:"):
        gc.set_threshold(*(int(x) for x in part.split(":", 1)[1].split(",")))
    elif part.startswith("freeze"):
        delay = float(part.partition(":")[2] or 15)
        def _freeze():
            time.sleep(delay)
            gc.collect()
            gc.freeze()
        threading.Thread(target=_freeze, daemon=True).start()
def _report():
    stats.update(frozen=gc.get_freeze_count(), threshold=gc.get_threshold())
    path = os.environ["BENCH_GC_REPORT"]
    with open(path + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(path + ".tmp", path)
def _every_second():
    while True:
        time.sleep(1.0)
        _report()
threading.Thread(target=_every_second, daemon=True).start()
atexit.register(_report)
from optionfeed.cli import main
sys.exit(main(["collect", *sys.argv[1:]]))
"""


class Collector:
    """``optionfeed collect`` as a child process (optionally under the GC wrapper)."""

    def __init__(self, args: list[str], log_path: Path, gc_policy: str | None) -> None:
        self.args = args
        self.log_path = log_path
        self.gc_policy = gc_policy
        self.gc_report = log_path.with_suffix(".gc.json")
        self.process: subprocess.Popen[bytes] | None = None
        self.hwm = 0

    @property
    def command(self) -> list[str]:
        if self.gc_policy is None:
            return [sys.executable, "-m", "optionfeed", "collect", *self.args]
        return [sys.executable, "-c", _GC_WRAPPER, self.gc_policy, *self.args]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIONFEED_")}
        env.pop("DATABASE_URL", None)
        env["BENCH_GC_REPORT"] = str(self.gc_report)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, preexec_fn=die_with_parent,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def gc_stats(self) -> dict[str, Any] | None:
        """What the GC wrapper last reported (it writes every second); None without it."""
        if self.gc_policy is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.gc_report.read_text())  # type: ignore[no-any-return]
        return None

    def sample_memory(self) -> int:
        _, hwm = proc_memory(self.pid)
        self.hwm = max(self.hwm, hwm)
        return hwm

    def stop(self, timeout: float = 180.0) -> int:
        """SIGTERM, then wait (reading the peak RSS until the end); SIGKILL after ``timeout``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            self.sample_memory()
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                break
            time.sleep(0.2)
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------ one stage


@dataclass
class StageResult:
    target: float  # msg/s asked for
    sim_rate: float  # --rate given to the simulator (events/s)
    seconds: float = 0.0  # measured window
    msgs_per_s: float = 0.0  # notifications received by the collector per second
    rows_per_s: float = 0.0  # rows committed per second
    rows_by_table: dict[str, float] = field(default_factory=dict)  # rows/s per table
    sim_sent_per_s: float = 0.0  # notifications the simulator handed to the kernel, per second
    sim_skipped_ms: float = 0.0  # market time the simulator skipped during the stage
    lag: dict[str, float] = field(default_factory=dict)  # exchange -> commit, seconds
    lag_receive: dict[str, float] = field(default_factory=dict)  # exchange -> receive
    lag_inside: dict[str, float] = field(default_factory=dict)  # receive -> commit
    lag_slices_p99: list[float] = field(default_factory=list)  # p99 per 10 s of the window
    lag_histogram: dict[str, float] = field(default_factory=dict)  # from /metrics, interpolated
    lag_rows: int = 0  # rows the latency figures are taken over
    peak_rss_mb: float = 0.0
    cpu_per_100k: float = 0.0  # collector CPU seconds per 100k notifications
    cpu_cores: dict[str, float] = field(default_factory=dict)  # collector, simulator, postgres
    buffer_peak_rows: float = 0.0
    load: str = ""  # the machine's load average at the end of the window
    writer_busy: float = 0.0  # share of the window spent in COPY + merge (write_duration sums)
    checkpoints: list[str] = field(default_factory=list)  # PostgreSQL checkpoints in the window
    batches: float = 0.0  # batches written in the window
    loss: dict[str, dict[str, int]] = field(default_factory=dict)
    reconnects: float = 0.0
    rejected: float = 0.0
    write_errors: float = 0.0
    exit_code: int | None = None
    gc: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: str | None = None  # collapsed stacks of the collector during the window
    verdict: str = ""  # sustained | not sustained | simulator-limited | failed
    sim_command: str = ""
    collector_command: str = ""
    reproduce: str = ""  # this stage alone, with the same simulator rate

    @property
    def lossless(self) -> bool:
        return bool(self.loss) and all(
            r["missing"] == 0 and r["extra"] == 0 for r in self.loss.values()
        )


def pick_instruments(sim: SimulatorProcess, n: int) -> list[str]:
    names: list[str] = []
    for currency in ("BTC", "ETH", "USDC"):
        result = sim.rest("public/get_instruments", currency=currency, kind="option")["result"]
        names.extend(sorted(i["instrument_name"] for i in result))
    if len(names) < n:
        raise SystemExit(f"the simulator lists {len(names)} options, fewer than {n}")
    return names[:n]


def assignment(instruments: list[str], url: str, channels: list[str], interval: str) -> str:
    doc = {
        "feed": "bench", "namespace": "bench", "shard": 0, "shards": 1, "generation": 1,
        "currency": "BTC", "interval": interval, "channels": channels,
        "instruments": instruments, "exchangeUrl": url,
    }  # fmt: skip
    return json.dumps(doc)


async def stored_rows(url: str, families: list[str]) -> dict[str, dict[str, int]]:
    connection = await asyncpg.connect(url)
    try:
        out: dict[str, dict[str, int]] = {}
        for family in families:
            rows = await connection.fetch(
                f"SELECT instrument, count(*) AS n FROM {TABLE_OF[family]} GROUP BY instrument"
            )
            out[family] = {r["instrument"]: int(r["n"]) for r in rows}
        return out
    finally:
        await connection.close()


_LAG_SQL = """
WITH w AS ({union})
SELECT count(*) AS n,
       percentile_disc(ARRAY[0.5, 0.99, 0.999]) WITHIN GROUP (ORDER BY lag) AS lag,
       max(lag) AS lag_max,
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY receive) AS receive,
       percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY inside) AS inside
FROM w
"""
_SLICES_SQL = """
WITH w AS ({union})
SELECT slice, percentile_disc(0.99) WITHIN GROUP (ORDER BY lag) AS p99
FROM w GROUP BY slice ORDER BY slice
"""
_PER_TABLE = """
SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts)::float8 AS lag,
       extract(epoch FROM recv_ts - ts)::float8 AS receive,
       extract(epoch FROM pg_xact_commit_timestamp(xmin) - recv_ts)::float8 AS inside,
       floor((extract(epoch FROM ts) - $1) / 10)::int AS slice
FROM {table} WHERE ts >= to_timestamp($1) AND ts < to_timestamp($2)
"""


async def exact_lags(url: str, families: list[str], t0: float, t1: float) -> dict[str, Any]:
    union = " UNION ALL ".join(_PER_TABLE.format(table=TABLE_OF[f]) for f in families)
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(_LAG_SQL.format(union=union), t0, t1)
        slices = await connection.fetch(_SLICES_SQL.format(union=union), t0, t1)
    finally:
        await connection.close()
    assert row is not None
    if not row["n"]:
        return {"rows": 0}
    return {
        "rows": int(row["n"]),
        "lag": {"p50": row["lag"][0], "p99": row["lag"][1], "p999": row["lag"][2],
                "max": row["lag_max"]},
        "receive": {"p50": row["receive"][0], "p99": row["receive"][1]},
        "inside": {"p50": row["inside"][0], "p99": row["inside"][1]},
        "slices": [float(r["p99"]) for r in slices],
    }  # fmt: skip


def start_profiler(pid: int, output: Path, seconds: float, native: bool) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` for ``seconds`` into ``output`` (collapsed stacks, one a line)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
        "--duration", str(max(1, round(seconds))), "--rate", "250", "--format", "raw",
        "--nolineno", "--output", str(output),
    ]  # fmt: skip
    if native:
        command.append("--native")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def scrape(port: int) -> Samples:
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return parse_metrics(body.decode())


def wait_ready(collector: Collector, port: int, within: float) -> None:
    deadline = time.monotonic() + within
    last = b""
    while time.monotonic() < deadline:
        assert collector.process is not None
        if collector.process.poll() is not None:
            raise RuntimeError(
                f"the collector exited with {collector.process.returncode}:\n"
                f"{collector.output_tail()}"
            )
        with contextlib.suppress(OSError):
            status, last = http_get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the collector was not ready within {within:g} s: {last.decode()}")


def settle_rate(
    sim: SimulatorProcess, port: int, families: list[str], target: float, rate: int, warmup: float
) -> int:
    """Spend the warm-up steering the simulator's rate towards ``target`` msg/s; the new rate.

    The share of events that reach a subscriber (and the trades and book changes among them)
    varies with the market, so the rate is corrected from what the collector received over the
    first two thirds of the warm-up, in two steps; the last third runs at the final rate. It is
    raised only while the collector keeps pace (99 % of the step's rows committed within 1 s of
    their exchange time): a collector that falls behind receives less than is offered, and
    offering more would measure nothing but a longer queue.
    """
    deadline = time.monotonic() + warmup
    step = warmup / 3
    for _ in range(2):
        before, t0 = scrape(port), time.monotonic()
        time.sleep(step)
        after = scrape(port)
        got = (messages(after, families) - messages(before, families)) / (time.monotonic() - t0)
        lags = bucket_delta(lag_buckets(after), lag_buckets(before))
        within = max((count for bound, count in lags if bound <= 1.0), default=0.0)
        keeping_pace = bool(lags) and lags[-1][1] > 0 and within >= 0.99 * lags[-1][1]
        if got > 1.02 * target or (keeping_pace and 0 < got < 0.98 * target):
            rate = max(1, round(rate * target / got))
            sim.set_rate(rate)
    time.sleep(max(0.0, deadline - time.monotonic()))
    return rate


def messages(samples: Samples, families: list[str]) -> float:
    return sum(metric_sum(samples, "optionfeed_messages_total", channel=f) for f in families)


def run_stage(
    pg: TempPostgres,
    index: int,
    target: float,
    msgs_per_event: float,
    args: argparse.Namespace,
    workdir: Path,
) -> StageResult:
    families = args.channels.split(",")
    sim_rate = args.sim_rates[index] if index < len(args.sim_rates) else 0
    if not sim_rate:
        sim_rate = round(target / msgs_per_event)
    result = StageResult(target=target, sim_rate=sim_rate)
    database = f"e2e_{index}_{int(target)}"
    url = pg.create_database(database)
    sim_args = ["--currencies", "BTC,ETH,USDC", "--rate", str(sim_rate), *args.sim_args]
    collector: Collector | None = None
    try:
        with SimulatorProcess(*sim_args, seed=args.seed) as sim:
            result.sim_command = "optionfeed " + shlex.join(sim.command[3:])
            instruments = pick_instruments(sim, args.instruments)
            path = workdir / f"assignment-{index}.json"
            path.write_text(assignment(instruments, sim.ws_url, families, args.interval))
            port = free_port()
            collect_args = [
                "--assignment", str(path), "--database-url", url,
                "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
                "--client-id", sim.client_id, "--client-secret", sim.client_secret,
                *args.collector_args,
            ]  # fmt: skip
            collector = Collector(collect_args, workdir / f"collector-{index}.log", args.gc)
            result.collector_command = shlex.join(["optionfeed", "collect", *collect_args])
            collector.start()
            wait_ready(collector, port, within=args.ready_timeout)
            if args.sim_rates:
                time.sleep(args.warmup)
            else:
                sim_rate = settle_rate(sim, port, families, target, sim_rate, args.warmup)
                result.sim_rate = sim_rate

            pg_pids = postgres_pids(pg)
            log0 = log_size(pg)
            gc0 = collector.gc_stats()
            before = scrape(port)
            ledger0 = sim.ledger("-")["totals"]
            pg0 = {p: proc_cpu(p) for p in pg_pids}
            cpu0 = (proc_cpu(collector.pid), proc_cpu(sim.process.pid))  # type: ignore[union-attr]
            t0 = time.time()
            spy = None
            if args.profile is not None:
                output = args.profile.with_name(
                    f"{args.profile.stem}-{int(target)}{args.profile.suffix or '.txt'}"
                )
                spy = start_profiler(collector.pid, output, args.window, args.profile_native)
                result.profile = str(output)
            buffer_peak = 0.0
            while time.time() - t0 < args.window:
                time.sleep(min(1.0, max(0.0, args.window - (time.time() - t0))))
                collector.sample_memory()
                with contextlib.suppress(OSError, RuntimeError):
                    now = scrape(port)
                    buffer_peak = max(buffer_peak, metric_sum(now, "optionfeed_buffer_rows"))
            after = scrape(port)
            t1 = time.time()
            gc1 = collector.gc_stats()
            result.checkpoints = checkpoints_since(pg, log0)
            cpu1 = (proc_cpu(collector.pid), proc_cpu(sim.process.pid))  # type: ignore[union-attr]
            # Per process: a backend that ended in the window counts for nothing, not minus.
            pg_cpu = sum(max(0.0, proc_cpu(p) - c) for p, c in pg0.items())
            ledger1 = sim.ledger("-")["totals"]
            collector.sample_memory()
            if spy is not None:
                spy.wait(60)

            result.seconds = t1 - t0
            result.load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
            received = messages(after, families) - messages(before, families)
            result.msgs_per_s = received / result.seconds
            written = metric_sum(after, "optionfeed_rows_written_total") - metric_sum(
                before, "optionfeed_rows_written_total"
            )
            result.rows_per_s = written / result.seconds
            for family in families:
                table = TABLE_OF[family]
                result.rows_by_table[table] = (
                    metric_sum(after, "optionfeed_rows_written_total", table=table)
                    - metric_sum(before, "optionfeed_rows_written_total", table=table)
                ) / result.seconds
            result.sim_sent_per_s = (
                ledger1["notifications"] - ledger0["notifications"]
            ) / result.seconds
            result.cpu_per_100k = (cpu1[0] - cpu0[0]) / max(received, 1) * 100_000
            result.cpu_cores = {
                "collector": (cpu1[0] - cpu0[0]) / result.seconds,
                "simulator": (cpu1[1] - cpu0[1]) / result.seconds,
                "postgres": pg_cpu / result.seconds,
            }
            result.buffer_peak_rows = buffer_peak
            result.writer_busy = (
                metric_sum(after, "optionfeed_write_duration_seconds_sum")
                - metric_sum(before, "optionfeed_write_duration_seconds_sum")
            ) / result.seconds
            count = "optionfeed_write_duration_seconds_count"
            result.batches = metric_sum(after, count, table="option_tickers") - metric_sum(
                before, count, table="option_tickers"
            )
            window_lags = bucket_delta(lag_buckets(after), lag_buckets(before))
            result.lag_histogram = {
                q: histogram_quantile(v, window_lags) or math.nan
                for q, v in (("p50", 0.5), ("p99", 0.99))
            }
            result.reconnects = metric_sum(after, "optionfeed_reconnects_total")
            result.rejected = metric_sum(after, "optionfeed_rejected_messages_total")
            result.write_errors = metric_sum(after, "optionfeed_write_errors_total")

            result.exit_code = collector.stop()
            result.peak_rss_mb = collector.hwm / 2**20
            ledger = sim.ledger()
            result.sim_skipped_ms = ledger["totals"]["overload_skipped_ms"]
            skipped_in_window = ledger1["overload_skipped_ms"] - ledger0["overload_skipped_ms"]
        result.loss = compare_with_ledger(ledger, asyncio.run(stored_rows(url, families)))
        lags = asyncio.run(exact_lags(url, families, t0, t1))
        result.lag_rows = lags["rows"]
        if lags["rows"]:
            result.lag = lags["lag"]
            result.lag_receive = lags["receive"]
            result.lag_inside = lags["inside"]
            result.lag_slices_p99 = lags["slices"]
        if gc0 is not None and gc1 is not None:
            result.gc = {
                "policy": gc1["policy"],
                "passes": [b - a for a, b in zip(gc0["passes"], gc1["passes"], strict=True)],
                "gc_seconds": gc1["gc_seconds"] - gc0["gc_seconds"],
                "longest_pass": gc1["longest_pass"],
                "frozen": gc1.get("frozen"),
            }
    finally:
        if collector is not None:
            collector.kill()
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copyfile(collector.log_path, args.logs / f"collector-{int(target)}.log")
        if not args.keep_databases:
            with contextlib.suppress(RuntimeError):
                pg.drop_database(database)

    judge(result, skipped_in_window, args.max_p99)
    result.reproduce = stage_command(args, target, sim_rate)
    return result


def stage_command(args: argparse.Namespace, target: float, sim_rate: int) -> str:
    """The command that runs one stage again, with the simulator at the same ``--rate``."""
    argv = [
        "--rates", f"{target:g}", "--sim-rates", str(sim_rate), "--window", f"{args.window:g}",
        "--warmup", f"{args.warmup:g}", "--instruments", str(args.instruments),
        "--channels", args.channels, "--interval", args.interval, "--seed", str(args.seed),
    ]  # fmt: skip
    if args.collector_args:
        argv += ["--collector-args", shlex.join(args.collector_args)]
    if args.sim_args:
        argv += ["--sim-args", shlex.join(args.sim_args)]
    if args.gc:
        argv += ["--gc", args.gc]
    for item in args.pg_setting:
        argv += ["--pg-setting", item]
    return command_line(argv)


def judge(result: StageResult, skipped_in_window: float, max_p99: float) -> None:
    p = result.problems
    if result.exit_code != 0:
        p.append(f"collector exit code {result.exit_code}")
    for family, r in result.loss.items():
        if r["missing"] or r["extra"]:
            # After a reconnect the collector fetches the missed trades by REST: rows the channel
            # never sent, so the ledger does not count them.
            backfill = family == "trades" and r["extra"] and result.reconnects
            why = " (REST backfill after a reconnect)" if backfill else ""
            p.append(
                f"{family}: {r['missing']} missing, {r['extra']} extra{why} "
                f"on {r['instruments_differing']} instruments"
            )
    if result.reconnects:
        p.append(f"{result.reconnects:g} reconnects")
    if result.rejected:
        p.append(f"{result.rejected:g} rejected frames")
    p99 = result.lag.get("p99", math.inf)
    behind = p99 > max_p99
    if behind:
        p.append(f"p99 lag {p99:.2f} s > {max_p99:g} s: did not keep pace")
    # Under 1 % of the window's market time skipped, the simulator delivered 99 % of the rate.
    sim_limited = skipped_in_window > 0.01 * result.seconds * 1000
    if sim_limited:
        p.append(f"the simulator skipped {skipped_in_window:,.0f} ms of market time in the window")
    elif skipped_in_window:
        result.notes.append(
            f"the simulator skipped {skipped_in_window:,.0f} ms of market time in the window "
            f"({skipped_in_window / result.seconds / 10:.2f} % of it)"
        )
    elif result.sim_skipped_ms:
        result.notes.append(
            f"the simulator skipped {result.sim_skipped_ms:,.0f} ms of market time outside the "
            "window (start-up, subscription or shutdown)"
        )
    if not result.lossless or result.exit_code != 0 or result.reconnects or result.rejected:
        result.verdict = "failed"
    elif sim_limited:
        result.verdict = "simulator-limited"
    elif behind:
        result.verdict = "not sustained"
    else:
        result.verdict = "sustained"


# ------------------------------------------------------------------------------ the suite


def stage_line(r: StageResult) -> str:
    lag = r.lag
    return (
        f"{r.target:>8,.0f} {r.sim_rate:>7,.0f} {r.msgs_per_s:>9,.0f} {r.rows_per_s:>9,.0f} "
        f"{lag.get('p50', math.nan) * 1000:>6.0f} {lag.get('p99', math.nan) * 1000:>6.0f} "
        f"{r.lag_histogram.get('p99', math.nan) * 1000:>7.0f} "
        f"{r.peak_rss_mb:>6.1f} {r.cpu_per_100k:>7.2f} "
        f"{r.cpu_cores.get('collector', 0):>5.2f} {r.cpu_cores.get('simulator', 0):>5.2f} "
        f"{r.cpu_cores.get('postgres', 0):>5.2f}  {r.verdict}"
    )


HEADER = (
    f"{'target':>8} {'--rate':>7} {'msg/s':>9} {'rows/s':>9} {'p50ms':>6} {'p99ms':>6} "
    f"{'hist99':>7} {'RSS MB':>6} {'cpu/100k':>7} {'coll':>5} {'sim':>5} {'pg':>5}  verdict"
)


def command_line(argv: Sequence[str]) -> str:
    return f"uv run python tests/bench/bench_e2e.py {shlex.join(argv)}".rstrip()


def run_suite(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    targets = [float(r) for r in args.rates.split(",")]
    settings = {**DEFAULT_DURABILITY, "track_commit_timestamp": "on", "log_checkpoints": "on"}
    settings.update(args.pg_settings)
    print("optionfeed benchmark (b): end to end, simulator -> collector -> PostgreSQL")
    print(f"machine:  {machine()}")
    print(f"command:  {command_line(argv)}")
    results: list[StageResult] = []
    per_event = FIRST_GUESS_MSGS_PER_EVENT
    with TempPostgres(settings=settings) as pg, tempfile.TemporaryDirectory() as tmp:
        version = pg.psql("SHOW server_version")
        print(
            f"postgres: {version} on 127.0.0.1 (fsync, synchronous_commit, full_page_writes and "
            f"track_commit_timestamp on, shared_buffers=256MB, max_wal_size="
            f"{pg.psql('SHOW max_wal_size')})"
            + "".join(f", {k}={v}" for k, v in args.pg_settings.items() if k != "max_wal_size")
        )
        print(
            f"setting:  {args.instruments} instruments x {args.channels} at {args.interval}; "
            f"{args.warmup:g} s warm-up, {args.window:g} s window per stage; "
            f"collector flags: {' '.join(args.collector_args) or '(defaults)'}"
            + (f"; collector GC: {args.gc}" if args.gc else "")
        )
        print("msg/s:    notifications received by the collector per second (ticker+trades+book)")
        print()
        print(HEADER, flush=True)
        failures = 0
        for index, target in enumerate(targets):
            result = run_stage(pg, index, target, per_event, args, Path(tmp))
            results.append(result)
            print(stage_line(result), flush=True)
            for problem in result.problems:
                print(f"{'':>9}! {problem}", flush=True)
            for note in result.notes:
                print(f"{'':>9}- {note}", flush=True)
            if result.gc:
                g = result.gc
                print(
                    f"{'':>9}GC ({g['policy']}) in the window: passes by generation "
                    f"{g['passes']}, {g['gc_seconds']:.2f} s in GC "
                    f"({g['gc_seconds'] / result.seconds:.1%} of a core); longest pass "
                    f"{g['longest_pass'] * 1000:.0f} ms; {g['frozen']} objects frozen",
                    flush=True,
                )
            if result.verdict == "sustained":  # offered and received were the same
                per_event = result.msgs_per_s / result.sim_rate
            if result.verdict != "sustained":
                failures += 1
                if failures >= args.stop_after:
                    break
        if args.keep_databases:
            print(f"databases kept in {pg.url}; press Enter to drop them")
            input()
    summary = summarise(results)
    print()
    print_details(results)
    print()
    for line in summary["lines"]:
        print(line)
    return {
        "command": command_line(argv),
        "machine": machine(),
        "settings": {"instruments": args.instruments, "channels": args.channels,
                     "interval": args.interval, "window": args.window, "warmup": args.warmup},
        "stages": [asdict(r) for r in results],
        "summary": summary,
    }  # fmt: skip


def print_details(results: list[StageResult]) -> None:
    for r in results:
        print(f"stage {r.target:,.0f} msg/s target ({r.verdict}; load average {r.load}):")
        print(f"    again:     {r.reproduce}")
        print(f"    simulator: {r.sim_command}")
        print(f"    collector: {r.collector_command}")
        print(
            f"    received {r.msgs_per_s:,.0f} msg/s (simulator handed {r.sim_sent_per_s:,.0f}/s "
            f"to the kernel); rows/s by table: "
            + ", ".join(f"{t} {v:,.0f}" for t, v in r.rows_by_table.items())
        )
        if r.lag:
            print(
                f"    lag over {r.lag_rows:,} rows: exchange->commit p50 {r.lag['p50']*1000:.0f} "
                f"p99 {r.lag['p99']*1000:.0f} p99.9 {r.lag['p999']*1000:.0f} "
                f"max {r.lag['max']*1000:.0f} ms; exchange->receive p50 "
                f"{r.lag_receive['p50']*1000:.0f} p99 {r.lag_receive['p99']*1000:.0f} ms; "
                f"receive->commit p50 {r.lag_inside['p50']*1000:.0f} "
                f"p99 {r.lag_inside['p99']*1000:.0f} ms"
            )  # fmt: skip
            print(
                "    p99 per 10 s of the window (ms): "
                + " ".join(f"{v * 1000:.0f}" for v in r.lag_slices_p99)
                + f"; histogram estimate p50 {r.lag_histogram['p50']*1000:.0f} "
                f"p99 {r.lag_histogram['p99']*1000:.0f} ms"
            )  # fmt: skip
        loss = ", ".join(
            f"{f} {v['stored']:,}/{v['sent']:,}" for f, v in r.loss.items()
        )  # fmt: skip
        print(
            f"    stored/sent: {loss}; peak buffer {r.buffer_peak_rows:,.0f} rows; peak RSS "
            f"{r.peak_rss_mb:.1f} MB; CPU {r.cpu_per_100k:.2f} s per 100k msgs"
        )
        print(
            f"    writer: {r.batches:,.0f} batches in the window, COPY + merge busy "
            f"{r.writer_busy:.0%} of it; CPU in cores: "
            + ", ".join(f"{k} {v:.2f}" for k, v in r.cpu_cores.items())
            + f"; PostgreSQL checkpoints in the window: {len(r.checkpoints)}"
            + (f" ({', '.join(r.checkpoints)})" if r.checkpoints else "")
        )


def summarise(results: list[StageResult]) -> dict[str, Any]:
    """The headline figures: the best sustained stage, the stage nearest 10k msg/s, peak RSS."""
    sustained = [r for r in results if r.verdict == "sustained"]
    best = max(sustained, key=lambda r: r.msgs_per_s, default=None)
    measured = [r for r in results if r.lag]
    near_10k = min(measured, key=lambda r: abs(r.msgs_per_s - 10_000), default=None)
    biggest = max(results, key=lambda r: r.peak_rss_mb, default=None)
    lines: list[str] = []
    out: dict[str, Any] = {"lines": lines}
    if best:
        out["sustained"] = {
            "msgs_per_s": best.msgs_per_s, "rows_per_s": best.rows_per_s,
            "rows_by_table": best.rows_by_table, "seconds": best.seconds,
            "cpu_per_100k": best.cpu_per_100k, "reproduce": best.reproduce,
        }  # fmt: skip
        lines.append(
            f"highest rate sustained for {best.seconds:.0f} s with zero loss: "
            f"{best.msgs_per_s:,.0f} msg/s ({best.rows_per_s:,.0f} rows/s), "
            f"CPU {best.cpu_per_100k:.2f} s per 100k messages"
        )
    else:
        lines.append("no stage was sustained")
    lossless = [r for r in results if r.verdict in ("sustained", "not sustained")]
    fastest = max(lossless, key=lambda r: r.msgs_per_s, default=None)
    if fastest is not None and fastest is not best:
        out["zero_loss_only"] = {
            "msgs_per_s": fastest.msgs_per_s, "p99": fastest.lag.get("p99"),
            "reproduce": fastest.reproduce,
        }  # fmt: skip
        lines.append(
            f"highest rate with zero loss but not keeping pace: {fastest.msgs_per_s:,.0f} msg/s "
            f"(p99 lag {fastest.lag.get('p99', math.nan):.2f} s; the buffer's backpressure "
            "slowed reading and nothing was lost)"
        )
    if near_10k is not None:
        out["at_10k"] = {
            "msgs_per_s": near_10k.msgs_per_s, "p50": near_10k.lag["p50"],
            "p99": near_10k.lag["p99"], "verdict": near_10k.verdict,
            "cpu_per_100k": near_10k.cpu_per_100k, "reproduce": near_10k.reproduce,
        }  # fmt: skip
        lines.append(
            f"exchange->commit at {near_10k.msgs_per_s:,.0f} msg/s: "
            f"p50 {near_10k.lag['p50'] * 1000:.0f} ms, p99 {near_10k.lag['p99'] * 1000:.0f} ms"
        )
    if biggest is not None:
        in_sustained = max((r.peak_rss_mb for r in sustained), default=math.nan)
        out["peak_rss"] = {
            "mb": biggest.peak_rss_mb, "target": biggest.target, "verdict": biggest.verdict,
            "sustained_mb": in_sustained, "buffer_peak_rows": biggest.buffer_peak_rows,
            "reproduce": biggest.reproduce,
        }  # fmt: skip
        lines.append(
            f"peak RSS of the collector: {biggest.peak_rss_mb:.1f} MB (stage "
            f"{biggest.target:,.0f}, {biggest.verdict}, buffer peak "
            f"{biggest.buffer_peak_rows:,.0f} rows); largest in a sustained stage "
            f"{in_sustained:.1f} MB"
        )
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="5000,10000,20000,30000,36000,45000",
                        help="target msg/s of the stages, rising")  # fmt: skip
    parser.add_argument("--sim-rates", default="",
                        help="the simulator's --rate for each stage (default: derived from the "
                        "target and the notifications per event measured so far)")  # fmt: skip
    parser.add_argument("--window", type=float, default=60.0, help="measured seconds per stage")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--instruments", type=int, default=2000)
    parser.add_argument("--channels", default="ticker,trades,book")
    parser.add_argument("--interval", default="raw", choices=["raw", "100ms", "agg2"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-p99", type=float, default=1.0,
                        help="p99 lag (s) above which a stage did not keep pace")  # fmt: skip
    parser.add_argument("--stop-after", type=int, default=2,
                        help="stop after this many stages that were not sustained")  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--collector-args", default="",
                        help="extra flags for optionfeed collect, one string")  # fmt: skip
    parser.add_argument("--sim-args", default="",
                        help="extra flags for optionfeed simulate, one string")  # fmt: skip
    parser.add_argument(
        "--gc",
        default=None,
        help="run the collector under the GC wrapper: default (count only), freeze[:after_s] "
        "(gc.collect() and gc.freeze() that long after start, 15 s by default), "
        "threshold:g0,g1,g2, or several joined by +",
    )
    parser.add_argument(
        "--pg-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the benchmark's server (repeatable), e.g. max_wal_size=4GB",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--logs", type=Path, help="keep each stage's collector log in this folder")
    parser.add_argument("--profile", type=Path, help="py-spy the collector during the window, "
                        "collapsed stacks into this file")  # fmt: skip
    parser.add_argument("--profile-native", action="store_true",
                        help="with --profile: include C extension frames")  # fmt: skip
    parser.add_argument("--keep-databases", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.collector_args = shlex.split(args.collector_args)
    args.sim_args = shlex.split(args.sim_args)
    args.sim_rates = [int(r) for r in args.sim_rates.split(",") if r]
    args.pg_settings = dict(item.split("=", 1) for item in args.pg_setting)
    return args


@contextlib.contextmanager
def timed() -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"\n({time.monotonic() - started:.0f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so that PostgreSQL, the simulator and the collector stop too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with timed():
        report = run_suite(args, argv)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
