"""The report as aligned text and as JSON."""

# ruff: noqa: E501  (the expected text is a verbatim terminal table)

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from optionfeed.report.columns import number, render_table
from optionfeed.report.model import (
    BookSpan,
    Break,
    Facts,
    Gap,
    Heartbeat,
    Hole,
    Report,
    Span,
    TradeSpan,
    build,
)
from optionfeed.report.render import render_text, to_json
from optionfeed.report.window import Window

T0 = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)
CALL = "ETH-28JUN24-3000-C"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sample_report() -> Report:
    return build(
        Facts(
            window=Window(T0, at(3600)),
            taken_at=at(3605),
            heartbeats=(
                Heartbeat("eth-top50", 0, "pod-a", at(-600), at(3600), "0.1.0", 50, 2, {"x": 9}),
            ),
            tickers=(Span(CALL, 1234, at(1), at(3599)),),
            trades=(TradeSpan(CALL, 12, at(10), at(20), 100, 113, 12, (Hole(103, 106, at(13), at(16)),)),),
            books=(BookSpan(CALL, 50, at(1), at(50), 1, 49, (Break(1005, 1003, 1002, at(30), at(29)),)),),
            gaps=(
                Gap("g1", "eth-top50", 0, CALL, "trades", at(13.5), at(15.5), "sequence", 104, 105, 0),
                Gap("g2", "eth-top50", 0, None, "connection", at(1000), None, "disconnect", None, None, 0),
            ),
            rejected=2,
        )
    )  # fmt: skip


EXPECTED_TEXT = """\
optionfeed report: 2024-06-03 12:00:00Z to 2024-06-03 13:00:00Z (1 h 00 min), from postgresql://u:***@db/x

Collectors (collector_status)
FEED       SHARD  POD    VERSION  STARTED               LAST SEEN               AGO  INSTRUMENTS  CONNECTIONS  STATE
eth-top50      0  pod-a  0.1.0    2024-06-03 11:50:00Z  2024-06-03 13:00:00Z  5.0 s           50            2  alive

Completeness by instrument and channel
INSTRUMENT          CHANNEL   ROWS  CONTINUITY                           GAPS  REASONS   GAP TIME  RECOVERED  VERDICT
ETH-28JUN24-3000-C  ticker   1,234                                                                            complete
ETH-28JUN24-3000-C  trades      12  seq 12/14, 2 missing                    1  sequence     2.0 s          0  gaps recorded
ETH-28JUN24-3000-C  book        50  chain 48/49, 1 break (1 unrecorded)                                       unrecorded loss

Gaps of whole connections (no instrument)
FEED       SHARD  CHANNEL     REASON      START                 END   LASTED  RECOVERED
eth-top50      0  connection  disconnect  2024-06-03 12:16:40Z  open                  0

Rows:      option_tickers 1,234, option_quotes 0, option_trades 12, option_book 50
Instruments with rows: 1
Gaps:      2 (1 open), covering 43 min 22 s of the window, 0 rows recovered by backfill
Missing:   2 trades by trade_seq, 1 book chain break; 1 of them in no recorded gap
Rejected frames: 2
Verdict:   unrecorded loss
"""


def test_columns_are_as_wide_as_their_widest_cell_and_numbers_align_right() -> None:
    text = render_table(
        ["NAME", "ROWS"], [["option_trades", number(1204)], ["book", "7"]], right={1}, indent="  "
    )
    assert text.splitlines() == [
        "  NAME            ROWS",
        "  option_trades  1,204",
        "  book               7",
    ]


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        render_table(["A"], [["x", "y"]])


def test_the_text_report_reads_as_tables_with_totals_and_a_verdict() -> None:
    text = render_text(sample_report(), source="postgresql://u:***@db/x")
    assert text == EXPECTED_TEXT


def test_a_report_without_anything_says_so_rather_than_printing_empty_tables() -> None:
    text = render_text(build(Facts(window=Window(T0, at(60)), taken_at=at(60))), source="db")
    assert "  no collector has written a heartbeat\n" in text
    assert "  no rows and no gaps in this window\n" in text
    assert "Gaps:      none recorded\n" in text
    assert text.endswith("Verdict:   no data\n")


def test_the_json_report_carries_every_figure_in_plain_types() -> None:
    doc = to_json(sample_report(), source="s")
    assert json.loads(json.dumps(doc)) == doc  # nothing but JSON types
    assert doc["version"] == 1
    assert doc["window"] == {
        "from": "2024-06-03T12:00:00Z",
        "to": "2024-06-03T13:00:00Z",
        "seconds": 3600.0,
    }
    assert doc["verdict"] == "unrecorded_loss"
    assert doc["collectors"][0]["alive"] is True
    assert doc["collectors"][0]["counters"] == {"x": 9}
    assert [(c["channel"], c["rows"], c["verdict"]) for c in doc["channels"]] == [
        ("ticker", 1234, "complete"),
        ("trades", 12, "gaps_recorded"),
        ("book", 50, "unrecorded_loss"),
    ]
    trades = doc["channels"][1]
    assert trades["table"] == "option_trades"
    assert trades["sequence"] == {
        "first": 100,
        "last": 113,
        "expected": 14,
        "seen": 12,
        "missing": 2,
        "holes": 1,
        "unrecorded": 0,
    }
    assert trades["chain"] is None
    assert trades["gaps"] == {
        "count": 1,
        "open": 0,
        "seconds": 2.0,
        "rows_recovered": 0,
        "reasons": ["sequence"],
    }
    assert doc["channels"][2]["chain"] == {
        "checked": 49,
        "snapshots": 1,
        "breaks": 1,
        "unrecorded": 1,
    }
    assert [(g["gap_id"], g["open"], g["seconds"]) for g in doc["gaps"]] == [
        ("g1", False, 2.0),
        ("g2", True, None),
    ]
    assert doc["gaps"][0]["start"] == "2024-06-03T12:00:13.500000Z"
    assert doc["totals"] == {
        "rows": {
            "option_tickers": 1234,
            "option_quotes": 0,
            "option_trades": 12,
            "option_book": 50,
        },
        "instruments": 1,
        "gaps": 2,
        "open_gaps": 1,
        "gap_seconds": 2602.0,
        "rows_recovered": 0,
        "missing_trades": 2,
        "book_breaks": 1,
        "unrecorded": 1,
        "rejected_frames": 2,
    }
