"""SIGTERM and SIGINT for the long-running commands: stop cleanly, then insist."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from optionfeed.shutdown import ECHO_WINDOW, Shutdown


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class Stoppable:
    def __init__(self, insisted: bool = True) -> None:
        self.stops = 0
        self.insists: list[str] = []
        self._insisted = insisted

    def stop(self) -> None:
        self.stops += 1

    def insist(self, name: str) -> bool:
        self.insists.append(name)
        return self._insisted


def test_the_first_signal_stops_and_its_copies_are_the_same_request() -> None:
    clock, target = Clock(), Stoppable()
    shutdown = Shutdown(target.stop, insist=target.insist, insisting="hurry", monotonic=clock)
    assert not shutdown.requested
    shutdown.signal(signal.SIGINT)
    assert shutdown.requested
    clock.now += ECHO_WINDOW / 2
    shutdown.signal(signal.SIGINT)
    shutdown.signal(signal.SIGTERM)
    assert (target.stops, target.insists) == (1, [])


def test_a_second_signal_insists_once_and_later_ones_change_nothing() -> None:
    clock, target = Clock(), Stoppable()
    shutdown = Shutdown(target.stop, insist=target.insist, insisting="hurry", monotonic=clock)
    shutdown.signal(signal.SIGTERM)
    clock.now += ECHO_WINDOW
    shutdown.signal(signal.SIGINT)
    assert target.insists == ["SIGINT"]
    assert shutdown.insisted
    clock.now += 5
    shutdown.signal(signal.SIGTERM)
    assert (target.stops, target.insists) == (1, ["SIGINT"])


def test_an_insistence_with_nothing_to_do_may_come_again() -> None:
    clock, target = Clock(), Stoppable(insisted=False)
    shutdown = Shutdown(target.stop, insist=target.insist, monotonic=clock)
    shutdown.signal(signal.SIGTERM)
    clock.now += 2
    shutdown.signal(signal.SIGTERM)
    clock.now += 2
    shutdown.signal(signal.SIGTERM)
    assert target.insists == ["SIGTERM", "SIGTERM"]
    assert not shutdown.insisted


def test_without_an_insistence_a_second_signal_only_stops() -> None:
    clock, target = Clock(), Stoppable()
    shutdown = Shutdown(target.stop, monotonic=clock)
    shutdown.signal(signal.SIGTERM)
    clock.now += 2
    shutdown.signal(signal.SIGTERM)
    assert (target.stops, shutdown.insisted) == (1, False)


def test_run_returns_what_the_main_coroutine_returns_and_leaves_no_handler() -> None:
    stop = asyncio.Event()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.call_soon(signal.raise_signal, signal.SIGTERM)
        await stop.wait()
        return 7

    before = signal.getsignal(signal.SIGTERM)
    assert Shutdown(stop.set).run(main()) == 7
    assert signal.getsignal(signal.SIGTERM) == before


# A command that holds rows until it is told to stop, then writes them all out slowly.
COMMAND = textwrap.dedent(
    """
    import asyncio, sys
    from optionfeed.shutdown import Shutdown

    stop = asyncio.Event()

    async def main() -> None:
        print("ready", flush=True)
        await stop.wait()
        for row in range(5):
            await asyncio.sleep(0.3)
            print(f"row {row}", flush=True)
        print("drained", flush=True)

    try:
        Shutdown.abandoning(stop.set, "abandoning the drain").run(main())
    except asyncio.CancelledError:
        print("abandoned", flush=True)
        sys.exit(130)
    """
)


def start_command() -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", COMMAND], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


@pytest.mark.timeout(60)
def test_sigterm_stops_a_process_after_it_wrote_every_row() -> None:
    process = start_command()
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)  # a copy: the same request
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.splitlines() == [*(f"row {n}" for n in range(5)), "drained"]


@pytest.mark.timeout(60)
def test_a_second_sigint_later_abandons_the_drain() -> None:
    process = start_command()
    process.send_signal(signal.SIGINT)
    time.sleep(ECHO_WINDOW + 0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert out.splitlines()[-1] == "abandoned"
    assert "drained" not in out
    assert "second SIGINT: abandoning the drain" in err
