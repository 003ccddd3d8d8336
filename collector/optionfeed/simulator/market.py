"""The simulated options market: instruments, prices, books and trades on a clock.

The market is pure: it does no I/O and reads time only from the :class:`~.clock.Clock` it is given.
:meth:`Market.advance` runs it forward to the clock's present, processing, in time order,

* **events**, a Poisson process of ``rate`` per second across all live options. Each event picks
  an option with probability proportional to its activity weight (higher near the money and near
  expiry), refreshes its mark if the index moved, and either changes its book or, with the
  option's trade probability (also higher near the money), trades against the best level. Every
  event gives the option a new ticker with a timestamp strictly greater than its previous one;
* **grid ticks** every 100 ms (the publisher's aggregation boundaries); each second the index
  of each underlying takes a random-walk step and the lifecycle runs (expiries at 08:00 UTC
  settle and are announced, new expiries are listed and announced, activity weights are
  refreshed).

What happens is told to a :class:`Listener` (the publisher, or a test). Events happen whether or
not anyone listens, so a client that goes away finds a real gap, and trade history is kept per
option so that it can recover the missing ``trade_seq`` values.

Given the same ``seed`` and the same starting time, two markets produce the same events whatever
the pattern of ``advance`` calls: event times are drawn in market time, never from when the
caller happens to ask.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import orjson

from optionfeed.deribit.instruments import InstrumentState
from optionfeed.simulator import pricing
from optionfeed.simulator.book import BookEntry
from optionfeed.simulator.calendar import Expiry, listed_expiries
from optionfeed.simulator.clock import Clock
from optionfeed.simulator.option import Option, TradeRecord, Underlying, fround
from optionfeed.simulator.quoting import add_deeper, amount, book_event, requote
from optionfeed.simulator.ticker import (
    IV_CAP,
    YEAR_MS,
    ZERO,
    new_ticker,
    refresh_book_fields,
    revalue,
)
from optionfeed.simulator.underlyings import CURRENCIES, UNDERLYINGS, strike_grid, strike_target

GRID_MS = 100  # aggregation boundaries
# The index takes a step once a second, as Deribit's does (the 2021 capture shows tickers 10 to
# 400 ms apart with the same index_price and mark_price, and a new index about every second).
WALK_MS = 1000
LIFECYCLE_MS = 1000  # expiries, listings and weights
DAY_MS = 86_400_000
SETTLEMENT_TIME_MS = 8 * 3_600_000  # 08:00 UTC


class Listener(Protocol):
    """Receives what the market does, in market-time order."""

    def on_event(
        self,
        option: Option,
        changes: list[BookEntry],
        quote_changed: bool,
        trade: TradeRecord | None,
    ) -> None: ...

    def on_boundary(self, t_ms: int) -> None: ...

    def on_instrument_state(self, option: Option, state: str, t_ms: int) -> None: ...


class NullListener:
    def on_event(
        self,
        option: Option,
        changes: list[BookEntry],
        quote_changed: bool,
        trade: TradeRecord | None,
    ) -> None:
        pass

    def on_boundary(self, t_ms: int) -> None:
        pass

    def on_instrument_state(self, option: Option, state: str, t_ms: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class MarketConfig:
    currencies: tuple[str, ...] = ("BTC", "ETH")
    rate: float = 1000.0  # events per second across all live options
    seed: int = 0
    trade_fraction: float = 0.05  # about this share of events are trades
    trade_history: int = 10_000  # trades kept per option for get_last_trades_*
    trade_history_total: int = 500_000  # and across all options (about 300 MB)
    null_empty_fraction: float = 0.2  # options that write an empty book side as null, not 0.0
    settlement_delay_ms: int = 2_000  # from expiry ("settlement") to "delivered"
    expired_retention_ms: int = DAY_MS  # how long expired options stay queryable

    def __post_init__(self) -> None:
        unknown = [c for c in self.currencies if c not in CURRENCIES]
        if unknown or not self.currencies:
            raise ValueError(
                f"unknown currencies {unknown or list(self.currencies)}; "
                f"choose from {', '.join(CURRENCIES)}"
            )
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0 events/s, got {self.rate}")
        if not 0.0 <= self.trade_fraction <= 1.0:
            raise ValueError(f"trade_fraction must be in [0, 1], got {self.trade_fraction}")
        if self.trade_history < 1 or self.trade_history_total < 1:
            raise ValueError(
                f"trade history must keep at least 1 trade, got {self.trade_history} per "
                f"instrument and {self.trade_history_total} in all"
            )


class Market:
    """All options of the configured currencies, moved forward by :meth:`advance`."""

    def __init__(
        self, config: MarketConfig, clock: Clock, listener: Listener | None = None
    ) -> None:
        self.config = config
        self.clock = clock
        self.listener: Listener = listener or NullListener()
        self.started_ms = int(clock.now() * 1000)
        self.now_ms = self.started_ms
        seed = config.seed
        self._rng_events = random.Random(f"{seed}:events")
        self._rng_detail = random.Random(f"{seed}:detail")
        self._rng_walk = random.Random(f"{seed}:walk")
        self._rng_setup = random.Random(f"{seed}:setup")
        self.halted = False
        self.underlyings: dict[str, Underlying] = {}
        for currency in config.currencies:
            for base in CURRENCIES[currency]:
                spec = UNDERLYINGS[base]
                start = spec.spot * math.exp(self._rng_setup.gauss(0.0, 0.03))
                self.underlyings[base] = Underlying(spec, start)
        self.options: dict[str, Option] = {}
        self.live: list[Option] = []
        self.settling: list[Option] = []
        self.expired: deque[Option] = deque()
        self._listed: set[tuple[str, Expiry]] = set()
        self._next_instrument_id = 100_000 + self._rng_setup.randrange(100_000)
        self._trade_ids = {c: 300_000_000 + self._rng_setup.randrange(10**7) for c in CURRENCIES}
        self._change_ids = {
            c: 30_000_000_000 + self._rng_setup.randrange(10**9) for c in CURRENCIES
        }
        self._cum: list[float] = []
        self._weighted: list[Option] = []
        self._total_weight = 0.0
        self._rate_per_ms = config.rate / 1000.0
        self._next_grid_ms = (self.now_ms // GRID_MS + 1) * GRID_MS
        self._next_event_ms = float(self.now_ms) + self._draw_gap()
        self.events_total = 0
        self.trades_total = 0
        self.skipped_ms = 0.0
        self._kept: deque[tuple[Option, int]] = deque()  # every kept trade, oldest first
        self._list_new_expiries(self.now_ms, initial=True)
        self._refresh_weights()

    # ----------------------------------------------------------------- queries

    def option(self, name: str) -> Option | None:
        return self.options.get(name)

    def live_options(self, currency: str | None = None) -> list[Option]:
        return [o for o in self.live if currency in (None, "any", o.currency)]

    def expired_options(self, currency: str | None = None) -> list[Option]:
        gone = [*self.settling, *self.expired]
        return [o for o in gone if currency in (None, "any", o.currency)]

    @property
    def currencies(self) -> tuple[str, ...]:
        return self.config.currencies

    # ----------------------------------------------------------------- running

    def set_rate(self, rate: float) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        self._rate_per_ms = rate / 1000.0
        self._next_event_ms = float(self.now_ms) + self._draw_gap()

    @property
    def rate(self) -> float:
        return self._rate_per_ms * 1000.0

    def _draw_gap(self) -> float:
        if self._rate_per_ms <= 0:
            return math.inf
        return self._rng_events.expovariate(self._rate_per_ms)

    def advance(
        self,
        now: float | None = None,
        *,
        max_lag: float | None = None,
        max_step: float | None = None,
    ) -> bool:
        """Run everything due up to ``now`` (default: the clock); True when caught up.

        ``max_step`` (seconds) bounds the market time one call covers, so a caller that has
        fallen behind catches up in slices and stays responsive; it is then not caught up and
        should call again soon. With ``max_lag`` (seconds), events more than that far behind
        ``now`` are skipped rather than run late: a server that cannot keep up with ``rate``
        runs fewer events, with true timestamps, instead of falling ever further behind the
        clock. ``skipped_ms`` adds up the market time whose events were skipped; the grid
        (index, expiries, listings) still runs through it.
        """
        # To the microsecond: 1715693400.1 s must reach the 1715693400100 ms boundary.
        target = round((self.clock.now() if now is None else now) * 1000.0, 3)
        if max_lag is not None:
            floor = target - max_lag * 1000.0
            if self._next_event_ms < floor:
                self.skipped_ms += floor - self._next_event_ms
                self._next_event_ms = floor + self._draw_gap()
        caught_up = True
        if max_step is not None:
            start = max(float(self.now_ms), min(self._next_event_ms, float(self._next_grid_ms)))
            if target > start + max_step * 1000.0:
                target = start + max_step * 1000.0
                caught_up = False
        event = self._event
        grid = self._grid
        while True:
            next_grid = self._next_grid_ms
            next_event = self._next_event_ms
            if next_grid <= next_event:
                if next_grid > target:
                    break
                self.now_ms = next_grid
                grid(next_grid)
                self._next_grid_ms = next_grid + GRID_MS
            else:
                if next_event > target:
                    break
                self.now_ms = int(next_event)
                if not self.halted and self._weighted:
                    event(next_event)
                self._next_event_ms = next_event + self._draw_gap()
        self.now_ms = max(self.now_ms, int(target))
        return caught_up

    # ----------------------------------------------------------------- the grid

    def _grid(self, t_ms: int) -> None:
        if t_ms % WALK_MS == 0:
            self._walk()
        if t_ms % LIFECYCLE_MS == 0:
            self._lifecycle(t_ms)
        self.listener.on_boundary(t_ms)

    def _walk(self) -> None:
        """One step of each index's random walk (geometric Brownian motion)."""
        dt = WALK_MS / YEAR_MS
        gauss = self._rng_walk.gauss
        for und in self.underlyings.values():
            vol = und.spec.walk_vol
            und.index *= math.exp(vol * math.sqrt(dt) * gauss(0.0, 1.0) - 0.5 * vol * vol * dt)
            # The ATM level mean-reverts slowly around its long-run value.
            drift = 2.0 * (und.spec.atm_iv - und.atm_iv) * dt
            und.atm_iv = max(0.1, und.atm_iv + drift + 0.25 * math.sqrt(dt) * gauss(0.0, 1.0))
            und.version += 1

    def _lifecycle(self, t_ms: int) -> None:
        changed = False
        due = [o for o in self.live if o.expiry_ms <= t_ms]
        if due:
            for option in due:
                self._expire(option, t_ms)
            self.live = [o for o in self.live if o.is_live]
            changed = True
        if self.settling:
            delivered = [
                o for o in self.settling if t_ms >= o.expiry_ms + self.config.settlement_delay_ms
            ]
            for option in delivered:
                option.state = InstrumentState.DELIVERED
                self.listener.on_instrument_state(option, InstrumentState.DELIVERED, t_ms)
                self.expired.append(option)
            if delivered:
                self.settling = [o for o in self.settling if o.state != InstrumentState.DELIVERED]
        while self.expired and self.expired[0].expiry_ms + self.config.expired_retention_ms < t_ms:
            gone = self.expired.popleft()
            self.options.pop(gone.name, None)
        if self._list_new_expiries(t_ms, initial=False):
            changed = True
        if t_ms % DAY_MS == SETTLEMENT_TIME_MS:
            for option in self.live:
                option.ticker["settlement_price"] = round(option.mark, option.mark_decimals)
        if changed or t_ms % 10_000 == 0:
            self._refresh_weights()

    def _list_new_expiries(self, t_ms: int, *, initial: bool) -> bool:
        listed_any = False
        for und in self.underlyings.values():
            spec = und.spec
            for expiry in listed_expiries(t_ms, spec.counts):
                key = (spec.base, expiry)
                if key in self._listed:
                    continue
                self._listed.add(key)
                listed_any = True
                years = max(expiry.timestamp_ms - t_ms, 0) / YEAR_MS
                forward = und.index * math.exp(spec.basis * years)
                strikes = strike_grid(
                    forward, und.atm_iv, years, strike_target(spec, expiry.series)
                )
                created = t_ms
                if initial:
                    created = min(
                        t_ms,
                        expiry.timestamp_ms - int(expiry.series.horizon.total_seconds() * 1000),
                    )
                    created -= created % 60_000
                for strike in strikes:
                    for is_call in (True, False):
                        option = Option(
                            und,
                            expiry,
                            strike,
                            is_call,
                            self._next_instrument_id,
                            created,
                        )
                        self._next_instrument_id += 1
                        self._setup(option, t_ms, initial=initial)
                        self.options[option.name] = option
                        self.live.append(option)
                        if not initial:
                            self.listener.on_instrument_state(option, InstrumentState.OPEN, t_ms)
        if listed_any:
            self.live.sort(key=lambda o: (o.expiry_ms, o.und.spec.base, o.strike, not o.is_call))
        return listed_any

    def _setup(self, option: Option, t_ms: int, *, initial: bool) -> None:
        rng = self._rng_setup
        option.null_empty = rng.random() < self.config.null_empty_fraction
        draw = rng.random()
        option.liquidity = 2 if draw < 0.02 else 1 if draw < 0.08 else 0
        option.last_ts = t_ms
        option.first_ts = 0
        revalue(option, t_ms)
        kernel = self._kernel(option, t_ms)
        option.open_interest = round(
            option.und.spec.typical_lots * option.amount_step * 40 * kernel * rng.random(),
            option.amount_decimals,
        )
        option.ticker = new_ticker(option, t_ms)
        if initial and option.created_ms < t_ms - DAY_MS:
            option.ticker["settlement_price"] = round(option.mark, option.mark_decimals)
        if initial and option.liquidity == 0:
            self._prior_day(option, kernel, rng)
        # An opening book: a few levels each side, as if market makers had been quoting.
        changes: list[BookEntry] = []
        for _ in range(4):
            requote(option, True, changes, rng)
            requote(option, False, changes, rng)
            add_deeper(option, rng.random() < 0.5, changes, rng)
        option.change_id = self._next_change_id(option.currency)
        option.first_change_id = option.change_id
        option.book_ts = t_ms
        refresh_book_fields(option)

    def _prior_day(self, option: Option, kernel: float, rng: random.Random) -> None:
        """The last 24 hours before the simulator started, as the ticker's stats show them.

        Options that were listed already have traded, busier ones more, so that ranking by
        ``volume_usd`` at start picks liquid options as it would on Deribit. Those trades are
        not in the trade history (``trade_seq`` counts from 1 in this run); options that did not
        trade keep ``null`` stats and ``last_price``.
        """
        if rng.random() > 0.15 + 0.8 * kernel:
            return
        und = option.und
        days = max(option.expiry_ms - self.now_ms, 0) / YEAR_MS * 365.0
        lots = 1 + int(-math.log(1.0 - rng.random()) * und.mean_lots * (1 + 40 * kernel))
        lots = int(lots / (days + 1.0) ** 0.25) + 1
        volume = round(lots * option.amount_step, option.amount_decimals)
        ticks = max(1, round(option.mark * math.exp(rng.gauss(0.0, 0.05)) / option.tick))
        last = option.price_of(ticks)
        spread = max(1, round(ticks * 0.1 * rng.random()))
        option.last_price = last
        option.ref_price = option.price_of(max(1, ticks + round(rng.gauss(0.0, spread))))
        option.high = option.price_of(ticks + spread)
        option.low = option.price_of(max(1, ticks - spread))
        option.volume = volume
        option.volume_usd = volume * und.index
        tk = option.ticker
        tk["last_price"] = last
        stats = tk["stats"]
        stats["volume"] = volume
        stats["volume_usd"] = round(option.volume_usd, 2)
        stats["low"] = option.low
        stats["high"] = option.high
        stats["price_change"] = round(last / option.ref_price * 100.0 - 100.0, 4)

    def _expire(self, option: Option, t_ms: int) -> None:
        """Settle at the index: the final ticker shows the quirks of expired options."""
        und = option.und
        option.state = InstrumentState.SETTLEMENT
        delivery = fround(und.index, und.index_scale)
        option.delivery_price = delivery
        ts = max(t_ms, option.last_ts + 1)
        option.last_ts = ts
        value = pricing.intrinsic(delivery, option.strike, option.is_call)
        mark = value / delivery if not und.spec.linear else value
        empty = None if option.null_empty else ZERO
        tk = option.ticker
        tk["timestamp"] = ts
        tk["state"] = InstrumentState.CLOSED
        tk["mark_price"] = round(mark, option.mark_decimals)
        tk["index_price"] = delivery
        tk["underlying_price"] = delivery
        tk["open_interest"] = 0.0
        g = tk["greeks"]
        g["vega"] = g["theta"] = g["rho"] = g["gamma"] = g["delta"] = 0.0
        tk["estimated_delivery_price"] = "expired"
        tk["delivery_price"] = delivery
        tk["bid_iv"] = empty if option.null_empty else 0.0
        tk["best_bid_price"] = empty
        tk["best_bid_amount"] = 0.0
        tk["best_ask_price"] = empty
        tk["best_ask_amount"] = 0.0
        tk["ask_iv"] = empty if option.null_empty else IV_CAP
        option.ivs_pending = 0
        option.book.bids.clear()
        option.book.asks.clear()
        option.events += 1
        self.events_total += 1
        self.settling.append(option)
        self.listener.on_event(option, [], False, None)
        self.listener.on_instrument_state(option, InstrumentState.SETTLEMENT, ts)

    # ----------------------------------------------------------------- weights

    def _kernel(self, option: Option, now_ms: int) -> float:
        """How close to the money: 1 at the money, falling off in standard deviations."""
        und = option.und
        years = max(option.expiry_ms - now_ms, 0) / YEAR_MS
        forward = und.index * math.exp(und.spec.basis * years)
        sd = option.vol * math.sqrt(max(years, 1.0 / (365.0 * 24.0)))
        x = math.log(option.strike / forward) / sd
        return math.exp(-0.5 * x * x)

    def _refresh_weights(self) -> None:
        cum: list[float] = []
        weighted: list[Option] = []
        total = 0.0
        fraction = self.config.trade_fraction
        now = self.now_ms
        for option in self.live:
            kernel = self._kernel(option, now)
            days = max(option.expiry_ms - now, 0) / YEAR_MS * 365.0
            weight = option.und.spec.activity * (0.03 + kernel) / (days + 1.0) ** 0.35
            option.trade_prob = min(0.5, fraction * (0.25 + 1.75 * kernel))
            total += weight
            cum.append(total)
            weighted.append(option)
        self._cum, self._weighted, self._total_weight = cum, weighted, total

    def activity_share(self, option: Option) -> float:
        """The option's share of market events, as currently weighted (0 when not live)."""
        try:
            i = self._weighted.index(option)
        except ValueError:
            return 0.0
        low = self._cum[i - 1] if i else 0.0
        return (self._cum[i] - low) / self._total_weight if self._total_weight else 0.0

    # ----------------------------------------------------------------- pricing

    # ----------------------------------------------------------------- events

    def _next_change_id(self, currency: str) -> int:
        self._change_ids[currency] += 1 + int(self._rng_detail.random() * 40)
        return self._change_ids[currency]

    def _event(self, t: float) -> None:
        rng = self._rng_events
        i = bisect.bisect_right(self._cum, rng.random() * self._total_weight)
        weighted = self._weighted
        option = weighted[i if i < len(weighted) else -1]
        ts = int(t)
        if ts <= option.last_ts:
            ts = option.last_ts + 1
        option.last_ts = ts
        sides = 0
        if option.version != option.und.version:
            revalue(option, ts)
            sides = 3
        detail = self._rng_detail
        changes: list[BookEntry] = []
        trade: TradeRecord | None = None
        if option.liquidity != 2:
            if detail.random() < option.trade_prob:
                trade = self._trade(option, ts, changes, detail)
            if trade is None:
                book_event(option, changes, detail)
        if changes:
            option.prev_change_id = option.change_id
            option.change_id = self._next_change_id(option.currency)
            option.book_ts = ts
            for entry in changes:
                sides |= 1 if entry[0] else 2
        quote_changed = refresh_book_fields(option, sides) if sides else False
        tk = option.ticker
        tk["timestamp"] = ts
        if trade is not None:
            tk["last_price"] = option.last_price
            stats = tk["stats"]
            stats["volume"] = round(option.volume, option.amount_decimals)
            stats["volume_usd"] = round(option.volume_usd, 2)
            stats["low"] = option.low
            stats["high"] = option.high
            ref = option.ref_price
            stats["price_change"] = (
                round((option.last_price or 0.0) / ref * 100.0 - 100.0, 4) if ref else 0.0
            )
            tk["open_interest"] = option.open_interest
        option.events += 1
        if not option.first_ts:
            option.first_ts = ts
        self.events_total += 1
        self.listener.on_event(option, changes, quote_changed, trade)

    def _trade(
        self, option: Option, ts: int, changes: list[BookEntry], rng: random.Random
    ) -> TradeRecord | None:
        book = option.book
        buy = rng.random() < 0.5
        if buy and not book.asks:
            buy = False
        if not buy and not book.bids:
            if not book.asks:
                return None
            buy = True
        levels = book.asks if buy else book.bids
        best = min(levels) if buy else max(levels)
        available = levels[best]
        size = min(amount(option, rng), available)
        left = round(available - size, option.amount_decimals)
        if left <= 0.0:
            book.delete(not buy, best, changes)
        else:
            book.set(not buy, best, left, changes)
        price = option.price_of(best)
        last = option.last_price
        if last is None or price == last:
            previous = option.last_tick_direction
            tick_direction = 1 if previous in (0, 1) else 3
            if last is None:
                tick_direction = 0
        else:
            tick_direction = 0 if price > last else 2
        option.last_tick_direction = tick_direction
        option.trade_seq += 1
        if not option.first_trade_seq:
            option.first_trade_seq = option.trade_seq
        currency = option.currency
        self._trade_ids[currency] += 1
        number = self._trade_ids[currency]
        trade_id = str(number) if currency == "BTC" else f"{currency}-{number}"
        und = option.und
        usd_price = price if und.spec.linear else price * option.forward
        iv = pricing.implied_vol(
            usd_price, option.forward, option.strike, option.t, option.is_call, option.vol
        )
        tk = option.ticker
        trade_iv = tk["mark_iv"] if iv is None else fround(min(iv * 100.0, IV_CAP), 100.0)
        payload = orjson.dumps(
            {
                "trade_seq": option.trade_seq,
                "trade_id": trade_id,
                "timestamp": ts,
                "tick_direction": tick_direction,
                "price": price,
                "mark_price": tk["mark_price"],
                "iv": trade_iv,
                "instrument_name": option.name,
                "index_price": tk["index_price"],
                "direction": "buy" if buy else "sell",
                "amount": size,
                "contracts": size,
            }
        )
        # orjson's bytes keep its 4 KiB work buffer allocated: history holds an exact copy.
        payload = memoryview(payload).tobytes()
        record = TradeRecord(
            option.trade_seq, ts, trade_id, price, size, "buy" if buy else "sell", payload
        )
        self._keep(option, record)
        option.last_price = price
        if option.ref_price is None:
            option.ref_price = price
        option.high = price if option.high is None else max(option.high, price)
        option.low = price if option.low is None else min(option.low, price)
        option.volume += size
        # Notional in USD: options trade in coins (contracts) of the base currency.
        option.volume_usd += size * und.index
        if rng.random() < 0.6:
            option.open_interest = round(option.open_interest + size, option.amount_decimals)
        else:
            option.open_interest = round(
                max(0.0, option.open_interest - size), option.amount_decimals
            )
        self.trades_total += 1
        return record

    # ----------------------------------------------------------------- trade history

    def _keep(self, option: Option, record: TradeRecord) -> None:
        """Keep a trade for backfill, dropping the oldest beyond the per-option and total caps."""
        trades = option.trades
        trades.append(record)
        if len(trades) > self.config.trade_history:
            trades.popleft()
        kept = self._kept
        kept.append((option, record.seq))
        while len(kept) > self.config.trade_history_total:
            oldest, seq = kept.popleft()
            if oldest.trades and oldest.trades[0].seq == seq:
                oldest.trades.popleft()

    def trades_between_seq(
        self, option: Option, start: int | None, end: int | None
    ) -> list[TradeRecord]:
        """Retained trades with ``start <= trade_seq <= end``, oldest first."""
        trades = option.trades
        if not trades:
            return []
        first_seq = trades[0].seq
        lo = 0 if start is None else max(0, start - first_seq)
        hi = len(trades) if end is None else min(len(trades), end - first_seq + 1)
        if lo >= hi:
            return []
        return [trades[i] for i in range(lo, hi)]

    def trades_between_time(
        self, option: Option, start_ms: int | None, end_ms: int | None
    ) -> list[TradeRecord]:
        return [
            t
            for t in option.trades
            if (start_ms is None or t.ts >= start_ms) and (end_ms is None or t.ts <= end_ms)
        ]
