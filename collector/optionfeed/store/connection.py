"""Connecting to PostgreSQL: URL checks, error translation, and per-connection setup.

Every connection the store opens goes through here, so that an unreachable database, a wrong
password or a malformed URL becomes one :class:`~optionfeed.store.errors.StoreError` with a
readable reason and a masked URL, never an asyncpg traceback.

:func:`prepare_connection` runs once per physical connection (the pool's ``init``): it installs the
jsonb codec and creates the temporary staging tables the writer COPYs into. Those tables live as
long as the connection and are emptied by every commit (``ON COMMIT DELETE ROWS``), which truncates
them in place: unlike ``TRUNCATE`` or a temporary table per batch, a flush touches no catalog row.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from optionfeed.settings import mask_url
from optionfeed.store.errors import BadDatabaseUrl, DatabaseUnreachable
from optionfeed.store.tables import Table

DEFAULT_CONNECT_TIMEOUT = 10.0

# Sent with every connection:
# - jit off: a merge of a few thousand rows is over the JIT cost threshold, and compiling it takes
#   longer than running it;
# - temp_buffers: staging tables are temporary; a batch fits in memory instead of spilling.
SERVER_SETTINGS: dict[str, str] = {
    "application_name": "optionfeed",
    "jit": "off",
    "temp_buffers": "64MB",
}

_SCHEMES = frozenset({"postgresql", "postgres"})


def check_url(url: str) -> None:
    """Raise :class:`BadDatabaseUrl` unless ``url`` looks like a PostgreSQL URL."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        raise BadDatabaseUrl(shown, str(exc)) from None
    if parts.scheme not in _SCHEMES:
        got = f"'{parts.scheme}'" if parts.scheme else "no scheme"
        raise BadDatabaseUrl(
            shown, f"expected postgresql://user:password@host:port/database, {got}"
        )


def describe_connect_error(exc: BaseException, timeout: float) -> str:
    """A short reason for a failed connection attempt."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running and listening there?)"
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror})"
    if isinstance(exc, FileNotFoundError):
        return "no PostgreSQL socket at that path"
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"authentication failed: {exc}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return str(exc)
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return f"the server is starting up or shutting down: {exc}"
    if isinstance(exc, asyncpg.TooManyConnectionsError):
        return f"the server has no free connection slot: {exc}"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ValueError,
)


async def connect(
    url: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> asyncpg.Connection:
    """One connection, with failures translated into :class:`DatabaseUnreachable`."""
    check_url(url)
    try:
        return await asyncpg.connect(url, timeout=connect_timeout, server_settings=SERVER_SETTINGS)
    except _CONNECT_ERRORS as exc:
        raise _translate(url, exc, connect_timeout) from exc


def _translate(url: str, exc: BaseException, timeout: float) -> Exception:
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
        return BadDatabaseUrl(mask_url(url), str(exc))
    return DatabaseUnreachable(mask_url(url), describe_connect_error(exc, timeout))


def _encode_jsonb(value: Any) -> bytes:
    # jsonb's binary form is a version byte (1) and the JSON text. Normalisers hand over the text
    # already encoded (bytes) so that it is produced once, on the hot path, by orjson.
    if type(value) is bytes:
        return b"\x01" + value
    return b"\x01" + orjson.dumps(value)


def _decode_jsonb(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def prepare_connection(connection: asyncpg.Connection, tables: Iterable[Table]) -> None:
    """The jsonb codec, and one staging table per written table."""
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )
    ddl = ";\n".join(t.staging_ddl() for t in tables)
    if ddl:
        await connection.execute(ddl)


async def create_pool(
    url: str,
    tables: Iterable[Table],
    *,
    min_size: int = 1,
    max_size: int = 2,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> asyncpg.Pool:
    """A pool whose connections are prepared for the writer; failures translated."""
    check_url(url)
    staged = tuple(tables)

    async def init(connection: asyncpg.Connection) -> None:
        await prepare_connection(connection, staged)

    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=connect_timeout,
            server_settings=SERVER_SETTINGS,
            init=init,
        )
    except _CONNECT_ERRORS as exc:
        raise _translate(url, exc, connect_timeout) from exc
    assert pool is not None
    return pool
