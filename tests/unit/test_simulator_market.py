"""The simulated market, driven by a manual clock: no sockets, no sleeping."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from optionfeed.deribit.instruments import parse_option_name
from optionfeed.simulator import pricing
from optionfeed.simulator.book import BookEntry
from optionfeed.simulator.clock import ManualClock
from optionfeed.simulator.market import Market, MarketConfig
from optionfeed.simulator.option import Option, TradeRecord
from optionfeed.simulator.ticker import settled

START = datetime(2024, 5, 14, 13, 30, tzinfo=UTC).timestamp()


class Recorder:
    """A market listener that keeps everything it is told (tickers only when asked)."""

    def __init__(self, tickers: bool = False) -> None:
        self.keep_tickers = tickers
        self.events: list[tuple[str, int, list[BookEntry], bool, TradeRecord | None]] = []
        self.tickers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.states: list[tuple[str, str, int]] = []
        self.boundaries: list[int] = []
        self.change_ids: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def on_event(
        self,
        option: Option,
        changes: list[BookEntry],
        quote_changed: bool,
        trade: TradeRecord | None,
    ) -> None:
        self.events.append((option.name, option.last_ts, list(changes), quote_changed, trade))
        if self.keep_tickers:
            self.tickers[option.name].append(orjson.loads(orjson.dumps(settled(option))))
        if changes:
            self.change_ids[option.name].append((option.prev_change_id, option.change_id))

    def on_boundary(self, t_ms: int) -> None:
        self.boundaries.append(t_ms)

    def on_instrument_state(self, option: Option, state: str, t_ms: int) -> None:
        self.states.append((option.name, state, t_ms))


def make(
    rate: float = 2000.0,
    seed: int = 1,
    start: float = START,
    currencies: tuple[str, ...] = ("BTC", "ETH", "USDC"),
    tickers: bool = False,
    **config: Any,
) -> tuple[Market, ManualClock, Recorder]:
    clock = ManualClock(start)
    recorder = Recorder(tickers)
    market = Market(
        MarketConfig(currencies=currencies, rate=rate, seed=seed, **config), clock, recorder
    )
    return market, clock, recorder


def run(market: Market, clock: ManualClock, seconds: float, step_ms: int = 50) -> None:
    start = clock.now()
    for k in range(1, round(seconds * 1000) // step_ms + 1):
        clock.set(start + k * step_ms / 1000)
        market.advance()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_btc_eth_and_usdc_list_over_2000_options_named_as_deribit_names_them(seed: int) -> None:
    market, _, _ = make(seed=seed, rate=0)
    options = market.live_options()
    assert len(options) >= 2000
    assert {o.currency for o in options} == {"BTC", "ETH", "USDC"}
    for option in options:
        parsed = parse_option_name(option.name)
        assert parsed.strike == Decimal(str(option.strike))
        assert int(parsed.expiry.timestamp() * 1000) == option.expiry_ms
        assert parsed.currency == option.currency
    usdc = [o.name for o in options if o.currency == "USDC"]
    assert any(n.startswith("SOL_USDC-") for n in usdc)
    assert any(n.startswith("XRP_USDC-") and "d" in n.split("-")[2] for n in usdc)
    for und in market.underlyings.values():
        strikes = [o.strike for o in options if o.und is und]
        assert min(strikes) < und.index < max(strikes)


def _fingerprint(recorder: Recorder) -> list[tuple[Any, ...]]:
    return [
        (name, ts, tuple(changes), quote, trade.payload if trade else None)
        for name, ts, changes, quote, trade in recorder.events
    ]


def test_the_same_seed_and_start_give_the_same_market_whatever_the_advance_steps() -> None:
    a, _, rec_a = make(seed=9)
    b, _, rec_b = make(seed=9)
    for i in range(1, 430):
        a.advance(START + min(3.0, i * 0.007))
    b.advance(START + 3.0)
    assert a.events_total > 5000
    assert _fingerprint(rec_a) == _fingerprint(rec_b)
    c, clock_c, rec_c = make(seed=10)
    run(c, clock_c, 3.0)
    assert _fingerprint(rec_c) != _fingerprint(rec_a)


def test_events_run_at_the_configured_rate_whether_or_not_anyone_listens() -> None:
    market, _clock, _ = make(rate=3000.0)
    market.advance(START + 4.0)
    assert market.events_total == pytest.approx(12_000, rel=0.05)
    assert 0.02 < market.trades_total / market.events_total < 0.12


def test_each_instruments_timestamps_strictly_increase_and_trade_seq_has_no_gap() -> None:
    market, clock, recorder = make(rate=20_000.0, trade_fraction=0.3, tickers=True)
    run(market, clock, 1.5)
    last: dict[str, int] = {}
    for name, ts, _, _, _ in recorder.events:
        assert ts > last.get(name, 0)
        last[name] = ts
    for name, tickers in recorder.tickers.items():
        stamps = [t["timestamp"] for t in tickers]
        assert stamps == sorted(set(stamps)), name
    seqs: dict[str, list[int]] = defaultdict(list)
    ids: dict[str, set[str]] = defaultdict(set)
    for name, _, _, _, trade in recorder.events:
        if trade is None:
            continue
        seqs[name].append(trade.seq)
        body = orjson.loads(trade.payload)
        assert isinstance(body["trade_id"], str)
        currency = market.options[name].currency
        assert body["trade_id"] not in ids[currency]
        ids[currency].add(body["trade_id"])
    assert sum(len(s) for s in seqs.values()) > 1000, "too few trades to tell"
    for name, found in seqs.items():
        assert found == list(range(1, len(found) + 1)), name
    assert all(i.isdigit() for i in ids["BTC"])
    assert all(i.startswith("ETH-") for i in ids["ETH"])


def test_book_changes_chain_and_rebuild_the_book_from_the_opening_one() -> None:
    market, clock, recorder = make(rate=20_000.0, currencies=("BTC", "USDC"))
    opening = {o.name: (dict(o.book.bids), dict(o.book.asks), o.change_id) for o in market.live}
    run(market, clock, 1.0)
    books = {name: (dict(b), dict(a)) for name, (b, a, _) in opening.items()}
    for name, _, changes, _, _ in recorder.events:
        bids, asks = books[name]
        for is_bid, price, old, new in changes:
            side = bids if is_bid else asks
            assert side.get(price) == old
            if new is None:
                del side[price]
            else:
                side[price] = new
        if bids and asks:
            assert max(bids) < min(asks)
    for option in market.live:
        assert books[option.name] == (option.book.bids, option.book.asks)
    for name, pairs in recorder.change_ids.items():
        previous = opening[name][2]
        for prev, current in pairs:
            assert prev == previous
            assert current > prev
            previous = current


def test_mark_price_greeks_and_side_ivs_agree_with_black76() -> None:
    market, clock, recorder = make(rate=10_000.0, tickers=True)
    run(market, clock, 1.0)
    checked = 0
    for name, tickers in recorder.tickers.items():
        option = market.options[name]
        tk = tickers[-1]
        years = (option.expiry_ms - tk["timestamp"]) / 1000.0 / pricing.YEAR_SECONDS
        forward = tk["underlying_price"]
        vol = tk["mark_iv"] / 100.0
        valuation = pricing.value(forward, option.strike, years, vol, option.is_call)
        linear = option.und.spec.linear
        mark = valuation.price if linear else valuation.price / forward
        assert tk["mark_price"] == pytest.approx(mark, rel=2e-3, abs=10 * 10**-option.mark_decimals)
        assert tk["greeks"]["delta"] == pytest.approx(valuation.greeks.delta, abs=2e-3)
        assert tk["greeks"]["vega"] == pytest.approx(valuation.greeks.vega, rel=5e-3, abs=1e-4)
        half_unit = 0.5 / option.und.index_scale  # underlying_price is rounded on the wire
        for side in ("bid", "ask"):
            price = tk[f"best_{side}_price"]
            iv = tk[f"{side}_iv"]
            if not price or iv in (0.0, 500.0, None):
                continue
            usd = price if linear else price * forward
            solved = pricing.implied_vol(usd, forward, option.strike, years, option.is_call, vol)
            assert solved is not None
            # What the rounding of underlying_price can move this IV by, plus IV rounding:
            at = pricing.value(forward, option.strike, years, solved, option.is_call).greeks
            slack = 0.011 + abs(at.delta) * half_unit / max(at.vega, 1e-12)
            assert solved * 100 == pytest.approx(iv, abs=slack), (name, side)
            checked += 1
        if tk["best_bid_price"] and tk["best_ask_price"]:
            assert tk["bid_iv"] <= tk["mark_iv"] + 0.05 <= tk["ask_iv"] + 0.1
    assert checked > 500


def test_activity_is_higher_near_the_money_and_near_expiry() -> None:
    market, clock, _ = make(rate=30_000.0, currencies=("BTC",))
    run(market, clock, 1.0)
    near, far = [], []
    for option in market.live:
        x = abs(math.log(option.strike / option.forward)) / (
            option.vol * math.sqrt(max(option.t, 1 / 365))
        )
        if x < 0.5 and option.t < 10 / 365:
            near.append(option)
        elif x > 2.0 and option.t > 30 / 365:
            far.append(option)
    assert near
    assert far

    def mean(options: list[Option], attr: str) -> float:
        return sum(getattr(o, attr) for o in options) / len(options)

    assert mean(near, "events") > 5 * mean(far, "events")
    assert mean(near, "trade_seq") > 5 * mean(far, "trade_seq")


def test_expiry_at_0800_settles_announces_and_lists_the_next_expiry() -> None:
    start = datetime(2024, 5, 15, 7, 59, 50, tzinfo=UTC).timestamp()
    market, _clock, recorder = make(rate=2000.0, start=start, currencies=("BTC", "ETH"))
    expiring = [o for o in market.live if o.expiry.code == "15MAY24"]
    assert expiring
    market.advance(start + 15.0)
    at_expiry = int(datetime(2024, 5, 15, 8, tzinfo=UTC).timestamp() * 1000)
    states = defaultdict(list)
    for name, state, t_ms in recorder.states:
        states[name].append((state, t_ms))
    for option in expiring:
        assert [s for s, _ in states[option.name]] == ["settlement", "delivered"]
        assert states[option.name][0][1] >= at_expiry
        tk = option.ticker
        assert tk["state"] == "closed"
        assert tk["estimated_delivery_price"] == "expired"
        assert isinstance(tk["delivery_price"], float)
        assert tk["best_bid_amount"] == 0.0
        assert tk["best_ask_amount"] == 0.0
        assert option not in market.live
        assert option in market.expired_options()
        intrinsic = pricing.intrinsic(tk["delivery_price"], option.strike, option.is_call)
        expected = intrinsic if option.und.spec.linear else intrinsic / tk["delivery_price"]
        assert tk["mark_price"] == pytest.approx(expected, abs=1e-8)
    listed = [name for name, found in states.items() if found[0][0] == "open"]
    assert listed
    assert all("19MAY24" in name for name in listed)
    assert all(market.options[name].created_ms == at_expiry for name in listed)


def test_the_quirks_of_real_data_appear() -> None:
    market, clock, recorder = make(rate=5000.0, tickers=True)
    never_traded = [o for o in market.live if o.volume == 0]
    assert never_traded
    assert all(o.ticker["last_price"] is None for o in never_traded)
    assert all(o.ticker["stats"]["volume"] is None for o in never_traded)
    run(market, clock, 2.0)
    tickers = [t for ts in recorder.tickers.values() for t in ts]
    empty_bids = [t["best_bid_price"] for t in tickers if not t["best_bid_amount"]]
    assert None in empty_bids
    assert 0.0 in empty_bids
    forms = {t["underlying_index"].split("-")[0] for t in tickers}
    assert {"index_price", "SYN.BTC", "BTC", "ETH"} <= forms
    traded = next(o for o in market.live if o.trade_seq)
    assert isinstance(traded.ticker["last_price"], float)


def test_at_start_the_last_days_volume_is_highest_near_the_money() -> None:
    market, _, _ = make(rate=0.0, currencies=("BTC",))
    by_volume = sorted(market.live, key=lambda o: -o.volume_usd)
    top, rest = by_volume[:20], by_volume[200:]

    def distance(option: Option) -> float:
        return abs(math.log(option.strike / option.forward)) / (
            option.vol * math.sqrt(max(option.t, 1 / 365))
        )

    assert max(distance(o) for o in top) < 1.5
    assert sum(map(distance, top)) / len(top) < 0.5 * sum(map(distance, rest)) / len(rest)
    assert all(isinstance(o.ticker["last_price"], float) for o in top)
    assert all(o.trade_seq == 0 for o in top)  # earlier trades are not in this run's history


def test_trade_history_pages_by_sequence_and_time() -> None:
    market, clock, _ = make(rate=20_000.0, trade_fraction=0.5, currencies=("BTC",))
    run(market, clock, 0.5)
    option = max(market.live, key=lambda o: o.trade_seq)
    assert option.trade_seq >= 10
    middle = market.trades_between_seq(option, 3, 7)
    assert [t.seq for t in middle] == [3, 4, 5, 6, 7]
    all_trades = market.trades_between_seq(option, None, None)
    assert [t.seq for t in all_trades] == list(range(1, option.trade_seq + 1))
    ts = all_trades[4].ts
    by_time = market.trades_between_time(option, ts, ts)
    assert by_time
    assert all(t.ts == ts for t in by_time)


def test_trade_history_keeps_the_most_recent_trades() -> None:
    market, _clock, _ = make(rate=20_000.0, trade_fraction=0.5, trade_history=5)
    market.advance(START + 0.5)
    option = max(market.live, key=lambda o: o.trade_seq)
    kept = market.trades_between_seq(option, None, None)
    assert [t.seq for t in kept] == list(range(option.trade_seq - 4, option.trade_seq + 1))
    assert market.trades_between_seq(option, 1, 2) == []


def test_trade_history_has_a_total_cap_that_drops_the_oldest_trades_first() -> None:
    market, _, recorder = make(rate=20_000.0, trade_fraction=0.5, trade_history_total=300)
    market.advance(START + 0.5)
    generated = [(name, t.seq) for name, _, _, _, t in recorder.events if t is not None]
    assert len(generated) > 1000
    kept = {(o.name, t.seq) for o in market.options.values() for t in o.trades}
    assert kept == set(generated[-300:])
    for option in market.options.values():
        seqs = [t.seq for t in option.trades]
        assert seqs == list(range(option.trade_seq - len(seqs) + 1, option.trade_seq + 1))


def test_a_halted_market_runs_no_events_but_its_clock_and_index_move() -> None:
    market, _clock, recorder = make(rate=5000.0)
    market.halted = True
    index_before = market.underlyings["BTC"].index
    market.advance(START + 1.0)
    assert market.events_total == 0
    assert market.underlyings["BTC"].index != index_before
    assert len(recorder.boundaries) == 10


def test_an_overloaded_server_skips_events_instead_of_falling_behind() -> None:
    market, clock, _ = make(rate=5000.0)
    clock.advance(10.0)
    market.advance(max_lag=0.25)
    assert market.events_total == pytest.approx(1250, rel=0.2)
    assert market.skipped_ms == pytest.approx(9750, rel=0.01)


def test_catching_up_in_slices_runs_the_same_events_as_one_call() -> None:
    sliced, _, sliced_events = make(seed=4)
    whole, _, whole_events = make(seed=4)
    calls = 1
    while not sliced.advance(START + 2.0, max_step=0.05):
        calls += 1
    assert calls == 40
    assert whole.advance(START + 2.0)
    assert _fingerprint(sliced_events) == _fingerprint(whole_events)


def test_rate_can_change_while_running() -> None:
    market, clock, _ = make(rate=1000.0)
    run(market, clock, 1.0)
    market.set_rate(10_000.0)
    before = market.events_total
    run(market, clock, 1.0)
    assert market.events_total - before == pytest.approx(10_000, rel=0.1)


def test_unknown_currencies_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="BTC, ETH, USDC"):
        MarketConfig(currencies=("DOGE",))
