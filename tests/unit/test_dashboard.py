"""The Grafana dashboard: charts/optionfeed/files/optionfeed-dashboard.json is exactly what
charts/optionfeed/dashboards/build.py builds with grafana-foundation-sdk, and it queries only
metrics the README documents. tests/integration/test_prometheus.py runs every query against a
real Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from types import ModuleType

from harness.prometheus import DASHBOARD, ROOT, dashboard_targets, documented_metrics

BUILDER = ROOT / "charts" / "optionfeed" / "dashboards" / "build.py"


def builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("optionfeed_dashboard_build", BUILDER)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_json_is_what_the_builder_builds() -> None:
    assert DASHBOARD.read_text() == builder().render(), "run `make dashboard` and commit the JSON"


def test_every_panel_has_a_title_a_unit_and_prometheus_queries() -> None:
    doc = json.loads(DASHBOARD.read_text())
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_the_queries_are_per_feed_and_shard_and_use_documented_metrics() -> None:
    documented = set(documented_metrics(""))
    for title, ref, expr in dashboard_targets({}):
        assert 'feed=~"$feed", shard=~"$shard"' in expr, f"{title} {ref}"
        assert "by (feed, shard" in expr, f"{title} {ref}"
        names = set(re.findall(r"\b((?:optionfeed|process)_[a-z_]+)\{", expr))
        assert names, f"{title} {ref}"
        for name in names:
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in documented or name in documented, f"{title}: {name} is undocumented"


def test_the_variables_are_a_datasource_a_feed_and_a_shard() -> None:
    doc = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert set(variables) == {"datasource", "feed", "shard"}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["feed"]["includeAll"]
    assert variables["shard"]["multi"]
