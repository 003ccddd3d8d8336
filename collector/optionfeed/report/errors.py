"""Errors of ``optionfeed report``.

::

    ReportError
    ├── NoSchema        the database has no optionfeed tables (nothing was ever migrated there)
    ├── NoEmbeddedData  no URL was given and there is no embedded database under --data-dir
    └── QueryFailed     a query failed or ran past its time limit

Connection failures are the store's :class:`~optionfeed.store.errors.StoreError`; the command
prints either as one line.
"""

from __future__ import annotations


class ReportError(Exception):
    """Base class of the report's own errors."""


class NoSchema(ReportError):
    def __init__(self, where: str, missing: list[str], *, of: int) -> None:
        self.missing = missing
        what = "no optionfeed tables" if len(missing) >= of else f"no {', '.join(missing)} table"
        super().__init__(f"{where} has {what} yet: run optionfeed migrate or collect first")


class NoEmbeddedData(ReportError):
    def __init__(self, directory: str) -> None:
        super().__init__(
            f"there is no embedded database under {directory}: run optionfeed collect (or "
            "optionfeed migrate) first, or give --database-url"
        )


class QueryFailed(ReportError):
    pass
