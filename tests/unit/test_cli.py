import argparse
import os
import re

import pytest

from optionfeed import cli, settings


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_options_fall_back_to_their_environment_variable() -> None:
    parser = argparse.ArgumentParser()
    env = {"OPTIONFEED_METRICS_PORT": "9999", "DATABASE_URL": "postgresql://u:p@h/db"}
    settings.add_option(parser, "--metrics-port", type=int, default=9464, help="port", environ=env)
    settings.add_option(parser, "--database-url", help="url", environ=env)
    args = parser.parse_args([])
    assert args.metrics_port == 9999
    assert args.database_url == "postgresql://u:p@h/db"
    assert parser.parse_args(["--metrics-port", "1"]).metrics_port == 1


def test_a_malformed_environment_value_names_the_variable() -> None:
    parser = argparse.ArgumentParser()
    with pytest.raises(SystemExit, match="OPTIONFEED_METRICS_PORT"):
        settings.add_option(
            parser, "--metrics-port", type=int, help="p", environ={"OPTIONFEED_METRICS_PORT": "abc"}
        )


def test_logged_urls_never_show_the_password() -> None:
    assert settings.mask_url("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert settings.mask_url("postgresql://db/x") == "postgresql://db/x"


def test_a_malformed_url_is_masked_without_raising() -> None:
    assert (
        settings.mask_url("postgresql://me:s3cret@db:99999/x") == "postgresql://me:***@db:99999/x"
    )


def test_only_the_command_being_run_is_imported() -> None:
    import sys

    assert cli.command_in(["--log-level", "DEBUG", "simulate", "--port", "1"]) == "simulate"
    assert cli.command_in(["--help"]) is None
    sys.modules.pop("optionfeed_operator.command", None)
    _, loaded = cli.build_parser("migrate")
    assert loaded["migrate"] is not None
    assert loaded["operator"] is None
    assert "optionfeed_operator.command" not in sys.modules


def _help_lines(name: str) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The subcommand's parser, and its help as one line per option, by first flag."""
    parser, _ = cli.build_parser(name)
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = sub_action.choices[name]
    lines: dict[str, str] = {}
    flag = None
    for line in sub.format_help().splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            lines[flag] = line
        elif flag is not None and line.startswith("    "):  # help under a long flag
            lines[flag] += " " + line.strip()
        else:
            flag = None
    return sub, lines


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OPTIONFEED_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "2000")  # one line per option
    return monkeypatch


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_default_in_a_subcommands_help_shows_once_as_it_would_be_typed(
    name: str, clean_environment: pytest.MonkeyPatch
) -> None:
    sub, lines = _help_lines(name)
    assert lines, f"no options in `optionfeed {name} --help`"
    for action in sub._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        line = lines[action.option_strings[0]]
        assert line.count("default:") <= 1, line
        shown = re.search(r"\(default: (.+)\)$", line)
        if action.default is None or action.nargs == 0 or shown is None:
            continue
        # What the help shows is what a user would type: typed back, it gives the default.
        typed = sub.parse_args([action.option_strings[0], shown[1]])
        assert getattr(typed, action.dest) == getattr(sub.parse_args([]), action.dest), line


def test_a_default_from_the_environment_shows_once_and_never_a_secret(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("OPTIONFEED_CHANNELS", "ticker,book")
    clean_environment.setenv("OPTIONFEED_CLIENT_SECRET", "hunter2")
    clean_environment.setenv("DATABASE_URL", "postgresql://me:s3cret@db/x")
    _, lines = _help_lines("collect")
    assert lines["--channels"].endswith("(default: ticker,book, from OPTIONFEED_CHANNELS)")
    assert lines["--client-secret"].endswith("(default: set, from OPTIONFEED_CLIENT_SECRET)")
    assert lines["--database-url"].endswith(
        "(default: postgresql://me:***@db/x, from DATABASE_URL)"
    )
    for line in lines.values():
        assert line.count("default:") <= 1, line
        assert "hunter2" not in line
        assert "s3cret" not in line
