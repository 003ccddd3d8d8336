"""The protocol state of one exchange connection, free of I/O.

An :class:`ExchangeProtocol` holds the channels a connection should be subscribed to, what the
exchange acknowledged, refused or left out, and the requests still waiting for an answer. Requests
come out as the bytes to send (:meth:`~ExchangeProtocol.request`,
:meth:`~ExchangeProtocol.subscribe`, :meth:`~ExchangeProtocol.unsubscribe`); every text frame
that arrives goes in as bytes (:meth:`~ExchangeProtocol.receive`) and comes back as at most one
event: market data to deliver, a frame to reject and why, the answer to a request (matched by its
id, in whatever order answers arrive), or a frame to send back (the answer to a heartbeat's
``test_request``). Subscribe and unsubscribe answers update the subscription state as they are
matched. Nothing here touches a socket, a task or a clock: times are arguments.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from optionfeed.backoff import Backoff
from optionfeed.deribit import jsonrpc
from optionfeed.deribit.channels import InvalidChannel, parse_channel
from optionfeed.deribit.errors import ErrorCode, ProtocolError, RpcError
from optionfeed.deribit.jsonrpc import Notification, Response, Subscription, parse_message

SUBSCRIBE = "public/subscribe"
UNSUBSCRIBE = "public/unsubscribe"
_loads = orjson.loads


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that cannot be used: ``reason`` is a metric label, ``detail`` the whole why."""

    reason: str
    detail: str
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A frame to send back at once (the answer to a ``test_request`` heartbeat)."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Answered:
    """The result of a request other than a subscribe or unsubscribe."""

    id: int
    method: str
    result: Any


@dataclass(frozen=True, slots=True)
class Failed:
    """The exchange answered a request other than a subscribe or unsubscribe with an error."""

    id: int
    method: str
    error: RpcError


@dataclass(frozen=True, slots=True)
class Retry:
    """Channels the exchange did not subscribe, asked for again ``delay`` seconds later."""

    channels: frozenset[str]
    reason: str  # left_out, transient, maintenance
    delay: float


@dataclass(frozen=True, slots=True)
class Refusal:
    """Channels refused for good: never asked for again while held."""

    channels: frozenset[str]
    reason: str  # unauthorized, error
    detail: str


@dataclass(frozen=True, slots=True)
class ChannelsAnswered:
    """A subscribe or unsubscribe answered with the channels it covers, already applied."""

    id: int
    method: str
    requested: tuple[str, ...]
    granted: tuple[str, ...]  # what the answer lists
    added: frozenset[str]  # acknowledged now and not before (subscribe)
    removed: frozenset[str]  # no longer acknowledged (unsubscribe)
    retry: Retry | None  # requested channels the answer left out (subscribe)

    @property
    def acknowledged(self) -> frozenset[str]:
        """The requested channels the answer lists."""
        return frozenset(self.requested).intersection(self.granted)


@dataclass(frozen=True, slots=True)
class ChannelsFailed:
    """A subscribe or unsubscribe answered with an error, already applied."""

    id: int
    method: str
    requested: tuple[str, ...]
    error: RpcError
    retry: Retry | None
    refusal: Refusal | None
    ask_again_now: bool  # the rest of the request's channels are due at once

    @property
    def ends_session(self) -> bool:
        return self.error.ends_session


@dataclass(frozen=True, slots=True)
class Violation:
    """An answer of a shape the protocol does not allow: the session cannot be trusted."""

    id: int
    method: str
    detail: str


Answer = Answered | Failed | ChannelsAnswered | ChannelsFailed | Violation
Event = Subscription | Rejected | Reply | Answer


@dataclass(frozen=True, slots=True)
class _Sent:
    method: str
    channels: tuple[str, ...] | None  # the batch of a subscribe or unsubscribe


# ----------------------------------------------------------------------------- batches


def subscribe_batches(
    channels: Iterable[str],
    *,
    max_channels: int = jsonrpc.MAX_CHANNELS_PER_SUBSCRIBE,
    max_bytes: int = jsonrpc.MAX_FRAME_BYTES,
) -> Iterator[list[str]]:
    """Split channels into subscribe requests of at most ``max_channels`` and ``max_bytes``."""
    # The envelope around the list, with a generous id, measured once.
    overhead = len(jsonrpc.encode_request(2**53, UNSUBSCRIBE, {"channels": []}))
    batch: list[str] = []
    size = overhead
    for channel in channels:
        item = len(orjson.dumps(channel)) + 1  # the quoted name and its comma
        if batch and (len(batch) >= max_channels or size + item > max_bytes):
            yield batch
            batch, size = [], overhead
        if overhead + item > max_bytes:
            raise ValueError(f"channel name too long for one request: {channel[:80]}...")
        batch.append(channel)
        size += item
    if batch:
        yield batch


