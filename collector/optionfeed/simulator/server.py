"""The simulator's HTTP server: WebSocket JSON-RPC, the REST mirror and the ``/sim`` controls.

One port serves

* ``GET /ws/api/v2``: the WebSocket JSON-RPC endpoint;
* ``GET|POST /api/v2/<method>``: the REST mirror (query parameters, or a JSON body holding
  either the parameters or a whole JSON-RPC request);
* ``GET /sim/ledger``: what was generated and sent (:mod:`.ledger`);
* ``GET|POST /sim/faults``: the injected faults (:mod:`.faults`);
* ``GET /sim/info``: what is running (source, seed, instruments, URLs, client credentials);
* ``POST /sim/market`` ``{"rate": N}``: change the market's event rate at run time.

At most ``max_connections_per_ip`` WebSocket connections and REST requests are open per client
address at once (``/sim`` requests do not count); the next one is refused with HTTP 429.

A pump task runs every few milliseconds: it advances the source to the present (which queues
notifications on the sessions), sends heartbeats and closes sessions that did not answer the
previous one, writes each session's outbox and disconnects readers that fell too far behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import WSMsgType, web

from optionfeed.deribit import jsonrpc
from optionfeed.deribit.errors import ErrorCode, RpcError
from optionfeed.simulator.api import Api, ApiSettings, Outcome
from optionfeed.simulator.clock import Clock, to_us
from optionfeed.simulator.faults import (
    FaultError,
    Faults,
    Selection,
    apply_settings,
    parse_request,
)
from optionfeed.simulator.ledger import Ledger
from optionfeed.simulator.market import Market
from optionfeed.simulator.publisher import Publisher
from optionfeed.simulator.session import Session
from optionfeed.simulator.source import MAX_LAG_SECONDS, MarketSource, Source

log = logging.getLogger(__name__)

PUMP_SECONDS = 0.005
# Frames up to this size reach the JSON-RPC layer, which answers -32600 above 32 KB; larger
# ones are refused by the WebSocket layer itself (close 1009).
MAX_INCOMING_FRAME = 4 * 1024 * 1024
CLOSE_TIMEOUT = 2.0
ABNORMAL_CLOSURE = 1006
HTTP_STATUS = {ErrorCode.TOO_MANY_REQUESTS: 429, ErrorCode.UNAUTHORIZED: 401}


class ReplayDriver(Protocol):
    """A source that plays by itself: the pump hands it the time instead of advancing it."""

    def pump(self, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    seed: int = 0
    api: ApiSettings = field(default_factory=ApiSettings)


class Simulator:
    """The running exchange: one source, one publisher, sessions, faults and the ledger."""

    def __init__(
        self,
        source: Source,
        publisher: Publisher,
        ledger: Ledger,
        clock: Clock,
        settings: ServerSettings,
        faults: Faults | None = None,
        replay: ReplayDriver | None = None,
    ) -> None:
        self.source = source
        self.publisher = publisher
        self.ledger = ledger
        self.clock = clock
        self.settings = settings
        self.faults = faults or Faults()
        self.replay = replay
        self._fault_rng = random.Random(f"{settings.seed}:faults")
        self.api = Api(source, publisher, self.faults, settings.api, clock, self._fault_rng)
        self.sessions: dict[int, Session] = {}
        self._sockets: dict[int, web.WebSocketResponse] = {}
        self._ids = itertools.count(1)
        self._per_ip: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drop_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self.port = settings.port

    @classmethod
    def for_market(
        cls,
        market: Market,
        clock: Clock,
        settings: ServerSettings,
        faults: Faults | None = None,
    ) -> Simulator:
        ledger = Ledger()
        publisher = Publisher(ledger)
        publisher.market = market
        market.listener = publisher
        return cls(MarketSource(market), publisher, ledger, clock, settings, faults)

    # ------------------------------------------------------------------ app

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._limit_connections])
        app.router.add_get("/ws/api/v2", self._websocket)
        app.router.add_route("GET", "/api/v2/{method:.+}", self._rest)
        app.router.add_route("POST", "/api/v2/{method:.+}", self._rest)
        app.router.add_get("/sim/ledger", self._get_ledger)
        app.router.add_get("/sim/faults", self._get_faults)
        app.router.add_post("/sim/faults", self._post_faults)
        app.router.add_get("/sim/info", self._get_info)
        app.router.add_post("/sim/market", self._post_market)
        app.cleanup_ctx.append(self._background)
        return app

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        self._pump_task = asyncio.create_task(self._pump(), name="simulator-pump")
        self._restart_drop_timer()
        yield
        for task in (self._pump_task, self._drop_task, *self._tasks):
            if task is not None:
                task.cancel()
        for task in (self._pump_task, self._drop_task, *self._tasks):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @web.middleware
    async def _limit_connections(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.path.startswith("/sim/"):
            return await handler(request)
        ip = request.remote or "?"
        limit = self.faults.max_connections_per_ip
        if limit and self._per_ip[ip] >= limit:
            return web.Response(
                status=429,
                text=f"too many connections: at most {limit} per IP address\n",
            )
        self._per_ip[ip] += 1
        try:
            return await handler(request)
        finally:
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]

    # ------------------------------------------------------------------ pump

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            caught_up = True
            try:
                caught_up = self.pump_once()
            except Exception:
                log.exception("simulator pump failed; carrying on")
            # Behind the clock: go again as soon as the sockets have had their turn.
            pause = PUMP_SECONDS - (loop.time() - started) if caught_up else 0.0
            await asyncio.sleep(max(0.0, pause))

    def pump_once(self) -> bool:
        """One round: advance, heartbeats, writes. False while the source is catching up."""
        now = self.clock.now()
        caught_up = True
        if self.replay is not None:
            self.replay.pump(now)
        else:
            caught_up = self.source.advance()
        for session in list(self.sessions.values()):
            if session.closed:
                # Closing: nothing more is written; a peer that never finishes the close
                # handshake (and so never drains what it was sent) is reset.
                if now - session.closed_at > 2 * CLOSE_TIMEOUT:
                    session.graceful = False
                    session.abort()
                continue
            ws = self._sockets.get(session.id)
            if ws is not None and ws.closed:
                # aiohttp is answering the client's close frame: after that frame nothing may
                # follow, and what the transport already holds still drains out.
                session.graceful = True
                self._mark_closed(session, "closed_by_client", now)
                continue
            if session.heartbeat_interval is not None and now >= session.next_heartbeat:
                if session.awaiting_test:
                    self.close_session(session, "heartbeat_timeout")
                    continue
                session.awaiting_test = True
                session.next_heartbeat = now + session.heartbeat_interval
                session.send(jsonrpc.TEST_REQUEST)
            session.flush()
            if session.backlog_bytes > self.faults.slow_consumer_bytes:
                session.discard_backlog()
                self.close_session(session, "connection_too_slow")
        return caught_up

    # ------------------------------------------------------------------ websocket

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            max_msg_size=MAX_INCOMING_FRAME, compress=False, autoping=True, timeout=CLOSE_TIMEOUT
        )
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        conn_id = next(self._ids)
        peer = transport.get_extra_info("peername")
        ip = request.remote or "?"
        peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ip
        record = self.ledger.open_connection(conn_id, peer_text, self._now_ms())
        session = Session(
            conn_id,
            ip,
            transport,
            record,
            rng=random.Random(f"{self.settings.seed}:conn:{conn_id}"),
        )
        self._apply_malformed(session)
        self.sessions[conn_id] = session
        self._sockets[conn_id] = ws
        log.debug("connection %d opened from %s", conn_id, peer_text)
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    raw = msg.data.encode() if isinstance(msg.data, str) else msg.data
                    self._handle(session, raw)
                elif msg.type is WSMsgType.ERROR:
                    break
            if ws.close_code not in (None, ABNORMAL_CLOSURE):
                # A close handshake: the transport writes out what it holds before closing.
                session.graceful = True
        finally:
            session.lost()
            self.publisher.unsubscribe_all(session)
            self.sessions.pop(conn_id, None)
            self._sockets.pop(conn_id, None)
            if record.reason is None:
                record.reason = session.close_reason or "closed_by_client"
            self.ledger.close_connection(record, self._now_ms())
            log.debug("connection %d closed: %s", conn_id, record.reason)
        return ws

    def _handle(self, session: Session, raw: bytes) -> None:
        us_in = to_us(self.clock.now())
        try:
            request = jsonrpc.decode_request(raw)
        except RpcError as exc:
            session.send(self._error(jsonrpc.request_id_of(raw), exc, us_in))
            return
        outcome = self.api.call(
            request.method, request.params, session=session, ip=session.ip, query=False
        )
        self._respond(session, request.id, outcome, us_in)

    def _respond(
        self, session: Session, request_id: jsonrpc.RequestId, outcome: Outcome, us_in: int
    ) -> None:
        if outcome.error is not None:
            session.send(self._error(request_id, outcome.error, us_in))
        else:
            us_out = to_us(self.clock.now())
            session.send(
                jsonrpc.encode_result(
                    request_id,
                    outcome.result,
                    us_in=us_in,
                    us_out=max(us_out, us_in),
                    testnet=self.settings.api.testnet,
                )
            )
        for action in outcome.after:
            action()
        session.flush()
        if outcome.close is not None:
            self.close_session(session, outcome.close)

    def _error(self, request_id: jsonrpc.RequestId | None, error: RpcError, us_in: int) -> bytes:
        us_out = max(to_us(self.clock.now()), us_in)
        return jsonrpc.encode_error(
            request_id, error, us_in=us_in, us_out=us_out, testnet=self.settings.api.testnet
        )

    def close_session(self, session: Session, reason: str, code: int | None = None) -> None:
        """Close with a close frame (after what is queued), within CLOSE_TIMEOUT, else reset."""
        if session.closed:
            return
        session.flush()
        session.graceful = True
        self._mark_closed(session, reason, self.clock.now())
        ws = self._sockets.get(session.id)
        if ws is None:
            session.abort()
            return
        close_code = code if code is not None else self.faults.close_code
        self._spawn(self._close(session, ws, close_code, reason))

    def _mark_closed(self, session: Session, reason: str, now: float) -> None:
        session.closed = True
        session.closed_at = now
        session.close_reason = reason
        session.record.reason = reason

    async def _close(
        self, session: Session, ws: web.WebSocketResponse, code: int, reason: str
    ) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError):
            session.graceful = False
            session.abort()

    def drop(self, session: Session, mode: str) -> None:
        if mode == "close":
            self.close_session(session, "dropped")
            return
        self._mark_closed(session, "dropped", self.clock.now())
        session.abort()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ REST

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        us_in = to_us(self.clock.now())
        method = request.match_info["method"]
        request_id: jsonrpc.RequestId | None = None
        query = request.method == "GET"
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" or request.can_read_body:
            body = await request.read()
            if len(body) > jsonrpc.MAX_FRAME_BYTES:
                error = RpcError(ErrorCode.REQUEST_ENTITY_TOO_LARGE, "request entity too large")
                return self._rest_reply(None, None, error, us_in, with_id=False)
            if body.strip():
                try:
                    decoded = orjson.loads(body)
                except orjson.JSONDecodeError:
                    error = RpcError(ErrorCode.PARSE_ERROR, "Parse error")
                    return self._rest_reply(None, None, error, us_in, with_id=False)
                if not isinstance(decoded, dict):
                    error = RpcError(ErrorCode.BAD_REQUEST, "bad_request")
                    return self._rest_reply(None, None, error, us_in, with_id=False)
                if "jsonrpc" in decoded or "params" in decoded:
                    request_id = decoded.get("id")
                    inner = decoded.get("params", {})
                    params = inner if isinstance(inner, dict) else {}
                else:
                    params = decoded
                query = False
        outcome = self.api.call(method, params, session=None, ip=request.remote or "?", query=query)
        return self._rest_reply(
            request_id, outcome.result, outcome.error, us_in, with_id=request_id is not None
        )

    def _rest_reply(
        self,
        request_id: jsonrpc.RequestId | None,
        result: Any,
        error: RpcError | None,
        us_in: int,
        *,
        with_id: bool,
    ) -> web.Response:
        us_out = max(to_us(self.clock.now()), us_in)
        body: dict[str, Any] = {"jsonrpc": "2.0"}
        if with_id:
            body["id"] = request_id
        status = 200
        if error is not None:
            inner: dict[str, Any] = {"code": error.code, "message": error.message}
            if error.data is not None:
                inner["data"] = error.data
            body["error"] = inner
            status = HTTP_STATUS.get(error.code, 400)  # type: ignore[call-overload]
        else:
            body["result"] = result
        body.update(
            usIn=us_in, usOut=us_out, usDiff=us_out - us_in, testnet=self.settings.api.testnet
        )
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    # ------------------------------------------------------------------ /sim

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    async def _get_ledger(self, request: web.Request) -> web.StreamResponse:
        self.pump_once()
        if request.query.get("totals") == "true":
            events, trades = self.source.totals()
            sent = sum(c.notifications for c in self.ledger.connections.values())
            body = {
                "now": self._now_ms(),
                "totals": {
                    "events": events,
                    "trades": trades,
                    "overload_skipped_ms": round(self.source.skipped_ms),
                    "notifications": sent,
                    "connections": len(self.sessions),
                },
            }
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        names: set[str] | None = None
        wanted = request.query.getall("instrument", [])
        currency = request.query.get("currency")
        if wanted or currency:
            names = set(wanted)
            if currency:
                names |= {g.instrument for g in self.source.generated() if g.currency == currency}
        events, trades = self.source.totals()
        report = self.ledger.report(
            now=self._now_ms(),
            started=self.source.started_ms,
            source=self.source.kind,
            rate=self.source.rate,
            events=events,
            trades=trades,
            skipped_ms=self.source.skipped_ms,
            generated=self.source.generated(),
            instruments=names,
        )
        return web.Response(body=orjson.dumps(report), content_type="application/json")

    def _faults_report(self) -> dict[str, Any]:
        report = self.faults.report()
        report["stale_connections"] = sorted(
            s.id for s in self.sessions.values() if s.stale is not None
        )
        report["connections"] = sorted(self.sessions)
        return report

    async def _get_faults(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=orjson.dumps(self._faults_report()), content_type="application/json"
        )

    async def _post_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read() or b"{}")
            fault_request = parse_request(body)
        except (orjson.JSONDecodeError, FaultError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        was_maintenance = self.faults.maintenance
        drop_settings = (self.faults.drop_every, self.faults.drop_fraction, self.faults.drop_mode)
        apply_settings(self.faults, fault_request)
        if self.faults.maintenance != was_maintenance:
            self.set_maintenance(self.faults.maintenance)
        if (
            self.faults.drop_every,
            self.faults.drop_fraction,
            self.faults.drop_mode,
        ) != drop_settings:
            self._restart_drop_timer()
        for session in self.sessions.values():
            self._apply_malformed(session)
        affected: dict[str, list[int]] = {}
        if fault_request.stale is not None:
            picked = self._pick(fault_request.stale)
            for conn_id in picked:
                self.sessions[conn_id].stale = fault_request.stale.mode
            affected["stale"] = picked
        if fault_request.unstale is not None:
            picked = self._pick(fault_request.unstale)
            for conn_id in picked:
                self.sessions[conn_id].stale = None
            affected["unstale"] = picked
        if fault_request.drop is not None:
            picked = self._pick(fault_request.drop)
            for conn_id in picked:
                self.drop(self.sessions[conn_id], fault_request.drop.mode)
            affected["dropped"] = picked
        report = self._faults_report()
        report.update(affected)
        return web.Response(body=orjson.dumps(report), content_type="application/json")

    def _pick(self, selection: Selection) -> list[int]:
        return selection.pick(sorted(self.sessions), self._fault_rng)

    def _apply_malformed(self, session: Session) -> None:
        session.malformed_rate = self.faults.malformed_rate
        session.malformed_replace = self.faults.malformed_mode == "replace"

    def set_maintenance(self, on: bool) -> None:
        self.faults.maintenance = on
        market = getattr(self.source, "market", None)
        if isinstance(market, Market):
            market.advance(max_lag=MAX_LAG_SECONDS)
            market.halted = on
        if on:
            self.publisher.platform_state({"maintenance": True}, self._now_ms())

    def _restart_drop_timer(self) -> None:
        if self._drop_task is not None:
            self._drop_task.cancel()
            self._drop_task = None
        if self.faults.drop_every:
            self._drop_task = asyncio.create_task(self._drop_every(), name="simulator-drops")

    async def _drop_every(self) -> None:
        while True:
            every = self.faults.drop_every
            if not every:
                return
            await asyncio.sleep(every)
            selection = Selection(fraction=self.faults.drop_fraction)
            for conn_id in self._pick(selection):
                session = self.sessions.get(conn_id)
                if session is not None:
                    self.drop(session, self.faults.drop_mode)

    async def _get_info(self, request: web.Request) -> web.StreamResponse:
        host = self.settings.host
        base = f"http://{host}:{self.port}"
        counts = {
            c: len(self.source.instruments(c, "option", False)) for c in self.source.currencies()
        }
        info = {
            "source": self.source.kind,
            "seed": self.settings.seed,
            "rate": self.source.rate,
            "currencies": self.source.currencies(),
            "instruments": counts,
            "base_url": base,
            "ws_url": f"ws://{host}:{self.port}/ws/api/v2",
            "rest_url": f"{base}/api/v2",
            "client_id": self.settings.api.client_id,
            "client_secret": self.settings.api.client_secret,
            "connections": len(self.sessions),
            "now": self._now_ms(),
        }
        return web.Response(body=orjson.dumps(info), content_type="application/json")

    async def _post_market(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        market = getattr(self.source, "market", None)
        if not isinstance(market, Market):
            return web.json_response({"error": "no synthetic market in replay mode"}, status=409)
        rate = body.get("rate") if isinstance(body, dict) else None
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            return web.json_response({"error": "rate must be a number >= 0"}, status=400)
        market.advance(max_lag=MAX_LAG_SECONDS)
        market.set_rate(float(rate))
        return web.json_response({"rate": market.rate})
