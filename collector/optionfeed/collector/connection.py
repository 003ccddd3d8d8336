"""One connection to Deribit, kept alive across reconnects.

An :class:`ExchangeConnection` holds a set of channels. Whatever happens to the socket, it works to
make the exchange's subscriptions equal that set: it connects, says ``public/hello``, turns on
heartbeats, subscribes in requests of at most 500 channels and 32 KB paced to the subscribe
credits, compares every acknowledgment with its request, retries what the exchange left out, and
after a disconnect reconnects with capped exponential backoff and full jitter, resubscribing
exactly what it held.

The reader task owns the session: it is never cancelled, because a cancelled reader could drop a
frame it already holds. Other tasks end a session by closing the socket (a stale stream, a session
the exchange ended with 10028), and the reader returns when the socket reports the close. A clean
shutdown sends ``public/unsubscribe_all`` and keeps reading until its answer arrives: every
notification the exchange sent before that answer is delivered before the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
import orjson
from aiohttp import WSMsgType
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from optionfeed.backoff import Backoff
from optionfeed.collector.pacing import RequestPacer
from optionfeed.deribit import jsonrpc
from optionfeed.deribit.channels import InvalidChannel, parse_channel
from optionfeed.deribit.errors import DeribitError, ErrorCode, ProtocolError, RpcError
from optionfeed.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Text frames arrive as bytes (decode_text=False): orjson parses them without a decode step.
BytesWebSocket = aiohttp.ClientWebSocketResponse[Literal[False]]

MIN_HEARTBEAT_INTERVAL = 10.0  # Deribit refuses shorter intervals (a simulator may allow them)


class ConnectionLost(DeribitError):
    """The session ended; ``reason`` is a short label (also the metric's reason)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    url: str
    client_name: str
    client_version: str
    heartbeat_interval: float = MIN_HEARTBEAT_INTERVAL
    # A stream silent this long is stale. Deribit sends a test_request every heartbeat interval,
    # so 1.5 intervals of silence means the stream is gone, and it is caught well inside two.
    stale_after: float | None = None
    # A session that holds ticker channels yet delivers no notification this long is stalled even
    # if heartbeats still flow (tickers of live options arrive many times a minute): replace it.
    data_timeout: float | None = 30.0
    request_timeout: float = 10.0
    connect_timeout: float = 10.0
    drain_timeout: float = 5.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    client_id: str | None = None
    client_secret: str | None = None

    def __post_init__(self) -> None:
        if self.heartbeat_interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {self.heartbeat_interval}")

    @property
    def stale_timeout(self) -> float:
        return self.stale_after if self.stale_after is not None else 1.5 * self.heartbeat_interval


class Sink(Protocol):
    """Where a connection delivers what it reads. Awaiting it is how backpressure reaches us."""

    async def notification(self, channel: str, data: Any, raw: bytes, recv_ts: float) -> None: ...

    async def rejected(
        self, raw: bytes, reason: str, detail: str, recv_ts: float, channel: str | None = None
    ) -> None:
        """A frame that cannot be used: ``reason`` is a metric label, ``detail`` the whole why."""


class Observer:
    """Hooks for what happens to a connection's subscriptions; every method is optional."""

    def connected(self, conn: ExchangeConnection, channels: frozenset[str], at: float) -> None:
        """The exchange acknowledged ``channels`` after a (re)connect."""

    def disconnected(
        self, conn: ExchangeConnection, channels: frozenset[str], reason: str, last_frame_at: float
    ) -> None:
        """The session that held ``channels`` ended; nothing arrived after ``last_frame_at``."""

    def subscribe_failed(
        self, conn: ExchangeConnection, channels: frozenset[str], reason: str
    ) -> None:
        """The exchange left out or refused ``channels``; they are retried unless refused."""


def subscribe_batches(
    channels: Iterable[str],
    *,
    max_channels: int = jsonrpc.MAX_CHANNELS_PER_SUBSCRIBE,
    max_bytes: int = jsonrpc.MAX_FRAME_BYTES,
) -> Iterator[list[str]]:
    """Split channels into subscribe requests of at most ``max_channels`` and ``max_bytes``."""
    # The envelope around the list, with a generous id, measured once.
    overhead = len(jsonrpc.encode_request(2**53, "public/unsubscribe", {"channels": []}))
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


class ExchangeConnection:
    """One WebSocket to the exchange and the channels it should hold."""

    def __init__(
        self,
        index: int,
        settings: ConnectionSettings,
        session: aiohttp.ClientSession,
        sink: Sink,
        *,
        pacer: RequestPacer,
        metrics: Metrics,
        observer: Observer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.index = index
        self.settings = settings
        self._session = session
        self._sink = sink
        self._pacer = pacer
        self._metrics = metrics
        self._observer = observer or Observer()
        self._rng = rng or random.Random()
        self._backoff = Backoff(settings.backoff_base, settings.backoff_cap, self._rng)
        self._retry_backoff = Backoff(1.0, 60.0, self._rng)

        self.held: set[str] = set()  # what this connection should be subscribed to
        self.acked: set[str] = set()  # what the exchange acknowledged on the current session
        self.refused: dict[str, str] = {}  # channel -> reason; not retried (e.g. raw without auth)
        self._retry_at: dict[str, float] = {}  # left out by the exchange -> when to ask again
        self._resubscribe: set[str] = set()  # held channels to unsubscribe and subscribe again

        self._ws: BytesWebSocket | None = None
        self._ready = False  # hello/heartbeat done on the current session
        self._connecting = False  # inside the WebSocket handshake: nothing held, safe to cancel
        self._closing = False
        self._end_reason: ConnectionLost | None = None
        self._wake = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ignored_ids: set[int] = set()
        self.frames = 0
        self.notifications = 0
        self.last_frame_at = 0.0
        self.sessions = 0
        self._run_task: asyncio.Task[None] | None = None
        self._session_tasks: list[asyncio.Task[None]] = []
        # The current session's span: the parent of its subscribe and unsubscribe requests.
        self._session_span: trace.Span = trace.INVALID_SPAN

    # ----------------------------------------------------------------- the held set

    def add(self, channels: Iterable[str]) -> None:
        new = set(channels) - self.held
        if new:
            self.held |= new
            self._wake.set()

    def remove(self, channels: Iterable[str]) -> None:
        gone = self.held & set(channels)
        if gone:
            self.held -= gone
            for channel in gone:
                self.refused.pop(channel, None)
                self._retry_at.pop(channel, None)
            self._wake.set()

    def resubscribe(self, channels: Iterable[str]) -> None:
        """Unsubscribe and subscribe again (a book's fresh snapshot), on this session only."""
        again = self.held & set(channels)
        if again:
            self._resubscribe |= again
            self._wake.set()

    @property
    def connected(self) -> bool:
        return self._ready

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def pending(self) -> frozenset[str]:
        """Held channels the exchange has not acknowledged (and did not refuse for good)."""
        return frozenset(self.held - self.acked - self.refused.keys())

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> asyncio.Task[None]:
        if self._run_task is None:
            self._run_task = asyncio.create_task(
                self.run(), name=f"exchange-connection-{self.index}"
            )
        return self._run_task

    async def run(self) -> None:
        """Keep a session alive until :meth:`close`; return when closed."""
        try:
            while not self._closed_event.is_set():
                lost = await self._session_once()
                if self._closed_event.is_set():
                    break
                delay = self._backoff.next_delay()
                if lost.reason == "rate_limited":
                    # 10028 means the credits ran dry: give the pool time to refill.
                    delay += self._rng.uniform(1.0, 3.0)
                self._metrics.reconnects_total.labels(lost.reason).inc()
                log.warning(
                    "connection %d to %s lost (%s); %d channels; reconnecting in %.1f s",
                    self.index,
                    self.settings.url,
                    lost,
                    len(self.held),
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed_event.wait(), delay)
        finally:
            self._closed_event.set()

    async def close(self) -> None:
        """Stop: drain what the exchange already sent, then close the socket. Idempotent."""
        if self._closing:
            if self._run_task is not None:
                await asyncio.shield(self._run_task)
            return
        self._closing = True
        self._closed_event.set()
        for task in self._session_tasks:
            task.cancel()  # the maintainer and watchdog hold nothing that can be lost
        ws = self._ws
        if ws is not None and not ws.closed and self._ready:
            try:
                await asyncio.wait_for(
                    self.request("public/unsubscribe_all", {}), self.settings.drain_timeout
                )
            except (DeribitError, TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.info("connection %d: no clean unsubscribe before closing (%s)", self.index, exc)
        if ws is not None:
            await ws.close()
        run = self._run_task
        if run is not None:
            if self._connecting:
                run.cancel()  # mid-handshake: no session, no frame held
            await asyncio.wait({run})
            failure = None if run.cancelled() else run.exception()
            if failure is not None:
                raise failure

    # ----------------------------------------------------------------- one session

    async def _session_once(self) -> ConnectionLost:
        """One session, traced: a span from the connect to the disconnect and its reason."""
        span = tracer.start_span(
            "optionfeed.session",
            kind=SpanKind.CLIENT,
            attributes={
                "optionfeed.connection": self.index,
                "optionfeed.session": self.sessions + 1,
                "url.full": self.settings.url,
                "optionfeed.channels.held": len(self.held),
            },
        )
        self._session_span = span
        frames = self.frames
        try:
            lost = await self._run_session()
        except asyncio.CancelledError:
            # Only a close() during the handshake cancels a session.
            span.set_attribute("optionfeed.disconnect.reason", "shutdown")
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            shutdown = self._closing
            span.set_attributes(
                {
                    "optionfeed.disconnect.reason": "shutdown" if shutdown else lost.reason,
                    "optionfeed.disconnect.detail": lost.detail,
                    "optionfeed.frames": self.frames - frames,
                }
            )
            if not shutdown:
                span.set_status(Status(StatusCode.ERROR, str(lost)))
            return lost
        finally:
            self._session_span = trace.INVALID_SPAN
            span.end()

    async def _run_session(self) -> ConnectionLost:
        self._end_reason = None
        self._ready = False
        self._connecting = True
        try:
            # The whole handshake is bounded, not only the TCP connect: a link that accepts the
            # connection and then carries nothing must not hold a session open forever.
            ws = await asyncio.wait_for(
                self._session.ws_connect(
                    self.settings.url,
                    autoping=True,
                    max_msg_size=16 * 1024 * 1024,
                    decode_text=False,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.settings.drain_timeout),
                ),
                self.settings.connect_timeout,
            )
        except TimeoutError:
            return ConnectionLost(
                "unreachable", f"no WebSocket handshake within {self.settings.connect_timeout:g} s"
            )
        except aiohttp.WSServerHandshakeError as exc:
            reason = "too_many_connections" if exc.status == 429 else "handshake_refused"
            return ConnectionLost(reason, f"HTTP {exc.status} {exc.message}")
        except (aiohttp.ClientError, OSError) as exc:
            return ConnectionLost("unreachable", str(exc) or type(exc).__name__)
        finally:
            self._connecting = False
        self._ws = ws
        self.sessions += 1
        self._metrics.connections.inc()
        self.last_frame_at = time.time()
        reader = asyncio.create_task(self._read(ws), name=f"exchange-reader-{self.index}")
        try:
            await self._handshake()
            if self._closing:
                await ws.close()
            else:
                self._session_tasks = [
                    asyncio.create_task(
                        self._maintain(ws), name=f"exchange-subscriber-{self.index}"
                    ),
                    asyncio.create_task(self._watchdog(ws), name=f"exchange-watchdog-{self.index}"),
                ]
        except ConnectionLost as exc:
            self._end(exc)
            await ws.close()
        except RpcError as exc:
            reason = (
                "maintenance" if exc.code == ErrorCode.SYSTEM_MAINTENANCE else "handshake_error"
            )
            if exc.ends_session:
                reason = "rate_limited"
            self._end(ConnectionLost(reason, str(exc)))
            await ws.close()
        try:
            # A sink that raises is a bug: it propagates from here and stops the collector,
            # rather than turning into an endless reconnect loop.
            await reader
        finally:
            for task in self._session_tasks:
                task.cancel()
            await asyncio.gather(*self._session_tasks, return_exceptions=True)
            self._session_tasks = []
            self._metrics.connections.dec()
            self._ws = None
            was_ready, self._ready = self._ready, False
            lost_channels = frozenset(self.acked)
            self.acked.clear()
            self._metrics.subscribed_channels.dec(len(lost_channels))
        lost = self._end_reason or ConnectionLost(
            "closed_by_exchange", f"close code {ws.close_code}"
        )
        if was_ready and not self._closing:
            self._observer.disconnected(self, lost_channels, lost.reason, self.last_frame_at)
        return lost

    def _end(self, reason: ConnectionLost) -> None:
        if self._end_reason is None:
            self._end_reason = reason

    async def _handshake(self) -> None:
        await self.request(
            "public/hello",
            {
                "client_name": self.settings.client_name,
                "client_version": self.settings.client_version,
            },
        )
        await self.request(
            "public/set_heartbeat", {"interval": int(self.settings.heartbeat_interval)}
        )
        if self.settings.client_id and self.settings.client_secret:
            await self.request(
                "public/auth",
                {
                    "grant_type": "client_credentials",
                    "client_id": self.settings.client_id,
                    "client_secret": self.settings.client_secret,
                },
            )
        self._ready = True
        self._session_span.add_event("connected")
        if not self.held:
            self._backoff.reset()  # nothing to subscribe: the handshake is the whole proof of life
        self._wake.set()

    async def _read(self, ws: BytesWebSocket) -> None:
        """Read frames until the socket closes; deliver notifications, resolve responses."""
        try:
            await self._read_frames(ws)
        finally:
            # Requests still waiting can never be answered now; fail them at once.
            self._fail_pending(self._end_reason or ConnectionLost("closed"))

    async def _read_frames(self, ws: BytesWebSocket) -> None:
        notification = self._sink.notification
        rejected = self._sink.rejected
        loads = orjson.loads
        text = WSMsgType.TEXT
        # Notifications are taken only on channels this connection holds or still has
        # acknowledged: an unsubscribe's answer follows every notification sent before it, so
        # nothing the exchange sent while the channel was ours is refused. Both sets are only
        # ever changed in place, so these names stay current.
        held, acked = self.held, self.acked
        while True:
            msg = await ws.receive()
            if msg.type is not text:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    self._end(ConnectionLost("closed_by_exchange", f"close code {ws.close_code}"))
                    return
                if msg.type is WSMsgType.ERROR:
                    self._end(ConnectionLost("socket_error", str(ws.exception())))
                    return
                if msg.type is WSMsgType.BINARY:
                    detail = f"a binary frame ({len(msg.data)} bytes); the exchange sends text"
                    await rejected(msg.data, "binary_frame", detail, time.time())
                continue
            raw: bytes = msg.data
            recv_ts = time.time()
            self.frames += 1
            self.last_frame_at = recv_ts
            try:
                frame = loads(raw)
            except orjson.JSONDecodeError as exc:
                await rejected(raw, *jsonrpc.why_unparsable(raw, exc), recv_ts)
                continue
            if type(frame) is dict and frame.get("method") == "subscription":
                params = frame.get("params")
                if type(params) is dict and type(params.get("channel")) is str and "data" in params:
                    channel = params["channel"]
                    if channel in acked or channel in held:
                        self.notifications += 1
                        await notification(channel, params["data"], raw, recv_ts)
                    else:
                        detail = (
                            f"a notification on {channel[:200]!r}, "
                            "a channel this connection did not subscribe to"
                        )
                        await rejected(raw, "unsubscribed_channel", detail, recv_ts, channel)
                else:
                    detail = jsonrpc.subscription_problem(params)
                    await rejected(raw, "not_jsonrpc", detail, recv_ts)
                continue
            await self._control_frame(ws, frame, raw, recv_ts)

    async def _control_frame(
        self, ws: BytesWebSocket, frame: Any, raw: bytes, recv_ts: float
    ) -> None:
        """Everything that is not market data: responses, heartbeats, and the unexpected."""
        try:
            decoded = jsonrpc.decode_frame(raw)
        except ProtocolError as exc:
            await self._sink.rejected(raw, "not_jsonrpc", f"not a JSON-RPC frame: {exc}", recv_ts)
            return
        if isinstance(decoded, jsonrpc.Notification):
            if decoded.method == "heartbeat":
                if decoded.params.get("type") == "test_request":
                    await self._answer_test_request(ws)
                return  # plain heartbeats need no answer
            detail = f"unexpected notification {decoded.method[:80]!r}"
            await self._sink.rejected(raw, "unexpected_notification", detail, recv_ts)
            return
        request_id = decoded.id
        if isinstance(request_id, int) and request_id in self._ignored_ids:
            self._ignored_ids.discard(request_id)
            return
        future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if future is None:
            detail = f"a response to no request of ours (id {str(request_id)[:40]})"
            await self._sink.rejected(raw, "unknown_response", detail, recv_ts)
            return
        if future.done():
            return
        if decoded.error is not None:
            future.set_exception(decoded.error)
        else:
            future.set_result(decoded.result)

    async def _answer_test_request(self, ws: BytesWebSocket) -> None:
        request_id = self._new_id()
        self._ignored_ids.add(request_id)
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
            await ws.send_frame(
                jsonrpc.encode_request(request_id, "public/test", {}), WSMsgType.TEXT
            )

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send one request on the current session and wait for its result (or its error)."""
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionLost("not_connected")
        await self._pacer.acquire(method)
        request_id = self._new_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await ws.send_frame(jsonrpc.encode_request(request_id, method, params), WSMsgType.TEXT)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self._pending.pop(request_id, None)
            raise ConnectionLost("send_failed", str(exc)) from exc
        try:
            return await asyncio.wait_for(future, self.settings.request_timeout)
        except TimeoutError:
            raise ConnectionLost(
                "request_timeout", f"{method} unanswered after {self.settings.request_timeout:g} s"
            ) from None
        except RpcError as exc:
            raise RpcError(exc.code, exc.message, exc.data, method=method) from None
        finally:
            self._pending.pop(request_id, None)

    def _fail_pending(self, reason: ConnectionLost) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(reason.reason, reason.detail))
                future.exception()  # retrieved here: nobody may be waiting any more
        self._pending.clear()
        self._ignored_ids.clear()

    # ----------------------------------------------------------------- keeping subscriptions

    async def _maintain(self, ws: BytesWebSocket) -> None:
        """Make the exchange's subscriptions equal ``held``; level-triggered, until cancelled."""
        try:
            while True:
                self._wake.clear()
                await self._reconcile()
                timeout = None
                if self._retry_at:
                    timeout = max(0.0, min(self._retry_at.values()) - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        except ConnectionLost as exc:
            self._end(exc)
            await ws.close()

    async def _reconcile(self) -> None:
        again = sorted(self._resubscribe & self.acked)
        self._resubscribe.clear()
        for batch in subscribe_batches(again):
            if await self._call_channels("public/unsubscribe", batch) is not None:
                gone = self.acked & set(batch)
                self.acked -= gone
                self._metrics.subscribed_channels.dec(len(gone))
        now = time.monotonic()
        due = {c for c, at in self._retry_at.items() if at <= now}
        waiting = self._retry_at.keys() - due
        to_subscribe = sorted(self.held - self.acked - self.refused.keys() - waiting)
        for batch in subscribe_batches(to_subscribe):
            batch = [c for c in batch if c in self.held]  # removed while we waited for credits
            if batch:
                await self._subscribe(batch)
        to_unsubscribe = sorted(self.acked - self.held)
        for batch in subscribe_batches(to_unsubscribe):
            result = await self._call_channels("public/unsubscribe", batch)
            if result is None:
                continue
            removed = self.acked & set(batch)
            self.acked -= removed
            self._metrics.subscribed_channels.dec(len(removed))

    async def _call_channels(self, method: str, batch: list[str]) -> list[str] | None:
        """Send a subscribe/unsubscribe; None when it failed in a way already handled."""
        # One span per request (at most 500 channels), a child of the session's span.
        with tracer.start_as_current_span(
            "optionfeed.subscribe" if method == "public/subscribe" else "optionfeed.unsubscribe",
            context=trace.set_span_in_context(self._session_span),
            kind=SpanKind.CLIENT,
            attributes={"rpc.method": method, "optionfeed.channels.requested": len(batch)},
        ) as span:
            try:
                result = await self.request(method, {"channels": batch})
            except RpcError as exc:
                span.set_attributes(
                    {"optionfeed.error.code": exc.code, "optionfeed.error.message": exc.message}
                )
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                self._request_failed(batch, exc)
                return None
            if not isinstance(result, list):
                raise ConnectionLost("protocol_error", f"{method} answered {type(result).__name__}")
            granted = [c for c in result if isinstance(c, str)]
            span.set_attribute("optionfeed.channels.granted", len(granted))
            left_out = len(set(batch) - set(granted))
            if left_out and method == "public/subscribe":
                span.set_attribute("optionfeed.channels.left_out", left_out)
                span.set_status(Status(StatusCode.ERROR, f"{left_out} channel(s) left out"))
            return granted

    async def _subscribe(self, batch: list[str]) -> None:
        result = await self._call_channels("public/subscribe", batch)
        if result is None:
            return
        requested = set(batch)
        granted = requested & set(result)
        newly = granted - self.acked
        self.acked |= granted
        self._metrics.subscribed_channels.inc(len(newly))
        for channel in granted:
            self._retry_at.pop(channel, None)
        left_out = requested - granted
        if left_out:
            self._schedule_retry(left_out, "left_out")
        if granted:
            self._backoff.reset()  # a productive session: the next disconnect starts afresh
            if not self._retry_at:
                self._retry_backoff.reset()
        if newly:
            self._observer.connected(self, frozenset(newly), time.time())

    def _schedule_retry(self, channels: set[str], reason: str) -> None:
        delay = max(1.0, self._retry_backoff.next_delay())
        at = time.monotonic() + delay
        for channel in channels:
            self._retry_at[channel] = at
        self._metrics.subscribe_failures_total.labels(reason).inc(len(channels))
        sample = ", ".join(sorted(channels)[:3])
        log.warning(
            "connection %d: the exchange did not subscribe %d channel(s) (%s; e.g. %s); "
            "asking again in %.1f s",
            self.index,
            len(channels),
            reason,
            sample,
            delay,
        )
        self._observer.subscribe_failed(self, frozenset(channels), reason)

    def _refuse(self, channels: set[str], reason: str, detail: str) -> None:
        for channel in channels:
            self.refused[channel] = reason
            self._retry_at.pop(channel, None)
        self._metrics.subscribe_failures_total.labels(reason).inc(len(channels))
        log.error(
            "connection %d: the exchange refused %d channel(s) for good (%s); e.g. %s",
            self.index,
            len(channels),
            detail,
            ", ".join(sorted(channels)[:3]),
        )
        self._observer.subscribe_failed(self, frozenset(channels), reason)

    def _request_failed(self, batch: list[str], exc: RpcError) -> None:
        if exc.ends_session:
            raise ConnectionLost("rate_limited", str(exc))
        if exc.code == ErrorCode.RAW_SUBSCRIPTIONS_NOT_AVAILABLE_FOR_UNAUTHORIZED:
            raw = {c for c in batch if _is_raw(c)}
            # The whole request failed; the non-raw channels are asked for again at once.
            self._refuse(raw or set(batch), "unauthorized", str(exc))
            self._wake.set()
        elif exc.transient:
            self._schedule_retry(set(batch), "maintenance" if exc.code == 11051 else "transient")
        else:
            self._refuse(set(batch), "error", str(exc))

    async def _watchdog(self, ws: BytesWebSocket) -> None:
        """Close a stream that went silent without closing, so the session can be replaced.

        Two silences count: no frame at all (not even a heartbeat) for ``stale_timeout``, and,
        while the session holds ticker channels, no notification for ``data_timeout``.
        """
        timeout = self.settings.stale_timeout
        data_timeout = self.settings.data_timeout
        step = min(timeout, data_timeout or timeout) / 4
        frames, frames_since = self.frames, time.monotonic()
        notes, notes_since = self.notifications, frames_since
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            if self.frames != frames:
                frames, frames_since = self.frames, now
            if self.notifications != notes or not self._holds_tickers():
                notes, notes_since = self.notifications, now
            if now - frames_since >= timeout:
                reason = f"no frame for {now - frames_since:.1f} s"
            elif data_timeout is not None and now - notes_since >= data_timeout:
                reason = f"no notification for {now - notes_since:.1f} s while heartbeats flow"
            else:
                continue
            self._end(ConnectionLost("stale", reason))
            await ws.close()
            return

    def _holds_tickers(self) -> bool:
        return any(c.startswith("ticker.") for c in self.acked)


def _is_raw(channel: str) -> bool:
    try:
        return parse_channel(channel).is_raw
    except InvalidChannel:
        return False
