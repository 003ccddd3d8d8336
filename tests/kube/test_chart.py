"""The Helm chart in charts/optionfeed.

Without a cluster (only the helm binary): `helm lint`, `helm template` against golden files in
tests/golden/chart/, the values schema, the Kubernetes versions it renders for, the CRD it carries
(the repository's only copy), `helm package`, and deploy/ as the chart's rendering. On the real
control plane: `helm install --wait` into a namespace that enforces the "restricted" Pod Security
Standard, what the operator's ServiceAccount may do cluster-wide and per watched namespace, and
`helm uninstall`, which keeps the CRD.

Regenerate the golden files after an intended change with
``OPTIONFEED_UPDATE_GOLDEN=1 pytest tests/kube/test_chart.py`` and review the diff; regenerate
deploy/ with ``deploy/render.sh``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import secrets
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.control_plane import ApiError, ControlPlane, ensure_binaries
from kube.operator_fixtures import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "optionfeed"
CRD_FILE = CHART / "crds" / "optionfeed.io_optionfeeds.yaml"
GOLDEN = ROOT / "tests" / "golden" / "chart"
DEPLOY = ROOT / "deploy"
UPDATE = os.environ.get("OPTIONFEED_UPDATE_GOLDEN") == "1"
CRD_NAME = "optionfeeds.optionfeed.io"
CRD_API = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
RBAC_API = "/apis/rbac.authorization.k8s.io/v1"

# The golden renderings use a release name that differs from the chart name, so that they show
# how object names are made (deploy/ shows the release named after the chart).
RELEASE = "feeds"
RELEASE_NAMESPACE = "market-data"
OPERATOR = "feeds-optionfeed-operator"


# --- helm without a cluster ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment for helm with its state in a temporary directory and no cluster."""
    home = tmp_path_factory.mktemp("helm")
    env = dict(os.environ)
    env["KUBECONFIG"] = str(home / "no-cluster.kubeconfig")
    for name in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{name}_HOME"] = str(home / name.lower())
    env["HELM"] = str(ensure_binaries() / "helm")
    return env


def helm_run(
    env: dict[str, str], *args: str | Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [env["HELM"], *map(str, args)]
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def template(env: dict[str, str], *args: str | Path) -> str:
    return helm_run(env, "template", RELEASE, CHART, "--namespace", RELEASE_NAMESPACE, *args).stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(text: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in documents(text) if d["kind"] == kind]


def operator_container(text: str) -> dict[str, Any]:
    (deployment,) = by_kind(text, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def env_value(container: dict[str, Any], name: str) -> str:
    values = [e["value"] for e in container.get("env", []) if e["name"] == name]
    assert len(values) == 1, f"{name} set {len(values)} times"
    return str(values[0])


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with OPTIONFEED_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            text.splitlines(keepends=True),
            f"tests/golden/chart/{name}",
            "helm template",
        )
    )
    assert text == expected, f"{name} differs from the golden file:\n{diff}"


def test_chart_version_and_app_version_are_the_project_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["version"] == project
    assert chart["appVersion"] == project
    assert chart["kubeVersion"] == ">=1.29.0-0"


@pytest.mark.parametrize(
    "values",
    [None, GOLDEN / "watch-namespaces.values.yaml", GOLDEN / "monitoring.values.yaml"],
    ids=["defaults", "watch-namespaces", "monitoring"],
)
def test_helm_lint_is_clean(helm_env: dict[str, str], values: Path | None) -> None:
    args: list[str | Path] = ["lint", "--strict", CHART]
    if values is not None:
        args += ["--values", values]
    result = helm_run(helm_env, *args)
    output = result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in output
    assert "[WARNING]" not in output
    assert "[ERROR]" not in output
    # A symlink inside the chart would make helm say so; the chart has none.
    assert "symbolic link" not in output


def test_default_rendering_matches_the_golden_file(helm_env: dict[str, str]) -> None:
    text = template(helm_env)
    check_golden("default.yaml", text)
    kinds = [d["kind"] for d in documents(text)]
    assert kinds == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"]
    (binding,) = by_kind(text, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == OPERATOR
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR, "namespace": RELEASE_NAMESPACE}
    ]
    container = operator_container(text)
    assert container["args"][:3] == ["operator", "--all-namespaces", "--standalone"]
    assert not [a for a in container["args"] if a.startswith("--namespace")]
    # Feeds that name no image get the operator's own.
    assert container["image"] == "ghcr.io/optionfeed/optionfeed:0.1.0"
    assert env_value(container, "OPTIONFEED_COLLECTOR_IMAGE") == container["image"]


