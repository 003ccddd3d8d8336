"""A TCP proxy of the tests' own, for faults a cable makes rather than the exchange.

It runs its own event loop in a thread, so it keeps forwarding while a test blocks, and sits
between a collector and the simulator on 127.0.0.1::

    with FaultProxy(sim.port) as proxy:
        collector --exchange-url ws://127.0.0.1:{proxy.port}/ws/api/v2
        proxy.abort_all()        # every connection reset (RST, no close frame): 1006
        proxy.blackhole(True)    # bytes stop flowing both ways, sockets stay open (a dead link)
        proxy.refuse(True)       # new connections are reset at once (the exchange unreachable)
        proxy.hold(True)         # what the exchange sends waits in the proxy (the client's bytes
                                 # still go through); hold(False) lets it through, in order
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

from harness.ports import free_port

T = TypeVar("T")
CHUNK = 256 * 1024


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    # Linger 0: closing sends RST, not FIN, as a broken link or middlebox does.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class FaultProxy:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.accepted = 0
        self.aborted = 0
        self._pairs: set[_Pair] = set()
        self._flowing = asyncio.Event()
        self._downstream = asyncio.Event()  # cleared: the exchange's bytes are held
        self._refusing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    # ------------------------------------------------------------------ control (any thread)

    def _call(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)  # type: ignore[arg-type]

    def abort_all(self) -> int:
        """Reset every open connection; returns how many."""

        async def abort() -> int:
            pairs = list(self._pairs)
            for pair in pairs:
                pair.abort()
            self._pairs.clear()
            self.aborted += len(pairs)
            return len(pairs)

        return self._call(abort())

    def blackhole(self, on: bool) -> None:
        """Stop (or resume) forwarding, keeping every socket open."""

        async def switch() -> None:
            if on:
                self._flowing.clear()
            else:
                self._flowing.set()

        self._call(switch())

    def hold(self, on: bool) -> None:
        """Hold (or release) what the exchange sends; the client's bytes keep flowing."""

        async def switch() -> None:
            if on:
                self._downstream.clear()
            else:
                self._downstream.set()

        self._call(switch())

    def refuse(self, on: bool) -> None:
        self._refusing = on

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/api/v2"

    # ------------------------------------------------------------------ the loop's side

    async def _start(self) -> None:
        self._flowing.set()
        self._downstream.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            _Pair(writer, writer).abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _Pair(writer, writer).abort()
            return
        self.accepted += 1
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, self._flowing),
                self._pipe(up_reader, writer, self._flowing, self._downstream),
            )
        finally:
            self._pairs.discard(pair)
            for w in (writer, up_writer):
                w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *gates: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                for gate in gates:
                    await gate.wait()
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write_eof()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.abort()
        self._pairs.clear()

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
