"""The JSON-RPC methods, shared by the WebSocket endpoint and the REST mirror.

:meth:`Api.call` runs one request the way Deribit does (docs/deribit-protocol.md §2, §5, §8, §9):

1. an unknown method answers ``-32601``; a WebSocket-only method over REST ``10030``;
2. an injected error rule (``/sim/faults``) answers its code;
3. in maintenance everything but the session-keeping methods answers ``11051``;
4. the request's credits are taken (500 from 50,000 refilling 10,000/s; subscribe 3,000 from
   30,000; get_instruments 10,000 from 500,000); a request that finds its bucket short answers
   ``10028`` and the session is closed;
5. the method runs; bad parameters answer ``-32602`` with ``data: {reason, param}``.

Over WebSocket the buckets belong to the connection, over REST to the client's IP address.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optionfeed.deribit.channels import InvalidChannel, Kind, parse_channel
from optionfeed.deribit.credits import CreditBucket, CreditPolicy, policy_for
from optionfeed.deribit.errors import ErrorCode, RpcError, error_message
from optionfeed.deribit.instruments import is_option_name
from optionfeed.deribit.jsonrpc import MAX_CHANNELS_PER_SUBSCRIBE
from optionfeed.simulator.clock import Clock
from optionfeed.simulator.faults import Faults
from optionfeed.simulator.params import VALUE_REQUIRED, Params, invalid
from optionfeed.simulator.publisher import Publisher
from optionfeed.simulator.session import Session
from optionfeed.simulator.source import CURRENCY_INFO, ORDER_BOOK_DEPTHS, Source

VERSION = "1.2.26"
TOKEN_LIFETIME_S = 31_536_000
WS_ONLY = frozenset(
    {
        "public/hello",
        "public/subscribe",
        "public/unsubscribe",
        "public/unsubscribe_all",
        "public/set_heartbeat",
        "public/disable_heartbeat",
        "private/subscribe",
        "private/unsubscribe",
        "private/unsubscribe_all",
    }
)
# Methods that keep a session alive or wind it down keep working during maintenance.
MAINTENANCE_EXEMPT = frozenset(
    {
        "public/hello",
        "public/test",
        "public/get_time",
        "public/status",
        "public/set_heartbeat",
        "public/disable_heartbeat",
        "public/unsubscribe",
        "public/unsubscribe_all",
        "private/unsubscribe",
        "private/unsubscribe_all",
    }
)
CURRENCIES = ("BTC", "ETH", "USDC", "USDT", "EURR")
KINDS = ("future", "option", "spot", "future_combo", "option_combo")
SORTING = ("asc", "desc", "default")
# The order Deribit lists a subscribe result in (real 2021 capture): trades, ticker, book, then
# the rest; instruments in descending name order within each family.
_FAMILY_ORDER = {"trades": 0, "ticker": 1, "book": 2, "quote": 3}


def subscribe_result_order(channels: list[str]) -> list[str]:
    by_name = sorted(set(channels), reverse=True)
    return sorted(by_name, key=lambda c: _FAMILY_ORDER.get(c.split(".", 1)[0], 4))


@dataclass(frozen=True, slots=True)
class ApiSettings:
    client_id: str = "optionfeed-sim"
    client_secret: str = "optionfeed-sim-secret"
    min_heartbeat_interval: float = 10.0
    credit_multiplier: float = 1.0  # 0: unlimited
    testnet: bool = False


@dataclass
class Outcome:
    """What a request produced: a result or an error, and what follows the response."""

    result: Any = None
    error: RpcError | None = None
    after: list[Callable[[], None]] = field(default_factory=list)
    close: str | None = None  # close the session after the response, for this reason


def _error(code: int, data: Any = None) -> RpcError:
    return RpcError(code, error_message(code), data)


Handler = Callable[["Api", Params, Session | None, Outcome], Any]
METHODS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        METHODS[name] = fn
        return fn

    return register


class Api:
    def __init__(
        self,
        source: Source,
        publisher: Publisher,
        faults: Faults,
        settings: ApiSettings,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.source = source
        self.publisher = publisher
        self.faults = faults
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self._rest_buckets: dict[tuple[str, CreditPolicy], CreditBucket] = {}
        self._tokens: dict[str, float] = {}
        self._refresh_tokens: set[str] = set()
        self.on_maintenance: Callable[[bool], None] | None = None

    def call(
        self,
        method_name: str,
        raw_params: dict[str, Any],
        *,
        session: Session | None,
        ip: str,
        query: bool = False,
    ) -> Outcome:
        outcome = Outcome()
        handler = METHODS.get(method_name)
        if handler is None:
            outcome.error = _error(ErrorCode.METHOD_NOT_FOUND)
            return outcome
        if session is None and method_name in WS_ONLY:
            outcome.error = _error(ErrorCode.MUST_BE_WEBSOCKET_REQUEST)
            return outcome
        rule = self.faults.error_for(method_name, self.rng)
        if rule is not None:
            outcome.error = _error(rule.code)
            if rule.code == ErrorCode.TOO_MANY_REQUESTS:
                outcome.close = "too_many_requests"
            return outcome
        if self.faults.maintenance and method_name not in MAINTENANCE_EXEMPT:
            outcome.error = _error(ErrorCode.SYSTEM_MAINTENANCE)
            return outcome
        if not self._spend(method_name, session, ip):
            outcome.error = _error(ErrorCode.TOO_MANY_REQUESTS)
            outcome.close = "too_many_requests"
            return outcome
        try:
            outcome.result = handler(self, Params(raw_params, query=query), session, outcome)
        except RpcError as exc:
            outcome.error = exc
            outcome.after.clear()
        return outcome

    def _spend(self, method_name: str, session: Session | None, ip: str) -> bool:
        policy = policy_for(method_name)
        multiplier = self.settings.credit_multiplier
        now = self.clock.now()
        if session is not None:
            return session.spend(policy, multiplier, now)
        if multiplier <= 0:
            return True
        key = (ip, policy)
        bucket = self._rest_buckets.get(key)
        if bucket is None:
            bucket = CreditBucket.full(
                policy.capacity * multiplier, policy.refill_per_second * multiplier, now
            )
            self._rest_buckets[key] = bucket
        return bucket.try_spend(policy.cost, now)

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def instrument_name(self, p: Params) -> str:
        name = p.required_string("instrument_name")
        if not self.source.knows(name):
            if not is_option_name(name):
                raise invalid("instrument_name", "wrong format")
            raise _error(ErrorCode.NOT_FOUND)
        return name


def _ws(session: Session | None) -> Session:
    assert session is not None  # WS_ONLY methods never reach here without a session
    return session


@method("public/hello")
def _hello(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    p.required_string("client_name")
    p.required_string("client_version")
    return {"version": VERSION}


@method("public/test")
def _test(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    if session is not None:
        session.awaiting_test = False
    if p.string("expected_result") == "exception":
        raise _error(ErrorCode.INTERNAL_SERVER_ERROR)
    return {"version": VERSION}


@method("public/get_time")
def _get_time(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    return api.now_ms()


@method("public/status")
def _status(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    if api.faults.maintenance:
        return {"locked": "true", "locked_indices": api.source.index_names()}
    return {"locked": "false", "locked_indices": []}


@method("public/auth")
def _auth(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    grant = p.required_string("grant_type", ("client_credentials", "refresh_token"))
    if grant == "client_credentials":
        client_id = p.required_string("client_id")
        client_secret = p.required_string("client_secret")
        good = secrets.compare_digest(client_id, api.settings.client_id) and (
            secrets.compare_digest(client_secret, api.settings.client_secret)
        )
        if not good:
            raise _error(ErrorCode.INVALID_CREDENTIALS)
    else:
        token = p.required_string("refresh_token")
        if token not in api._refresh_tokens:
            raise _error(ErrorCode.INVALID_CREDENTIALS)
    access, refresh = secrets.token_hex(16), secrets.token_hex(16)
    api._tokens[access] = api.clock.now() + TOKEN_LIFETIME_S
    api._refresh_tokens.add(refresh)
    if session is not None:
        session.authenticated = True
        session.record.authenticated = True
    return {
        "access_token": access,
        "expires_in": TOKEN_LIFETIME_S,
        "refresh_token": refresh,
        "scope": "connection mainaccount",
        "enabled_features": [],
        "token_type": "bearer",
    }


@method("public/set_heartbeat")
def _set_heartbeat(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    s = _ws(session)
    interval = p.number("interval")
    if interval is None:
        raise invalid("interval", VALUE_REQUIRED)
    least = api.settings.min_heartbeat_interval
    if interval < least:
        raise invalid("interval", f"must be not less than {least:g}")
    s.heartbeat_interval = interval
    s.next_heartbeat = api.clock.now() + interval
    s.awaiting_test = False
    return "ok"


@method("public/disable_heartbeat")
def _disable_heartbeat(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    s = _ws(session)
    s.heartbeat_interval = None
    s.awaiting_test = False
    return "ok"


def _subscribe(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    s = _ws(session)
    names = p.string_list("channels")
    if len(names) > MAX_CHANNELS_PER_SUBSCRIBE:
        raise invalid("channels", f"must hold at most {MAX_CHANNELS_PER_SUBSCRIBE} channels")
    if not s.authenticated:
        for name in names:
            try:
                if parse_channel(name).is_raw:
                    raise _error(ErrorCode.RAW_SUBSCRIPTIONS_NOT_AVAILABLE_FOR_UNAUTHORIZED)
            except InvalidChannel:
                continue
    publisher = api.publisher
    accepted: list[str] = []
    books: list[str] = []
    for name in names:
        channel = publisher.resolve(name, api.source.is_live)
        if channel is None:
            continue
        fresh = name not in s.subscribed
        publisher.subscribe(s, name, channel)
        if name in s.subscribed:
            accepted.append(name)
            if fresh and channel.kind is Kind.BOOK:
                books.append(name)
    s.record.channels = len(s.subscribed)
    if books:

        def send_snapshots() -> None:
            for name in books:
                publisher.snapshot(s, name)

        out.after.append(send_snapshots)
    return subscribe_result_order(accepted)


@method("public/subscribe")
def _public_subscribe(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    return _subscribe(api, p, session, out)


@method("private/subscribe")
def _private_subscribe(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    if not _ws(session).authenticated:
        raise _error(ErrorCode.UNAUTHORIZED)
    return _subscribe(api, p, session, out)


def _unsubscribe(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    s = _ws(session)
    names = p.string_list("channels")
    gone = [name for name in dict.fromkeys(names) if api.publisher.unsubscribe(s, name)]
    s.record.channels = len(s.subscribed)
    return gone


@method("public/unsubscribe")
def _public_unsubscribe(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    return _unsubscribe(api, p, session, out)


@method("private/unsubscribe")
def _private_unsubscribe(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    return _unsubscribe(api, p, session, out)


def _unsubscribe_all(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    s = _ws(session)
    api.publisher.unsubscribe_all(s)
    s.record.channels = 0
    return "ok"


@method("public/unsubscribe_all")
def _public_unsubscribe_all(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    return _unsubscribe_all(api, p, session, out)


@method("private/unsubscribe_all")
def _private_unsubscribe_all(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    return _unsubscribe_all(api, p, session, out)


@method("public/get_currencies")
def _get_currencies(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    result = []
    for currency in api.source.currencies():
        info = CURRENCY_INFO.get(currency, {"currency_long": currency, "coin_type": currency})
        fee = info.get("fee", 0.0)
        result.append(
            {
                "withdrawal_priorities": [],
                "withdrawal_fee": fee,
                "min_withdrawal_fee": fee,
                "min_confirmations": 1,
                "fee_precision": 4,
                "currency_long": info["currency_long"],
                "currency": currency,
                "coin_type": info["coin_type"],
            }
        )
    return result


def _currencies(api: Api, *extra: str) -> tuple[str, ...]:
    """Deribit's currencies, plus any a replayed capture files instruments under (e.g. SOL)."""
    return tuple(dict.fromkeys((*CURRENCIES, *api.source.currencies(), *extra)))


