"""Child processes the tests start die with the test process."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from typing import Any, Self

# Linux prctl option: the kernel signals the child when the thread that forked it exits.
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: runs in the child before exec, so that a test
    process that dies hard (kill -9, a timeout) takes its servers with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def stop(process: subprocess.Popen[Any] | None, grace: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL when ``process`` is still running after ``grace`` seconds; returns
    its exit code (None when there is no process)."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class Service:
    """A component a test starts and stops, also usable as ``with Component(...) as c:``."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
