"""One WebSocket connection's state: outbox, subscriptions, heartbeat, credits, faults.

Everything the simulator sends on a connection (responses, notifications, heartbeats) is
appended to the session's outbox as ready-made frame bytes and written to the transport in one
``write`` per flush, so responses and notifications keep the order they were produced in and a
busy connection costs one system call per flush, not one per message.

The outbox also does the ledger's bookkeeping: each notification frame carries a
:data:`~.ledger.FrameMeta`, committed to the ledger only once the transport has passed the frame
to the kernel (see :mod:`.ledger`). A reader that falls behind first fills the transport buffer
up to :data:`TRANSPORT_HIGH_WATER`, then the outbox; when the two together exceed the
slow-consumer limit, the outbox is discarded (never counted) and the connection closed with
``connection_too_slow``.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import TYPE_CHECKING

from optionfeed.deribit.credits import CreditBucket, CreditPolicy
from optionfeed.simulator import frames, ledger
from optionfeed.simulator.ledger import ConnectionRecord, FrameMeta

if TYPE_CHECKING:
    from optionfeed.simulator.publisher import SubscribedChannel

# Bytes the transport may buffer before the outbox holds further frames back.
TRANSPORT_HIGH_WATER = 1024 * 1024
MALFORMED = object()  # the meta of a deliberately broken frame


class Session:
    """A client connection as the simulator sees it."""

    def __init__(
        self,
        conn_id: int,
        ip: str,
        transport: asyncio.Transport,
        record: ConnectionRecord,
        *,
        rng: random.Random,
    ) -> None:
        self.id = conn_id
        self.ip = ip
        self.transport = transport
        self.record = record
        self.authenticated = False
        self.subscribed: dict[str, SubscribedChannel] = {}
        self.heartbeat_interval: float | None = None
        self.next_heartbeat = 0.0
        self.awaiting_test = False
        self.buckets: dict[CreditPolicy, CreditBucket] = {}
        self._stale: str | None = None
        self._malformed_rate = 0.0
        self._closed = False
        # True while no fault touches this session: the publisher then queues frames inline.
        self.plain = True
        self.malformed_replace = False
        self.rng = rng
        self.close_reason: str | None = None
        self.closed_at = 0.0
        self.out: list[bytes] = []
        self.meta: list[FrameMeta | object | None] = []
        self.out_bytes = 0
        self._written = 0
        self._accepted = 0  # bytes the kernel is known to have taken, as of the last check
        self.graceful = False  # closed by us with a close frame: the transport drains first
        self._inflight: deque[tuple[int, list[bytes], list[FrameMeta | object | None]]] = deque()

    # ------------------------------------------------------------------ state

    def _update_plain(self) -> None:
        self.plain = self._stale is None and not self._closed and not self._malformed_rate

    @property
    def stale(self) -> str | None:
        """None, or the stale-stream fault: "data" (no notifications) or "all" (nothing)."""
        return self._stale

    @stale.setter
    def stale(self, mode: str | None) -> None:
        self._stale = mode
        self._update_plain()

    @property
    def closed(self) -> bool:
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value
        self._update_plain()

    @property
    def malformed_rate(self) -> float:
        return self._malformed_rate

    @malformed_rate.setter
    def malformed_rate(self, rate: float) -> None:
        self._malformed_rate = rate
        self._update_plain()

    # ------------------------------------------------------------------ queueing

    def push(self, frame: bytes, meta: FrameMeta) -> None:
        """Queue one notification frame (the publisher's hot path)."""
        if self.stale is not None or self.closed:
            return
        if self.malformed_rate and self.rng.random() < self.malformed_rate:
            broken = frames.text_frame(_truncate(frame))
            self.out.append(broken)
            self.meta.append(MALFORMED)
            self.out_bytes += len(broken)
            if self.malformed_replace:
                return
        self.out.append(frame)
        self.meta.append(meta)
        self.out_bytes += len(frame)

    def send(self, payload: bytes) -> None:
        """Queue a response or heartbeat (JSON text) and write it out now."""
        if self.stale == "all" or self.closed:
            return
        frame = frames.text_frame(payload)
        self.out.append(frame)
        self.meta.append(None)
        self.out_bytes += len(frame)
        self.flush()

    @property
    def backlog_bytes(self) -> int:
        """Bytes queued for this client that the kernel has not taken yet."""
        transport = self.transport
        buffered = 0 if transport.is_closing() else transport.get_write_buffer_size()
        return self.out_bytes + buffered

    # ------------------------------------------------------------------ writing

    def flush(self) -> bool:
        """Write the outbox if the transport has room; False when the reader is too slow.

        "Too slow" means the backlog the transport could not take exceeds ``slow_limit``; the
        caller then closes the connection.
        """
        if self.closed or not self.out:
            self.commit_sent()
            return True
        transport = self.transport
        if transport.is_closing():
            return True
        if transport.get_write_buffer_size() > TRANSPORT_HIGH_WATER:
            return True  # the pump tries again on its next cycle
        out, meta = self.out, self.meta
        self.out, self.meta, self.out_bytes = [], [], 0
        data = b"".join(out)
        transport.write(data)
        self._written += len(data)
        self._inflight.append((self._written, out, meta))
        self.commit_sent()
        return True

    def commit_sent(self) -> None:
        """Commit to the ledger every frame the transport has passed to the kernel."""
        if not self._inflight:
            return
        self._accepted = self._written - self.transport.get_write_buffer_size()
        inflight = self._inflight
        while inflight and inflight[0][0] <= self._accepted:
            _, _, metas = inflight.popleft()
            self._commit(metas)

    def _commit(self, metas: list[FrameMeta | object | None]) -> None:
        ledger.commit(self.record, metas)

    def discard_backlog(self) -> None:
        """Forget what was never written (a slow consumer's backlog): it was not sent."""
        self.out, self.meta, self.out_bytes = [], [], 0

    def abort(self) -> None:
        """Reset the connection now; what the transport still buffered is lost, not sent."""
        if not self.transport.is_closing():
            self.commit_sent()
        self.closed = True
        self.discard_backlog()
        self.transport.abort()

    def lost(self) -> None:
        """The connection is gone: count what reached the kernel, forget the rest.

        After a close we started, the transport drained before closing, so all it was given
        counts. When the peer vanished the transport's buffer is gone too, and only what the
        last check saw the kernel take counts.
        """
        if self.graceful:
            self._accepted = self._written
        elif not self.transport.is_closing():
            self._accepted = self._written - self.transport.get_write_buffer_size()
        accepted = self._accepted
        while self._inflight:
            end, out, metas = self._inflight.popleft()
            if end <= accepted:
                self._commit(metas)
                continue
            offset = end - sum(len(f) for f in out)
            for frame, meta in zip(out, metas, strict=True):
                offset += len(frame)
                if offset > accepted:
                    break
                self._commit([meta])
            break
        self._inflight.clear()
        self.discard_backlog()
        self.closed = True

    # ------------------------------------------------------------------ credits

    def spend(self, policy: CreditPolicy, multiplier: float, now: float) -> bool:
        """Take a request's credits; False when the bucket is short (answer 10028, close)."""
        if multiplier <= 0:
            return True
        bucket = self.buckets.get(policy)
        if bucket is None:
            bucket = CreditBucket.full(
                policy.capacity * multiplier, policy.refill_per_second * multiplier, now
            )
            self.buckets[policy] = bucket
        return bucket.try_spend(policy.cost, now)


def _truncate(frame: bytes) -> bytes:
    """The payload of a notification frame cut short: text that is not JSON."""
    header = 2 if frame[1] < 126 else 4 if frame[1] == 126 else 10
    payload = frame[header:]
    return payload[: max(1, len(payload) * 2 // 3)]
