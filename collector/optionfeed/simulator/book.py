"""One option's order book, in integer ticks, and the changes that move it.

Prices are kept as whole numbers of ticks so that levels compare exactly; they become floats only
on the wire. A change is a :data:`BookEntry` ``(is_bid, price_ticks, old_amount, new_amount)``:
``old_amount`` None means the level is new, ``new_amount`` None that it was deleted. The publisher
turns entries into Deribit's ``["new"|"change"|"delete", price, amount]`` triples and merges them
for the aggregated intervals.
"""

from __future__ import annotations

BookEntry = tuple[bool, int, float | None, float | None]


class Book:
    """Bid and ask levels: price in ticks -> amount."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids: dict[int, float] = {}
        self.asks: dict[int, float] = {}

    def side(self, is_bid: bool) -> dict[int, float]:
        return self.bids if is_bid else self.asks

    def set(self, is_bid: bool, price: int, amount: float, out: list[BookEntry]) -> None:
        levels = self.bids if is_bid else self.asks
        old = levels.get(price)
        if old == amount:
            return
        levels[price] = amount
        out.append((is_bid, price, old, amount))

    def delete(self, is_bid: bool, price: int, out: list[BookEntry]) -> None:
        levels = self.bids if is_bid else self.asks
        old = levels.pop(price, None)
        if old is not None:
            out.append((is_bid, price, old, None))

    def clear(self, out: list[BookEntry]) -> None:
        for price in sorted(self.bids, reverse=True):
            self.delete(True, price, out)
        for price in sorted(self.asks):
            self.delete(False, price, out)

    def levels(self, is_bid: bool, depth: int | None = None) -> list[tuple[int, float]]:
        """Levels best first."""
        levels = self.bids if is_bid else self.asks
        prices = sorted(levels, reverse=is_bid)
        if depth is not None:
            prices = prices[:depth]
        return [(p, levels[p]) for p in prices]
