"""What the simulator generated and what it sent: the ground truth for completeness tests.

``GET /sim/ledger`` answers with :meth:`Ledger.report`, a JSON object of this shape::

    {
      "now": 1732190000123,            # ms, simulator time of the report
      "started": 1732189990000,        # ms, when the market (or replay) started
      "source": "market",              # or "replay"
      "rate": 1000.0,                  # market events per second (--rate); null in replay
      "totals": {"events": 9876, "trades": 512, "notifications": 20000, "malformed": 0,
                 "connections": 3,
                 "overload_skipped_ms": 0},    # market time whose events were skipped
                                               # because the server could not keep up
      "generated": {                   # what the market produced, per instrument,
        "BTC-29NOV24-65000-C": {       #   whether or not anyone was subscribed
          "currency": "BTC", "state": "open", "expiration_timestamp": 1732867200000,
          "events": 42, "first_timestamp": 1732189990123, "last_timestamp": 1732190000101,
          "trades": 3, "first_trade_seq": 1, "last_trade_seq": 3,
          "first_change_id": 30000000123, "last_change_id": 30000004567
        }
      },
      "channels": {                    # what was sent, per channel
        "ticker.BTC-29NOV24-65000-C.100ms": {
          "instrument": "BTC-29NOV24-65000-C",   # null for currency-wide channels
          "notifications": 17,         # frames sent, summed over connections
          "trades": 0,                 # trade objects in those frames (trades channels)
          "first_timestamp": 1732189990200, "last_timestamp": 1732190000101,
          "last_trade_seq": null,      # highest trade_seq sent (instrument trades channels)
          "last_change_id": null,      # change_id of the latest frame (book channels)
          "connections": {"3": 17},    # frames per connection id (open, or recently closed)
          "closed_connections": 0      # frames on older closed connections, folded together
        }
      },
      "connections": {
        "3": {"peer": "127.0.0.1:53122", "opened": 1732189991000, "closed": null,
              "reason": null, "authenticated": false, "channels": 120,
              "notifications": 2040, "malformed": 0}
      }
    }

Counting rule: a frame counts as sent once the connection's transport has handed it to the
kernel (the outbox is flushed and the transport buffer has drained past it). Frames dropped by a
fault (a stale stream, a slow consumer's discarded backlog, frames replaced by malformed ones)
are never counted; frames still in the transport buffer when a connection is torn down are not
counted either. ``first_timestamp``/``last_timestamp`` are the ``timestamp`` of the data (for
trades, of the earliest and latest trade in the frame). ``generated`` counts every event the
market ran for the instrument, its trades and the book ``change_id`` range; a completeness test
compares it with ``channels`` and with what a client stored.

``GET /sim/ledger?instrument=NAME`` (repeatable) or ``?currency=BTC`` narrows ``generated`` and
``channels`` to those instruments (currency-wide channels are kept); ``?totals=true`` answers with
``now`` and ``totals`` only, cheaply enough to poll under load.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any


class ChannelStats:
    """What one connection was sent on one channel."""

    __slots__ = (
        "channel",
        "connection",
        "count",
        "first_ts",
        "instrument",
        "last_change_id",
        "last_trade_seq",
        "last_ts",
        "trades",
    )

    def __init__(self, channel: str, instrument: str | None, connection: int) -> None:
        self.channel = channel
        self.instrument = instrument
        self.connection = connection
        self.count = 0
        self.trades = 0
        self.first_ts = 0
        self.last_ts = 0
        self.last_trade_seq = 0
        self.last_change_id = 0


# Closed connections whose per-channel counters the report still lists one by one.
DETAILED_CLOSED = 256

# What a frame in an outbox carries to the ledger once it is sent:
# (stats, first timestamp, last timestamp, last trade_seq or 0, change_id or 0, trades in it).
FrameMeta = tuple[ChannelStats, int, int, int, int, int]


def commit(record: ConnectionRecord, metas: Iterable[FrameMeta | object | None]) -> None:
    """Count the frames a connection has sent: each frame's meta into its channel's stats.

    A meta that is not a tuple marks a deliberately malformed frame and counts as one on the
    connection; ``None`` (a frame that is not a notification) counts nowhere. One call per
    batch of frames: this runs for every frame sent.
    """
    for meta in metas:
        if meta is None:
            continue
        if not isinstance(meta, tuple):
            record.malformed += 1
            continue
        stats, first_ts, last_ts, seq, change_id, trades = meta
        stats.count += 1
        if not stats.first_ts or first_ts < stats.first_ts:
            stats.first_ts = first_ts
        if last_ts > stats.last_ts:
            stats.last_ts = last_ts
        if seq > stats.last_trade_seq:
            stats.last_trade_seq = seq
        if change_id:
            stats.last_change_id = change_id
        if trades:
            stats.trades += trades


@dataclass
class ConnectionRecord:
    id: int
    peer: str
    opened: int
    closed: int | None = None
    reason: str | None = None
    authenticated: bool = False
    channels: int = 0
    sent_before_close: int = 0  # notifications, once the per-channel counters are folded away
    malformed: int = 0
    stats: dict[str, ChannelStats] = field(default_factory=dict)

    @property
    def notifications(self) -> int:
        return self.sent_before_close + sum(s.count for s in self.stats.values())

    def report(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "opened": self.opened,
            "closed": self.closed,
            "reason": self.reason,
            "authenticated": self.authenticated,
            "channels": self.channels,
            "notifications": self.notifications,
            "malformed": self.malformed,
        }


def _fold(into: ChannelStats, stats: ChannelStats) -> None:
    """Add ``stats`` to ``into`` (the totals of connections that have closed)."""
    into.count += stats.count
    into.trades += stats.trades
    if stats.first_ts and (not into.first_ts or stats.first_ts < into.first_ts):
        into.first_ts = stats.first_ts
    if stats.last_ts >= into.last_ts:
        into.last_ts = stats.last_ts
        if stats.last_change_id:
            into.last_change_id = stats.last_change_id
    into.last_trade_seq = max(into.last_trade_seq, stats.last_trade_seq)


@dataclass(frozen=True, slots=True)
class Generated:
    """What the source produced for one instrument (see the module docstring)."""

    instrument: str
    currency: str
    state: str
    expiration_timestamp: int
    events: int
    first_timestamp: int | None
    last_timestamp: int | None
    trades: int
    first_trade_seq: int | None
    last_trade_seq: int | None
    first_change_id: int | None
    last_change_id: int | None

    def report(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "state": self.state,
            "expiration_timestamp": self.expiration_timestamp,
            "events": self.events,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "trades": self.trades,
            "first_trade_seq": self.first_trade_seq,
            "last_trade_seq": self.last_trade_seq,
            "first_change_id": self.first_change_id,
            "last_change_id": self.last_change_id,
        }


class Ledger:
    """Per-connection channel counters and the connections themselves.

    A channel's report lists what each connection was sent (``connections``), closed ones
    included. To keep a long run with many reconnections bounded, the counters of all but the
    last :data:`DETAILED_CLOSED` closed connections are folded into one total per channel
    (``closed_connections``).
    """

    def __init__(self) -> None:
        self.connections: dict[int, ConnectionRecord] = {}
        self._by_channel: dict[str, dict[int, ChannelStats]] = {}
        self._closed: dict[str, ChannelStats] = {}
        self._closed_order: deque[ConnectionRecord] = deque()
        self._instruments: dict[str, str | None] = {}

    def open_connection(self, conn_id: int, peer: str, now_ms: int) -> ConnectionRecord:
        record = ConnectionRecord(conn_id, peer, now_ms)
        self.connections[conn_id] = record
        return record

    def close_connection(self, record: ConnectionRecord, now_ms: int) -> None:
        record.closed = now_ms
        self._closed_order.append(record)
        while len(self._closed_order) > DETAILED_CLOSED:
            self._fold_away(self._closed_order.popleft())

    def _fold_away(self, record: ConnectionRecord) -> None:
        """Fold a closed connection's counters into the per-channel totals."""
        record.sent_before_close = record.notifications
        for channel, stats in record.stats.items():
            self._by_channel.get(channel, {}).pop(record.id, None)
            if stats.count:
                total = self._closed.get(channel)
                if total is None:
                    total = self._closed[channel] = ChannelStats(channel, stats.instrument, 0)
                _fold(total, stats)
        record.stats = {}

    def stats(self, channel: str, instrument: str | None, record: ConnectionRecord) -> ChannelStats:
        """The counters of ``channel`` on one connection (one object per pair, created once)."""
        existing = record.stats.get(channel)
        if existing is not None:
            return existing
        stats = ChannelStats(channel, instrument, record.id)
        record.stats[channel] = stats
        self._by_channel.setdefault(channel, {})[record.id] = stats
        self._instruments[channel] = instrument
        return stats

    def report(
        self,
        *,
        now: int,
        started: int,
        source: str,
        rate: float | None,
        events: int,
        trades: int,
        skipped_ms: float = 0.0,
        generated: Iterable[Generated],
        instruments: Collection[str] | None = None,
    ) -> dict[str, Any]:
        def wanted(instrument: str | None) -> bool:
            return instruments is None or instrument is None or instrument in instruments

        channels: dict[str, Any] = {}
        total_sent = 0
        for channel in sorted(self._instruments):
            live = [s for s in self._by_channel.get(channel, {}).values() if s.count]
            closed = self._closed.get(channel)
            entry = ChannelStats(channel, self._instruments[channel], 0)
            for stats in (*live, *([closed] if closed is not None else [])):
                _fold(entry, stats)
            total_sent += entry.count
            if not entry.count or not wanted(entry.instrument):
                continue
            channels[channel] = {
                "instrument": entry.instrument,
                "notifications": entry.count,
                "trades": entry.trades,
                "first_timestamp": entry.first_ts,
                "last_timestamp": entry.last_ts,
                "last_trade_seq": entry.last_trade_seq or None,
                "last_change_id": entry.last_change_id or None,
                "connections": {str(s.connection): s.count for s in live},
                "closed_connections": closed.count if closed is not None else 0,
            }
        return {
            "now": now,
            "started": started,
            "source": source,
            "rate": rate,
            "totals": {
                "events": events,
                "trades": trades,
                "overload_skipped_ms": round(skipped_ms),
                "notifications": total_sent,
                "malformed": sum(c.malformed for c in self.connections.values()),
                "connections": sum(1 for c in self.connections.values() if c.closed is None),
            },
            "generated": {g.instrument: g.report() for g in generated if wanted(g.instrument)},
            "channels": channels,
            "connections": {str(i): c.report() for i, c in self.connections.items()},
        }
