"""``optionfeed simulate``: run the Deribit-compatible exchange simulator.

Examples::

    optionfeed simulate                                   # BTC and ETH on 127.0.0.1:8765
    optionfeed simulate --currencies BTC,ETH,USDC --rate 20000 --seed 7
    optionfeed simulate --port 0                          # any free port; see the ready line
    optionfeed simulate --expire-in 30                    # today's 08:00 expiry in 30 s
    optionfeed simulate --replay tests/data/deribit/ws-options-2021-07-22.txt \\
        --replay-instruments tests/data/deribit/rest-get_instruments-2021-2022.txt

``--rate`` is the market's event rate: events per second across all live options. An event is
one option's state changing: it always yields a new ticker, usually a book change, a quote when
the best bid or ask moved, and a trade for about ``--trade-fraction`` of events. A raw
subscriber to the tickers of every option receives ``--rate`` notifications per second on
average; a subscriber of some options receives their share (busy near-the-money options more),
each capped at one notification per 100 ms on ``.100ms`` channels.

When it is ready the simulator prints one line to stdout::

    optionfeed simulator listening on http://127.0.0.1:8765 (ws://127.0.0.1:8765/ws/api/v2) seed=7

and it stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from optionfeed.settings import add_option, port_number, positive_float
from optionfeed.shutdown import Shutdown
from optionfeed.simulator.api import ApiSettings
from optionfeed.simulator.clock import WallClock
from optionfeed.simulator.faults import (
    DEFAULT_CLOSE_CODE,
    DEFAULT_MAX_CONNECTIONS_PER_IP,
    DEFAULT_SLOW_CONSUMER_BYTES,
    DROP_MODES,
    MALFORMED_MODES,
    ErrorRule,
    FaultError,
    Faults,
    close_code,
)
from optionfeed.simulator.market import Market, MarketConfig
from optionfeed.simulator.server import ServerSettings, Simulator
from optionfeed.simulator.underlyings import CURRENCIES

log = logging.getLogger("optionfeed.simulator")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _currencies(text: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(c.strip().upper() for c in text.split(",") if c.strip()))
    unknown = [c for c in items if c not in CURRENCIES]
    if not items or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown currencies {unknown or text!r}; choose from {', '.join(CURRENCIES)}"
        )
    return items


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _close_code(text: str) -> int:
    try:
        return close_code(int(text))
    except FaultError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _methods(text: str) -> frozenset[str]:
    return frozenset(m.strip() for m in text.split(",") if m.strip())


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("network")
    add_option(net, "--host", default="127.0.0.1", help="address to listen on")
    add_option(
        net, "--port", type=port_number, default=8765, help="port to listen on (0: any free port)"
    )
    add_option(
        net,
        "--max-connections-per-ip",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS_PER_IP,
        help="open WebSocket connections and REST requests per client address before HTTP "
        "429 (0: no limit)",
    )
    market = parser.add_argument_group("market")
    add_option(
        market,
        "--currencies",
        type=_currencies,
        default=("BTC", "ETH"),
        help="option currencies to list: BTC, ETH (inverse) and USDC (linear SOL_USDC, XRP_USDC)",
        metavar="LIST",
    )
    add_option(
        market,
        "--rate",
        type=_non_negative,
        default=1000.0,
        help="market events per second across all live options; each event gives one "
        "option a new ticker (plus a book change, a quote or a trade as it happens)",
    )
    add_option(market, "--seed", type=int, help="random seed: the same seed, the same market")
    add_option(
        market,
        "--trade-fraction",
        type=_fraction,
        default=0.05,
        help="about this share of events are trades (more near the money)",
    )
    add_option(
        market,
        "--trade-history",
        type=int,
        default=10_000,
        help="trades kept per instrument for get_last_trades_by_instrument",
    )
    add_option(
        market,
        "--trade-history-total",
        type=int,
        default=500_000,
        help="trades kept across all instruments (about 600 bytes each); the oldest go first",
    )
    add_option(
        market,
        "--clock-offset",
        type=float,
        default=0.0,
        help="seconds added to the machine's clock to give the exchange's time",
    )
    add_option(
        market,
        "--expire-in",
        type=positive_float,
        help="shift the clock so that today's 08:00 UTC expiry happens this many seconds "
        "after start (instruments expire, new ones are listed, during the run)",
        metavar="SECONDS",
    )
    add_option(
        market,
        "--settlement-delay",
        type=_non_negative,
        default=2.0,
        help="seconds from an expiry (instrument state settlement) to delivered",
    )
    auth = parser.add_argument_group("authentication and limits")
    add_option(
        auth,
        "--client-id",
        default="optionfeed-sim",
        help="client_id public/auth accepts (raw channels need an authenticated connection)",
    )
    add_option(
        auth,
        "--client-secret",
        default="optionfeed-sim-secret",
        secret=True,
        help="client_secret public/auth accepts",
    )
    add_option(
        auth,
        "--min-heartbeat-interval",
        type=positive_float,
        default=10.0,
        help="shortest interval public/set_heartbeat accepts, in seconds (Deribit: 10)",
    )
    add_option(
        auth,
        "--credit-multiplier",
        type=_non_negative,
        default=1.0,
        help="scale Deribit's credit pools and refill rates (0: unlimited)",
    )
    faults = parser.add_argument_group("faults (also at run time: POST /sim/faults)")
    add_option(
        faults,
        "--close-code",
        type=_close_code,
        default=DEFAULT_CLOSE_CODE,
        help="WebSocket close code of connections the simulator closes",
    )
    add_option(
        faults,
        "--slow-consumer-bytes",
        type=int,
        default=DEFAULT_SLOW_CONSUMER_BYTES,
        help="disconnect a reader whose unsent backlog exceeds this many bytes",
    )
    add_option(
        faults,
        "--drop-every",
        type=positive_float,
        help="drop connections every this many seconds",
        metavar="SECONDS",
    )
    add_option(
        faults, "--drop-fraction", type=_fraction, default=1.0, help="share of connections dropped"
    )
    add_option(
        faults,
        "--drop-mode",
        default="abort",
        choices=DROP_MODES,
        help="abort: reset with no close frame; close: send a close frame",
    )
    add_option(
        faults,
        "--malformed-rate",
        type=_fraction,
        default=0.0,
        help="share of notifications accompanied (or replaced) by a frame that is not JSON",
    )
    add_option(
        faults,
        "--malformed-mode",
        default="insert",
        choices=MALFORMED_MODES,
        help="insert or replace",
    )
    add_option(faults, "--error-code", type=int, help="answer requests with this error code")
    add_option(
        faults,
        "--error-methods",
        type=_methods,
        help="only these methods (comma-separated) get --error-code",
    )
    add_option(
        faults, "--error-rate", type=_fraction, default=1.0, help="share of requests that get it"
    )
    add_option(faults, "--error-count", type=int, default_text="never", help="stop after this many")
    add_option(
        faults,
        "--maintenance",
        type=_bool,
        default=False,
        help="start in maintenance (11051 answers, platform_state maintenance, market halted)",
    )
    replay = parser.add_argument_group("replay")
    add_option(
        replay,
        "--replay",
        type=_existing_file,
        help="play this WebSocket capture to subscribers instead of the synthetic market",
        metavar="FILE",
    )
    add_option(
        replay,
        "--replay-instruments",
        type=_existing_file,
        help="REST capture of get_instruments responses serving the replay's instruments",
        metavar="FILE",
    )
    add_option(
        replay,
        "--replay-speed",
        type=positive_float,
        default=1.0,
        help="replay this many times faster than captured",
    )


def clock_offset_for_expiry(now: float, expire_in: float) -> float:
    """The offset that puts the clock ``expire_in`` seconds before today's 08:00 UTC."""
    today = datetime.fromtimestamp(now, UTC).date()
    expiry = datetime(today.year, today.month, today.day, 8, tzinfo=UTC).timestamp()
    return expiry - expire_in - now