# ----------------------------------------------------------------------------- the protocol


class ExchangeProtocol:
    """Subscription state and request matching of one connection, driven by its owner."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.held: set[str] = set()  # what the connection should be subscribed to
        self.acked: set[str] = set()  # what the exchange acknowledged on the current session
        self.refused: dict[str, str] = {}  # channel -> reason; not retried (e.g. raw without auth)
        self.retry_at: dict[str, float] = {}  # left out by the exchange -> when to ask again
        self._resubscribe: set[str] = set()  # held channels to unsubscribe and subscribe again
        self._retry_backoff = Backoff(1.0, 60.0, rng or random.Random())
        self._next_id = 0
        self._pending: dict[int, _Sent] = {}
        self._ignored: set[int] = set()  # ids whose answers nobody needs (test_request answers)

    # ------------------------------------------------------------------------- the held set

    def add(self, channels: Iterable[str]) -> bool:
        """Hold ``channels`` too; True when that changed anything."""
        new = set(channels) - self.held
        self.held |= new
        return bool(new)

    def remove(self, channels: Iterable[str]) -> bool:
        """Stop holding ``channels``; True when that changed anything."""
        gone = self.held & set(channels)
        self.held -= gone
        for channel in gone:
            self.refused.pop(channel, None)
            self.retry_at.pop(channel, None)
        return bool(gone)

    def resubscribe(self, channels: Iterable[str]) -> bool:
        """Unsubscribe and subscribe again at the next reconcile; True when any is held."""
        again = self.held & set(channels)
        self._resubscribe |= again
        return bool(again)

    @property
    def pending(self) -> frozenset[str]:
        """Held channels the exchange has not acknowledged (and did not refuse for good)."""
        return frozenset(self.held - self.acked - self.refused.keys())

    def holds_tickers(self) -> bool:
        return any(c.startswith("ticker.") for c in self.acked)

    # ------------------------------------------------------------------------- what to send

    def take_resubscribes(self) -> list[list[str]]:
        """The unsubscribe batches of the channels to subscribe afresh (then forgotten)."""
        again = sorted(self._resubscribe & self.acked)
        self._resubscribe.clear()
        return list(subscribe_batches(again))

    def due_subscribes(self, now: float) -> list[list[str]]:
        """The subscribe batches of held channels neither acknowledged, refused nor waiting."""
        waiting = {c for c, at in self.retry_at.items() if at > now}
        return list(
            subscribe_batches(sorted(self.held - self.acked - self.refused.keys() - waiting))
        )

    def due_unsubscribes(self) -> list[list[str]]:
        """The unsubscribe batches of acknowledged channels no longer held."""
        return list(subscribe_batches(sorted(self.acked - self.held)))

    def still_held(self, batch: list[str]) -> list[str]:
        return [c for c in batch if c in self.held]

    def next_retry_at(self) -> float | None:
        return min(self.retry_at.values()) if self.retry_at else None

    def request(self, method: str, params: dict[str, Any]) -> tuple[int, bytes]:
        """Number a request and remember it; its id and the frame to send."""
        return self._send(method, params, None)

    def subscribe(self, batch: list[str]) -> tuple[int, bytes]:
        return self._send(SUBSCRIBE, {"channels": batch}, tuple(batch))

    def unsubscribe(self, batch: list[str]) -> tuple[int, bytes]:
        return self._send(UNSUBSCRIBE, {"channels": batch}, tuple(batch))

    def _send(
        self, method: str, params: dict[str, Any], channels: tuple[str, ...] | None
    ) -> tuple[int, bytes]:
        request_id = self._new_id()
        frame = jsonrpc.encode_request(request_id, method, params)
        self._pending[request_id] = _Sent(method, channels)
        return request_id, frame

    def abandon(self, request_id: int) -> None:
        """Nobody waits for ``request_id`` any more: its answer, if any, is unknown."""
        self._pending.pop(request_id, None)

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    # ------------------------------------------------------------------------- what arrives

    def receive(self, raw: bytes, now: float) -> Event | None:
        """One text frame in; what it means, or None for a frame that needs nothing."""
        try:
            message = _loads(raw)
        except orjson.JSONDecodeError as exc:
            return Rejected(*jsonrpc.why_unparsable(raw, exc))
        try:
            frame = parse_message(message, raw)
        except ProtocolError as exc:
            return Rejected("not_jsonrpc", exc.reason)
        if type(frame) is Subscription:
            # Taken on channels held or still acknowledged: an unsubscribe's answer follows every
            # notification sent before it, so nothing sent while the channel was ours is refused.
            channel = frame.channel
            if channel in self.acked or channel in self.held:
                return frame
            detail = (
                f"a notification on {channel[:200]!r}, "
                "a channel this connection did not subscribe to"
            )
            return Rejected("unsubscribed_channel", detail, channel)
        if type(frame) is Notification:
            if frame.method == "heartbeat":
                if frame.params.get("type") == "test_request":
                    request_id = self._new_id()
                    self._ignored.add(request_id)
                    return Reply(jsonrpc.encode_request(request_id, "public/test", {}))
                return None  # plain heartbeats need no answer
            return Rejected(
                "unexpected_notification", f"unexpected notification {frame.method[:80]!r}"
            )
        assert type(frame) is Response
        return self._answer(frame, now)

    def _answer(self, response: Response, now: float) -> Answer | Rejected | None:
        request_id = response.id
        if isinstance(request_id, int) and request_id in self._ignored:
            self._ignored.discard(request_id)
            return None
        sent = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if sent is None:
            detail = f"a response to no request of ours (id {str(request_id)[:40]})"
            return Rejected("unknown_response", detail)
        assert isinstance(request_id, int)
        error = response.error
        if error is not None:
            error = RpcError(error.code, error.message, error.data, method=sent.method)
        if sent.channels is None:
            if error is not None:
                return Failed(request_id, sent.method, error)
            return Answered(request_id, sent.method, response.result)
        if error is not None:
            return self._channels_failed(request_id, sent.method, sent.channels, error, now)
        result = response.result
        if not isinstance(result, list):
            return Violation(
                request_id, sent.method, f"{sent.method} answered {type(result).__name__}"
            )
        granted = tuple(c for c in result if isinstance(c, str))
        if sent.method == SUBSCRIBE:
            return self._subscribed(request_id, sent.channels, granted, now)
        removed = frozenset(self.acked.intersection(sent.channels))
        self.acked -= removed
        return ChannelsAnswered(
            request_id, sent.method, sent.channels, granted, frozenset(), removed, None
        )

    def _subscribed(
        self, request_id: int, batch: tuple[str, ...], result: tuple[str, ...], now: float
    ) -> ChannelsAnswered:
        requested = set(batch)
        granted = requested.intersection(result)
        added = frozenset(granted - self.acked)
        self.acked |= granted
        for channel in granted:
            self.retry_at.pop(channel, None)
        left_out = requested - granted
        retry = self._schedule_retry(left_out, "left_out", now) if left_out else None
        if granted and not self.retry_at:
            self._retry_backoff.reset()
        return ChannelsAnswered(request_id, SUBSCRIBE, batch, result, added, frozenset(), retry)

    def _channels_failed(
        self, request_id: int, method: str, batch: tuple[str, ...], error: RpcError, now: float
    ) -> ChannelsFailed:
        retry: Retry | None = None
        refusal: Refusal | None = None
        again = False
        if error.ends_session:
            pass  # the exchange ends the session: the owner reconnects
        elif error.code == ErrorCode.RAW_SUBSCRIPTIONS_NOT_AVAILABLE_FOR_UNAUTHORIZED:
            raw = {c for c in batch if _is_raw(c)}
            # The whole request failed; the non-raw channels are asked for again at once.
            refusal = self._refuse(raw or set(batch), "unauthorized", str(error))
            again = True
        elif error.transient:
            reason = "maintenance" if error.code == ErrorCode.SYSTEM_MAINTENANCE else "transient"
            retry = self._schedule_retry(set(batch), reason, now)
        else:
            refusal = self._refuse(set(batch), "error", str(error))
        return ChannelsFailed(request_id, method, batch, error, retry, refusal, again)

    def _schedule_retry(self, channels: set[str], reason: str, now: float) -> Retry:
        delay = max(1.0, self._retry_backoff.next_delay())
        for channel in channels:
            self.retry_at[channel] = now + delay
        return Retry(frozenset(channels), reason, delay)

    def _refuse(self, channels: set[str], reason: str, detail: str) -> Refusal:
        for channel in channels:
            self.refused[channel] = reason
            self.retry_at.pop(channel, None)
        return Refusal(frozenset(channels), reason, detail)

    # ------------------------------------------------------------------------- the session

    def connection_lost(self) -> frozenset[str]:
        """The session ended: nothing is acknowledged or answerable any more; what was acked."""
        lost = frozenset(self.acked)
        self.acked.clear()
        self._pending.clear()
        self._ignored.clear()
        return lost


def _is_raw(channel: str) -> bool:
    try:
        return parse_channel(channel).is_raw
    except InvalidChannel:
        return False
