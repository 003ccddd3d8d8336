"""The ``/sim/faults`` body: what it accepts, and what it refuses with a reason."""

from __future__ import annotations

import random

import pytest

from optionfeed.simulator.faults import (
    ErrorRule,
    FaultError,
    Faults,
    Selection,
    apply_settings,
    parse_request,
)


def test_settings_and_actions_are_parsed_and_applied() -> None:
    request = parse_request(
        {
            "maintenance": True,
            "malformed_rate": 0.1,
            "malformed_mode": "replace",
            "drop_every": 5,
            "close_code": 4000,
            "errors": [{"code": 10040, "methods": ["public/ticker"], "count": 2}],
            "drop": {"fraction": 0.5, "mode": "close"},
            "stale": {"connections": [3]},
        }
    )
    faults = Faults()
    apply_settings(faults, request)
    assert faults.maintenance
    assert faults.malformed_rate == 0.1
    assert faults.malformed_mode == "replace"
    assert faults.drop_every == 5.0
    assert faults.close_code == 4000
    assert request.drop == Selection(0.5, None, "close")
    assert request.stale == Selection(None, (3,), "data")
    assert faults.report()["errors"] == [
        {"code": 10040, "methods": ["public/ticker"], "rate": 1.0, "count": 2}
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"maintenance": "yes"}, "maintenance must be true or false"),
        ({"malformed_rate": 2}, "malformed_rate must be between"),
        ({"close_code": 1006}, "cannot be sent in a close frame"),
        ({"drop": {"fraction": 0.5, "mode": "explode"}}, "mode must be one of"),
        ({"errors": [{"methods": ["x"]}]}, "needs a code"),
        ({"errors": {"code": 1}}, "errors must be a list"),
        ({"bogus": 1}, "unknown keys"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_a_bad_request_names_what_is_wrong(body: object, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        parse_request(body)


def test_an_error_rule_matches_its_methods_until_its_count_runs_out() -> None:
    rng = random.Random(1)
    rule = ErrorRule(11051, frozenset({"public/ticker"}), remaining=2)
    assert not rule.matches("public/get_time", rng)
    assert rule.matches("public/ticker", rng)
    assert rule.matches("public/ticker", rng)
    assert not rule.matches("public/ticker", rng)


def test_an_error_rule_with_a_rate_matches_about_that_share() -> None:
    rng = random.Random(1)
    rule = ErrorRule(10040, None, rate=0.25)
    hits = sum(rule.matches("public/test", rng) for _ in range(4000))
    assert 800 < hits < 1200


def test_a_selection_picks_a_share_of_connections_and_at_least_one() -> None:
    rng = random.Random(1)
    assert Selection(fraction=1.0).pick([1, 2, 3], rng) == [1, 2, 3]
    assert len(Selection(fraction=0.5).pick(list(range(10)), rng)) == 5
    assert len(Selection(fraction=0.01).pick([1, 2, 3], rng)) == 1
    assert Selection(fraction=0.0).pick([1, 2, 3], rng) == []
    assert Selection(connections=(2, 9)).pick([1, 2, 3], rng) == [2]
