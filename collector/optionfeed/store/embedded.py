"""The embedded PostgreSQL: the database used when no URL is given.

It is ``pgserver``'s PostgreSQL (installed from PyPI with optionfeed: no root, no system service),
with its data under ``./.optionfeed/pgdata`` by default. It listens on a unix socket only, never on
a TCP port, so two checkouts on one machine cannot collide. The data persists between runs; the
server is stopped when the last process using it lets go of it.

::

    async with EmbeddedPostgres() as pg:
        async with Writer.connect(pg.url, metrics=Metrics()) as writer:
            ...

pgserver's calls block (it runs ``initdb`` and ``pg_ctl``), so the async entry points run them in
a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg

from optionfeed.store.connection import connect
from optionfeed.store.errors import EmbeddedPostgresError, StoreError

log = logging.getLogger(__name__)

# pgserver narrates every initdb and pg_ctl call at INFO; our own log says what matters.
logging.getLogger("pgserver").setLevel(logging.WARNING)

DEFAULT_DIRECTORY = Path(".optionfeed") / "pgdata"
DEFAULT_DATABASE = "optionfeed"

_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class EmbeddedPostgres:
    """A pgserver PostgreSQL with its data in ``directory``; ``url`` once started."""

    def __init__(
        self, directory: Path | str = DEFAULT_DIRECTORY, *, database: str = DEFAULT_DATABASE
    ) -> None:
        if not _DATABASE_NAME.match(database):
            raise ValueError(f"database name {database!r}: use lower-case letters, digits and _")
        self.directory = Path(directory)
        self.database = database
        self._server: Any = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL is not started")
        return self._url

    def _start_server(self) -> str:
        try:
            with warnings.catch_warnings():
                # pgserver picks a lock directory at import; without XDG_RUNTIME_DIR (containers,
                # CI) platformdirs warns and falls back to /tmp, which is fine here.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
                import pgserver
        except ImportError as exc:
            raise EmbeddedPostgresError(
                "the embedded PostgreSQL needs the 'pgserver' package: install "
                "'optionfeed[embedded]', or give --database-url (or DATABASE_URL)"
            ) from exc
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            get_server = pgserver.get_server  # type: ignore[attr-defined]
            self._server = get_server(self.directory.resolve(), cleanup_mode="stop")
            return str(self._server.get_uri())
        except Exception as exc:
            log_file = self.directory / "log"
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL under {self.directory} did not start: {exc} "
                f"(see {log_file})"
            ) from exc

    def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    async def start(self) -> str:
        """Start (or join) the server, create the database if needed; returns its URL."""
        if self._url is not None:
            return self._url
        admin_url = await asyncio.to_thread(self._start_server)
        log.info("embedded PostgreSQL running under %s", self.directory)
        try:
            connection = await connect(admin_url)
            try:
                exists = await connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", self.database
                )
                if not exists:
                    # Another process may create it at the same moment: that is fine too.
                    with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                        await connection.execute(f'CREATE DATABASE "{self.database}"')
            finally:
                await connection.close()
        except StoreError:
            await asyncio.to_thread(self._stop_server)
            raise
        self._url = _with_database(admin_url, self.database)
        return self._url

    async def stop(self) -> None:
        self._url = None
        await asyncio.to_thread(self._stop_server)

    async def __aenter__(self) -> EmbeddedPostgres:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _with_database(url: str, database: str) -> str:
    # pgserver's URLs look like postgresql://postgres:@/postgres?host=/path/to/socket-dir
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}{sep}{query}"
