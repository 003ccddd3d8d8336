"""The real Deribit capture of 2021-07-22 (tests/data/deribit), and what its tickers
must become as rows, derived from the JSON independently of the code under test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

DATA = Path(__file__).resolve().parents[1] / "data" / "deribit"


# A trade as ``trades.*`` notifications carry it (docs/deribit-protocol.md §6.4: Deribit's own
# option example, real 2020). The WebSocket capture holds no trade.
TRADE: dict[str, Any] = {
    "trade_seq": 2,
    "trade_id": "48079289",
    "timestamp": 1590484589306,
    "tick_direction": 2,
    "price": 0.0075,
    "mark_price": 0.01062686,
    "iv": 47.58,
    "instrument_name": "BTC-27MAY20-9000-C",
    "index_price": 8956.17,
    "direction": "sell",
    "amount": 3,
}


def notifications() -> list[tuple[str, Any, float]]:
    """(channel, data, receive time) of every notification in the capture, freshly parsed."""
    found = []
    for line in (DATA / "ws-options-2021-07-22.txt").read_text().splitlines():
        head, sep, body = line.partition(": ")
        if not sep or not body.startswith("{") or " " in head:
            continue
        message = orjson.loads(body)
        if message.get("method") == "subscription":
            params = message["params"]
            found.append((params["channel"], params["data"], float(head)))
    return found


def capture(family: str) -> list[Any]:
    """The ``data`` of every notification of one channel family (``ticker``, ``book``...)."""
    return [data for channel, data, _ in notifications() if channel.split(".")[0] == family]


def ticker_expectation(data: dict[str, Any], ts_column: str = "ts") -> dict[str, Any]:
    """Column -> value of the ticker row ``data`` must become."""
    out: dict[str, Any] = {"instrument": data["instrument_name"], ts_column: data["timestamp"]}
    for key, value in data.items():
        if key in ("instrument_name", "timestamp"):
            continue
        if key == "greeks":
            out.update(value)
        elif key == "stats":
            out.update({f"stats_{k}": v for k, v in value.items()})
        elif key == "estimated_delivery_price" and value == "expired":
            out["estimated_delivery_price"] = None
            out["expired"] = True
        else:
            out[key] = value
    return out
