"""How the simulated market makers quote: where they put the best levels and how books move.

Each book event changes one side of one option's book the way market makers do: it moves the
best level to where the mark says it belongs (4% of the price either side, at least a tick),
resizes a level, adds one behind the rest, or pulls one. Options priced under a tick have no
bid; a few options never have a bid (``liquidity`` 1) or have no book at all (2), which gives
the empty book sides of real data. Every change is recorded as a :data:`~.book.BookEntry`.
"""

from __future__ import annotations

import math
import random

from optionfeed.simulator.book import BookEntry
from optionfeed.simulator.option import MAX_LOTS, Option

MAX_LEVELS = 10
_log = math.log


def amount(option: Option, rng: random.Random) -> float:
    """An order size: a whole number of lots, exponentially distributed."""
    und = option.und
    lots = 1 + int(-_log(1.0 - rng.random()) * und.mean_lots)
    return und.amounts[lots if lots < MAX_LOTS else MAX_LOTS - 1]


def targets(option: Option) -> tuple[int, int]:
    """Where market makers would put the best bid and ask, in ticks (bid may be < 1)."""
    m = option.mark / option.tick
    half = max(1.0, 0.04 * m)
    bid = math.floor(m - half)
    ask = math.ceil(m + half)
    if ask <= bid:
        ask = bid + 1
    return bid, max(ask, 1)


def requote(option: Option, is_bid: bool, changes: list[BookEntry], rng: random.Random) -> None:
    """Move one side's best level to where it belongs given the mark."""
    book = option.book
    bid_target, ask_target = targets(option)
    if is_bid:
        if option.liquidity == 1 or bid_target < 1:
            if book.bids:
                book.delete(True, max(book.bids), changes)
            return
        for price in [p for p in book.bids if p > bid_target]:
            book.delete(True, price, changes)
        for price in [p for p in book.asks if p <= bid_target]:
            book.delete(False, price, changes)
        book.set(
            True,
            bid_target,
            amount(option, rng),
            changes,
        )
    else:
        for price in [p for p in book.asks if p < ask_target]:
            book.delete(False, price, changes)
        for price in [p for p in book.bids if p >= ask_target]:
            book.delete(True, price, changes)
        book.set(
            False,
            ask_target,
            amount(option, rng),
            changes,
        )
    trim(option, changes)


def add_deeper(option: Option, is_bid: bool, changes: list[BookEntry], rng: random.Random) -> None:
    """Add a level a few ticks behind the last one on a side."""
    book = option.book
    levels = book.side(is_bid)
    if not levels:
        requote(option, is_bid, changes, rng)
        return
    if is_bid:
        price = min(levels) - 1 - int(rng.random() * 3)
        if price < 1:
            return
    else:
        price = max(levels) + 1 + int(rng.random() * 3)
    if price not in levels:
        book.set(is_bid, price, amount(option, rng), changes)
        trim(option, changes)


def trim(option: Option, changes: list[BookEntry]) -> None:
    """Keep at most MAX_LEVELS levels a side, dropping the farthest."""
    book = option.book
    while len(book.bids) > MAX_LEVELS:
        book.delete(True, min(book.bids), changes)
    while len(book.asks) > MAX_LEVELS:
        book.delete(False, max(book.asks), changes)


def book_event(option: Option, changes: list[BookEntry], rng: random.Random) -> None:
    """One quoting event: move the top, resize, add or pull a level on one side."""
    book = option.book
    r = rng.random()
    is_bid = rng.random() < 0.5
    if option.liquidity == 1:
        is_bid = False
    if r < 0.45:
        requote(option, is_bid, changes, rng)
    elif r < 0.75:
        levels = book.side(is_bid)
        if not levels:
            requote(option, is_bid, changes, rng)
            return
        prices = sorted(levels, reverse=is_bid)
        price = prices[min(int(-_log(1.0 - rng.random()) / 0.7), len(prices) - 1)]
        book.set(is_bid, price, amount(option, rng), changes)
    elif r < 0.9:
        add_deeper(option, is_bid, changes, rng)
    else:
        levels = book.side(is_bid)
        if len(levels) > 2:
            prices = sorted(levels, reverse=is_bid)[1:]
            book.delete(is_bid, prices[int(rng.random() * len(prices))], changes)
        else:
            add_deeper(option, is_bid, changes, rng)