def faults_from(args: argparse.Namespace) -> Faults:
    faults = Faults(
        maintenance=args.maintenance,
        malformed_rate=args.malformed_rate,
        malformed_mode=args.malformed_mode,
        drop_every=args.drop_every,
        drop_fraction=args.drop_fraction,
        drop_mode=args.drop_mode,
        close_code=args.close_code,
        slow_consumer_bytes=args.slow_consumer_bytes,
        max_connections_per_ip=args.max_connections_per_ip,
    )
    if args.error_code is not None:
        faults.errors.append(
            ErrorRule(args.error_code, args.error_methods, args.error_rate, args.error_count)
        )
    return faults


def build(args: argparse.Namespace) -> Simulator:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    args.seed = seed
    offset = args.clock_offset
    if args.expire_in is not None:
        offset = clock_offset_for_expiry(WallClock().now(), args.expire_in)
    clock = WallClock(offset)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        seed=seed,
        api=ApiSettings(
            client_id=args.client_id,
            client_secret=args.client_secret,
            min_heartbeat_interval=args.min_heartbeat_interval,
            credit_multiplier=args.credit_multiplier,
        ),
    )
    faults = faults_from(args)
    if args.replay is not None:
        from optionfeed.simulator.replay import build_replay

        return build_replay(
            args.replay, args.replay_instruments, args.replay_speed, clock, settings, faults
        )
    config = MarketConfig(
        currencies=args.currencies,
        rate=args.rate,
        seed=seed,
        trade_fraction=args.trade_fraction,
        trade_history=args.trade_history,
        trade_history_total=args.trade_history_total,
        settlement_delay_ms=int(args.settlement_delay * 1000),
    )
    market = Market(config, clock)
    simulator = Simulator.for_market(market, clock, settings, faults)
    if faults.maintenance:
        market.halted = True
    return simulator


async def serve(simulator: Simulator, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set."""
    # The market's thousands of long-lived objects need no cyclic collection: freezing them and
    # collecting the young generation less often saves about a tenth of the CPU under load.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    runner = web.AppRunner(simulator.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, simulator.settings.host, simulator.settings.port)
    await site.start()
    try:
        address = runner.addresses[0]
        simulator.port = int(address[1])
        host = simulator.settings.host
        print(
            f"optionfeed simulator listening on http://{host}:{simulator.port} "
            f"(ws://{host}:{simulator.port}/ws/api/v2) seed={simulator.settings.seed}",
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    try:
        simulator = build(args)
    except (ValueError, OSError) as exc:
        print(f"optionfeed simulate: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    try:
        Shutdown(stop.set).run(serve(simulator, stop))
    except OSError as exc:
        print(
            f"optionfeed simulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    return 0
