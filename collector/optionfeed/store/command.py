"""``optionfeed migrate``: apply ``schema/`` to a database, idempotently.

Without ``--database-url`` (or ``DATABASE_URL``) it migrates the embedded PostgreSQL under
``./.optionfeed/``, the database ``optionfeed collect`` uses in that case. Failures (a malformed
URL, an unreachable server, a migration that does not apply) print one line, with any password
masked, and exit with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from optionfeed.settings import add_option, mask_url, positive_float
from optionfeed.store import migrations, timescale
from optionfeed.store.connection import connect
from optionfeed.store.embedded import DEFAULT_DIRECTORY, EmbeddedPostgres
from optionfeed.store.errors import StoreError
from optionfeed.store.partitions import Partitions
from optionfeed.store.tables import ALL


def _duration(text: str) -> str:
    try:
        return timescale.interval(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _retention(text: str) -> str:
    try:
        return timescale.retention(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_timescale_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
) -> None:
    """``--timescale``, ``--compress-after`` and ``--retention``: shared by migrate and collect."""
    add_option(
        parser,
        "--timescale",
        default=timescale.Mode.AUTO.value,
        choices=[m.value for m in timescale.Mode],
        help="make the time tables TimescaleDB hypertables: auto (when the server has the "
        "extension and preloads it), on (required), off",
    )
    add_option(
        parser,
        "--compress-after",
        type=_duration,
        default="2 days",
        metavar="DURATION",
        help="TimescaleDB: compress chunks older than this, e.g. 12h, 2d or 1w",
    )
    add_option(
        parser,
        "--retention",
        type=_retention,
        metavar="DURATION",
        default_text="leave the policy as it is",
        help="TimescaleDB: drop chunks older than this, e.g. 90d; 'forever' removes the policy",
    )


def timescale_settings(args: argparse.Namespace) -> timescale.Settings:
    return timescale.Settings(
        mode=timescale.Mode(args.timescale),
        compress_after=args.compress_after,
        retention=args.retention,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--database-url",
        default_text="the embedded PostgreSQL under ./.optionfeed/",
        help="PostgreSQL URL",
        metavar="URL",
    )
    add_timescale_arguments(parser)
    add_option(
        parser,
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        help="seconds to wait for the database to answer",
        metavar="SECONDS",
    )


async def migrate_database(
    url: str, *, settings: timescale.Settings | None = None, connect_timeout: float = 10.0
) -> list[migrations.Migration]:
    """Apply pending migrations, enable TimescaleDB per ``settings``, make today's partitions."""
    connection = await connect(url, connect_timeout=connect_timeout)
    try:
        applied = await migrations.migrate(connection)
        hyper = await timescale.enable(connection, settings)
        partitions = Partitions(ALL)
        partitions.exclude(hyper)
        await partitions.ensure_ahead(connection, int(time.time() * 1000))
        return applied
    finally:
        await connection.close()


async def _run(args: argparse.Namespace) -> tuple[str, list[migrations.Migration]]:
    settings = timescale_settings(args)
    if args.database_url:
        applied = await migrate_database(
            args.database_url, settings=settings, connect_timeout=args.connect_timeout
        )
        return mask_url(args.database_url), applied
    async with EmbeddedPostgres() as embedded:
        applied = await migrate_database(
            embedded.url, settings=settings, connect_timeout=args.connect_timeout
        )
    return f"the embedded PostgreSQL under {DEFAULT_DIRECTORY}", applied


def run(args: argparse.Namespace) -> int:
    try:
        where, applied = asyncio.run(_run(args))
    except StoreError as exc:
        print(f"optionfeed migrate: {exc}", file=sys.stderr)
        return 1
    if applied:
        names = ", ".join(m.filename for m in applied)
        print(f"{where}: applied {len(applied)} migration(s): {names}")
    else:
        print(f"{where}: the schema is up to date")
    return 0
