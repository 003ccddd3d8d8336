"""Errors at the database boundary.

::

    StoreError
    ├── BadDatabaseUrl       the URL cannot be parsed or names an unsupported scheme
    ├── DatabaseUnreachable  no connection (refused, DNS, timeout, authentication, no such database)
    ├── MigrationError       a migration failed, or an applied one was edited afterwards
    ├── SchemaMismatch       the database's tables are not the shape this program writes
    ├── EmbeddedPostgresError the embedded PostgreSQL could not be started
    ├── BatchNotWritten      a batch could not be committed this time; the writer retries it
    └── WriterError
        ├── WriterClosed     put() after close() began, or on a writer never opened
        ├── WriterFailed     the writer's flush task died of a bug; the cause is chained
        └── UnwrittenRows    close() gave up with rows neither committed nor handed on

Messages never contain a password: URLs are shown through
:func:`optionfeed.settings.mask_url`.
asyncpg's own errors are translated here, at the edge, with ``raise … from``.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error raised by ``optionfeed.store``."""


class BadDatabaseUrl(StoreError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"bad database URL {url}: {reason}")


class DatabaseUnreachable(StoreError):
    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot connect to the database at {url}: {reason}")


class MigrationError(StoreError):
    pass


class SchemaMismatch(StoreError):
    pass


class EmbeddedPostgresError(StoreError):
    pass


class BatchNotWritten(StoreError):
    """A batch was not committed (connection lost, timeout, database refusing writes).

    ``reason`` is a short label from a fixed set (``connection``, ``timeout``, ``resources``,
    ``conflict``, ``partition``, ``database``) for the ``write_errors_total`` metric. The batch is
    intact: the writer keeps it and tries again, or hands it to its fallback.
    """

    def __init__(self, reason: str, cause: BaseException) -> None:
        self.reason = reason
        self.cause = cause
        detail = str(cause) or type(cause).__name__
        super().__init__(f"batch not written ({reason}): {detail}")


class WriterError(StoreError):
    pass


class WriterClosed(WriterError):
    def __init__(self) -> None:
        super().__init__("the writer is closed (or closing): no more rows are accepted")


class WriterFailed(WriterError):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the writer's flush task failed: {cause!r}")


class UnwrittenRows(WriterError):
    """``close()`` ran out of time with rows that were neither committed nor handed to a fallback.

    They are counted in ``optionfeed_dropped_rows_total{reason="shutdown"}`` and logged; this error
    tells the caller so that the process can exit non-zero.
    """

    def __init__(self, rows: dict[str, int], cause: BaseException | None) -> None:
        self.rows = rows
        total = sum(rows.values())
        detail = ", ".join(f"{table}: {n}" for table, n in sorted(rows.items()))
        why = f" (last error: {cause})" if cause is not None else ""
        super().__init__(f"{total} rows could not be written before shutdown ({detail}){why}")
