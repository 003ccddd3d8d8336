"""The alert rules in charts/optionfeed/files/optionfeed-rules.yaml, checked and unit-tested by
promtool (Debian's prometheus package, installed by `make prometheus`).

tests/prometheus/optionfeed-rules.test.yaml holds the cases: each alert firing on a bad shard or
feed, silent on a healthy one beside it, and silent before its `for` has passed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.prometheus import RULES, alert_rules, promtool

TESTS = Path(__file__).resolve().parents[1] / "prometheus" / "optionfeed-rules.test.yaml"


def test_promtool_checks_the_rules_file() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_passes() -> None:
    result = promtool("test", "rules", TESTS.name, cwd=TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in cases
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == set(alert_rules())


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for name, rule in alert_rules().items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name
