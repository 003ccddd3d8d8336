"""The OCI archives `make image` writes: layout, digests, platform, labels, user, entrypoint and
what the layers hold. Read from the files; no container runtime needed."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile

import pytest

from harness.oci import ROOT, Archive, build
from optionfeed import __version__
from optionfeed_operator.manifests import DEFAULT_IMAGE, RUN_AS_USER, SPOOL_DIR

PLATFORMS = {
    "amd64": {"architecture": "amd64", "os": "linux"},
    "arm64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
}


def test_archive_is_an_oci_layout_named_after_the_version_and_architecture(archive: Archive):
    assert archive.path.name == f"optionfeed-{__version__}-{archive.arch}.oci.tar"
    assert json.loads(archive.files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert archive.index["schemaVersion"] == 2
    assert archive.index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert archive.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


def test_index_names_the_image_the_operator_runs_by_default(archive: Archive):
    (entry,) = archive.index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == DEFAULT_IMAGE
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == __version__
    assert entry["platform"] == PLATFORMS[archive.arch]
    assert {k: archive.config[k] for k in entry["platform"]} == entry["platform"]


def test_every_blob_matches_its_digest_and_size(archive: Archive):
    descriptors = [
        archive.index["manifests"][0],
        archive.manifest["config"],
        *archive.manifest["layers"],
    ]
    for descriptor in descriptors:
        data = archive.blob(descriptor)
        assert descriptor["digest"] == f"sha256:{hashlib.sha256(data).hexdigest()}"
        assert descriptor["size"] == len(data)
    blobs = {name for name in archive.files if name.startswith("blobs/")}
    assert len(blobs) == len(descriptors), "the archive holds blobs nothing refers to"


def test_diff_ids_are_the_digests_of_the_uncompressed_layers(archive: Archive):
    layers = archive.manifest["layers"]
    assert [layer["mediaType"] for layer in layers] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ] * 3
    diff_ids = [
        f"sha256:{hashlib.sha256(gzip.decompress(archive.blob(layer))).hexdigest()}"
        for layer in layers
    ]
    assert archive.config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}


def test_config_runs_optionfeed_as_the_non_root_user_the_pods_run_as(archive: Archive):
    config = archive.config["config"]
    assert config["Entrypoint"] == ["optionfeed"]
    assert config["User"] == f"{RUN_AS_USER}:{RUN_AS_USER}"
    assert config["WorkingDir"] == "/var/lib/optionfeed"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/var/lib/optionfeed"
    assert config["ExposedPorts"] == {"9464/tcp": {}}


def test_labels_follow_the_oci_annotations(archive: Archive):
    labels = archive.config["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "optionfeed"
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"]
    )
    assert labels["org.opencontainers.image.description"]
    assert archive.manifest["annotations"] == labels


def test_files_belong_to_root_except_the_users_home(archive: Archive):
    home = "var/lib/optionfeed"
    for _, member in archive.layer_members():
        if member.name == home or member.name.startswith(home + "/"):
            assert (member.uid, member.gid) == (RUN_AS_USER, RUN_AS_USER), member.name
        else:
            assert (member.uid, member.gid) == (0, 0), member.name
        writable_by_all = member.mode & 0o002 and not member.issym()
        assert not writable_by_all or member.name == "tmp", member.name
        assert not member.mode & 0o4000, f"setuid: {member.name}"


def test_every_entry_has_one_fixed_mtime_for_reproducible_layers(archive: Archive):
    created = archive.config["created"]
    mtimes = {member.mtime for _, member in archive.layer_members()}
    assert len(mtimes) == 1
    assert tarfile.TarInfo().mtime == 0  # sanity: a real value was set, not the default
    assert created.startswith(build.time.strftime("%Y-%m-%d", build.time.gmtime(mtimes.pop())))


def test_layers_hold_debian_then_the_locked_dependencies_then_optionfeed(archive: Archive):
    names: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    for number, member in archive.layer_members():
        names[number].add(member.name)
    site = build.SITE_PACKAGES
    assert "usr/bin/python3.11" in names[0]
    assert "etc/ssl/certs/ca-certificates.crt" in names[0]
    assert "var/lib/dpkg/status.d/python3.11" in names[0]
    assert f"{site}/aiohttp/__init__.py" in names[1]
    assert f"{site}/optionfeed/cli.py" in names[2]
    assert "usr/local/bin/optionfeed" in names[2]
    # The embedded PostgreSQL is for laptops; the image always has a database URL.
    assert not any("pgserver" in name for layer in names.values() for name in layer)
    # Compiled ahead of time, since nothing can be written at run time.
    assert f"{site}/optionfeed/__pycache__/cli.cpython-311.pyc" in names[2]
    assert f"{site}/aiohttp/__pycache__/__init__.cpython-311.pyc" in names[1]
    assert "usr/lib/python3.11/asyncio/__pycache__/events.cpython-311.pyc" in names[0]


def test_the_spool_volume_mounts_inside_the_users_home(archive: Archive):
    # In a pod the spool is a volume; without one (docker run) it is still the user's to write.
    assert SPOOL_DIR.startswith(archive.config["config"]["WorkingDir"] + "/")


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("USER", f"{build.UID}:{build.UID}"),
        ("ENTRYPOINT", json.dumps(build.ENTRYPOINT)),
        ("WORKDIR", build.HOME),
        ("EXPOSE", " ".join(build.EXPOSED_PORTS)),
        ("ARG VERSION", f"={__version__}"),
    ],
)
def test_containerfile_agrees_with_the_build_script(instruction: str, expected: str):
    text = (ROOT / "image/Containerfile").read_text()
    lines = [line for line in text.splitlines() if line.startswith(instruction)]
    assert lines, f"no {instruction} in image/Containerfile"
    assert lines[-1][len(instruction) :].strip() == expected


def test_containerfile_sets_the_build_scripts_environment():
    text = (ROOT / "image/Containerfile").read_text()
    block = text[text.index("\nENV ") :].split("\n\n")[0]
    if "\nWORKDIR" in block:
        block = block[: block.index("\nWORKDIR")]
    env = re.findall(r"([A-Z_]+)=(\S+)", block)
    assert [f"{k}={v}" for k, v in env] == build.ENV
