"""``optionfeed report``: how complete the recorded data is, from the database alone.

::

    optionfeed report                                   # the last hour, embedded database
    optionfeed report --database-url postgresql://... --since 1d
    optionfeed report --from 2024-06-01T00:00Z --to 2024-06-02T00:00Z --json
    optionfeed report --feed eth-top50 --instrument ETH-28JUN24-3000-C,ETH-28JUN24-3500-P

It shows, over a window (``--since``, default 1h, or ``--from``/``--to``; half-open, UTC):

- per feed and shard, the collectors' heartbeats from ``collector_status`` (last seen, version,
  instruments, connections) and whether each still looks alive (heard from within 60 s);
- per instrument and channel (ticker, quote, trades, book): the rows stored; for trades the
  ``trade_seq`` expected (max - min + 1) against those seen (distinct) and the missing count; for
  books the ``prev_change_id`` links checked and the breaks; the ``data_gaps`` rows overlapping the
  window (count, open, seconds of the window they cover, reasons, rows recovered by backfill);
  and a verdict: ``complete``, ``recovered``, ``gaps recorded``, ``no data``, ``gap open`` or
  ``unrecorded loss`` (missing data that no gap row accounts for; see
  :mod:`optionfeed.report.model` for how that is judged);
- gaps of whole connections (no instrument), totals, the rejected frames received in the window,
  and the worst verdict.

``--feed`` narrows the heartbeats and the gaps: rows carry no feed column. Without
``--database-url`` (or ``DATABASE_URL``) it reads the embedded PostgreSQL under
``--data-dir``/pgdata, the one ``optionfeed collect`` writes when given no URL; ``optionfeed
demo`` keeps its own under ``.optionfeed/demo``, so ``--data-dir .optionfeed/demo`` reads that.

Exit status: 0 when the report was made (whatever it says), 1 when the database could not be read
(one line on stderr: unreachable, no tables yet, a query failed), 2 for a usage error.

``--json`` prints one object (``version`` 1; times are ISO 8601 UTC strings, durations seconds)::

    {
      "version": 1,
      "source": "postgresql://user:***@host/db",        # or "the embedded PostgreSQL under DIR"
      "generated_at": "2024-06-01T12:00:00.123456Z",
      "window": {"from": "...Z", "to": "...Z", "seconds": 3600.0},
      "filters": {"feed": null, "instruments": []},
      "verdict": "complete",    # complete | recovered | gaps_recorded | no_data | gap_open
                                #   | unrecorded_loss: the worst of "channels" and connection gaps
      "collectors": [
        {"feed": "eth-top50", "shard": 0, "pod": "host", "version": "0.1.0",
         "started_at": "...Z", "last_seen": "...Z", "age_seconds": 4.2, "alive": true,
         "instruments": 50, "connections": 1, "counters": {"tickers": 1234, ...}}
      ],
      "channels": [             # one per instrument and channel with rows or gaps, sorted
        {"instrument": "ETH-28JUN24-3000-C", "channel": "trades", "table": "option_trades",
         "rows": 12, "first_ts": "...Z", "last_ts": "...Z",
         "sequence": {"first": 100, "last": 113, "expected": 14, "seen": 12, "missing": 2,
                      "holes": 1, "unrecorded": 0},          # trades only, else null
         "chain": null,        # book only: {"checked", "snapshots", "breaks", "unrecorded"}
         "gaps": {"count": 1, "open": 0, "seconds": 3.2, "rows_recovered": 0,
                  "reasons": ["sequence"]},
         "verdict": "gaps_recorded"}
      ],
      "gaps": [                 # every data_gaps row overlapping the window, by start
        {"gap_id": "...", "feed": "eth-top50", "shard": 0, "instrument": "ETH-...",
         "channel": "trades", "reason": "sequence", "start": "...Z", "end": "...Z" or null,
         "open": false, "seconds": 3.2 or null, "seq_from": 101, "seq_to": 102,
         "rows_recovered": 0}
      ],
      "totals": {"rows": {"option_tickers": 0, "option_quotes": 0, "option_trades": 12,
                          "option_book": 0},
                 "instruments": 1, "gaps": 1, "open_gaps": 0, "gap_seconds": 3.2,
                 "rows_recovered": 0, "missing_trades": 2, "book_breaks": 0, "unrecorded": 0,
                 "rejected_frames": 0}
    }

A channel that names no known family (a gap recorded on ``platform_state``, say) appears under its
own name with ``"table": null``; an instrument asked for by ``--instrument`` with nothing in the
window appears once with ``"channel": "-"`` and the verdict ``no_data``.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from optionfeed.settings import add_option, positive_float

if TYPE_CHECKING:
    from optionfeed.report.model import Report
    from optionfeed.report.window import Window

DEFAULT_SINCE = "1h"


def instrument_names(text: str) -> list[str]:
    """``A,B`` or ``A``: instrument names, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the data is")
    add_option(
        where,
        "--database-url",
        metavar="URL",
        default_text="the embedded PostgreSQL under --data-dir",
        help="PostgreSQL URL",
    )
    add_option(
        where,
        "--data-dir",
        type=Path,
        default=Path(".optionfeed"),
        metavar="DIR",
        help="local state holding the embedded database (DIR/pgdata); the demo's is "
        ".optionfeed/demo",
    )
    when = parser.add_argument_group("window (half-open, UTC)")
    add_option(
        when,
        "--since",
        metavar="DURATION",
        default_text=DEFAULT_SINCE,
        help="the window is the last DURATION, e.g. 15m, 1h, 2d",
    )
    add_option(
        when,
        "--from",
        metavar="ISO",
        help="window start, ISO 8601 (UTC when it has no zone), e.g. 2024-06-01T12:00Z",
    )
    add_option(when, "--to", metavar="ISO", default_text="now", help="window end, ISO 8601")
    what = parser.add_argument_group("what")
    add_option(what, "--feed", metavar="FEED", help="only this feed's heartbeats and gaps")
    env_instruments = os.environ.get("OPTIONFEED_INSTRUMENT", "")
    what.add_argument(
        "--instrument",
        dest="instrument",
        action="extend",
        type=instrument_names,
        metavar="NAME[,NAME…]",
        help="only these instruments (repeat the flag or separate with commas) "
        "[env: OPTIONFEED_INSTRUMENT]",
    )
    parser.set_defaults(env_instrument=instrument_names(env_instruments))
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json",
        action="store_true",
        default=os.environ.get("OPTIONFEED_JSON", "").strip().lower() in ("1", "true", "yes"),
        help="print JSON (shape in the module documentation) instead of tables "
        "[env: OPTIONFEED_JSON]",
    )
    add_option(
        out,
        "--timeout",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="longest any one query may run",
    )
    add_option(
        out,
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait for the database to answer",
    )


