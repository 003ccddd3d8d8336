"""Fixtures for tests that run against a real control plane (tier 2, started once per session).

The binaries are built (not skipped) when missing. A cold build takes many minutes, longer than
the per-test timeout, so it runs once after collection, outside any test, with its progress shown
live; the fixture then only starts the processes.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.control_plane import ControlPlane, ToolRunner, ensure_binaries

KUBE_TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = any(
        KUBE_TESTS_DIR in Path(str(item.path)).parents
        and "control_plane" in getattr(item, "fixturenames", ())
        for item in session.items
    )
    if not wanted or session.config.option.collectonly:
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        ensure_binaries()
        return
    with capture.global_and_fixture_disabled():
        ensure_binaries()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, controller manager, scheduler, kwok and two fake Nodes.

    `control_plane.kubeconfig` is an admin kubeconfig (https://127.0.0.1:PORT, the test CA
    inline, a token in system:masters); `control_plane.env()` is an environment with KUBECONFIG
    set and the bin dir (kubectl, helm) first on PATH.
    """
    with ControlPlane(tier=2) as cp:
        yield cp


@pytest.fixture
def kubectl(control_plane: ControlPlane) -> ToolRunner:
    """kubectl as admin: kubectl("get", "pods", "-n", ns, check=True, input=None)."""
    return control_plane.kubectl


@pytest.fixture
def helm(control_plane: ControlPlane) -> ToolRunner:
    """helm against the control plane: helm("template", str(chart_dir))."""
    return control_plane.helm


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for it to go)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.wait_for_service_account(name, "default")
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)
