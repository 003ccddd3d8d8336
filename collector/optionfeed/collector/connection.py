"""One connection to Deribit, kept alive across reconnects.

An :class:`ExchangeConnection` holds a set of channels. Whatever happens to the socket, it works to
make the exchange's subscriptions equal that set: it connects, says ``public/hello``, turns on
heartbeats, subscribes in requests of at most 500 channels and 32 KB paced to the subscribe
credits, compares every acknowledgment with its request, retries what the exchange left out, and
after a disconnect reconnects with capped exponential backoff and full jitter, resubscribing
exactly what it held. The subscription state and the matching of answers to requests live in
:class:`~optionfeed.collector.protocol.ExchangeProtocol`; this module holds the socket, the tasks,
the timers and the reconnect loop, and drives it.

The reader task owns the session: it is never cancelled, because a cancelled reader could drop a
frame it already holds. Other tasks end a session by closing the socket (a stale stream, a session
the exchange ended with 10028), and the reader returns when the socket reports the close. A clean
shutdown sends ``public/unsubscribe_all`` and keeps reading until its answer arrives, so the flow
stops; then it sends its close frame and the reader goes on delivering every frame that arrives
until the exchange's close frame answers it. Frames the exchange sent before it saw our close
frame (all of them when the unsubscribe went unanswered) are delivered, not discarded: only an
exchange silent for ``drain_timeout`` after our close frame has the socket closed under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
from aiohttp import WSCloseCode, WSMsgType
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from optionfeed.backoff import Backoff
from optionfeed.collector.pacing import RequestPacer
from optionfeed.collector.protocol import (
    SUBSCRIBE,
    UNSUBSCRIBE,
    Answer,
    Answered,
    ChannelsAnswered,
    ChannelsFailed,
    ExchangeProtocol,
    Failed,
    Refusal,
    Rejected,
    Reply,
    Retry,
    Violation,
)
from optionfeed.collector.waiting import wait_set
from optionfeed.deribit.errors import DeribitError, ErrorCode, RpcError
from optionfeed.deribit.jsonrpc import Subscription
from optionfeed.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Text frames arrive as bytes (decode_text=False): orjson parses them without a decode step.
BytesWebSocket = aiohttp.ClientWebSocketResponse[Literal[False]]

MIN_HEARTBEAT_INTERVAL = 10.0  # Deribit refuses shorter intervals (a simulator may allow them)
CLOSE_FRAME = struct.pack("!H", WSCloseCode.OK)  # the payload of a normal closure's close frame


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

        self._protocol = ExchangeProtocol(self._rng)
        # What the connection should hold, what the exchange acknowledged on the current session,
        # and what it refused for good (channel -> reason): the protocol's own sets.
        self.held = self._protocol.held
        self.acked = self._protocol.acked
        self.refused = self._protocol.refused

        self._ws: BytesWebSocket | None = None
        self._ready = False  # hello/heartbeat done on the current session
        self._connecting = False  # inside the WebSocket handshake: nothing held, safe to cancel
        self._closing = False
        self._close_sent = False  # our close frame is out: nothing but control frames may follow
        self._end_reason: ConnectionLost | None = None
        self._wake = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._waiters: dict[int, asyncio.Future[Answer]] = {}  # request id -> its answer
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
        if self._protocol.add(channels):
            self._wake.set()

    def remove(self, channels: Iterable[str]) -> None:
        if self._protocol.remove(channels):
            self._wake.set()

    def resubscribe(self, channels: Iterable[str]) -> None:
        """Unsubscribe and subscribe again (a book's fresh snapshot), on this session only."""
        if self._protocol.resubscribe(channels):
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
        return self._protocol.pending

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
                await wait_set(self._closed_event, delay)
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
                async with asyncio.timeout(self.settings.drain_timeout):
                    await self.request("public/unsubscribe_all", {})
            except (DeribitError, TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.info("connection %d: no clean unsubscribe before closing (%s)", self.index, exc)
        run = self._run_task
        if ws is not None:
            await self._close_delivering(ws, run)
        if run is not None:
            if self._connecting:
                run.cancel()  # mid-handshake: no session, no frame held
            await asyncio.wait({run})
            failure = None if run.cancelled() else run.exception()
            if failure is not None:
                raise failure

    async def _close_delivering(self, ws: BytesWebSocket, run: asyncio.Task[None] | None) -> None:
        """Send our close frame and let the reader deliver what arrives until the exchange's.

        ``ws.close()`` would read, and discard, every data frame still on its way. Here the reader
        reads them: the session ends when the exchange answers the close frame (aiohttp then
        closes the socket), or, once nothing at all arrived for ``drain_timeout``, by closing
        the socket under a peer that is gone.
        """
        if ws.closed or run is None or run.done():
            await ws.close()
            return
        try:
            self._close_sent = True
            await ws.send_frame(CLOSE_FRAME, WSMsgType.CLOSE)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            await ws.close()
            return
        while True:
            frames = self.frames
            done, _ = await asyncio.wait({run}, timeout=self.settings.drain_timeout)
            if done or ws.closed:
                return
            if self.frames == frames:
                break  # frames still flowing mean a slow reader, not a missing answer
        log.info(
            "connection %d: no close frame from the exchange within %g s; closing the socket",
            self.index,
            self.settings.drain_timeout,
        )
        await ws.close()

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
            async with asyncio.timeout(self.settings.connect_timeout):
                ws = await self._session.ws_connect(
                    self.settings.url,
                    autoping=True,
                    max_msg_size=16 * 1024 * 1024,
                    decode_text=False,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.settings.drain_timeout),
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
            lost_channels = self._protocol.connection_lost()
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
            self._fail_waiters(self._end_reason or ConnectionLost("closed"))

    async def _read_frames(self, ws: BytesWebSocket) -> None:
        notification = self._sink.notification
        receive = self._protocol.receive
        monotonic = time.monotonic
        text = WSMsgType.TEXT
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
                    await self._sink.rejected(msg.data, "binary_frame", detail, time.time())
                continue
            raw: bytes = msg.data
            recv_ts = time.time()
            self.frames += 1
            self.last_frame_at = recv_ts
            event = receive(raw, monotonic())
            if isinstance(event, Subscription):
                self.notifications += 1
                await notification(event.channel, event.data, raw, recv_ts)
            elif isinstance(event, Rejected):
                await self._sink.rejected(raw, event.reason, event.detail, recv_ts, event.channel)
            elif isinstance(event, Reply):
                if not self._close_sent:  # after our close frame, no data frame may follow
                    with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
                        await ws.send_frame(event.frame, WSMsgType.TEXT)
            elif event is not None:
                waiter = self._waiters.pop(event.id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        """Send one request on the current session and wait for its result (or its error)."""
        answer = await self._call(method, lambda: self._protocol.request(method, params))
        if isinstance(answer, Failed):
            raise answer.error
        assert isinstance(answer, Answered)  # a plain request gets a plain answer
        return answer.result

    async def _call(self, method: str, send: Callable[[], tuple[int, bytes]]) -> Answer:
        """Send the request ``send`` numbers and frames, paced; wait for its answer."""
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionLost("not_connected")
        await self._pacer.acquire(method)
        request_id, frame = send()
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        try:
            try:
                await ws.send_frame(frame, WSMsgType.TEXT)
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                raise ConnectionLost("send_failed", str(exc)) from exc
            async with asyncio.timeout(self.settings.request_timeout):
                return await future
        except TimeoutError:
            raise ConnectionLost(
                "request_timeout", f"{method} unanswered after {self.settings.request_timeout:g} s"
            ) from None
        finally:
            self._waiters.pop(request_id, None)
            self._protocol.abandon(request_id)

    def _fail_waiters(self, reason: ConnectionLost) -> None:
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(ConnectionLost(reason.reason, reason.detail))
                future.exception()  # retrieved here: nobody may be waiting any more
        self._waiters.clear()

    # ----------------------------------------------------------------- keeping subscriptions

    async def _maintain(self, ws: BytesWebSocket) -> None:
        """Make the exchange's subscriptions equal ``held``; level-triggered, until cancelled."""
        try:
            while True:
                self._wake.clear()
                await self._reconcile()
                timeout = None
                retry_at = self._protocol.next_retry_at()
                if retry_at is not None:
                    timeout = max(0.0, retry_at - time.monotonic())
                await wait_set(self._wake, timeout)
        except ConnectionLost as exc:
            self._end(exc)
            await ws.close()

    async def _reconcile(self) -> None:
        protocol = self._protocol
        for batch in protocol.take_resubscribes():
            await self._call_channels(UNSUBSCRIBE, batch)
        for batch in protocol.due_subscribes(time.monotonic()):
            batch = protocol.still_held(batch)  # removed while earlier batches were answered
            if batch:
                await self._call_channels(SUBSCRIBE, batch)
        for batch in protocol.due_unsubscribes():
            await self._call_channels(UNSUBSCRIBE, batch)

    async def _call_channels(self, method: str, batch: list[str]) -> None:
        """Send a subscribe/unsubscribe and act on its answer (the protocol already applied it)."""
        protocol = self._protocol
        send = protocol.subscribe if method == SUBSCRIBE else protocol.unsubscribe
        # One span per request (at most 500 channels), a child of the session's span.
        with tracer.start_as_current_span(
            "optionfeed.subscribe" if method == SUBSCRIBE else "optionfeed.unsubscribe",
            context=trace.set_span_in_context(self._session_span),
            kind=SpanKind.CLIENT,
            attributes={"rpc.method": method, "optionfeed.channels.requested": len(batch)},
        ) as span:
            answer = await self._call(method, lambda: send(batch))
            if isinstance(answer, Violation):
                raise ConnectionLost("protocol_error", answer.detail)
            if isinstance(answer, ChannelsFailed):
                error = answer.error
                span.set_attributes(
                    {"optionfeed.error.code": error.code, "optionfeed.error.message": error.message}
                )
                span.set_status(Status(StatusCode.ERROR, str(error)))
                self._channels_failed(answer)
                return
            assert isinstance(answer, ChannelsAnswered)  # a channel request gets a channel answer
            span.set_attribute("optionfeed.channels.granted", len(answer.granted))
            if answer.retry is not None:
                left_out = len(answer.retry.channels)
                span.set_attribute("optionfeed.channels.left_out", left_out)
                span.set_status(Status(StatusCode.ERROR, f"{left_out} channel(s) left out"))
            self._channels_answered(answer)

    def _channels_answered(self, answer: ChannelsAnswered) -> None:
        self._metrics.subscribed_channels.inc(len(answer.added))
        self._metrics.subscribed_channels.dec(len(answer.removed))
        if answer.retry is not None:
            self._retry_scheduled(answer.retry)
        if answer.method == SUBSCRIBE and answer.acknowledged:
            self._backoff.reset()  # a productive session: the next disconnect starts afresh
        if answer.added:
            self._observer.connected(self, answer.added, time.time())

    def _channels_failed(self, failure: ChannelsFailed) -> None:
        if failure.ends_session:
            raise ConnectionLost("rate_limited", str(failure.error))
        if failure.refusal is not None:
            self._refused(failure.refusal)
        if failure.retry is not None:
            self._retry_scheduled(failure.retry)
        if failure.ask_again_now:
            self._wake.set()

    def _retry_scheduled(self, retry: Retry) -> None:
        channels = retry.channels
        self._metrics.subscribe_failures_total.labels(retry.reason).inc(len(channels))
        log.warning(
            "connection %d: the exchange did not subscribe %d channel(s) (%s; e.g. %s); "
            "asking again in %.1f s",
            self.index,
            len(channels),
            retry.reason,
            ", ".join(sorted(channels)[:3]),
            retry.delay,
        )
        self._observer.subscribe_failed(self, channels, retry.reason)

    def _refused(self, refusal: Refusal) -> None:
        channels = refusal.channels
        self._metrics.subscribe_failures_total.labels(refusal.reason).inc(len(channels))
        log.error(
            "connection %d: the exchange refused %d channel(s) for good (%s); e.g. %s",
            self.index,
            len(channels),
            refusal.detail,
            ", ".join(sorted(channels)[:3]),
        )
        self._observer.subscribe_failed(self, channels, refusal.reason)

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
            if self.notifications != notes or not self._protocol.holds_tickers():
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
