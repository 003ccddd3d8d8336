"""``optionfeed migrate``: applies the schema, and fails with one clear line when it cannot."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness.ports import free_port
from optionfeed.store import command


def run_migrate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    status = command.run(parser.parse_args(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_migrate_applies_the_schema_then_finds_it_up_to_date(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_migrate(["--database-url", database_url], capsys)
    assert status == 0
    assert "applied 1 migration(s): 0001_tables.sql" in out
    status, out, _ = run_migrate(["--database-url", database_url], capsys)
    assert status == 0
    assert "the schema is up to date" in out


def test_migrate_reads_database_url_from_the_environment(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    status, out, _ = run_migrate([], capsys)
    assert status == 0
    assert "applied" in out


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://me:s3cret@127.0.0.1/db", "bad database URL mysql://me:***@127.0.0.1/db"),
        ("postgresql://me:s3cret@127.0.0.1:99999/db", "Port out of range"),
        ("postgresql://me:s3cret@[::1/db", "bad database URL"),
    ],
)
def test_a_bad_url_is_one_line_and_never_shows_the_password(
    url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_migrate(["--database-url", url], capsys)
    assert status == 1
    assert err.count("\n") == 1
    assert err.startswith("optionfeed migrate: ")
    assert expected in err
    assert "s3cret" not in err + out


def test_an_unreachable_database_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://me:s3cret@127.0.0.1:{free_port()}/db"
    status, _, err = run_migrate(["--database-url", url, "--connect-timeout", "5"], capsys)
    assert status == 1
    assert err == (
        f"optionfeed migrate: cannot connect to the database at "
        f"postgresql://me:***@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/db: "
        "connection refused (is PostgreSQL running and listening there?)\n"
    )


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


def test_a_database_that_does_not_answer_times_out_with_one_line(
    silent_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://me:s3cret@127.0.0.1:{silent_server}/db"
    status, _, err = run_migrate(["--database-url", url, "--connect-timeout", "0.3"], capsys)
    assert status == 1
    assert err.strip().endswith("no answer within 0.3 s")
    assert "s3cret" not in err


def test_an_unknown_database_names_it(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = database_url.rsplit("/", 1)[0] + "/no_such_db"
    status, _, err = run_migrate(["--database-url", url], capsys)
    assert status == 1
    assert 'database "no_such_db" does not exist' in err


def test_the_program_exits_non_zero_without_a_traceback() -> None:
    url = f"postgresql://me:s3cret@127.0.0.1:{free_port()}/db"
    result = subprocess.run(
        [sys.executable, "-m", "optionfeed", "migrate", "--database-url", url],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
    assert "connection refused" in result.stderr


def test_migrate_database_is_usable_from_async_code(database_url: str) -> None:
    applied = asyncio.run(command.migrate_database(database_url))
    assert [m.filename for m in applied] == ["0001_tables.sql"]
