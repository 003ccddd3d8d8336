"""Reading the real captures for ``--replay``, and playing one through the publisher."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from optionfeed.simulator.clock import ManualClock
from optionfeed.simulator.ledger import Ledger
from optionfeed.simulator.publisher import Publisher
from optionfeed.simulator.replay import (
    CaptureError,
    ReplaySource,
    parse_rest_capture,
    parse_ws_capture,
)
from optionfeed.simulator.session import Session

DATA = Path(__file__).parents[1] / "data" / "deribit"
WS = DATA / "ws-options-2021-07-22.txt"
REST = DATA / "rest-get_instruments-2021-2022.txt"
_RECEIVED = re.compile(rb"^\d+(?:\.\d+)?: (.*)$")


def ws_lines() -> list[bytes]:
    return WS.read_bytes().splitlines(keepends=True)


def captured_notifications() -> list[tuple[str, bytes]]:
    """(channel, data text) of every notification, cut from the file by hand."""
    found = []
    for line in WS.read_bytes().splitlines():
        match = _RECEIVED.match(line)
        if match and b'"method":"subscription"' in match[1]:
            channel = orjson.loads(match[1])["params"]["channel"]
            head = b'"data":'
            start = match[1].index(head) + len(head)
            found.append((channel, match[1][start:-2]))
    return found


def test_every_notification_of_the_capture_is_read_with_its_data_byte_for_byte() -> None:
    captured = parse_ws_capture(ws_lines())
    expected = captured_notifications()
    assert len(captured) == len(expected) == 135
    assert [(c.channel, c.data_json) for c in captured] == expected
    assert [c.time for c in captured] == sorted(c.time for c in captured)
    families = {c.channel.split(".")[0] for c in captured}
    assert families == {"ticker", "book"}


def test_the_rest_capture_gives_instruments_by_currency_and_skips_the_configuration_line() -> None:
    catalogue = parse_rest_capture(REST.read_bytes().splitlines())
    assert sorted(catalogue) == ["BTC", "ETH", "SOL", "USDC"]
    options = {c: [i for i in items if i["kind"] == "option"] for c, items in catalogue.items()}
    assert (len(options["BTC"]), len(options["ETH"]), len(options["SOL"])) == (390, 418, 172)
    assert options["USDC"] == []
    assert all("instrument_name" in i for items in catalogue.values() for i in items)


def test_a_line_that_is_not_json_is_reported_with_its_number() -> None:
    with pytest.raises(CaptureError, match="line 2"):
        parse_ws_capture([b"wss://x <-> 1.0\n", b"1.5: {not json\n"])


def test_a_replay_plays_once_first_subscription_first_at_the_chosen_speed() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    clock = ManualClock(start)
    ledger = Ledger()
    publisher = Publisher(ledger)
    captured = parse_ws_capture(ws_lines())
    source = ReplaySource(captured, {}, publisher, clock, speed=10.0)

    class Sink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, data: bytes) -> None:
            self.data += data

        def get_write_buffer_size(self) -> int:
            return 0

        def is_closing(self) -> bool:
            return False

    sink = Sink()
    record = ledger.open_connection(1, "test", 0)
    session = Session(1, "127.0.0.1", sink, record, rng=random.Random(1))  # type: ignore[arg-type]
    clock.advance(60)
    source.pump(clock.now())
    assert not source.started  # nobody subscribed yet: the capture waits
    channels = sorted({c.channel.replace(".raw", ".100ms") for c in captured})
    for name in channels:
        channel = publisher.resolve(name, source.is_live)
        assert channel is not None
        publisher.subscribe(session, name, channel)
    source.pump(clock.now())
    assert source.started
    assert not source.finished
    clock.advance(1.0)  # 10 s of capture at speed 10
    source.pump(clock.now())
    session.flush()
    part = source.events_total
    assert 0 < part < len(captured)
    clock.advance(3.0)
    source.pump(clock.now())
    session.flush()
    assert source.finished
    frames, pos, data = [], 0, sink.data
    while pos < len(data):
        length, head = data[pos + 1], 2
        if length == 126:
            length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        frames.append(bytes(data[pos + head : pos + head + length]))
        pos += head + length
    expected = [
        b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"'
        + channel.replace(".raw", ".100ms").encode()
        + b'","data":'
        + data_text
        + b"}}"
        for channel, data_text in captured_notifications()
    ]
    assert frames == expected
    last_ticker = [c.data for c in captured if c.channel == "ticker.ETH-30JUL21-2800-C.raw"][-1]
    assert source.ticker("ETH-30JUL21-2800-C") == last_ticker
    assert ledger.report(
        now=0, started=0, source="replay", rate=None, events=0, trades=0, generated=[]
    )["totals"]["notifications"] == len(expected)
