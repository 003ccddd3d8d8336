"""Fixtures shared by every test level: a real PostgreSQL, started once per session, the
Deribit simulator, and an OTLP receiver for the tracing tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from harness.otlp import OtlpReceiver
from harness.postgres import TempPostgres, temp_database
from harness.simulator import SimulatorProcess


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
