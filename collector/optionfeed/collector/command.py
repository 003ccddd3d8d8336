"""``optionfeed collect``: run one collector.

Two modes: ``--assignment FILE`` (what the operator mounts; the file is followed live), or local
mode, ``--currency ETH --top 50 --channels ticker,trades``, where the collector ranks by itself.
Every option also reads ``OPTIONFEED_<NAME>``; ``--database-url`` also reads ``DATABASE_URL``.

Exit status: 0 after a clean stop, 1 when something outside the command line failed (the database
cannot be reached, rows could not be written before the shutdown deadline), 2 for a usage error (a
bad flag, an invalid assignment file). Each failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from optionfeed.deribit.exchange import DEFAULT_EXCHANGE_URL, OPTION_CURRENCIES
from optionfeed.settings import add_option, port_number, positive_float
from optionfeed.store.command import add_timescale_arguments, timescale_settings
from optionfeed.telemetry import endpoints

if TYPE_CHECKING:
    from optionfeed.collector.config import CollectorConfig

log = logging.getLogger(__name__)


def channel_list(text: str) -> tuple[str, ...]:
    from optionfeed.deribit.channels import FEED_CHANNELS

    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in FEED_CHANNELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(FEED_CHANNELS)}, got {text!r}"
        )
    return names


def currency_name(text: str) -> str:
    value = text.strip().upper()
    if value not in OPTION_CURRENCIES:
        raise argparse.ArgumentTypeError(
            f"unknown option currency {text!r}: "
            f"Deribit lists options in {', '.join(OPTION_CURRENCIES)}"
        )
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to record (an assignment file, or local mode)")
    add_option(
        what,
        "--assignment",
        type=Path,
        metavar="FILE",
        help="assignment file written by the operator; followed live",
    )
    add_option(what, "--currency", type=currency_name, help="local mode: BTC, ETH or USDC")
    add_option(
        what,
        "--top",
        type=positive_int,
        default=50,
        metavar="N",
        help="local mode: record the N options with the highest 24h USD volume",
    )
    add_option(
        what,
        "--channels",
        type=channel_list,
        default=("ticker", "trades"),
        metavar="LIST",
        help="local mode: channels to record, from ticker,quote,trades,book",
    )
    add_option(
        what,
        "--interval",
        default="100ms",
        choices=["100ms", "agg2", "raw"],
        help="local mode: notification interval; raw needs --client-id/--client-secret",
    )
    add_option(
        what,
        "--rank-by",
        default="volume_usd",
        choices=["volume_usd", "open_interest"],
        help="local mode: ranking key",
    )
    where = parser.add_argument_group("where from and to")
    add_option(
        where,
        "--exchange-url",
        default=DEFAULT_EXCHANGE_URL,
        metavar="URL",
        help="Deribit WebSocket endpoint (REST is derived from it)",
    )
    add_option(
        where,
        "--database-url",
        metavar="URL",
        default_text="an embedded PostgreSQL under --data-dir",
        help="PostgreSQL URL",
    )
    add_timescale_arguments(where)
    add_option(
        where,
        "--data-dir",
        type=Path,
        default=Path(".optionfeed"),
        metavar="DIR",
        help="local state: the embedded database",
    )
    add_option(
        where,
        "--spool-dir",
        type=Path,
        metavar="DIR",
        default_text="<data-dir>/spool",
        help="where batches wait while the database is down",
    )
    add_option(
        where,
        "--spool-max-bytes",
        type=positive_int,
        default=2 * 1024**3,
        metavar="BYTES",
        help="size limit of the spool; when full, reading from the exchange slows down",
    )
    add_option(where, "--client-id", metavar="ID", help="Deribit API key id (for raw channels)")
    add_option(
        where, "--client-secret", metavar="SECRET", secret=True, help="Deribit API key secret"
    )
    run = parser.add_argument_group("running")
    add_option(
        run,
        "--metrics-port",
        type=port_number,
        default=endpoints.DEFAULT_PORT,
        metavar="PORT",
        help="serve /metrics, /livez and /readyz on this port; 0 turns it off",
    )
    add_option(run, "--metrics-host", default="0.0.0.0", metavar="HOST", help="address to serve on")
    add_option(
        run,
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        default_text="run until SIGTERM/SIGINT",
        help="stop cleanly after this long",
    )
    add_option(
        run,
        "--heartbeat-interval",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="Deribit heartbeat interval (Deribit's minimum is 10); a stream silent for 1.5x "
        "this long is replaced",
    )
    add_option(
        run,
        "--channels-per-connection",
        type=positive_int,
        default=1000,
        metavar="N",
        help="per-connection channel budget",
    )
    add_option(
        run,
        "--flush-interval",
        type=positive_float,
        default=0.25,
        metavar="SECONDS",
        help="longest a row waits in the buffer before it is written",
    )
    add_option(
        run,
        "--refresh-interval",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="how often reference data is refreshed (and, in local mode, instruments re-ranked)",
    )
    add_option(
        run,
        "--stale-after",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="a ticker silent this long is recorded as a stale gap",
    )
    add_option(
        run,
        "--buffer-rows",
        type=positive_int,
        default=50_000,
        metavar="N",
        help="rows buffered before reading from the exchange is slowed",
    )


def _config_from(args: argparse.Namespace) -> object:
    from optionfeed.collector.config import CollectorConfig, LocalPlan
    from optionfeed.deribit.ranking import RankBy

    if args.assignment is not None and args.currency is not None:
        raise _UsageError("give either --assignment or --currency, not both")
    if args.assignment is None and args.currency is None:
        raise _UsageError("give --assignment FILE, or --currency (with --top and --channels)")
    if args.interval == "raw" and not (args.client_id and args.client_secret):
        raise _UsageError("--interval raw needs --client-id and --client-secret")
    if args.heartbeat_interval < 10:
        log.warning(
            "--heartbeat-interval %g: Deribit refuses intervals below 10 s; only a simulator "
            "started with a lower --min-heartbeat-interval accepts it",
            args.heartbeat_interval,
        )
    local = None
    if args.currency is not None:
        local = LocalPlan(
            currency=args.currency,
            top=args.top,
            channels=args.channels,
            interval=args.interval,
            rank_by=RankBy(args.rank_by),
        )
    return CollectorConfig(
        exchange_url=args.exchange_url,
        database_url=args.database_url,
        data_dir=args.data_dir,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        duration=args.duration,
        assignment_path=args.assignment,
        local=local,
        client_id=args.client_id,
        client_secret=args.client_secret,
        heartbeat_interval=args.heartbeat_interval,
        channels_per_connection=args.channels_per_connection,
        flush_interval=args.flush_interval,
        buffer_rows=args.buffer_rows,
        spool_dir=args.spool_dir,
        spool_max_bytes=args.spool_max_bytes,
        timescale=timescale_settings(args),
        refresh_interval=args.refresh_interval,
        stale_after={"ticker": args.stale_after},
    )


class _UsageError(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    from optionfeed.collector.app import Collector
    from optionfeed.collector.config import CollectorConfig
    from optionfeed.deribit.errors import DeribitError
    from optionfeed.shard_document import InvalidShardDocument
    from optionfeed.shutdown import Shutdown
    from optionfeed.store.errors import StoreError
    from optionfeed.telemetry import tracing

    try:
        config = _config_from(args)
        assert isinstance(config, CollectorConfig)
    except _UsageError as exc:
        print(f"optionfeed collect: error: {exc}", file=sys.stderr)
        return 2

    collector = Collector(config)
    shutdown = Shutdown.abandoning(collector.stop, "stopping now, without waiting for the drain")
    traces = tracing.setup("optionfeed-collector", _trace_identity(config))
    try:
        shutdown.run(collector.run())
    except InvalidShardDocument as exc:
        print(f"optionfeed collect: error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, DeribitError) as exc:
        print(f"optionfeed collect: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"optionfeed collect: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print("optionfeed collect: stopped without draining (second signal)", file=sys.stderr)
        return 130
    finally:
        if traces is not None:
            traces.shutdown()
    return 0


def _trace_identity(config: CollectorConfig) -> dict[str, str]:
    """The feed and shard for the trace resource, as far as they are known before the start.

    The shard is a string, as in OTEL_RESOURCE_ATTRIBUTES (all strings) that the operator sets.
    """
    from optionfeed.collector.assignment import read_assignment
    from optionfeed.shard_document import InvalidShardDocument
    from optionfeed.telemetry import tracing

    if config.local is not None:
        return {tracing.FEED_ATTRIBUTE: config.local.feed, tracing.SHARD_ATTRIBUTE: "0"}
    assert config.assignment_path is not None
    try:
        assignment = read_assignment(config.assignment_path)
    except InvalidShardDocument:
        return {}  # reported as a usage error by the run itself
    return {tracing.FEED_ATTRIBUTE: assignment.feed, tracing.SHARD_ATTRIBUTE: str(assignment.shard)}