def test_watch_namespaces_rendering_matches_the_golden_file(helm_env: dict[str, str]) -> None:
    text = template(helm_env, "--values", GOLDEN / "watch-namespaces.values.yaml")
    check_golden("watch-namespaces.yaml", text)
    assert not by_kind(text, "ClusterRoleBinding")
    bindings = by_kind(text, "RoleBinding")
    assert [b["metadata"]["namespace"] for b in bindings] == ["a", "b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": OPERATOR,
        }
        assert binding["subjects"][0]["namespace"] == RELEASE_NAMESPACE
    args = operator_container(text)["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=a", "--namespace=b"]


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("imag.tag=1.0", "additional properties 'imag' not allowed"),
        ("image.tga=1.0", "additional properties 'tga' not allowed"),
        ("watchNamespace={a}", "additional properties 'watchNamespace' not allowed"),
        ("serviceAcount.create=false", "additional properties 'serviceAcount' not allowed"),
        ("rbac.crate=false", "additional properties 'crate' not allowed"),
        ("resources.request.cpu=1", "additional properties 'request' not allowed"),
        ("resyncInterval=0", "/resyncInterval"),
        ("resyncInterval=soon", "/resyncInterval"),
        ("watchNamespaces={Market_Data}", "does not match pattern"),
        ("image.pullPolicy=Sometimes", "value must be one of"),
        ("image.digest=latest", "does not match pattern"),
        ("extraArgs={--priority,10}", "/extraArgs/1"),
    ],
)
def test_the_values_schema_rejects_a_mistake(
    helm_env: dict[str, str], setting: str, complaint: str
) -> None:
    result = helm_run(helm_env, "template", RELEASE, CHART, "--set", setting, check=False)
    assert result.returncode != 0, result.stdout
    assert "values don't meet the specifications of the schema" in result.stderr
    assert complaint in result.stderr


@pytest.mark.parametrize("kube_version", ["1.29.0", None], ids=["minimum", "helm-default"])
def test_renders_for_the_minimum_and_the_default_kubernetes_version(
    helm_env: dict[str, str], kube_version: str | None
) -> None:
    args = ["--kube-version", kube_version] if kube_version else []
    assert by_kind(template(helm_env, *args), "Deployment")


def test_refuses_a_kubernetes_version_below_the_minimum(helm_env: dict[str, str]) -> None:
    result = helm_run(
        helm_env, "template", RELEASE, CHART, "--kube-version", "1.28.15", check=False
    )
    assert result.returncode != 0
    assert "chart requires kubeVersion: >=1.29.0-0" in result.stderr


