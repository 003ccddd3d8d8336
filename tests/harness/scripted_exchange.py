"""An exchange whose every frame the test writes: for payloads the simulator never sends.

The simulator publishes a well-formed market; some tests need one bad element in a message, a
notification on a channel nobody subscribed to, or a frame that is not UTF-8. This server speaks
just enough of the protocol for a collector to run against it (``public/hello``,
``set_heartbeat``, ``subscribe`` and ``unsubscribe`` acknowledging every channel, ``test``), on
127.0.0.1 over real sockets, in the test's event loop::

    async with ScriptedExchange() as exchange:
        exchange.rest["public/get_last_trades_by_instrument"] = {"trades": [...], "has_more": False}
        collector --exchange-url {exchange.ws_url}
        await exchange.wait_subscribed("trades.ETH-1JAN30-3000-C.100ms")
        await exchange.notify("trades.ETH-1JAN30-3000-C.100ms", [...])
        await exchange.send_raw(b"\\xff not text")

REST answers come from ``rest`` (method -> result, or a function of the query giving one); a
method not in it answers an empty result (no trades, no instruments). Every REST query is kept in
``rest_calls``. A heartbeat goes to every client each second, so no stream looks stale.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from harness.ports import free_port

RestAnswer = Any | Callable[[dict[str, str]], Any]

NO_TRADES = {"trades": [], "has_more": False}
EMPTY: dict[str, Any] = {
    "public/get_last_trades_by_instrument": NO_TRADES,
    "public/get_last_trades_by_instrument_and_time": NO_TRADES,
}
HEARTBEAT = orjson.dumps({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "heartbeat"}})


class ScriptedExchange:
    def __init__(self) -> None:
        self.port = free_port()
        self.rest: dict[str, RestAnswer] = {}
        self.rest_calls: list[tuple[str, dict[str, str]]] = []
        self.subscribed: set[str] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/api/v2"

    async def __aenter__(self) -> ScriptedExchange:
        app = web.Application()
        app.router.add_get("/ws/api/v2", self._websocket)
        app.router.add_get("/api/v2/{method:.+}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ----------------------------------------------------------------- what a test does

    @property
    def connections(self) -> int:
        """WebSockets open; one leaves when its client's close frame has been answered."""
        return len(self._sockets)

    async def wait_subscribed(self, *channels: str, within: float = 30.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.subscribed.issuperset(channels))

    async def notify(self, channel: str, data: Any) -> None:
        """A ``subscription`` notification on ``channel`` to every connected client."""
        frame = {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel}}
        frame["params"]["data"] = data
        await self.send_raw(orjson.dumps(frame))

    async def send_raw(self, frame: bytes, *, binary: bool = False) -> None:
        """``frame`` verbatim as one text (or binary) WebSocket frame to every client."""
        for ws in list(self._sockets):
            await ws.send_frame(frame, WSMsgType.BINARY if binary else WSMsgType.TEXT)

    # ----------------------------------------------------------------- the protocol

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        beat = asyncio.create_task(self._heartbeats(ws))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._answer(ws, orjson.loads(msg.data))
        finally:
            self._sockets.discard(ws)
            beat.cancel()
        return ws

    async def _heartbeats(self, ws: web.WebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(1.0)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_frame(HEARTBEAT, WSMsgType.TEXT)

    async def _answer(self, ws: web.WebSocketResponse, request: dict[str, Any]) -> None:
        method, params = request["method"], request.get("params", {})
        result: Any = "ok"
        if method in ("public/subscribe", "private/subscribe"):
            result = params["channels"]
            await self._change(self.subscribed.update, result)
        elif method in ("public/unsubscribe", "private/unsubscribe"):
            result = params["channels"]
            await self._change(self.subscribed.difference_update, result)
        elif method == "public/unsubscribe_all":
            await self._change(lambda _: self.subscribed.clear(), None)
        elif method in ("public/hello", "public/test"):
            result = {"version": "1.2.26"}
        frame = {"jsonrpc": "2.0", "id": request["id"], "result": result}
        body = orjson.dumps({**frame, "usIn": 0, "usOut": 0, "usDiff": 0})
        await ws.send_frame(body, WSMsgType.TEXT)

    async def _change(self, apply: Callable[[Any], None], arg: Any) -> None:
        async with self._changed:
            apply(arg)
            self._changed.notify_all()

    async def _rest(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        query = dict(request.query)
        self.rest_calls.append((method, query))
        answer = self.rest.get(method, EMPTY.get(method, []))
        result = answer(query) if callable(answer) else answer
        body = {"jsonrpc": "2.0", "result": result, "usIn": 0, "usOut": 0, "usDiff": 0}
        return web.Response(body=orjson.dumps(body), content_type="application/json")
