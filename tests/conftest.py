"""Fixtures shared by every test level: a real PostgreSQL, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.postgres import TempPostgres, temp_database


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
