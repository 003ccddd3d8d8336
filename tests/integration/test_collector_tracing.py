"""Traces from a real collector process arrive at a real OTLP receiver.

The collector (``optionfeed collect --assignment``) runs against the simulator and PostgreSQL with
the standard ``OTEL_*`` variables pointing at an OpenTelemetry Collector on 127.0.0.1. The test
makes it subscribe, flush, lose its connection (a simulator fault), record the gaps and backfill
the trades, and reload a new assignment carrying an operator's trace context; then it reads back
what the receiver got.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from harness.collector import CollectorProcess, assignment_doc, fetch, write_atomically
from harness.otlp import OtlpReceiver, Span, by_name
from harness.simulator import SimulatorProcess
from optionfeed import __version__

# A reconcile pass's trace context as the operator writes it into the assignment.
OPERATOR_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OPERATOR_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{OPERATOR_TRACE}-{OPERATOR_SPAN}-01"


def _ok(spans: list[Span], name: str, **attributes: object) -> list[Span]:
    return [
        s
        for s in by_name(spans, name)
        if all(s.attributes.get(key) == value for key, value in attributes.items())
    ]


async def _option_names(sim: SimulatorProcess, count: int) -> list[str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{sim.rest_url}/public/get_instruments",
            params={"currency": "ETH", "kind": "option"},
        ) as response,
    ):
        return sorted(i["instrument_name"] for i in (await response.json())["result"])[:count]


async def test_a_collector_exports_its_sessions_flushes_gaps_backfills_and_reloads(
    database_url: str, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    with SimulatorProcess("--rate", "3000", "--currencies", "ETH") as sim:
        names = await _option_names(sim, 30)
        path = tmp_path / "assignment.json"
        write_atomically(path, assignment_doc(names[:20], exchange_url=sim.ws_url))
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=collector-0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans reach the receiver while we wait
        }
        args = ("--assignment", str(path), "--database-url", database_url, "--metrics-port", "0")
        with CollectorProcess(*args, env=env) as collector:
            # 1. Subscribed and writing.
            otlp_receiver.wait_for(
                lambda spans: (
                    bool(
                        [
                            s
                            for s in by_name(spans, "optionfeed.subscribe")
                            if s.attributes.get("optionfeed.channels.granted", 0) > 0
                        ]
                    )
                    and bool(by_name(spans, "optionfeed.flush.table"))
                ),
                what="a subscribe and a flush",
            )
            # 2. The exchange drops the connection: a session ends, gaps open and close, and
            #    the trades of the gap are fetched again.
            sim.set_faults(drop={"fraction": 1.0})
            otlp_receiver.wait_for(
                lambda spans: (
                    any(
                        s.attributes.get("optionfeed.disconnect.reason") not in (None, "shutdown")
                        for s in by_name(spans, "optionfeed.session")
                    )
                    and len(by_name(spans, "optionfeed.backfill")) >= 20
                ),
                what="a lost session and a backfill of every instrument's trades",
            )
            # 3. A new assignment from the operator: the reload links to its reconcile pass.
            write_atomically(
                path,
                {
                    **assignment_doc(names[10:30], exchange_url=sim.ws_url, generation=2),
                    "traceparent": TRACEPARENT,
                },
            )
            otlp_receiver.wait_for(
                lambda spans: bool(by_name(spans, "optionfeed.assignment.reload")),
                what="the reload",
            )
            collector.signal(signal.SIGTERM)
            assert collector.wait(120) == 0, collector.output
    # The provider is shut down on exit: the sessions still open then are exported too.
    spans = otlp_receiver.wait_for(
        lambda spans: bool(
            _ok(spans, "optionfeed.session", **{"optionfeed.disconnect.reason": "shutdown"})
        ),
        what="the session ended by the shutdown",
    )
    collector_spans = [s for s in spans if s.service == "optionfeed-collector"]
    assert collector_spans == spans, "every span comes from the collector"
    counts: dict[str, int] = {}
    for span in spans:
        counts[span.name] = counts.get(span.name, 0) + 1
    print(f"spans received: {dict(sorted(counts.items()))}")

    # The resource: who sent it.
    resource = spans[0].resource
    assert resource["optionfeed.feed"] == "test-feed"
    assert resource["optionfeed.shard"] == "0"
    assert resource["k8s.pod.name"] == "collector-0"
    assert resource["service.version"] == __version__

    # Migrations of the fresh database.
    (migrate,) = by_name(spans, "optionfeed.migrate")
    assert migrate.attributes["optionfeed.migrations.applied"] > 0

    # Sessions: one lost by the fault, one ended by the shutdown; subscribes are their children.
    sessions = by_name(spans, "optionfeed.session")
    reasons = sorted(s.attributes["optionfeed.disconnect.reason"] for s in sessions)
    assert "shutdown" in reasons, reasons
    assert len(reasons) >= 2, reasons
    for session in sessions:
        assert session.attributes["url.full"] == sim.ws_url
        assert "connected" in session.events
    lost = [s for s in sessions if s.attributes["optionfeed.disconnect.reason"] != "shutdown"]
    assert all(s.status_code == 2 for s in lost), "a lost session is an error"
    subscribes = by_name(spans, "optionfeed.subscribe")
    session_ids = {s.span_id for s in sessions}
    assert all(s.parent_span_id in session_ids for s in subscribes)
    assert sum(s.attributes["optionfeed.channels.granted"] for s in subscribes) >= 2 * 40

    # Flushes: one span per batch, a child per table with its rows and COPY and merge times.
    flushes = {s.span_id: s for s in by_name(spans, "optionfeed.flush")}
    tables = by_name(spans, "optionfeed.flush.table")
    assert tables
    assert all(t.parent_span_id in flushes for t in tables)
    assert {"option_tickers", "option_trades"} <= {
        t.attributes["db.collection.name"] for t in tables
    }
    for table in tables:
        assert table.attributes["optionfeed.rows"] > 0
        assert table.attributes["optionfeed.copy.seconds"] >= 0
        assert table.attributes["optionfeed.merge.seconds"] >= 0
    assert sum(f.attributes["optionfeed.batch.rows"] for f in flushes.values()) == sum(
        t.attributes["optionfeed.rows"] for t in tables
    )

    # Gaps, with their bounds as the span's times, and the backfill of each trades gap.
    gaps = {s.span_id: s for s in by_name(spans, "optionfeed.gap")}
    disconnect_gaps = [
        g for g in gaps.values() if g.attributes["optionfeed.gap.reason"] == "disconnect"
    ]
    assert len(disconnect_gaps) >= 2 * 20  # ticker and trades of each instrument
    backfills = by_name(spans, "optionfeed.backfill")
    assert all(b.parent_span_id in gaps for b in backfills)
    for backfill in backfills:
        gap = gaps[backfill.parent_span_id]
        assert gap.attributes["optionfeed.channel"] == "trades"
        assert (
            backfill.attributes["optionfeed.instrument"] == gap.attributes["optionfeed.instrument"]
        )
        assert backfill.attributes["optionfeed.gap.id"] == gap.attributes["optionfeed.gap.id"]
        assert backfill.attributes["optionfeed.rows_recovered"] >= 0
    stored = await fetch(
        database_url,
        "SELECT gap_id::text AS id, rows_recovered FROM data_gaps WHERE channel = 'trades'",
    )
    recovered = {r["id"]: r["rows_recovered"] for r in stored}
    for backfill in backfills:
        assert (
            recovered[backfill.attributes["optionfeed.gap.id"]]
            == backfill.attributes["optionfeed.rows_recovered"]
        )

    # The reload links to the operator's pass.
    (reload,) = by_name(spans, "optionfeed.assignment.reload")
    assert reload.links == [(OPERATOR_TRACE, OPERATOR_SPAN)]
    assert reload.attributes["optionfeed.assignment.generation"] == 2
    assert reload.attributes["optionfeed.channels.added"] == 2 * 10
    assert reload.attributes["optionfeed.channels.removed"] == 2 * 10


# A process that spools two batches, as the writer does while the database is away, then replays
# them into PostgreSQL: the spool's own code and a real sink, with tracing set up as the collector
# does. Its arguments: the spool directory and the database URL.
SPOOL_PROGRAM = """
import asyncio, sys
from optionfeed.store import tables
from optionfeed.store.sink import Batch, PostgresSink
from optionfeed.store.spool import Spool
from optionfeed.telemetry import tracing
from optionfeed.telemetry.metrics import Metrics

