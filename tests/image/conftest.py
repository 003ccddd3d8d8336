"""Fixtures for the image tests: each archive read back, and a private containerd that has
imported both."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.containerd import PrivateContainerd
from harness.oci import ARCHES, Archive, archive_path, build, read_archive


@pytest.fixture(scope="session", params=ARCHES)
def archive(request: pytest.FixtureRequest) -> Archive:
    return read_archive(request.param)


@pytest.fixture(scope="session")
def containerd() -> Iterator[PrivateContainerd]:
    """A private containerd with each archive imported into its own namespace (both carry the
    same name)."""
    if os.geteuid() != 0:
        pytest.fail("the image tests start containerd, which needs root")
    build.ensure_binfmt("qemu-aarch64")
    with PrivateContainerd() as ctd:
        for arch in ARCHES:
            ctd.ctr(
                "images",
                "import",
                f"--platform=linux/{arch}",
                str(archive_path(arch)),
                namespace=arch,
            )
        yield ctd
