"""Gap detection, per instrument and channel: pure state machines fed one event at a time.

- Trades carry ``trade_seq``, consecutive per instrument: a jump is a gap of known bounds, and the
  missing trades can be fetched by sequence number.
- Book messages chain ``prev_change_id`` to the previous ``change_id``: a break means the local
  book is wrong from there on, and only that instrument needs a fresh snapshot.
- Tickers have no sequence: an instrument whose ticker has been silent longer than a threshold is
  stale, from its last message until the next one arrives.

Nothing here does I/O; the router feeds these and acts on what they return.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SequenceGap:
    """Trades ``first_missing..last_missing`` (inclusive) of ``instrument`` were not received."""

    instrument: str
    first_missing: int
    last_missing: int

    @property
    def size(self) -> int:
        return self.last_missing - self.first_missing + 1


class TradeSequences:
    """The last ``trade_seq`` seen per instrument, and where each instrument's count started.

    ``expected()`` is how many sequence numbers the instruments advanced through since they were
    first seen (or since the last one stored, when seeded after a restart): the denominator of
    trade completeness. It is computed when asked, from state kept anyway, not per trade.
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self._base: dict[str, int] = {}  # instrument -> trade_seq just before the counted span
        self._retired = 0  # expected count of instruments forgotten since

    def seed(self, instrument: str, last_seq: int) -> None:
        """Start from what the database already holds, so a restart's gap is found too."""
        if instrument not in self.last:
            self._base[instrument] = last_seq
        if last_seq > self.last.get(instrument, -1):
            self.last[instrument] = last_seq

    def expected(self) -> int:
        """Sequence numbers advanced through, over every instrument ever followed."""
        base = self._base
        return self._retired + sum(last - base.get(name, last) for name, last in self.last.items())

    def observe(self, instrument: str, trade_seq: int) -> SequenceGap | None:
        """Record a trade; return the gap it reveals, if any. Old or repeated trades are ignored."""
        last = self.last.get(instrument)
        if last is None:
            self.last[instrument] = trade_seq
            self._base[instrument] = trade_seq - 1
            return None
        if trade_seq <= last:
            return None
        self.last[instrument] = trade_seq
        if trade_seq == last + 1:
            return None
        return SequenceGap(instrument, last + 1, trade_seq - 1)

    def forget(self, instrument: str) -> None:
        last = self.last.pop(instrument, None)
        base = self._base.pop(instrument, None)
        if last is not None and base is not None:
            self._retired += last - base


@dataclass(frozen=True, slots=True)
class BookBreak:
    """The book of ``instrument`` lost continuity: a change did not follow the last change_id."""

    instrument: str
    expected_prev: int | None
    got_prev: int | None
    change_id: int


class BookChains:
    """The last ``change_id`` per instrument, and which books await a fresh snapshot."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.resyncing: set[str] = set()

    def observe(
        self, instrument: str, kind: str | None, change_id: int, prev_change_id: int | None
    ) -> BookBreak | None:
        """Record a book message; return the break it reveals, if any.

        A snapshot always restarts the chain. While an instrument waits for its snapshot, further
        changes are not reported again: one break, one resync.
        """
        if kind == "snapshot" or (kind is None and prev_change_id is None):
            self.last[instrument] = change_id
            self.resyncing.discard(instrument)
            return None
        expected = self.last.get(instrument)
        self.last[instrument] = change_id
        if expected is not None and prev_change_id == expected:
            return None
        if instrument in self.resyncing:
            return None
        self.resyncing.add(instrument)
        return BookBreak(instrument, expected, prev_change_id, change_id)

    def forget(self, instrument: str) -> None:
        self.last.pop(instrument, None)
        self.resyncing.discard(instrument)


@dataclass(frozen=True, slots=True)
class StaleSpan:
    """``instrument``'s ``channel`` was silent from ``since`` (its last message)."""

    instrument: str
    channel: str
    since: float


class Staleness:
    """When each (instrument, channel) last spoke, and which are silent past their threshold."""

    def __init__(self, thresholds: dict[str, float]) -> None:
        self.thresholds = thresholds  # channel family -> seconds of silence that make a gap
        self.last_seen: dict[tuple[str, str], float] = {}
        self.stale: dict[tuple[str, str], float] = {}  # key -> silent since

    def seen(self, instrument: str, channel: str, at: float) -> StaleSpan | None:
        """Record a message; when it ends a stale span, return that span (it closes at ``at``)."""
        key = (instrument, channel)
        self.last_seen[key] = at
        since = self.stale.pop(key, None)
        return None if since is None else StaleSpan(instrument, channel, since)

    def expect(self, instrument: str, channel: str, since: float) -> None:
        """Start watching a newly subscribed channel as if it had spoken at ``since``."""
        self.last_seen.setdefault((instrument, channel), since)

    def forget(self, instrument: str, channel: str) -> None:
        self.last_seen.pop((instrument, channel), None)
        self.stale.pop((instrument, channel), None)

    def sweep(self, now: float) -> list[StaleSpan]:
        """Channels that just went stale (each reported once until it speaks again)."""
        found = []
        for (instrument, channel), last in self.last_seen.items():
            threshold = self.thresholds.get(channel)
            key = (instrument, channel)
            if threshold is None or key in self.stale or now - last < threshold:
                continue
            self.stale[key] = last
            found.append(StaleSpan(instrument, channel, last))
        return found
