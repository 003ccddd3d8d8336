"""Start the Deribit simulator (``optionfeed simulate``) for a test, on 127.0.0.1.

    with SimulatorProcess("--rate", "5000", seed=7) as sim:
        sim.ws_url         # ws://127.0.0.1:PORT/ws/api/v2
        sim.rest_url       # http://127.0.0.1:PORT/api/v2
        sim.ledger()       # GET /sim/ledger, as a dict (see optionfeed.simulator.ledger)
        sim.set_faults(maintenance=True)   # POST /sim/faults
        sim.stop()

The simulator runs as a subprocess (``sys.executable -m optionfeed simulate``) listening on a
port the operating system picks (``--port 0``, no race with other tests); the harness waits for
its ready line, which names the port. Its log goes to a temporary file whose tail is shown when it
fails to start. OPTIONFEED_* variables of the test environment are not passed on, so a test gets
exactly the flags it asks for. The child is killed if the test process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import selectors
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from harness import processes
from harness.processes import Service, die_with_parent

READY = re.compile(r"listening on http://(?P<host>[\d.]+):(?P<port>\d+)")
DEFAULT_SEED = 20240601
CLIENT_ID = "optionfeed-sim"
CLIENT_SECRET = "optionfeed-sim-secret"


class SimulatorError(RuntimeError):
    """The simulator did not start, or a /sim request failed."""


class SimulatorProcess(Service):
    """One ``optionfeed simulate`` process; a context manager."""

    def __init__(
        self,
        *args: str,
        seed: int = DEFAULT_SEED,
        port: int = 0,
        env: dict[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.args = [str(a) for a in args]
        self.seed = seed
        self.requested_port = port
        self.extra_env = env or {}
        self.startup_timeout = startup_timeout
        self.client_id = CLIENT_ID
        self.client_secret = CLIENT_SECRET
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop())
            prefix="optionfeed-sim-", suffix=".log", delete=False
        )
        self.log_path = Path(self._log.name)

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "optionfeed",
            "simulate",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.requested_port),
            "--seed",
            str(self.seed),
            *self.args,
        ]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/api/v2"

    @property
    def rest_url(self) -> str:
        return f"{self.base_url}/api/v2"

    def start(self) -> SimulatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIONFEED_")}
        env.update(self.extra_env)
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            preexec_fn=die_with_parent,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise SimulatorError(
                        f"the simulator did not start within {self.startup_timeout:g} s\n"
                        f"{self.log_tail()}"
                    )
                if not selector.select(timeout=left):
                    continue
                line = self.process.stdout.readline()
                if not line:
                    code = self.process.wait()
                    raise SimulatorError(
                        f"the simulator exited with {code} before it was ready: "
                        f"{' '.join(self.command)}\n{self.log_tail()}"
                    )
                match = READY.search(line)
                if match:
                    self.port = int(match["port"])
                    return self

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        code = processes.stop(self.process, grace=timeout)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        with contextlib.suppress(OSError):
            self._log.close()
        return code

    def cleanup(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ /sim

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise SimulatorError(
                f"{method} {path} -> HTTP {exc.code}: {exc.read().decode(errors='replace')}"
            ) from None

    def ledger(self, instrument: str | list[str] | None = None, currency: str | None = None) -> Any:
        """``GET /sim/ledger``, optionally narrowed to instruments or a currency."""
        query: list[tuple[str, str]] = []
        if isinstance(instrument, str):
            query.append(("instrument", instrument))
        elif instrument:
            query.extend(("instrument", name) for name in instrument)
        if currency:
            query.append(("currency", currency))
        suffix = "?" + urllib.parse.urlencode(query) if query else ""
        return self._request("GET", "/sim/ledger" + suffix)

    def faults(self) -> Any:
        return self._request("GET", "/sim/faults")

    def set_faults(self, **faults: Any) -> Any:
        """``POST /sim/faults`` with the keyword arguments as the JSON body."""
        return self._request("POST", "/sim/faults", faults)

    def info(self) -> Any:
        return self._request("GET", "/sim/info")

    def set_rate(self, rate: float) -> Any:
        return self._request("POST", "/sim/market", {"rate": rate})

    def rest(self, method: str, **params: Any) -> Any:
        """``GET /api/v2/<method>?params``: the whole JSON-RPC response body (even on error)."""
        query = urllib.parse.urlencode(
            {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()}
        )
        url = f"{self.rest_url}/{method}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())


class WsClient:
    """A small JSON-RPC client over aiohttp for tests: requests by id, notifications in a queue.

    async with aiohttp.ClientSession() as http:
        client = await WsClient.connect(http, sim.ws_url)
        await client.result("public/subscribe", {"channels": [...]})
        note = await client.notification()
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next_id = 0
        self._pending: dict[Any, Any] = {}
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.heartbeats: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.raw_frames: list[str] = []
        self.unparsed: list[str] = []
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, **kwargs: Any) -> WsClient:
        ws = await http.ws_connect(url, max_msg_size=0, **kwargs)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                self.raw_frames.append(msg.data)
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    self.unparsed.append(msg.data)
                    continue
                if "id" in message and message["id"] in self._pending:
                    self._pending.pop(message["id"]).set_result(message)
                elif message.get("method") == "subscription":
                    self.notifications.put_nowait(message["params"])
                elif message.get("method") == "heartbeat":
                    self.heartbeats.put_nowait(message["params"])
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the connection closed"))

    async def send(self, payload: str | bytes) -> None:
        if isinstance(payload, bytes):
            payload = payload.decode()
        await self.ws.send_str(payload)

    async def request(
        self, method: str, params: dict[str, Any] | None = None, *, within: float = 10.0
    ) -> dict[str, Any]:
        """Send a request and return the whole response (result or error, with the extras)."""
        self._next_id += 1
        request_id = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            body["params"] = params
        await self.ws.send_str(json.dumps(body))
        return await asyncio.wait_for(future, within)  # type: ignore[no-any-return]

    async def result(self, method: str, params: dict[str, Any] | None = None) -> Any:
        response = await self.request(method, params)
        if "error" in response:
            raise SimulatorError(f"{method} failed: {response['error']}")
        return response["result"]

    async def auth(self, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> Any:
        return await self.result(
            "public/auth",
            {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        )

    async def notification(self, *, within: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.notifications.get(), within)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader
