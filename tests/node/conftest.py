"""Fixtures for the node tier: a control plane with one real kubelet node (containerd, runc, a
CNI bridge), started once per session, with the images its pods run imported.

What is missing is installed or built once after collection, outside any test, with its
progress shown: Debian's containerd/runc/CNI plugins, the control plane and kubelet (cached by
version) and the pause image. The optionfeed image is the archive `make image` writes
(build/image/optionfeed-<version>-<arch>.oci.tar, a dependency of `make test`); PostgreSQL's is
assembled from this machine's server binaries (build-postgres-image.sh), as no registry is
reachable here.
"""

from __future__ import annotations

import platform
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.node import Node, ensure_node_components
from harness.oci import archive_path
from node.stack import FIGURES, NodeCluster

NODE_TESTS_DIR = Path(__file__).resolve().parent
REPO = NODE_TESTS_DIR.parents[1]
POSTGRES_SCRIPT = REPO / "tests" / "harness" / "build-postgres-image.sh"
POSTGRES_ARCHIVE = REPO / "build" / "node" / "postgres.oci.tar"
# The names pods use; each archive is tagged with its name after import.
OPTIONFEED_IMAGE = "localhost/optionfeed:node-test"
POSTGRES_IMAGE = "localhost/optionfeed-postgres:node-test"


def arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def version() -> str:
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    assert match is not None
    return match.group(1)


def _postgres_image_current() -> bool:
    if not POSTGRES_ARCHIVE.exists():
        return False
    built = POSTGRES_ARCHIVE.stat().st_mtime
    sources = [POSTGRES_SCRIPT, *Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    return all(p.stat().st_mtime < built for p in sources)


def _prepare() -> None:
    ensure_node_components()
    if not _postgres_image_current():
        POSTGRES_ARCHIVE.parent.mkdir(parents=True, exist_ok=True)
        print(f"node tier: assembling {POSTGRES_ARCHIVE}", file=sys.stderr, flush=True)
        subprocess.run(
            ["bash", str(POSTGRES_SCRIPT), str(POSTGRES_ARCHIVE), POSTGRES_IMAGE], check=True
        )


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = any(NODE_TESTS_DIR in Path(str(item.path)).parents for item in session.items)
    if not wanted or session.config.option.collectonly:
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        _prepare()
        return
    with capture.global_and_fixture_disabled():
        _prepare()


@pytest.fixture(scope="session")
def node_cluster() -> Iterator[NodeCluster]:
    """etcd, kube-apiserver, controller manager, scheduler and one real kubelet node."""
    with Node() as node:
        for archive, name in (
            (archive_path(arch()), OPTIONFEED_IMAGE),
            (POSTGRES_ARCHIVE, POSTGRES_IMAGE),
        ):
            imported = node.import_image(archive)
            if name not in imported:
                node.ctr("images", "tag", "--force", imported[0], name)
        yield NodeCluster(node, node.kubernetes, OPTIONFEED_IMAGE, POSTGRES_IMAGE)


@pytest.fixture
def node_namespace(node_cluster: NodeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    node_cluster.kubectl("create", "namespace", name)
    node_cluster.kube.wait_for_service_account(name, "default")
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("node tier figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
