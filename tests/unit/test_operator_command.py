import argparse
import subprocess
import sys

import pytest

from optionfeed import cli
from optionfeed_operator import command
from optionfeed_operator.manifests import DEFAULT_IMAGE


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_operator_subcommand_is_wired_into_the_program() -> None:
    parser, commands = cli.build_parser("operator")
    loaded = commands["operator"]
    # By name: other tests may drop modules from sys.modules, so the object can differ.
    assert loaded is not None
    assert getattr(loaded, "__name__", None) == command.__name__
    args = parser.parse_args(["operator", "-n", "md", "-n", "lab", "--liveness", "http://x/h"])
    assert args.namespaces == ["md", "lab"]
    assert args.liveness == "http://x/h"


def test_defaults_watch_everything_standalone_with_the_matching_image() -> None:
    args = parse([])
    assert args.namespaces is None
    assert args.env_namespaces == []
    assert args.peering is None
    assert args.collector_image == DEFAULT_IMAGE
    assert args.resync_interval == 30.0


def test_namespaces_also_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIONFEED_NAMESPACE", "md, lab")
    monkeypatch.setenv("OPTIONFEED_RESYNC_INTERVAL", "5")
    args = parse([])
    assert args.env_namespaces == ["md", "lab"]
    assert args.resync_interval == 5.0


def test_standalone_and_peering_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(["--peering", "optionfeed"]).peering == "optionfeed"
    with pytest.raises(SystemExit):
        parse(["--standalone", "--peering", "optionfeed"])
    assert "not allowed with" in capsys.readouterr().err


def test_namespaces_and_all_namespaces_exclude_each_other() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "optionfeed", "operator", "-n", "md", "--all-namespaces"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--namespace or --all-namespaces" in result.stderr


def test_help_lists_the_kopf_style_flags() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "optionfeed", "operator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for flag in ("--namespace", "--all-namespaces", "--liveness", "--standalone", "--peering"):
        assert flag in result.stdout
    assert "OPTIONFEED_COLLECTOR_IMAGE" in result.stdout


def test_a_resync_interval_must_be_positive() -> None:
    with pytest.raises(SystemExit):
        parse(["--resync-interval", "0"])