@method("public/get_instruments")
def _get_instruments(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    # Deribit's reference marks currency as required, but the exchange answers a request
    # without one as currency=any: every instrument. Clients rely on it (ccxt loads its
    # markets with a bare get_instruments by default), so leaving it out is no error here.
    currency = p.currency(_currencies(api, "any"), default="any")
    kind = p.string("kind", choices=KINDS)
    expired = p.boolean("expired", False)
    api.source.advance()
    return api.source.instruments(currency, kind, expired)


@method("public/get_instrument")
def _get_instrument(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    return api.source.instrument(api.instrument_name(p))


@method("public/get_book_summary_by_currency")
def _get_book_summary(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    # Unlike get_instruments, Deribit requires the currency here and has no "any" for it.
    currency = p.currency(_currencies(api))
    kind = p.string("kind", choices=KINDS)
    api.source.advance()
    return api.source.book_summaries(currency, kind)


@method("public/ticker")
def _ticker(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    name = api.instrument_name(p)
    api.source.advance()
    return api.source.ticker(name)


@method("public/get_order_book")
def _get_order_book(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    name = api.instrument_name(p)
    depth = p.integer("depth", 20)
    if depth not in ORDER_BOOK_DEPTHS:
        raise invalid("depth", f"must be one of {', '.join(map(str, ORDER_BOOK_DEPTHS))}")
    api.source.advance()
    return api.source.order_book(name, depth or 20)


def _count_and_order(p: Params) -> tuple[int, bool]:
    count = p.integer("count", 10, low=1, high=1000)
    sorting = p.string("sorting", choices=SORTING) or "default"
    # Deribit's "default" is database order, which is newest first.
    return count or 10, sorting == "asc"


@method("public/get_last_trades_by_instrument")
def _last_trades(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    name = api.instrument_name(p)
    start_seq = p.integer("start_seq", low=0)
    end_seq = p.integer("end_seq", low=0)
    start_ts = p.integer("start_timestamp", low=0)
    end_ts = p.integer("end_timestamp", low=0)
    count, ascending = _count_and_order(p)
    api.source.advance()
    if start_seq is None and end_seq is None and (start_ts is not None or end_ts is not None):
        found = api.source.trades_by_time(name, start_ts, end_ts, count, ascending)
    else:
        found = api.source.trades_by_seq(name, start_seq, end_seq, count, ascending)
    assert found is not None
    return found.result()


@method("public/get_last_trades_by_instrument_and_time")
def _last_trades_by_time(api: Api, p: Params, session: Session | None, out: Outcome) -> Any:
    name = api.instrument_name(p)
    start_ts = p.integer("start_timestamp", low=0)
    end_ts = p.integer("end_timestamp", low=0)
    if start_ts is None and end_ts is None:
        raise invalid("end_timestamp", VALUE_REQUIRED)
    count, ascending = _count_and_order(p)
    api.source.advance()
    found = api.source.trades_by_time(name, start_ts, end_ts, count, ascending)
    assert found is not None
    return found.result()
