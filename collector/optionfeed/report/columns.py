"""Aligned text columns for terminals: the tables of ``optionfeed report`` and ``optionfeed demo``.

::

    >>> print(render_table(["TABLE", "ROWS"], [["option_trades", "1,204"]], right={1}))
    TABLE          ROWS
    option_trades  1,204
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

GUTTER = "  "


def render_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    indent: str = "",
) -> str:
    """``headers`` and ``rows`` in columns as wide as their widest cell; ``right``-aligned by index.

    Trailing spaces are stripped, so the text compares and pastes cleanly.
    """
    width = len(headers)
    for row in rows:
        if len(row) != width:
            raise ValueError(f"a row has {len(row)} cells, the header {width}")
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(cell).rjust(w) if n in right else str(cell).ljust(w)
            for n, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return (indent + GUTTER.join(parts)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def number(value: int) -> str:
    """``12,345``."""
    return f"{value:,}"
