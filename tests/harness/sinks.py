"""An in-memory stand-in for the writer: the rows a router or gap recorder hands over, by table."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from optionfeed.store.tables import Row, Table


class MemorySink:
    """Implements :class:`optionfeed.collector.router.RowSink`; keeps every row in order."""

    def __init__(self) -> None:
        self.rows: defaultdict[str, list[Row]] = defaultdict(list)

    async def put(self, table: Table, row: Row) -> None:
        assert len(row) == table.width, table.name
        self.rows[table.name].append(row)

    async def put_many(self, table: Table, rows: list[Row]) -> None:
        for row in rows:
            await self.put(table, row)

    def dicts(self, table: Table) -> list[dict[str, Any]]:
        """The rows of ``table`` so far, each as column -> value."""
        return [dict(zip(table.column_names, row, strict=True)) for row in self.rows[table.name]]
