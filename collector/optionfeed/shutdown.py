"""SIGTERM and SIGINT for the long-running commands: ``collect``, ``demo`` and ``simulate``.

The first signal asks for an orderly stop: the command stops reading, writes every row it holds,
and exits 0. A second one insists: what that does is the command's own (the collector abandons
its drain, the demo cuts its collector's drain short; the simulator has nothing more to do).
Later signals change nothing.

A Ctrl-C reaches every process of the terminal's group, and wrappers such as ``uv run`` forward
it again: copies of one keypress arrive within milliseconds. Only a signal at least
:data:`ECHO_WINDOW` seconds after the first counts as asking a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

ECHO_WINDOW = 1.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """What one command does on SIGTERM/SIGINT: ``stop`` first, ``insist`` on a second signal.

    ``insist`` gets the signal's name and says whether it did anything; ``insisting`` says what it
    did, for the log. Without ``insist`` a second signal changes nothing.
    """

    def __init__(
        self,
        stop: Callable[[], None],
        *,
        insist: Callable[[str], bool] | None = None,
        insisting: str = "",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stop = stop
        self._insist = insist
        self._insisting = insisting
        self._monotonic = monotonic
        self.first_at: float | None = None
        self.insisted = False
        self._main: asyncio.Task[Any] | None = None

    @classmethod
    def abandoning(cls, stop: Callable[[], None], insisting: str) -> Shutdown:
        """A second signal cancels the command's main coroutine (the one :meth:`run` runs)."""
        shutdown = cls(stop, insisting=insisting)
        shutdown._insist = shutdown._cancel_main
        return shutdown

    @property
    def requested(self) -> bool:
        return self.first_at is not None

    def signal(self, signum: int) -> None:
        """Handle one SIGTERM or SIGINT."""
        name = signal.Signals(signum).name
        now = self._monotonic()
        if self.first_at is None:
            self.first_at = now
            again = " (send it again to stop at once)" if self._insist is not None else ""
            log.info("%s: stopping cleanly%s", name, again)
            self._stop()
        elif now - self.first_at < ECHO_WINDOW:
            log.debug("%s again within %.1f s: the same request", name, ECHO_WINDOW)
        elif self._insist is not None and not self.insisted and self._insist(name):
            self.insisted = True
            log.warning("second %s: %s", name, self._insisting)
        else:
            log.info("%s: already stopping", name)

    def _cancel_main(self, name: str) -> bool:
        return self._main is not None and self._main.cancel()

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT go to :meth:`signal` inside the block (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        installed = []
        for signum in SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self.signal, signum)
                installed.append(signum)
        try:
            yield
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """Run ``main`` to its end in a new event loop, handling signals meanwhile.

        Raises :class:`asyncio.CancelledError` when a second signal abandoned it.
        """

        async def guarded() -> T:
            with self.handling_signals():
                return await main

        return asyncio.run(guarded())
