"""The demo's exchange: ``optionfeed simulate`` as a child process on a free loopback port.

Why a process and not the simulator's app in the demo's own event loop: on a small machine the
simulator's market and fan-out would compete with the collector for one event loop and one
interpreter lock, and the rates and exchange-to-commit lag on screen would measure both. As a
process it has a core of its own, the collector meets it over a real socket as it would meet
Deribit, and its ready line (``listening on http://127.0.0.1:PORT``) is the same contract the
tests use.

The child runs in a process group of its own, so the Ctrl-C a terminal sends to the foreground
group reaches the demo alone: the demo decides the order of the stop (the collector drains first,
while the exchange is still there). On Linux the child is also told to exit if the demo dies
without stopping it (``PR_SET_PDEATHSIG``). Its log goes to a file beside the demo's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

READY = re.compile(r"listening on http://(?P<host>[\d.]+):(?P<port>\d+)")
_PR_SET_PDEATHSIG = 1


class ExchangeError(RuntimeError):
    """The simulator did not start, or stopped by itself."""


def _exit_with_parent() -> None:
    # Runs in the child between fork and exec: no Python-level locks, one libc call.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class SimulatedExchange:
    """One ``optionfeed simulate`` child: :meth:`spawn`, :meth:`wait_ready`, :meth:`stop`."""

    def __init__(
        self,
        *,
        currency: str,
        rate: float,
        seed: int | None,
        log_path: Path,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.currency = currency
        self.rate = rate
        self.seed = seed
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "optionfeed",
            "simulate",
            "--host",
            self.host,
            "--port",
            "0",
            "--currencies",
            self.currency,
            "--rate",
            f"{self.rate:g}",
        ]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        return args

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/api/v2"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def spawn(self) -> None:
        """Start the process (call this before any thread exists: the death signal follows the
        thread that forked)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        # The simulator reads OPTIONFEED_<NAME> for every flag; the demo's settings must not
        # switch on faults or move its port, so it gets exactly the flags given here.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPTIONFEED_")}
        preexec = _exit_with_parent if sys.platform.startswith("linux") else None
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            env=env,
            process_group=0,
            preexec_fn=preexec,
        )

    async def wait_ready(self) -> None:
        """Until the ready line; :class:`ExchangeError` if it exits or is silent too long."""
        process = self.process
        assert process is not None
        assert process.stdout is not None
        try:
            async with asyncio.timeout(self.startup_timeout):
                while True:
                    line = await process.stdout.readline()
                    if not line:
                        code = await process.wait()
                        raise ExchangeError(
                            f"the simulator exited with status {code} before it was ready "
                            f"(its log: {self.log_path})"
                        )
                    match = READY.search(line.decode(errors="replace"))
                    if match:
                        self.port = int(match["port"])
                        break
        except TimeoutError:
            raise ExchangeError(
                f"the simulator did not start within {self.startup_timeout:g} s "
                f"(its log: {self.log_path})"
            ) from None
        self._drain = asyncio.create_task(self._discard_stdout(), name="demo-simulator-stdout")
        log.info("simulator listening on %s (log: %s)", self.address, self.log_path)

    async def _discard_stdout(self) -> None:
        # Nothing more is expected on stdout; reading it keeps a chatty child from blocking.
        assert self.process is not None
        assert self.process.stdout is not None
        while await self.process.stdout.readline():
            pass

    async def exited(self) -> int:
        """Wait for the process to end by itself; its exit status."""
        assert self.process is not None
        return await self.process.wait()

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``stop_timeout``; the exit status (None if never run)."""
        process, self.process = self.process, None
        code: int | None = None
        try:
            if process is not None:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                    try:
                        async with asyncio.timeout(self.stop_timeout):
                            await process.wait()
                    except TimeoutError:
                        log.warning(
                            "the simulator did not stop within %g s of SIGTERM; killing it",
                            self.stop_timeout,
                        )
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
                        await process.wait()
                code = process.returncode
        finally:
            if self._drain is not None:
                self._drain.cancel()
                # asyncio.wait, not await: a cancellation of this task must not be swallowed.
                await asyncio.wait([self._drain])
                self._drain = None
            if self._log is not None:
                self._log.close()
                self._log = None
        return code
