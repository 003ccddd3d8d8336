"""The ``optionfeed`` program: one entry point, one subcommand per job.

Each subcommand lives in the package that owns it, as a module with two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

The table below names those modules as strings and they are imported on demand, so ``optionfeed
operator`` can load the control plane without the data plane importing it, and a slow import in
one command never slows another. Heavy imports belong inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol, cast

from optionfeed import __version__


class Command(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module, one-line help). Order is the order of `optionfeed --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("optionfeed.collector.command", "record Deribit options into PostgreSQL"),
    "simulate": ("optionfeed.simulator.command", "run the Deribit-compatible exchange simulator"),
    "demo": ("optionfeed.demo", "simulator + collector + embedded PostgreSQL, with live progress"),
    "migrate": ("optionfeed.store.command", "apply schema/ to the database (idempotent)"),
    "report": ("optionfeed.report", "completeness report from the database"),
    "operator": ("optionfeed_operator.command", "run the Kubernetes operator (kopf)"),
}


class CommandUnavailable(Exception):
    """A subcommand whose module is not part of this build."""


def load_command(name: str) -> Command:
    module_name, _ = COMMANDS[name]
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise CommandUnavailable(name) from exc
        raise
    return cast(Command, module)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command | None]]:
    parser = argparse.ArgumentParser(
        prog="optionfeed",
        description="Record Deribit options market data (quotes, greeks, trades, books) "
        "into PostgreSQL, completely and with every gap accounted for.",
    )
    parser.add_argument("--version", action="version", version=f"optionfeed {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    loaded: dict[str, Command | None] = {}
    for name, (_, summary) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=summary, description=summary)
        try:
            command: Command | None = load_command(name)
        except CommandUnavailable:
            command = None
        if command is not None:
            command.add_arguments(sub_parser)
        else:
            # Accept anything, so the user learns the command is missing rather than that a flag is.
            sub_parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        loaded[name] = command
    return parser, loaded


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    command = commands[args.command]
    if command is None:
        print(f"optionfeed: the '{args.command}' command is not implemented yet", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    try:
        return command.run(args)
    except KeyboardInterrupt:
        return 130
