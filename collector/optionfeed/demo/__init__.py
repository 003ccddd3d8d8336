"""``optionfeed demo``: the simulator, a collector and the embedded PostgreSQL together, offline.

::

    optionfeed demo                         # until Ctrl-C
    optionfeed demo --duration 60 --currency BTC --top 20 --rate 3000

It starts ``optionfeed simulate`` on a free port of 127.0.0.1, an embedded PostgreSQL under
``--data-dir``/demo/pgdata (apart from the database ``optionfeed collect`` records real data
into, so simulated rows never mix with real ones), and a collector ranking the currency's top
options on the simulator. On a terminal a panel shows, twice a second, messages/s, rows per table,
the write buffer's fill and the exchange-to-commit lag (p50/p99 from the collector's histogram);
elsewhere a progress line is printed every few seconds. Ctrl-C, SIGTERM or ``--duration`` stop it
in order (see :mod:`optionfeed.demo.runner`), then a summary is printed: rows per table,
instruments recorded, gaps, rejected frames, trade and book continuity, and where the data is.

Exit status: 0 after a clean stop, 1 when something failed (one line on stderr), 2 for a usage
error, 130 when a second Ctrl-C cut the collector's drain short (the simulator and the database
are still stopped in order).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from optionfeed.collector.command import channel_list, currency_name, positive_int
from optionfeed.settings import add_option, port_number, positive_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        default_text="until Ctrl-C",
        help="stop after recording this long",
    )
    add_option(
        parser, "--currency", type=currency_name, default="ETH", help="BTC, ETH or USDC options"
    )
    add_option(
        parser,
        "--top",
        type=positive_int,
        default=50,
        metavar="N",
        help="record the N options with the highest 24h USD volume",
    )
    add_option(
        parser,
        "--channels",
        type=channel_list,
        default="ticker,quote,trades,book",
        metavar="LIST",
        help="channels to record, from ticker,quote,trades,book",
    )
    add_option(
        parser,
        "--rate",
        type=positive_float,
        default=1000.0,
        metavar="EVENTS",
        help="the simulated market's events per second across all of the currency's options",
    )
    add_option(parser, "--seed", type=int, default_text="random", help="the simulator's seed")
    add_option(
        parser,
        "--data-dir",
        type=Path,
        default=Path(".optionfeed"),
        metavar="DIR",
        help="local state; the demo keeps its database and the simulator's log in DIR/demo",
    )
    add_option(
        parser,
        "--metrics-port",
        type=port_number,
        default=0,
        metavar="PORT",
        help="serve the collector's /metrics, /livez and /readyz on 127.0.0.1:PORT (0: off)",
    )
    add_option(
        parser,
        "--progress-every",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="when the output is not a terminal: seconds between progress lines",
    )


def run(args: argparse.Namespace) -> int:
    from optionfeed.demo.exchange import ExchangeError
    from optionfeed.demo.progress import summary_text
    from optionfeed.demo.runner import Demo, DemoConfig, DemoFailed
    from optionfeed.deribit.errors import DeribitError
    from optionfeed.store.errors import StoreError

    live = sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"
    config = DemoConfig(
        currency=args.currency,
        top=args.top,
        channels=args.channels,
        rate=args.rate,
        duration=args.duration,
        data_dir=args.data_dir,
        seed=args.seed,
        metrics_port=args.metrics_port,
        live=live,
        progress_every=args.progress_every,
    )

    demo = Demo(config, out=sys.stdout)
    try:
        outcome = demo.shutdown.run(demo.run())
    except (DemoFailed, ExchangeError, StoreError, DeribitError) as exc:
        print(f"optionfeed demo: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"optionfeed demo: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if outcome.summary is None:
        print("optionfeed demo: stopped before recording began")
    else:
        sys.stdout.write("\n" + summary_text(outcome.summary))
        sys.stdout.flush()
    if outcome.drain_cut is not None:
        print(
            f"optionfeed demo: the collector's drain was cut short ({outcome.drain_cut}); rows "
            "it still held may be missing (the summary shows what was stored)",
            file=sys.stderr,
        )
        return 130 if outcome.drain_cut.startswith("a second") else 1
    return 0
