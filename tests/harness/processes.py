"""Child processes the tests start die with the test process."""

from __future__ import annotations

import ctypes
import signal

# Linux prctl option: the kernel signals the child when the thread that forked it exits.
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: runs in the child before exec, so that a test
    process that dies hard (kill -9, a timeout) takes its servers with it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
