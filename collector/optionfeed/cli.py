"""The ``optionfeed`` program: one entry point, one subcommand per job.

Each subcommand lives in the package that owns it, as a module with two functions::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...

The table below names those modules as strings, and only the module of the command being run is
imported, so ``optionfeed operator`` loads the control plane without the data plane importing it,
and one command's imports never slow or break another. Heavy imports belong inside ``run``.
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


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, found without importing any command module."""
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--log-level":
            skip_next = True
        elif not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(
    selected: str | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, Command | None]]:
    """The parser; only the ``selected`` command's module is imported to add its options.

    Importing one command at a time keeps each command independent of the others: a slow or broken
    import in one never affects another, and ``optionfeed --help`` imports none.
    """
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
        command: Command | None = None
        if name == selected:
            try:
                command = load_command(name)
            except CommandUnavailable:
                command = None
        if command is not None:
            command.add_arguments(sub_parser)
        else:
            # Accept anything: either this command is not the one being run, or it is missing
            # (then the user learns that, rather than that a flag is unknown).
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
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser(command_in(arguments))
    args = parser.parse_args(arguments)
    command = commands[args.command]
    if command is None:
        print(f"optionfeed: the '{args.command}' command is not implemented yet", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    try:
        return command.run(args)
    except KeyboardInterrupt:
        return 130
