"""The OCI archives `make image` writes, read back: their files, index, manifest and config, and
the build script itself (image/build.py) for its names and constants."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHES = ("amd64", "arm64")


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_build", ROOT / "image/build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = _load_build()


@dataclass
class Archive:
    """One OCI archive: its files by name and its JSON documents parsed."""

    arch: str
    path: Path
    files: dict[str, bytes]
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]

    def blob(self, descriptor: dict[str, Any]) -> bytes:
        algorithm, digest = descriptor["digest"].split(":", 1)
        return self.files[f"blobs/{algorithm}/{digest}"]

    def layer_members(self) -> Iterator[tuple[int, tarfile.TarInfo]]:
        """(layer number, entry) for every entry of every layer."""
        for number, layer in enumerate(self.manifest["layers"]):
            with tarfile.open(fileobj=io.BytesIO(self.blob(layer)), mode="r:gz") as tar:
                for member in tar.getmembers():
                    yield number, member


def archive_path(arch: str) -> Path:
    path = Path(build.archive_path(ROOT / "build/image", build.read_project(), arch))
    if not path.exists():
        pytest.fail(f"{path} not found: run `make image`")
    return path


def read_archive(arch: str) -> Archive:
    path = archive_path(arch)
    files: dict[str, bytes] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            content = tar.extractfile(member)
            if content is not None:
                files[member.name] = content.read()
    index = json.loads(files["index.json"])
    archive = Archive(arch, path, files, index, {}, {})
    archive.manifest = json.loads(archive.blob(index["manifests"][0]))
    archive.config = json.loads(archive.blob(archive.manifest["config"]))
    return archive
