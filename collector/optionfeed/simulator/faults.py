"""Faults the simulator can inject: settings, and their JSON form for ``/sim/faults``.

Set them on the command line (``--drop-every``, ``--malformed-rate``, ``--error-code``,
``--maintenance``, ``--close-code``, ``--slow-consumer-bytes``...) or at run time::

    POST /sim/faults
    {"maintenance": true}                                  # 11051 answers, platform_state
    {"maintenance": false}
    {"drop": {"fraction": 0.5}}                            # drop half the connections now
    {"drop": {"connections": [3, 4], "mode": "close"}}     # close these with close_code
    {"drop_every": 5, "drop_fraction": 1.0}                # and every 5 s from now (null: stop)
    {"stale": {"fraction": 1.0}}                           # stop sending data, keep the socket
    {"stale": {"connections": [3], "mode": "all"}}         # ... and responses and heartbeats too
    {"unstale": {"connections": [3]}}                      # (or {"unstale": {}} for all)
    {"malformed_rate": 0.01, "malformed_mode": "insert"}   # a share of frames is not JSON
    {"errors": [{"code": 10040, "methods": ["public/get_instruments"], "rate": 1.0,
                 "count": 2}]}                             # answer requests with an error
    {"close_code": 1011}                                   # close code of server-side closes
    {"slow_consumer_bytes": 65536}                         # disconnect readers this far behind
    {"max_connections_per_ip": 32}

Keys not given are left as they are. ``GET /sim/faults`` returns the current settings, and a POST
answers with them plus what its one-off actions did (``dropped``/``stale`` connection ids).

* ``drop`` ``mode`` ``abort`` (default) resets the TCP connection with no close frame (the client
  sees 1006); ``close`` sends a close frame with ``close_code``.
* ``stale`` ``mode`` ``data`` (default) stops notifications while responses and heartbeats still
  flow, the stream that only data freshness checks catch; ``all`` stops everything.
* ``malformed_mode`` ``insert`` adds a broken frame (a truncated copy of a notification) before a
  share of notifications, losing nothing; ``replace`` sends the broken frame instead, a real loss.
  Broken frames are counted per connection in the ledger (``malformed``), never as notifications.
* An error rule answers matching requests (every method when ``methods`` is absent) with ``code``
  and Deribit's message for it, for ``count`` requests (unlimited when absent), each with
  probability ``rate``. A 10028 rule also closes the session, as credits running out does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CLOSE_CODE = 1000
DEFAULT_SLOW_CONSUMER_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS_PER_IP = 32
MALFORMED_MODES = ("insert", "replace")
DROP_MODES = ("abort", "close")
STALE_MODES = ("data", "all")


class FaultError(ValueError):
    """A fault request that cannot be applied; the message says which key and why."""


@dataclass
class ErrorRule:
    code: int
    methods: frozenset[str] | None = None
    rate: float = 1.0
    remaining: int | None = None

    def matches(self, method: str, rng: random.Random) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.rate < 1.0 and rng.random() >= self.rate:
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True

    def report(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "rate": self.rate,
            "count": self.remaining,
        }


@dataclass
class Faults:
    maintenance: bool = False
    malformed_rate: float = 0.0
    malformed_mode: str = "insert"
    errors: list[ErrorRule] = field(default_factory=list)
    drop_every: float | None = None
    drop_fraction: float = 1.0
    drop_mode: str = "abort"
    close_code: int = DEFAULT_CLOSE_CODE
    slow_consumer_bytes: int = DEFAULT_SLOW_CONSUMER_BYTES
    max_connections_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP

    def error_for(self, method: str, rng: random.Random) -> ErrorRule | None:
        for rule in self.errors:
            if rule.matches(method, rng):
                return rule
        return None

    def report(self) -> dict[str, Any]:
        return {
            "maintenance": self.maintenance,
            "malformed_rate": self.malformed_rate,
            "malformed_mode": self.malformed_mode,
            "errors": [r.report() for r in self.errors if r.remaining != 0],
            "drop_every": self.drop_every,
            "drop_fraction": self.drop_fraction,
            "drop_mode": self.drop_mode,
            "close_code": self.close_code,
            "slow_consumer_bytes": self.slow_consumer_bytes,
            "max_connections_per_ip": self.max_connections_per_ip,
        }


@dataclass(frozen=True, slots=True)
class Selection:
    """Which open connections a one-off action applies to."""

    fraction: float | None = None
    connections: tuple[int, ...] | None = None
    mode: str = ""

    def pick(self, open_ids: list[int], rng: random.Random) -> list[int]:
        if self.connections is not None:
            wanted = set(self.connections)
            return [i for i in open_ids if i in wanted]
        fraction = 1.0 if self.fraction is None else self.fraction
        if fraction >= 1.0:
            return list(open_ids)
        count = round(len(open_ids) * fraction)
        if fraction > 0.0 and open_ids and count == 0:
            count = 1
        return sorted(rng.sample(open_ids, count))


@dataclass(frozen=True, slots=True)
class FaultRequest:
    """A parsed ``POST /sim/faults`` body: settings to change and one-off actions."""

    settings: dict[str, Any]
    errors: list[ErrorRule] | None
    drop: Selection | None
    stale: Selection | None
    unstale: Selection | None


def _number(body: dict[str, Any], key: str, low: float, high: float | None = None) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(f"{key} must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise FaultError(f"{key} must be {bound}, got {value}")
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultError(f"{key} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise FaultError(f"{key} must be {bound}, got {value}")
    return value


def _choice(body: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = body[key]
    if value not in choices:
        raise FaultError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def close_code(value: int) -> int:
    """A close code a server may send (RFC 6455 §7.4): 1000-1014 except 1004-1006, or 3000-4999."""
    if value in (1004, 1005, 1006) or not (1000 <= value <= 1014 or 3000 <= value <= 4999):
        raise FaultError(
            f"close_code {value} cannot be sent in a close frame; use 1000-1003, 1007-1014 "
            "or 3000-4999"
        )
    return value


def parse_error_rule(raw: Any) -> ErrorRule:
    if not isinstance(raw, dict):
        raise FaultError(f"an error rule must be an object, got {raw!r}")
    unknown = set(raw) - {"code", "methods", "rate", "count"}
    if unknown:
        raise FaultError(f"unknown keys in an error rule: {sorted(unknown)}")
    if "code" not in raw:
        raise FaultError('an error rule needs a code, e.g. {"code": 10040}')
    code = _integer(raw, "code", -32768, 99999)
    methods = raw.get("methods")
    if methods is not None and (
        not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)
    ):
        raise FaultError(f"methods must be a list of method names, got {methods!r}")
    rate = _number(raw, "rate", 0.0, 1.0) if "rate" in raw else 1.0
    count = _integer(raw, "count", 0) if raw.get("count") is not None else None
    return ErrorRule(code, frozenset(methods) if methods is not None else None, rate, count)


def _selection(raw: Any, key: str, modes: tuple[str, ...] | None) -> Selection:
    if raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise FaultError(f'{key} must be an object such as {{"fraction": 1.0}}, got {raw!r}')
    unknown = set(raw) - {"fraction", "connections", "mode"}
    if unknown:
        raise FaultError(f"unknown keys in {key}: {sorted(unknown)}")
    fraction = _number(raw, "fraction", 0.0, 1.0) if "fraction" in raw else None
    connections = raw.get("connections")
    if connections is not None:
        if not isinstance(connections, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in connections
        ):
            raise FaultError(f"{key}.connections must be a list of connection ids")
        connections = tuple(connections)
    mode = ""
    if modes is not None:
        mode = _choice(raw, "mode", modes) if "mode" in raw else modes[0]
    return Selection(fraction, connections, mode)


SETTING_KEYS = frozenset(
    {
        "maintenance",
        "malformed_rate",
        "malformed_mode",
        "drop_every",
        "drop_fraction",
        "drop_mode",
        "close_code",
        "slow_consumer_bytes",
        "max_connections_per_ip",
    }
)
ACTION_KEYS = frozenset({"errors", "drop", "stale", "unstale"})


def parse_request(body: Any) -> FaultRequest:
    """Validate a ``POST /sim/faults`` body; raise :class:`FaultError` naming the bad key."""
    if not isinstance(body, dict):
        raise FaultError("the body must be a JSON object")
    unknown = set(body) - SETTING_KEYS - ACTION_KEYS
    if unknown:
        raise FaultError(
            f"unknown keys {sorted(unknown)}; known: {sorted(SETTING_KEYS | ACTION_KEYS)}"
        )
    settings: dict[str, Any] = {}
    if "maintenance" in body:
        if not isinstance(body["maintenance"], bool):
            raise FaultError("maintenance must be true or false")
        settings["maintenance"] = body["maintenance"]
    if "malformed_rate" in body:
        settings["malformed_rate"] = _number(body, "malformed_rate", 0.0, 1.0)
    if "malformed_mode" in body:
        settings["malformed_mode"] = _choice(body, "malformed_mode", MALFORMED_MODES)
    if "drop_every" in body:
        settings["drop_every"] = (
            None if body["drop_every"] is None else _number(body, "drop_every", 0.001)
        )
    if "drop_fraction" in body:
        settings["drop_fraction"] = _number(body, "drop_fraction", 0.0, 1.0)
    if "drop_mode" in body:
        settings["drop_mode"] = _choice(body, "drop_mode", DROP_MODES)
    if "close_code" in body:
        settings["close_code"] = close_code(_integer(body, "close_code", 1000, 4999))
    if "slow_consumer_bytes" in body:
        settings["slow_consumer_bytes"] = _integer(body, "slow_consumer_bytes", 1)
    if "max_connections_per_ip" in body:
        settings["max_connections_per_ip"] = _integer(body, "max_connections_per_ip", 0)
    errors = None
    if "errors" in body:
        if not isinstance(body["errors"], list):
            raise FaultError("errors must be a list of rules (an empty list clears them)")
        errors = [parse_error_rule(r) for r in body["errors"]]
    drop = _selection(body["drop"], "drop", DROP_MODES) if "drop" in body else None
    stale = _selection(body["stale"], "stale", STALE_MODES) if "stale" in body else None
    unstale = _selection(body["unstale"], "unstale", None) if "unstale" in body else None
    return FaultRequest(settings, errors, drop, stale, unstale)


def apply_settings(faults: Faults, request: FaultRequest) -> None:
    for key, value in request.settings.items():
        setattr(faults, key, value)
    if request.errors is not None:
        faults.errors = request.errors