async def read_report(
    url: str,
    window: Window,
    *,
    now: datetime,
    feed: str | None = None,
    instruments: list[str] | tuple[str, ...] = (),
    statement_timeout: float | None = None,
    connect_timeout: float = 10.0,
    where: str | None = None,
) -> Report:
    """Read the database at ``url`` and build the report over ``window``.

    ``where`` names the database in errors (default: its masked URL). Raises
    :class:`~optionfeed.store.errors.StoreError` when the database cannot be reached and
    :class:`~optionfeed.report.errors.ReportError` when it holds no tables or a query fails.
    """
    from optionfeed.report import model, queries
    from optionfeed.settings import mask_url
    from optionfeed.store.connection import connect

    connection = await connect(url, connect_timeout=connect_timeout)
    try:
        await queries.check_schema(connection, where or f"the database at {mask_url(url)}")
        facts = await queries.read_facts(
            connection,
            window,
            now=now,
            feed=feed,
            instruments=instruments,
            statement_timeout=statement_timeout,
        )
    finally:
        await connection.close()
    return model.build(facts)


async def _produce(args: argparse.Namespace, window: Window, now: datetime) -> tuple[Report, str]:
    from optionfeed.report.errors import NoEmbeddedData
    from optionfeed.settings import mask_url
    from optionfeed.store.embedded import EmbeddedPostgres

    instruments = list(dict.fromkeys(args.instrument or args.env_instrument))

    async def read(url: str, where: str | None = None) -> Report:
        return await read_report(
            url,
            window,
            now=now,
            feed=args.feed,
            instruments=instruments,
            statement_timeout=args.timeout,
            connect_timeout=args.connect_timeout,
            where=where,
        )

    if args.database_url:
        source = mask_url(args.database_url)
        return await read(args.database_url), source
    directory = Path(args.data_dir) / "pgdata"
    if not (directory / "PG_VERSION").exists():
        raise NoEmbeddedData(str(directory))
    source = f"the embedded PostgreSQL under {directory}"
    async with EmbeddedPostgres(directory) as embedded:
        return await read(embedded.url, source), source


def run(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from optionfeed.report.errors import ReportError
    from optionfeed.report.render import render_text, to_json
    from optionfeed.report.window import WindowError, resolve
    from optionfeed.store.errors import StoreError

    now = datetime.now(UTC)
    try:
        window = resolve(
            now,
            since=args.since,
            start=vars(args)["from"],
            end=args.to,
            default_since=DEFAULT_SINCE,
        )
    except WindowError as exc:
        print(f"optionfeed report: error: {exc}", file=sys.stderr)
        return 2
    try:
        report, source = asyncio.run(_produce(args, window, now))
    except (ReportError, StoreError) as exc:
        print(f"optionfeed report: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"optionfeed report: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(
            orjson.dumps(to_json(report, source=source), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    else:
        sys.stdout.write(render_text(report, source=source))
    sys.stdout.flush()
    return 0
