"""One HTTP port per process: ``/metrics``, and for a collector ``/livez`` and ``/readyz``.

``/livez`` answers whenever the event loop runs: a blocked loop cannot answer, and that is exactly
the failure the kubelet should restart. ``/readyz`` runs the collector's readiness checks (each a
name and a callable that returns ``(ok, detail)``) and answers 200 only when every check passes,
with one line per check either way, so ``curl`` shows what is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Protocol

from aiohttp import web

from optionfeed.telemetry.endpoints import LIVENESS_PATH, METRICS_PATH, READINESS_PATH

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


class Exposition(Protocol):
    """What ``/metrics`` serves: the registry's text exposition."""

    def render(self) -> bytes: ...


CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: a free port); the runner to clean up and the port bound.

    A port that cannot be bound is an OSError that names the address.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
    sockets = runner.addresses
    return runner, int(sockets[0][1]) if sockets and port == 0 else port


class HealthServer:
    """``async with HealthServer(port, metrics, checks):`` serves until the block ends.

    Without ``checks`` only ``/metrics`` is served (the operator, whose liveness kopf serves).
    """

    def __init__(
        self,
        port: int,
        metrics: Exposition,
        checks: Mapping[str, Check] | None = None,
        *,
        host: str = "0.0.0.0",
    ) -> None:
        self.host = host
        self.port = port
        self._metrics = metrics
        self._checks = checks
        self._runner: web.AppRunner | None = None

    def readiness(self) -> tuple[bool, str]:
        lines, ready = [], True
        for name, check in (self._checks or {}).items():
            try:
                ok, detail = check()
            except Exception as exc:  # a failing check reports itself, it never breaks the probe
                ok, detail = False, f"check failed: {exc!r}"
            ready &= ok
            lines.append(f"[{'+' if ok else '-'}] {name}: {detail}")
        return ready, "\n".join(lines) + "\n"

    async def _metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, text = self.readiness()
        return web.Response(text=text, status=200 if ready else 503)

    async def __aenter__(self) -> HealthServer:
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._metrics_handler)
        paths = [METRICS_PATH]
        if self._checks is not None:
            app.router.add_get(LIVENESS_PATH, self._livez)
            app.router.add_get(READINESS_PATH, self._readyz)
            paths += [LIVENESS_PATH, READINESS_PATH]
        self._runner, self.port = await serve(app, self.host, self.port)
        log.info("serving %s on %s:%d", ", ".join(paths), self.host, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
