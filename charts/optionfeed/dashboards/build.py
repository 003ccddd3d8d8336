"""Builds the optionfeed Grafana dashboard with grafana-foundation-sdk and writes its JSON.

    uv run python charts/optionfeed/dashboards/build.py   # rewrites files/optionfeed-dashboard.json

The JSON in charts/optionfeed/files/ is what the chart's ConfigMap carries (metrics.dashboard) and
what the tests query Prometheus with; tests/unit/test_dashboard.py fails when it differs from what
this builds. Every query is per feed and shard: collector series carry the `feed` and `shard`
labels the chart's PodMonitor copies from the pods.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    GridPos,
    VariableOption,
    VariableRefresh,
)

OUTPUT = Path(__file__).resolve().parents[1] / "files" / "optionfeed-dashboard.json"
UID = "optionfeed-collectors"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every collector series of the feeds and shards chosen at the top of the dashboard.
SEL = 'job="optionfeed-collector", feed=~"$feed", shard=~"$shard"'
BY = "feed, shard"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]


ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    (
        "Throughput",
        (
            PanelSpec(
                "Notifications by channel",
                "Notifications received from the exchange per second, by channel family.",
                "reqps",
                (
                    Query(
                        f"sum by ({BY}, channel) "
                        f"(rate(optionfeed_messages_total{{{SEL}}}[$__rate_interval]))",
                        "{{feed}}/{{shard}} {{channel}}",
                    ),
                ),
            ),
            PanelSpec(
                "Rows written by table",
                "Rows committed to the database per second (after deduplication), by table.",
                "rowsps",
                (
                    Query(
                        f"sum by ({BY}, table) "
                        f"(rate(optionfeed_rows_written_total{{{SEL}}}[$__rate_interval]))",
                        "{{feed}}/{{shard}} {{table}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "Latency",
        (
            PanelSpec(
                "Exchange to commit lag",
                "From the exchange's timestamp to the database commit, per row: p50 and p99.",
                "s",
                tuple(
                    Query(
                        f"histogram_quantile({q}, sum by ({BY}, le) "
                        f"(rate(optionfeed_commit_lag_seconds_bucket{{{SEL}}}[$__rate_interval])))",
                        f"{{{{feed}}}}/{{{{shard}}}} p{int(q * 100)}",
                    )
                    for q in (0.5, 0.99)
                ),
            ),
            PanelSpec(
                "Batch write time (p99)",
                "Time to COPY one batch into staging and merge it, by table.",
                "s",
                (
                    Query(
                        f"histogram_quantile(0.99, sum by ({BY}, table, le) "
                        f"(rate(optionfeed_write_duration_seconds_bucket{{{SEL}}}"
                        "[$__rate_interval])))",
                        "{{feed}}/{{shard}} {{table}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "Completeness",
        (
            PanelSpec(
                "Trade completeness",
                "Trades received live or fetched by backfill over the trade_seq numbers the "
                "exchange advanced through, over the last 15 minutes (as the alert, which fires "
                "below 98 %).",
                "percentunit",
                (
                    Query(
                        "clamp_max("
                        f"sum by ({BY}) (increase(optionfeed_trade_sequences_seen_total{{{SEL}}}"
                        "[15m])) / "
                        f"sum by ({BY}) (increase(optionfeed_trade_sequences_expected_total"
                        f"{{{SEL}}}[15m]) > 0), 1)",
                        "{{feed}}/{{shard}}",
                    ),
                ),
            ),
            PanelSpec(
                "Gaps opened",
                "Gaps detected, by channel family and reason (disconnect, sequence, stale, "
                "outage).",
                "short",
                (
                    Query(
                        f"sum by ({BY}, channel, reason) "
                        f"(increase(optionfeed_gaps_total{{{SEL}}}[$__rate_interval]))",
                        "{{feed}}/{{shard}} {{channel}} {{reason}}",
                    ),
                ),
            ),
            PanelSpec(
                "Rows recovered by backfill",
                "Rows fetched through REST after a gap, by table.",
                "short",
                (
                    Query(
                        f"sum by ({BY}, table) "
                        f"(increase(optionfeed_backfilled_rows_total{{{SEL}}}[$__rate_interval]))",
                        "{{feed}}/{{shard}} {{table}}",
                    ),
                ),
            ),
            PanelSpec(
                "Channels without data",
                "Instrument channels disconnected or stale now, by channel family.",
                "short",
                (
                    Query(
                        f"sum by ({BY}, channel) (optionfeed_silent_channels{{{SEL}}})",
                        "{{feed}}/{{shard}} {{channel}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "Buffers and spool",
        (
            PanelSpec(
                "Spool and buffer fill",
                "The disk spool (the database could not take rows) and the in-memory write "
                "buffer, 0 to 100 %. Alerts at 50 and 90 % of the spool.",
                "percentunit",
                (
                    Query(
                        f"max by ({BY}) (optionfeed_spool_fill_ratio{{{SEL}}})",
                        "{{feed}}/{{shard}} spool",
                    ),
                    Query(
                        f"max by ({BY}) (optionfeed_buffer_fill_ratio{{{SEL}}})",
                        "{{feed}}/{{shard}} buffer",
                    ),
                ),
            ),
            PanelSpec(
                "Spooled and replayed rows",
                "Rows written to the disk spool and replayed from it, per second.",
                "rowsps",
                (
                    Query(
                        f"sum by ({BY}) "
                        f"(rate(optionfeed_spooled_rows_total{{{SEL}}}[$__rate_interval]))",
                        "{{feed}}/{{shard}} spooled",
                    ),
                    Query(
                        f"sum by ({BY}) "
                        f"(rate(optionfeed_spool_replayed_rows_total{{{SEL}}}[$__rate_interval]))",
                        "{{feed}}/{{shard}} replayed",
                    ),
                ),
            ),
        ),
    ),
    (
        "Connections",
        (
            PanelSpec(
                "Reconnects",
                "Connections to the exchange re-established, by reason.",
                "short",
                (
                    Query(
                        f"sum by ({BY}, reason) "
                        f"(increase(optionfeed_reconnects_total{{{SEL}}}[$__rate_interval]))",
                        "{{feed}}/{{shard}} {{reason}}",
                    ),
                ),
            ),
            PanelSpec(
                "Open connections and channels",
                "Connections to the exchange, and channels it acknowledged.",
                "short",
                (
                    Query(
                        f"sum by ({BY}) (optionfeed_connections{{{SEL}}})",
                        "{{feed}}/{{shard}} connections",
                    ),
                    Query(
                        f"sum by ({BY}) (optionfeed_subscribed_channels{{{SEL}}})",
                        "{{feed}}/{{shard}} channels",
                    ),
                ),
            ),
        ),
    ),
    (
        "Process",
        (
            PanelSpec(
                "Resident memory",
                "Resident set size of each collector process.",
                "bytes",
                (
                    Query(
                        f"max by ({BY}, instance) (process_resident_memory_bytes{{{SEL}}})",
                        "{{feed}}/{{shard}} {{instance}}",
                    ),
                ),
            ),
            PanelSpec(
                "CPU",
                "CPU seconds per second of each collector process (1 = one core).",
                "short",
                (
                    Query(
                        f"sum by ({BY}, instance) "
                        f"(rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval]))",
                        "{{feed}}/{{shard}} {{instance}}",
                    ),
                ),
            ),
        ),
    ),
)

PANEL_WIDTH, PANEL_HEIGHT = 12, 8


def _panel(spec: PanelSpec, panel_id: int, x: int, y: int) -> Timeseries:
    panel = (
        Timeseries()
        .id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .unit(spec.unit)
        .datasource(DATASOURCE)
        .grid_pos(GridPos(h=PANEL_HEIGHT, w=PANEL_WIDTH, x=x, y=y))
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    for index, query in enumerate(spec.queries):
        panel = panel.with_target(
            Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
        )
    return panel


def _label_variable(name: str, label: str, query: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def build() -> Dashboard:
    dashboard = (
        Dashboard("optionfeed collectors")
        .uid(UID)
        .description("Per feed and shard: throughput, lag, completeness, spool, connections.")
        .tags(["optionfeed"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            _label_variable(
                "feed",
                "Feed",
                'label_values(optionfeed_messages_total{job="optionfeed-collector"}, feed)',
            )
        )
        .with_variable(
            _label_variable(
                "shard",
                "Shard",
                'label_values(optionfeed_messages_total{job="optionfeed-collector", '
                'feed=~"$feed"}, shard)',
            )
        )
    )
    y, panel_id = 0, 0
    for title, panels in ROWS:
        panel_id += 1
        dashboard = dashboard.with_row(
            Row(title).id(panel_id).grid_pos(GridPos(h=1, w=24, x=0, y=y))
        )
        y += 1
        for index, spec in enumerate(panels):
            x = (index % 2) * PANEL_WIDTH
            panel_id += 1
            dashboard = dashboard.with_panel(_panel(spec, panel_id, x, y))
            if index % 2 == 1 or index == len(panels) - 1:
                y += PANEL_HEIGHT
    return dashboard


def render() -> str:
    """The dashboard as the JSON file holds it."""
    text = JSONEncoder(sort_keys=True, indent=2).encode(build().build())
    # A stable rendering: sorted keys, two-space indent, a final newline.
    return json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    sys.stdout.write(f"wrote {OUTPUT}\n")