def quote(i):
    ts = 1_700_000_000_000 + i
    return ("BTC-29DEC23-40000-C", ts, 1_700_000_000.5, 0.01, 1.0, None, 2.0, None)

async def main(directory, url):
    spool = Spool(directory, metrics=Metrics())
    await spool.open()
    for seq in (1, 2):
        await spool.write(Batch(seq, {tables.QUOTES: [quote(seq * 100 + i) for i in range(25)]}))
    sink = PostgresSink(url)
    await sink.open()
    try:
        while spool.engaged:
            await spool.replay(sink.write)
    finally:
        await sink.close()

traces = tracing.setup("optionfeed-collector")
try:
    asyncio.run(main(sys.argv[1], sys.argv[2]))
finally:
    traces.shutdown()
"""


def test_spool_writes_and_replays_are_traced(
    database_url: str, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OPTIONFEED_"))}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_receiver.endpoint
    result = subprocess.run(
        [sys.executable, "-c", SPOOL_PROGRAM, str(tmp_path / "spool"), database_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    spans = otlp_receiver.wait_for(
        lambda spans: bool(by_name(spans, "optionfeed.spool.replay")), what="the replay"
    )
    writes = by_name(spans, "optionfeed.spool.write")
    assert [w.attributes["optionfeed.batch.rows"] for w in writes] == [25, 25]
    assert writes[-1].attributes["optionfeed.spool.used_bytes"] > 0
    replays = by_name(spans, "optionfeed.spool.replay")
    assert sum(r.attributes["optionfeed.spool.replayed_rows"] for r in replays) == 50
    replay_ids = {r.span_id for r in replays}
    merged = [t for t in by_name(spans, "optionfeed.flush.table") if t.parent_span_id in replay_ids]
    assert sum(t.attributes["optionfeed.rows.inserted"] for t in merged) == 50
    assert {t.attributes["db.collection.name"] for t in merged} == {"option_quotes"}
