"""Fan-out, aggregation intervals and ledger accounting, with a manual clock.

The sessions write to an in-memory transport (our boundary with asyncio): it records the bytes
and reports whatever write-buffer size a test sets, so the tests can see exactly what a client
would read and when the ledger counts it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from optionfeed.deribit.channels import parse_channel
from optionfeed.simulator.clock import ManualClock
from optionfeed.simulator.ledger import Ledger
from optionfeed.simulator.market import Market, MarketConfig
from optionfeed.simulator.option import Option
from optionfeed.simulator.publisher import Publisher
from optionfeed.simulator.session import Session
from optionfeed.simulator.ticker import settled

START = datetime(2024, 5, 14, 13, 30, tzinfo=UTC).timestamp()


class MemoryTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.buffered = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def read_frames(data: bytes | bytearray) -> list[bytes]:
    """The payloads of unmasked server frames, checking each is a final text frame."""
    frames, pos = [], 0
    while pos < len(data):
        assert data[pos] == 0x81
        length, head = data[pos + 1], 2
        if length == 126:
            length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
        frames.append(bytes(data[pos + head : pos + head + length]))
        pos += head + length
    return frames


class Rig:
    def __init__(self, rate: float = 8000.0, **config: Any) -> None:
        self.clock = ManualClock(START)
        self.market = Market(
            MarketConfig(currencies=("BTC", "ETH"), rate=rate, seed=3, **config), self.clock
        )
        self.ledger = Ledger()
        self.publisher = Publisher(self.ledger)
        self.publisher.market = self.market
        self.market.listener = self.publisher
        self.sessions: list[Session] = []
        self.elapsed_ms = 0

    def session(self) -> tuple[Session, MemoryTransport]:
        transport = MemoryTransport()
        conn_id = len(self.sessions) + 1
        record = self.ledger.open_connection(conn_id, "test", 0)
        session = Session(conn_id, "127.0.0.1", transport, record, rng=random.Random(conn_id))  # type: ignore[arg-type]
        self.sessions.append(session)
        return session, transport

    def subscribe(self, session: Session, *channels: str) -> None:
        for name in channels:
            channel = self.publisher.resolve(name, lambda n: self.market.option(n) is not None)
            assert channel is not None, name
            self.publisher.subscribe(session, name, channel)
            self.publisher.snapshot(session, name)

    def run(self, seconds: float, step_ms: int = 5) -> None:
        # Whole milliseconds from START, so that a run of 0.5 s ends on the 500 ms boundary.
        for _ in range(round(seconds * 1000) // step_ms):
            self.elapsed_ms += step_ms
            self.clock.set(START + self.elapsed_ms / 1000)
            self.market.advance()
            for session in self.sessions:
                session.flush()

    def busiest(self, count: int) -> list[Option]:
        return sorted(self.market.live, key=lambda o: -self.market.activity_share(o))[:count]


def notifications(transport: MemoryTransport) -> dict[str, list[Any]]:
    by_channel: dict[str, list[Any]] = defaultdict(list)
    for payload in read_frames(transport.data):
        message = orjson.loads(payload)
        assert message["method"] == "subscription"
        assert "id" not in message
        by_channel[message["params"]["channel"]].append(message["params"]["data"])
    return by_channel


def check_book_stream(messages: list[dict[str, Any]], option: Option) -> None:
    """Snapshot first, then changes chained by change_id; replaying them gives the book."""
    assert messages[0]["type"] == "snapshot"
    assert "prev_change_id" not in messages[0]
    bids = {p: a for _, p, a in messages[0]["bids"]}
    asks = {p: a for _, p, a in messages[0]["asks"]}
    previous = messages[0]["change_id"]
    for message in messages[1:]:
        assert message["type"] == "change"
        assert message["prev_change_id"] == previous
        previous = message["change_id"]
        for side, levels in ((bids, message["bids"]), (asks, message["asks"])):
            for action, price, amount in levels:
                if action == "delete":
                    assert price in side
                    assert amount == 0.0
                    del side[price]
                else:
                    assert (action == "new") == (price not in side)
                    side[price] = amount
    assert previous == option.change_id
    assert bids == {option.price_of(p): a for p, a in option.book.bids.items()}
    assert asks == {option.price_of(p): a for p, a in option.book.asks.items()}


@pytest.mark.parametrize("interval", ["100ms", "agg2"])
def test_aggregated_channels_send_at_most_one_notification_per_window(interval: str) -> None:
    rig = Rig(rate=10_000.0)
    session, transport = rig.session()
    options = rig.busiest(5)
    for option in options:
        rig.subscribe(
            session,
            f"ticker.{option.name}.{interval}",
            f"book.{option.name}.{interval}",
            f"trades.{option.name}.{interval}",
        )
    rig.run(2.0)
    got = notifications(transport)
    window = 100 if interval == "100ms" else 1000
    for option in options:
        tickers = got[f"ticker.{option.name}.{interval}"]
        stamps = [t["timestamp"] for t in tickers]
        assert len(stamps) >= (10 if window == 100 else 2)
        assert stamps == sorted(set(stamps))
        windows = [s // window for s in stamps]
        assert len(windows) == len(set(windows)), "two tickers in one window"
        assert tickers[-1] == orjson.loads(orjson.dumps(settled(option)))
        check_book_stream(got[f"book.{option.name}.{interval}"], option)
        trades = [t for batch in got[f"trades.{option.name}.{interval}"] for t in batch]
        assert (
            [t["trade_seq"] for t in trades]
            == list(range(trades[0]["trade_seq"], option.trade_seq + 1))
            if trades
            else option.trade_seq == 0
        )


def test_raw_channels_send_every_event_and_the_book_chain_holds() -> None:
    rig = Rig(rate=5000.0)
    session, transport = rig.session()
    option = rig.busiest(1)[0]
    rig.subscribe(
        session, f"ticker.{option.name}.raw", f"book.{option.name}.raw", f"quote.{option.name}"
    )
    events_before = option.events
    rig.run(1.5)
    got = notifications(transport)
    tickers = got[f"ticker.{option.name}.raw"]
    assert len(tickers) == option.events - events_before > 20
    check_book_stream(got[f"book.{option.name}.raw"], option)
    quotes = got[f"quote.{option.name}"]
    assert quotes
    assert [q["timestamp"] for q in quotes] == sorted({q["timestamp"] for q in quotes})
    assert set(quotes[0]) == {
        "timestamp",
        "instrument_name",
        "best_bid_price",
        "best_bid_amount",
        "best_ask_price",
        "best_ask_amount",
    }


def test_a_late_book_subscriber_gets_a_snapshot_its_aggregated_stream_continues_from() -> None:
    rig = Rig()
    early, _ = rig.session()
    late, late_transport = rig.session()
    option = rig.busiest(1)[0]
    rig.subscribe(early, f"book.{option.name}.100ms")
    rig.run(0.435)  # mid-window, with changes pending in it
    rig.subscribe(late, f"book.{option.name}.100ms")
    rig.run(0.565)  # to a window boundary, so nothing is pending at the end
    check_book_stream(notifications(late_transport)[f"book.{option.name}.100ms"], option)


def test_currency_trade_channels_carry_every_trade_of_the_currency() -> None:
    rig = Rig(rate=10_000.0, trade_fraction=0.3)
    session, transport = rig.session()
    rig.subscribe(session, "trades.option.ETH.100ms", "trades.option.any.100ms")
    before = {o.name: o.trade_seq for o in rig.market.live}
    rig.run(0.5)
    got = notifications(transport)
    eth = [t for batch in got["trades.option.ETH.100ms"] for t in batch]
    everything = [t for batch in got["trades.option.any.100ms"] for t in batch]
    expected_eth = sum(o.trade_seq - before[o.name] for o in rig.market.live if o.currency == "ETH")
    assert len(eth) == expected_eth > 50
    assert len(everything) == sum(o.trade_seq - before[o.name] for o in rig.market.live)
    assert {t["instrument_name"].split("-")[0] for t in eth} == {"ETH"}


def test_the_ledger_counts_exactly_the_frames_written_per_channel() -> None:
    rig = Rig()
    session, transport = rig.session()
    names = [o.name for o in rig.busiest(20)]
    for name in names:
        rig.subscribe(session, f"ticker.{name}.100ms", f"trades.{name}.100ms", f"quote.{name}")
    rig.run(1.0)
    got = notifications(transport)
    report = rig.ledger.report(
        now=0, started=0, source="market", rate=0, events=0, trades=0, generated=[]
    )
    assert report["totals"]["notifications"] == sum(len(v) for v in got.values())
    for channel, messages in got.items():
        entry = report["channels"][channel]
        assert entry["notifications"] == len(messages) == entry["connections"]["1"]
        if channel.startswith("trades."):
            seqs = [t["trade_seq"] for batch in messages for t in batch]
            assert entry["trades"] == len(seqs)
            assert entry["last_trade_seq"] == max(seqs)
            assert entry["first_timestamp"] == messages[0][0]["timestamp"]
        else:
            assert entry["first_timestamp"] == messages[0]["timestamp"]
            assert entry["last_timestamp"] == messages[-1]["timestamp"]


def test_frames_count_only_once_the_kernel_took_them_and_a_reset_loses_the_rest() -> None:
    rig = Rig()
    session, transport = rig.session()
    option = rig.busiest(1)[0]
    rig.subscribe(session, f"ticker.{option.name}.100ms")
    channel = f"ticker.{option.name}.100ms"
    rig.run(0.5)
    counted = rig.ledger.connections[1].stats[channel].count
    assert counted == len(read_frames(transport.data))
    transport.buffered = 10**9  # the kernel stops taking data: everything new stays buffered
    rig.run(0.5)
    assert rig.ledger.connections[1].stats[channel].count == counted
    session.abort()
    session.lost()
    assert rig.ledger.connections[1].stats[channel].count == counted


def test_a_graceful_close_counts_what_the_transport_drains() -> None:
    rig = Rig()
    session, transport = rig.session()
    option = rig.busiest(1)[0]
    channel = f"ticker.{option.name}.100ms"
    rig.subscribe(session, channel)
    transport.buffered = 10**9
    rig.run(0.5)
    assert rig.ledger.connections[1].stats[channel].count == 0
    session.graceful = True
    session.lost()
    assert rig.ledger.connections[1].stats[channel].count == len(read_frames(transport.data))


def test_stale_sessions_get_nothing_and_nothing_is_counted() -> None:
    rig = Rig()
    session, transport = rig.session()
    option = rig.busiest(1)[0]
    rig.subscribe(session, f"ticker.{option.name}.100ms")
    session.stale = "data"
    rig.run(0.5)
    assert transport.data == b""
    assert (
        rig.ledger.report(
            now=0, started=0, source="market", rate=0, events=0, trades=0, generated=[]
        )["totals"]["notifications"]
        == 0
    )


def test_malformed_frames_are_inserted_and_counted_apart() -> None:
    rig = Rig()
    session, transport = rig.session()
    for option in rig.busiest(10):
        rig.subscribe(session, f"ticker.{option.name}.100ms")
    session.malformed_rate = 0.2
    rig.run(1.0)
    good, bad = 0, 0
    for payload in read_frames(transport.data):
        try:
            orjson.loads(payload)
            good += 1
        except orjson.JSONDecodeError:
            bad += 1
    record = rig.ledger.connections[1]
    assert bad == record.malformed > 0
    assert good == sum(s.count for s in record.stats.values())


def test_unsubscribing_stops_the_channel_and_drops_its_feed() -> None:
    rig = Rig()
    session, transport = rig.session()
    option = rig.busiest(1)[0]
    name = f"ticker.{option.name}.100ms"
    rig.subscribe(session, name)
    rig.run(0.3)
    assert rig.publisher.unsubscribe(session, name)
    assert not rig.publisher.unsubscribe(session, name)
    assert option.pub is None
    written = len(transport.data)
    rig.run(0.3)
    assert len(transport.data) == written


def test_channels_the_simulator_does_not_serve_are_not_resolved() -> None:
    rig = Rig()
    live = rig.market.live[0].name
    resolve = rig.publisher.resolve
    known = lambda n: rig.market.option(n) is not None  # noqa: E731
    assert resolve(f"ticker.{live}.100ms", known) == parse_channel(f"ticker.{live}.100ms")
    assert resolve("ticker.BTC-1JAN20-100-C.100ms", known) is None
    assert resolve(f"ticker.{live}.1s", known) is None
    assert resolve(f"book.{live}.none.10.100ms", known) is None
    assert resolve("deribit_price_index.btc_usd", known) is None
    assert resolve("trades.future.BTC.100ms", known) is None
    assert resolve("platform_state", known) is not None
    assert resolve("instrument.state.option.BTC", known) is not None
