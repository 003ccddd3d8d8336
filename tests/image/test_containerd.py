"""The image run by containerd and runc, as a kubelet would: the image's own user, a read-only
root filesystem, each role's command; the arm64 image under qemu-user-static."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import asyncpg
import pytest

from harness.containerd import PrivateContainerd
from harness.oci import ARCHES
from harness.simulator import SimulatorProcess
from optionfeed import __version__
from optionfeed_operator.manifests import DEFAULT_IMAGE, RUN_AS_USER, SPOOL_DIR

_ids = itertools.count()


def run(ctd: PrivateContainerd, arch: str, *command: str) -> str:
    """``ctr run --rm --read-only`` of the image with ``command`` as the process."""
    return ctd.ctr(
        "run",
        "--rm",
        "--read-only",
        f"--platform=linux/{arch}",
        DEFAULT_IMAGE,
        f"image-test-{next(_ids)}",
        *command,
        namespace=arch,
    )


@pytest.mark.parametrize("arch", ARCHES)
def test_version_runs_as_the_non_root_user_on_a_read_only_root(
    containerd: PrivateContainerd, arch: str
):
    assert run(containerd, arch, "optionfeed", "--version").strip() == f"optionfeed {__version__}"
    probe = (
        "import os, platform\n"
        "try:\n    open('/probe', 'w')\nexcept OSError as exc:\n    print(exc.errno)\n"
        "print(os.getuid(), os.getgid(), platform.machine())"
    )
    errno, ids = run(containerd, arch, "python3", "-c", probe).split("\n")[:2]
    assert errno == "30"  # EROFS
    machine = {"amd64": "x86_64", "arm64": "aarch64"}[arch]
    assert ids == f"{RUN_AS_USER} {RUN_AS_USER} {machine}"


@pytest.mark.parametrize("role", ["collect", "operator", "simulate", "migrate", "report"])
def test_every_role_starts_from_the_same_image(containerd: PrivateContainerd, role: str):
    assert f"optionfeed {role}" in run(containerd, "amd64", "optionfeed", role, "--help")


def test_tls_trusts_the_ca_bundle_and_the_dependencies_import(containerd: PrivateContainerd):
    probe = (
        "import ssl, aiohttp, asyncpg, orjson, kopf, lightkube, yaml\n"
        "import optionfeed.cli, optionfeed_operator.handlers\n"
        "print(len(ssl.create_default_context().get_ca_certs()))"
    )
    assert int(run(containerd, "amd64", "python3", "-c", probe)) > 100


def test_collector_records_into_postgres_writing_only_to_its_volumes(
    containerd: PrivateContainerd,
    simulator: SimulatorProcess,
    database_url: str,
    tmp_path: Path,
):
    # What a pod gives the collector: the spool volume (owned through fsGroup) and a /tmp; the
    # root filesystem is read-only, so anything written elsewhere fails the run.
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chown(spool, RUN_AS_USER, RUN_AS_USER)
    containerd.ctr(
        "run",
        "--rm",
        "--read-only",
        "--net-host",
        "--mount",
        f"type=bind,src={spool},dst={SPOOL_DIR},options=rbind:rw",
        "--mount",
        "type=tmpfs,src=tmpfs,dst=/tmp,options=nosuid:nodev:mode=1777",
        "--env",
        f"OPTIONFEED_SPOOL_DIR={SPOOL_DIR}",
        "--env",
        f"DATABASE_URL={database_url}",
        DEFAULT_IMAGE,
        f"image-test-{next(_ids)}",
        "optionfeed",
        "collect",
        "--currency=ETH",
        "--top=5",
        "--channels=ticker,trades",
        f"--exchange-url={simulator.ws_url}",
        "--metrics-port=0",
        "--duration=8",
        namespace="amd64",
    )

    async def count() -> tuple[int, int]:
        conn = await asyncpg.connect(database_url)
        try:
            tickers = await conn.fetchval("SELECT count(*) FROM option_tickers")
            instruments = await conn.fetchval(
                "SELECT count(DISTINCT instrument) FROM option_tickers"
            )
            return int(tickers), int(instruments)
        finally:
            await conn.close()

    tickers, instruments = asyncio.run(count())
    assert instruments == 5
    assert tickers > 5
