"""Command-line options that also read the environment.

Every option ``--some-name`` falls back to ``OPTIONFEED_SOME_NAME``; ``--database-url`` also honours
``DATABASE_URL``. Subcommands declare their options with :func:`add_option` so that the rule holds
everywhere without each command repeating it.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "OPTIONFEED_"

# Options whose environment variable has a conventional name besides OPTIONFEED_<NAME>.
_EXTRA_ENV: dict[str, tuple[str, ...]] = {"database_url": ("DATABASE_URL",)}


def env_names(dest: str) -> tuple[str, ...]:
    """The environment variables an option reads, most specific first."""
    return (ENV_PREFIX + dest.upper(), *_EXTRA_ENV.get(dest, ()))


def add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    type: Callable[[str], Any] = str,
    default: Any = None,
    default_text: str | None = None,
    help: str,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    secret: bool = False,
    environ: os._Environ[str] | dict[str, str] | None = None,
) -> None:
    """Add ``flag`` with a default taken from its environment variable when one is set.

    The help ends with the variables read and the default, once, as a user would type it
    (``BTC,ETH``, not a tuple). ``default_text`` describes a default that has no value of its
    own ("an embedded PostgreSQL under --data-dir"); ``help`` itself never states the default. A
    value from the environment is the default then, shown with the variable it came from; a URL's
    password is masked, and a ``secret`` value is not shown at all.

    A malformed value in the environment is reported like a malformed flag: argparse prints the
    variable's name and exits with status 2.
    """
    env = os.environ if environ is None else environ
    dest = flag.lstrip("-").replace("-", "_")
    names = env_names(dest)
    source: str | None = None
    for name in names:
        raw = env.get(name)
        if raw is not None and raw != "":
            try:
                default = type(raw)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(f"optionfeed: error: environment variable {name}: {exc}") from None
            source = name
            break
    shown = f"{help} [env: {', '.join(names)}]"
    if source is not None:
        value = "set" if secret else as_typed(default)
        shown += f" (default: {value}, from {source})"
    elif default is not None:
        shown += f" (default: {as_typed(default)})"
    elif default_text is not None:
        shown += f" (default: {default_text})"
    parser.add_argument(
        flag,
        dest=dest,
        type=type,
        default=default,
        # argparse %-formats help texts: a literal % (in a URL, say) must be doubled.
        help=shown.replace("%", "%%"),
        choices=choices,
        metavar=metavar,
    )


def as_typed(value: Any) -> str:
    """A default value as it would be typed on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return as_typed(value.value)
    if isinstance(value, tuple | list | frozenset | set):
        return ",".join(as_typed(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 300, not 300.0
    if isinstance(value, str):
        return mask_url(value)
    return str(value)


_USERINFO_PASSWORD = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@]*):[^@/?#]*@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe to log; never raises."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        # A malformed URL (a port out of range, say) still must not leak its password.
        return _USERINFO_PASSWORD.sub(r"\1:***@", url)


def positive_float(text: str) -> float:
    """An argparse type for durations and rates that must be greater than zero."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def port_number(text: str) -> int:
    """An argparse type for a TCP port; 0 means 'off' or 'any', as the option says."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 0 and 65535, got {text!r}")
    return value
