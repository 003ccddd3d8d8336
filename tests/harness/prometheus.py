"""A throwaway Prometheus for a test, and promtool, from Debian's ``prometheus`` package.

    with PrometheusServer(scrape_configs, rule_files=[rules]) as prom:
        prom.query("up")                 # the ``data.result`` of /api/v1/query
        prom.alerts()                    # /api/v1/alerts

Both programs are called by their installed paths (``tests/harness/ensure-prometheus.sh``, run by
``make prometheus``, installs them), never looked up on PATH. The server listens on 127.0.0.1 on
a free port, keeps its data in a temporary directory, scrapes and evaluates rules every second,
and is killed if the test process dies.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from harness import processes
from harness.ports import free_port
from harness.processes import Service, die_with_parent

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
INSTALL_HINT = "run `make prometheus` (tests/harness/ensure-prometheus.sh) to install it"


def require(binary: Path) -> Path:
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} is not installed: {INSTALL_HINT}")
    return binary


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require(PROMTOOL)), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def static_job(
    name: str, port: int, labels: dict[str, str] | None = None, *, interval: str = "1s"
) -> dict[str, Any]:
    """A scrape config for one target on 127.0.0.1, with the target labels given."""
    return {
        "job_name": name,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": labels or {}}],
    }


class PrometheusServer(Service):
    """One ``prometheus`` process; a context manager."""

    def __init__(
        self,
        scrape_configs: Sequence[dict[str, Any]],
        *,
        rule_files: Sequence[Path] = (),
        interval: str = "1s",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="optionfeed-prometheus-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": list(scrape_configs),
        }
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.dir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        check = promtool("check", "config", self.config_path)
        if check.returncode != 0:
            raise AssertionError(f"promtool check config failed:\n{check.stdout}{check.stderr}")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(require(PROMETHEUS)),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-lifecycle",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready in {timeout:g} s")
            time.sleep(0.2)

    def stop(self) -> None:
        processes.stop(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- the HTTP API ----------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise AssertionError(f"{url}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (a scalar comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return result

    def rule_groups(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("rules")["groups"]
        return result

    def targets_up(self) -> list[dict[str, Any]]:
        return [t for t in self.api("targets")["activeTargets"] if t["health"] == "up"]


# --- what the project ships: the rules file, the dashboard and the README's metric tables --------

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "optionfeed" / "files" / "optionfeed-rules.yaml"
DASHBOARD = ROOT / "charts" / "optionfeed" / "files" / "optionfeed-dashboard.json"
README = ROOT / "README.md"


def alert_rules() -> dict[str, dict[str, Any]]:
    """Every alert rule of the rules file, by name."""
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def rules_with_short_for(path: Path, for_: str) -> Path:
    """A copy of the rules file with every ``for`` shortened (thresholds unchanged), so that a
    test sees an alert go from pending to firing within seconds."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def documented_metrics(prefix: str) -> list[str]:
    """Metric names in the README's tables (first column) that start with ``prefix``."""
    names: list[str] = []
    for line in README.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        names += [n for n in re.findall(r"`([a-z_]+)`", first) if n.startswith(prefix)]
    return names


def series_selector(name: str) -> str:
    """A selector for the series of a metric as documented: a histogram shows as ``_count``, an
    info metric as ``_info``."""
    return f'{{__name__=~"{name}|{name}_count|{name}_info"}}'


def dashboard_targets(substitutions: dict[str, str]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr with the dashboard's variables substituted) of every panel."""
    doc = json.loads(DASHBOARD.read_text())
    found = []
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in substitutions.items():
                expr = expr.replace(name, value)
            found.append((panel["title"], target["refId"], expr))
    return found
