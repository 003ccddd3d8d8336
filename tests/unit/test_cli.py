import argparse

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
