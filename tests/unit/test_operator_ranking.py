import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from optionfeed.deribit.ranking import RankBy
from optionfeed_operator.api import OptionFeedSpec, Reason, SecretKeyRef
from optionfeed_operator.ranking import (
    RankingFailed,
    Selection,
    Selector,
    rank,
    ranking_key,
)

T0 = datetime(2025, 11, 21, 13, 0, tzinfo=UTC)


def feed(**changes: Any) -> OptionFeedSpec:
    fields: dict[str, Any] = {
        "name": "eth",
        "namespace": "md",
        "uid": "u-1",
        "generation": 1,
        "currency": "ETH",
        "database": SecretKeyRef("db", "url"),
        "top_n": 10,
        "refresh_interval": "5m",
        "exchange_url": "ws://127.0.0.1:1/ws/api/v2",
        **changes,
    }
    return OptionFeedSpec(**fields)


class FakeExchange:
    """Stands in for the REST ranking: our own boundary, counted and scripted."""

    def __init__(self, clock: "Clock") -> None:
        self.clock = clock
        self.calls = 0
        self.down = False
        self.names = frozenset({"ETH-26DEC25-3000-C", "ETH-26DEC25-3000-P"})

    async def __call__(self, spec: OptionFeedSpec, session: aiohttp.ClientSession) -> Selection:
        self.calls += 1
        if self.down:
            raise RankingFailed(Reason.EXCHANGE_UNREACHABLE, "cannot reach the exchange")
        return Selection(self.names, key=ranking_key(spec), ranked_at=self.clock())


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def exchange(clock: Clock) -> FakeExchange:
    return FakeExchange(clock)


@pytest.fixture
def selector(clock: Clock, exchange: FakeExchange) -> Selector:
    return Selector(None, clock=clock, ranker=exchange)  # type: ignore[arg-type]


async def test_a_new_feed_is_ranked_once_and_then_held_until_its_refresh_interval(
    selector: Selector, exchange: FakeExchange, clock: Clock
) -> None:
    first = await selector.choose(feed(), None)
    assert first.ranked
    assert first.replaced is None
    assert first.selection is not None
    assert first.selection.instruments == exchange.names
    clock.advance(299)
    again = await selector.choose(feed(), None)
    assert not again.ranked
    assert again.selection == first.selection
    clock.advance(1)
    assert (await selector.choose(feed(), None)).ranked
    assert exchange.calls == 2


async def test_a_selection_stored_beside_the_assignment_spares_the_exchange(
    selector: Selector, exchange: FakeExchange, clock: Clock
) -> None:
    stored = Selection(frozenset({"ETH-1"}), key=ranking_key(feed()), ranked_at=T0)
    clock.advance(60)
    choice = await selector.choose(feed(), stored)
    assert choice.selection == stored
    assert not choice.ranked
    assert exchange.calls == 0
    # Stored for other ranking inputs (topN changed meanwhile): not this feed's selection.
    other = await Selector(None, clock=clock, ranker=exchange).choose(feed(top_n=20), stored)  # type: ignore[arg-type]
    assert other.ranked
    assert exchange.calls == 1


async def test_changing_the_ranking_inputs_ranks_again_at_once(
    selector: Selector, exchange: FakeExchange
) -> None:
    await selector.choose(feed(), None)
    for changed in (
        feed(top_n=11),
        feed(top_n=11, rank_by=RankBy.OPEN_INTEREST),
        feed(top_n=11, rank_by=RankBy.OPEN_INTEREST, exchange_url="ws://x/ws/api/v2"),
    ):
        assert (await selector.choose(changed, None)).ranked
    held = changed
    calls = exchange.calls
    # Edits that leave the ranking inputs alone do not rank.
    for same in (
        dataclasses.replace(held, shards=2),
        dataclasses.replace(held, suspend=True),
        dataclasses.replace(held, channels=("book",)),
        dataclasses.replace(held, generation=9),
    ):
        assert not (await selector.choose(same, None)).ranked
    assert exchange.calls == calls


async def test_failures_back_off_and_keep_the_last_selection(
    selector: Selector, exchange: FakeExchange, clock: Clock
) -> None:
    good = await selector.choose(feed(), None)
    exchange.down = True
    clock.advance(300)
    attempts: list[float] = []
    last_call = exchange.calls
    for _ in range(2000):
        choice = await selector.choose(feed(), None)
        # While failing, the last good selection stays in use, with the failure beside it.
        assert choice.selection == good.selection
        assert choice.failure is not None
        assert choice.failure.reason is Reason.EXCHANGE_UNREACHABLE
        if exchange.calls != last_call:
            attempts.append((clock.now - T0).total_seconds() - 300)
            last_call = exchange.calls
        clock.advance(1)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[:6] == [5, 10, 20, 40, 80, 160]
    assert set(gaps[6:]) == {300}
    exchange.down = False
    clock.advance(300)
    recovered = await selector.choose(feed(), None)
    assert recovered.ranked
    assert recovered.failure is None


async def test_with_no_selection_yet_a_failure_leaves_nothing_to_apply(
    selector: Selector, exchange: FakeExchange
) -> None:
    exchange.down = True
    choice = await selector.choose(feed(), None)
    assert choice.selection is None
    assert choice.failure is not None


async def test_ranking_an_exchange_that_is_not_there_says_so() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RankingFailed) as caught:
            await rank(feed(exchange_url="ws://127.0.0.1:9/ws/api/v2"), session)
    assert caught.value.reason is Reason.EXCHANGE_UNREACHABLE
    assert "cannot reach the exchange at http://127.0.0.1:9/api/v2" in caught.value.message


def test_the_ranking_key_covers_what_the_selection_depends_on() -> None:
    base = ranking_key(feed())
    assert ranking_key(feed(shards=3, suspend=True, generation=5, refresh_interval="1h")) == base
    assert ranking_key(feed(exchange_url="wss://127.0.0.1:1/ws/api/v2")) != base
    assert ranking_key(feed(top_n=None)) != base
    assert ranking_key(feed(underlyings=("SOL",), currency="USDC")) != base
    # The same exchange spelt as its REST URL is the same exchange.
    assert ranking_key(feed(exchange_url="http://127.0.0.1:1/api/v2")) == base
