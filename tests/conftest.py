"""Fixtures shared by every test level: a real PostgreSQL, started once per session, the
Deribit simulator, and an OTLP receiver for the tracing tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from pytest_asyncio import is_async_test

from harness.otlp import OtlpReceiver
from harness.postgres import (
    TIMESCALEDB_SETTINGS,
    TempPostgres,
    temp_database,
    timescaledb_bindir,
)
from harness.simulator import SimulatorProcess

# ------------------------------------------------------------------------------ asyncio tasks

# Loop passes a task that was just cancelled or just finished gets to complete in.
_SETTLE_PASSES = 3


@pytest.fixture(autouse=True)
def no_task_left_running(request: pytest.FixtureRequest) -> None:
    """Fail an asyncio test that leaves tasks running on its loop once it and its fixtures end."""
    if is_async_test(request.node):
        request.getfixturevalue(_tasks_left_running.__name__)


@pytest.fixture
async def _tasks_left_running() -> AsyncIterator[None]:
    # Set up before the test's other async fixtures, so torn down after them, on the test's loop
    # just before it closes (closing would cancel what is left, silently).
    yield
    this = asyncio.current_task()
    for _ in range(_SETTLE_PASSES):
        await asyncio.sleep(0)
    left = [task for task in asyncio.all_tasks() if task is not this and not task.done()]
    if not left:
        return
    described = "\n".join(f"  {task!r}" for task in left)
    for task in left:
        task.cancel()
    await asyncio.wait(left, timeout=5)
    pytest.fail(
        f"{len(left)} asyncio task(s) still running after the test:\n{described}", pytrace=False
    )


# ---------------------------------------------------------------------------------- services


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """A PostgreSQL cluster on 127.0.0.1 for the whole session."""
    with TempPostgres() as pg:
        yield pg


@pytest.fixture
def database_url(postgres: TempPostgres) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    with temp_database(postgres) as url:
        yield url


# TimescaleDB's server copy is built (minutes, once, cached by version) after collection and
# outside any test, with its progress shown, when a collected test needs it.
_TIMESCALE_FIXTURES = {"timescale_postgres", "timescale_unloaded_postgres"}


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = any(
        _TIMESCALE_FIXTURES & set(getattr(item, "fixturenames", ())) for item in session.items
    )
    if not wanted or session.config.option.collectonly:
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        timescaledb_bindir()
        return
    with capture.global_and_fixture_disabled():
        timescaledb_bindir()


@pytest.fixture(scope="session")
def timescale_postgres() -> Iterator[TempPostgres]:
    """A PostgreSQL cluster with TimescaleDB installed and preloaded."""
    with TempPostgres(settings=TIMESCALEDB_SETTINGS, bindir=timescaledb_bindir()) as pg:
        yield pg


@pytest.fixture(scope="session")
def timescale_unloaded_postgres() -> Iterator[TempPostgres]:
    """A PostgreSQL cluster with TimescaleDB's files installed but not preloaded."""
    with TempPostgres(bindir=timescaledb_bindir()) as pg:
        yield pg


@pytest.fixture
def simulator() -> Iterator[SimulatorProcess]:
    """``optionfeed simulate`` on 127.0.0.1 with a fixed seed; stopped after the test."""
    with SimulatorProcess() as sim:
        yield sim


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OpenTelemetry Collector taking OTLP/HTTP on 127.0.0.1; ``.spans()`` is what it got."""
    with OtlpReceiver() as receiver:
        yield receiver


# ------------------------------------------------------------------------------------ drills

_FIGURES: list[str] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a drill's figure; every figure is printed at the end of the run."""

    def record(text: str) -> None:
        line = f"{request.node.name}: {text}"
        _FIGURES.append(line)
        print(line)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("drill figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