def test_monitoring_rendering_matches_the_golden_file(helm_env: dict[str, str]) -> None:
    text = template(helm_env, "--values", GOLDEN / "monitoring.values.yaml")
    check_golden("monitoring.yaml", text)
    collectors, operator = by_kind(text, "PodMonitor")
    assert collectors["spec"]["namespaceSelector"] == {"any": True}
    assert collectors["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "optionfeed-collector",
        "app.kubernetes.io/managed-by": "optionfeed-operator",
    }
    relabel = {
        r["targetLabel"]: r for r in collectors["spec"]["podMetricsEndpoints"][0]["relabelings"]
    }
    assert relabel["job"]["replacement"] == "optionfeed-collector"
    assert relabel["feed"]["sourceLabels"] == ["__meta_kubernetes_pod_label_optionfeed_io_feed"]
    assert relabel["shard"]["sourceLabels"] == ["__meta_kubernetes_pod_label_optionfeed_io_shard"]
    (endpoint,) = operator["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "optionfeed-operator"}]
    # The operator's container has that port, and the operator serves it.
    container = operator_container(text)
    assert {"name": "metrics", "containerPort": 9464} in container["ports"]
    assert "--metrics-port=9464" in container["args"]
    # The PrometheusRule is the plain rules file, and the dashboard the JSON file, unchanged.
    (rule,) = by_kind(text, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    plain = yaml.safe_load((CHART / "files" / "optionfeed-rules.yaml").read_text())
    assert rule["spec"] == {"groups": plain["groups"]}
    (dashboard,) = [
        d for d in by_kind(text, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]
    ]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "optionfeed"}
    shipped = json.loads((CHART / "files" / "optionfeed-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["optionfeed-dashboard.json"]) == shipped

    # Confined to some namespaces, the collectors' PodMonitor looks only there.
    confined = template(
        helm_env, "--set", "metrics.podMonitor.enabled=true", "--set", "watchNamespaces={a,b}"
    )
    collectors, _ = by_kind(confined, "PodMonitor")
    assert collectors["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_values_shape_the_rendering(helm_env: dict[str, str]) -> None:
    digest = "sha256:" + "ab" * 32
    pinned = operator_container(template(helm_env, "--set", f"image.digest={digest}"))
    assert pinned["image"] == f"ghcr.io/optionfeed/optionfeed@{digest}"
    assert env_value(pinned, "OPTIONFEED_COLLECTOR_IMAGE") == pinned["image"]

    text = template(
        helm_env,
        "--set",
        "collectorImage=registry.example/collector:2",
        "--set",
        "resyncInterval=2.5",
        "--set-string",
        "extraArgs={--priority=10}",
        "--set",
        "extraEnv[0].name=OPTIONFEED_EXAMPLE,extraEnv[0].value=x",
    )
    container = operator_container(text)
    assert env_value(container, "OPTIONFEED_COLLECTOR_IMAGE") == "registry.example/collector:2"
    assert env_value(container, "OPTIONFEED_EXAMPLE") == "x"
    assert container["args"][-2:] == ["--resync-interval=2.5", "--priority=10"]

    no_rbac = template(helm_env, "--set", "rbac.create=false")
    assert [d["kind"] for d in documents(no_rbac)] == ["ServiceAccount", "Deployment"]

    own_account = template(
        helm_env, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=mine"
    )
    assert not by_kind(own_account, "ServiceAccount")
    (binding,) = by_kind(own_account, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "mine"
    (deployment,) = by_kind(own_account, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "mine"

    # Binding the rules to the namespace's "default" account by accident would be no least
    # privilege: without an account of its own, the chart wants one named.
    result = helm_run(
        helm_env, "template", RELEASE, CHART, "--set", "serviceAccount.create=false", check=False
    )
    assert result.returncode != 0
    assert "serviceAccount.name is required" in result.stderr


def test_the_crd_exists_once_and_helm_renders_it_from_the_chart(
    helm_env: dict[str, str],
) -> None:
    # crds/ at the top of the repository holds a link to the chart's file, not a copy.
    top_level = ROOT / "crds" / CRD_FILE.name
    assert top_level.is_symlink()
    assert top_level.resolve() == CRD_FILE.resolve()
    assert not CRD_FILE.is_symlink()

    crds = by_kind(template(helm_env, "--include-crds"), "CustomResourceDefinition")
    assert crds == [yaml.safe_load(CRD_FILE.read_text())]
    assert not by_kind(template(helm_env), "CustomResourceDefinition")


def test_the_packaged_chart_carries_the_crd_and_renders_the_same(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    output = helm_run(helm_env, "package", CHART, "--destination", tmp_path)
    assert "symbolic link" not in output.stdout + output.stderr
    package = tmp_path / "optionfeed-0.1.0.tgz"
    with tarfile.open(package) as tar:
        member = tar.getmember(f"optionfeed/crds/{CRD_FILE.name}")
        assert member.isfile()
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == CRD_FILE.read_bytes()
        names = tar.getnames()
    assert "optionfeed/values.schema.json" in names
    assert "optionfeed/README.md" in names
    from_package = helm_run(
        helm_env, "template", RELEASE, package, "--namespace", RELEASE_NAMESPACE, "--include-crds"
    ).stdout
    assert from_package == template(helm_env, "--include-crds")


def test_deploy_holds_the_chart_rendered_with_its_defaults(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    subprocess.run(
        ["bash", str(DEPLOY / "render.sh"), str(tmp_path)],
        env=helm_env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    rendered = sorted(p.name for p in tmp_path.iterdir())
    assert rendered == ["operator.yaml", "rbac.yaml"]
    for name in rendered:
        fresh = (tmp_path / name).read_text()
        shipped = (DEPLOY / name).read_text()
        diff = "".join(
            difflib.unified_diff(
                shipped.splitlines(keepends=True),
                fresh.splitlines(keepends=True),
                f"deploy/{name}",
                "charts/optionfeed rendered",
            )
        )
        assert fresh == shipped, (
            f"deploy/{name} is not the chart's rendering: run deploy/render.sh\n{diff}"
        )
    # The rendering's namespace is the one deploy/namespace.yaml creates, and it enforces the
    # Pod Security Standard the operator is built for.
    (namespace,) = documents((DEPLOY / "namespace.yaml").read_text())
    (account,) = by_kind((DEPLOY / "rbac.yaml").read_text(), "ServiceAccount")
    assert account["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def readme_values() -> dict[str, str]:
    """The chart README's values table: key -> default cell."""
    rows = re.findall(
        r"^\| `([A-Za-z.]+)` \| (.*?) \| .* \|$",
        (CHART / "README.md").read_text(),
        flags=re.MULTILINE,
    )
    return dict(rows)


def test_every_value_is_documented_in_the_chart_readme() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = readme_values()
    for key, default in documented.items():
        node: Any = values
        for part in key.split("."):
            assert isinstance(node, dict), f"README documents {key}, but {part} has no keys"
            assert part in node, f"README documents {key}, which values.yaml does not have"
            node = node[part]
        cell = re.fullmatch(r"`(.*)`", default)
        if cell is not None:
            assert yaml.safe_load(cell.group(1) or '""') == node, f"README default of {key}"
    for key in values:
        assert any(d == key or d.startswith(f"{key}.") for d in documented), (
            f"values.yaml key {key} is missing from the README's table"
        )
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]) == set(values)


# --- on the real control plane --------------------------------------------------------------------


def remove_unused_crd(control_plane: ControlPlane) -> bool:
    """Delete the CRD if it is installed and no feed exists; True if it is now absent.

    A CRD that has feeds stays: deleting it would delete them under other tests' operators.
    """
    if not control_plane.exists(CRD_API):
        return True
    try:
        feeds = control_plane.api("GET", "/apis/optionfeed.io/v1alpha1/optionfeeds")["items"]
    except ApiError:
        feeds = []
    if feeds:
        return False
    control_plane.kubectl("delete", "crd", CRD_NAME, "--wait=true", "--timeout=60s")
    wait_for(lambda: not control_plane.exists(CRD_API), "the CRD to be deleted", timeout=60)
    return True


def can(control_plane: ControlPlane, user: str, verb: str, resource: str, *where: str) -> bool:
    result = control_plane.kubectl(
        "auth", "can-i", verb, resource, *where, "--as", user, check=False
    )
    answer: str = result.stdout.strip()
    return answer == "yes"


def operator_pods(control_plane: ControlPlane, namespace: str, release: str) -> list[Any]:
    selector = f"app.kubernetes.io/name=optionfeed-operator,app.kubernetes.io/instance={release}"
    pods: list[Any] = control_plane.api(
        "GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"
    )["items"]
    return pods


def ready_operator_pod(control_plane: ControlPlane, namespace: str, release: str) -> dict[str, Any]:
    pods = operator_pods(control_plane, namespace, release)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    (pod,) = pods
    assert pod["status"]["phase"] == "Running"
    ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
    assert [c["status"] for c in ready] == ["True"]
    result: dict[str, Any] = pod
    return result


@pytest.fixture
def release() -> str:
    """A release name of its own: the ClusterRole and its binding are named after it."""
    return f"of-{secrets.token_hex(3)}"


@pytest.fixture
def restricted_namespace(control_plane: ControlPlane, namespace: str) -> str:
    control_plane.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    return namespace


@pytest.fixture
def watched_namespaces(control_plane: ControlPlane) -> Iterator[list[str]]:
    """Three fresh namespaces: the first two to watch, the third to stay out of."""
    names = [f"chart-{role}-{secrets.token_hex(3)}" for role in ("a", "b", "c")]
    for name in names:
        control_plane.kubectl("create", "namespace", name)
    yield names
    for name in names:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_install_runs_the_operator_in_a_restricted_namespace_and_uninstall_keeps_the_crd(
    control_plane: ControlPlane, restricted_namespace: str, release: str
) -> None:
    namespace = restricted_namespace
    # The namespace really enforces the standard: a pod that may run as root is refused.
    refused = control_plane.kubectl(
        "run",
        "root",
        "-n",
        namespace,
        "--image=registry.invalid/none:0",
        "--dry-run=server",
        check=False,
    )
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr
    crd_absent = remove_unused_crd(control_plane)

    installed = control_plane.helm(
        "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s"
    )
    operator = f"{release}-optionfeed-operator"
    # The release notes say what to do next.
    assert "create secret generic optionfeed-db" in installed.stdout
    assert f"kubectl -n {namespace} rollout status deployment/{operator}" in installed.stdout
    assert "helm show crds" in installed.stdout

    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
    if crd_absent:
        crd = control_plane.api("GET", CRD_API)
        assert {f["manager"] for f in crd["metadata"]["managedFields"]} >= {"helm"}

    # `--wait` returned, so the Deployment is available: its pod passed restricted admission, runs
    # (under kwok) as the chart's ServiceAccount and is Ready.
    pod = ready_operator_pod(control_plane, namespace, release)
    assert pod["spec"]["serviceAccountName"] == operator
    assert pod["spec"]["containers"][0]["args"][:3] == [
        "operator",
        "--all-namespaces",
        "--standalone",
    ]
    events = control_plane.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    assert not [e for e in events if e.get("reason") == "FailedCreate"], json.dumps(events)

    # Cluster-wide: the operator may act on feeds anywhere, and never read a Secret.
    account = f"system:serviceaccount:{namespace}:{operator}"
    wait_for(
        lambda: can(control_plane, account, "watch", "optionfeeds.optionfeed.io", "-A"),
        "the ClusterRoleBinding to take effect",
    )
    assert can(control_plane, account, "patch", "optionfeeds.optionfeed.io/status", "-n", "x")
    assert not can(control_plane, account, "get", "secrets", "-n", namespace)
    assert not can(control_plane, account, "delete", "optionfeeds.optionfeed.io", "-n", "x")

    control_plane.helm("uninstall", release, "--namespace", namespace, "--wait")
    for path in (
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{operator}",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{operator}",
        f"{RBAC_API}/clusterroles/{operator}",
        f"{RBAC_API}/clusterrolebindings/{operator}",
    ):
        assert not control_plane.exists(path), f"{path} is still there after helm uninstall"
    wait_for(
        lambda: not operator_pods(control_plane, namespace, release),
        "the operator pod to go",
        timeout=60,
    )
    # Helm never deletes what it installed from crds/: the feeds outlive the release.
    assert control_plane.exists(CRD_API)


def test_install_with_watch_namespaces_grants_the_rules_only_there(
    control_plane: ControlPlane,
    restricted_namespace: str,
    watched_namespaces: list[str],
    release: str,
) -> None:
    a, b, c = watched_namespaces
    control_plane.helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        restricted_namespace,
        "--set",
        f"watchNamespaces={{{a},{b}}}",
        "--wait",
        "--timeout",
        "120s",
    )
    operator = f"{release}-optionfeed-operator"
    pod = ready_operator_pod(control_plane, restricted_namespace, release)
    args = pod["spec"]["containers"][0]["args"]
    assert args[:4] == ["operator", f"--namespace={a}", f"--namespace={b}", "--standalone"]

    account = f"system:serviceaccount:{restricted_namespace}:{operator}"
    wait_for(
        lambda: can(control_plane, account, "watch", "optionfeeds.optionfeed.io", "-n", a),
        "the RoleBindings to take effect",
    )
    assert can(control_plane, account, "create", "deployments.apps", "-n", b)
    assert not can(control_plane, account, "watch", "optionfeeds.optionfeed.io", "-n", c)
    assert not can(control_plane, account, "watch", "optionfeeds.optionfeed.io", "-A")
    assert not control_plane.exists(f"{RBAC_API}/clusterrolebindings/{operator}")

    control_plane.helm("uninstall", release, "--namespace", restricted_namespace, "--wait")
    for ns in (a, b):
        path = f"{RBAC_API}/namespaces/{ns}/rolebindings/{operator}"
        assert not control_plane.exists(path), f"{path} is still there after helm uninstall"
    assert not control_plane.exists(f"{RBAC_API}/clusterroles/{operator}")
