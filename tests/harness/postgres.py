"""A throwaway PostgreSQL cluster from Debian's server binaries of one pinned major version.

The major version is in ``postgres-major`` beside this file (shell scripts read it too); the
binaries (``initdb``, ``pg_ctl``, ``psql``) are always those of ``/usr/lib/postgresql/<major>/bin``,
never another installed version nor whatever is on PATH.

It listens on 127.0.0.1 only, on a free port, with its data in a temporary directory. PostgreSQL
refuses to run as root, so under root the server runs as the ``postgres`` user. Durability is
switched off (``fsync=off``): these clusters hold test data, and the tests measure our code, not
the disk. ``stop()`` and ``start()`` keep the data, so drills can take the database away and bring
it back.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from harness import builds
from harness.ports import free_port

DEFAULT_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
}


class PostgresNotInstalled(RuntimeError):
    pass


POSTGRES_MAJOR = Path(__file__).with_name("postgres-major").read_text().strip()
BINDIR = Path(f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin")


def find_bindir() -> Path:
    """``/usr/lib/postgresql/<major>/bin`` of the pinned major; an error saying what to install
    when its ``initdb`` or ``pg_ctl`` is missing."""
    missing = [name for name in ("initdb", "pg_ctl") if not (BINDIR / name).is_file()]
    if missing:
        raise PostgresNotInstalled(
            f"PostgreSQL {POSTGRES_MAJOR}'s server binaries ({', '.join(missing)}) are not in "
            f"{BINDIR}: install Debian's postgresql-{POSTGRES_MAJOR} package "
            "(`make postgres` does, through tests/harness/ensure-postgres.sh)"
        )
    return BINDIR


TIMESCALEDB_BUILD_SCRIPT = Path(__file__).with_name("build-timescaledb.sh")

# A server started from the TimescaleDB copy with these settings can create the extension.
# Its background scheduler is off: the tests run the policies' jobs by hand (CALL run_job), and a
# scheduled run of the same job at the same moment would make the test's run fail.
TIMESCALEDB_SETTINGS: dict[str, str] = {
    "shared_preload_libraries": "timescaledb",
    "timescaledb.telemetry_level": "off",
    "timescaledb.max_background_workers": "0",
}


def timescaledb_bindir(progress: TextIO | None = None) -> Path:
    """The bin dir of the server copy that has TimescaleDB, built first when it is not cached.

    A cold build takes minutes (see build-timescaledb.sh); its progress lines go to ``progress``
    (default: this process's stderr).
    """
    try:
        return builds.ensure_built(TIMESCALEDB_BUILD_SCRIPT, progress=progress)
    except builds.BuildFailed as exc:
        raise PostgresNotInstalled(f"building TimescaleDB failed: {exc}") from exc


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresNotInstalled(
            "running as root but there is no 'postgres' user to run the server as"
        ) from None
    return entry.pw_uid, entry.pw_gid


class TempPostgres:
    """One cluster: ``with TempPostgres() as pg: pg.url`` gives a superuser URL."""

    def __init__(
        self,
        settings: dict[str, str] | None = None,
        port: int | None = None,
        bindir: Path | None = None,
    ) -> None:
        self.bindir = bindir if bindir is not None else find_bindir()
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self._owner = _run_as()
        self._tmp = Path(tempfile.mkdtemp(prefix="optionfeed-pg-"))
        self.datadir = self._tmp / "data"
        self.logfile = self._tmp / "postgres.log"
        if self._owner is not None:
            os.chown(self._tmp, *self._owner)
        self._initdb()

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def _cmd(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._owner is not None:
            kwargs = {"user": self._owner[0], "group": self._owner[1], "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            list(args), capture_output=True, text=True, check=check, cwd=self._tmp, **kwargs
        )

    def _initdb(self) -> None:
        result = self._cmd(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self, timeout: float = 60) -> None:
        options = [
            f"-p {self.port}",
            f"-c listen_addresses={self.host}",
            "-c unix_socket_directories=''",
            *(f"-c {k}={v}" for k, v in self.settings.items()),
        ]
        result = self._cmd(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                " ".join(options),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL did not start: {result.stderr.strip()}\n{self.log_tail()}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data; ``mode`` is pg_ctl's: smart, fast or immediate."""
        self._cmd(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"],
            check=False,
        )

    def is_running(self) -> bool:
        result = self._cmd(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"], check=False
        )
        return result.returncode == 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url_for(database),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def temp_database(pg: TempPostgres) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(name)
    try:
        yield url
    finally:
        # A test may leave connections open (it failed, or it is checking a crash): force.
        deadline = time.monotonic() + 10
        while True:
            try:
                pg.drop_database(name)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
