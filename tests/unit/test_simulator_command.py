"""``optionfeed simulate``'s flags: faults, the clock shift for expiries, the environment."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from optionfeed.simulator import command


def parse(*argv: str, environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    if environ is not None:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in environ.items():
                patch.setenv(key, value)
            command.add_arguments(parser)
    else:
        command.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_follow_design_md() -> None:
    args = parse()
    assert (args.host, args.port, args.currencies) == ("127.0.0.1", 8765, ("BTC", "ETH"))
    assert args.max_connections_per_ip == 32
    assert args.min_heartbeat_interval == 10.0


def test_fault_flags_become_the_starting_faults() -> None:
    args = parse(
        "--maintenance", "true", "--malformed-rate", "0.1", "--drop-every", "5",
        "--drop-mode", "close", "--close-code", "4001", "--error-code", "10040",
        "--error-methods", "public/ticker,public/get_instruments", "--error-count", "3",
    )  # fmt: skip
    faults = command.faults_from(args)
    assert faults.maintenance
    assert (faults.malformed_rate, faults.drop_every, faults.drop_mode) == (0.1, 5.0, "close")
    assert faults.close_code == 4001
    assert faults.report()["errors"] == [
        {
            "code": 10040,
            "methods": ["public/get_instruments", "public/ticker"],
            "rate": 1.0,
            "count": 3,
        }
    ]


@pytest.mark.parametrize(
    "argv",
    [("--currencies", "BTC,DOGE"), ("--close-code", "1006"), ("--malformed-rate", "2")],
)
def test_bad_values_are_usage_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_the_environment_supplies_flags() -> None:
    args = parse(environ={"OPTIONFEED_RATE": "123", "OPTIONFEED_CURRENCIES": "usdc"})
    assert args.rate == 123.0
    assert args.currencies == ("USDC",)


def test_expire_in_puts_the_clock_that_long_before_today_0800_utc() -> None:
    now = datetime(2024, 5, 14, 13, 30, tzinfo=UTC).timestamp()
    offset = command.clock_offset_for_expiry(now, 30.0)
    assert datetime.fromtimestamp(now + offset, UTC) == datetime(2024, 5, 14, 7, 59, 30, tzinfo=UTC)
    early = datetime(2024, 5, 14, 2, 0, tzinfo=UTC).timestamp()
    shifted = datetime.fromtimestamp(early + command.clock_offset_for_expiry(early, 30.0), UTC)
    assert shifted == datetime(2024, 5, 14, 7, 59, 30, tzinfo=UTC)
