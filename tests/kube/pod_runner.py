"""Run the containers of live Deployments as local processes, the way a kubelet would start them.

kwok schedules pods and reports them Running but runs no container. For the end-to-end tests the
collector must really run, so this module reads a Deployment back from the API server and builds,
for its pod template's container, the process a kubelet would start:

* **command and args** from the container. ``$(VAR)`` references are expanded from the container's
  env as the kubelet does. The image's entrypoint is mapped to a local command by
  :data:`ENTRYPOINTS` (``optionfeed`` → ``sys.executable -m optionfeed``); any other command is an
  error.
* **env** from the container, in order: ``value`` (with ``$(VAR)`` expansion), and ``valueFrom``
  with ``secretKeyRef`` / ``configMapKeyRef`` read from the API server now (``optional`` honoured),
  ``fieldRef`` for ``metadata.name`` / ``metadata.namespace``. Anything else (``envFrom``, resource
  fields, other field paths) is an error rather than a silent difference. Of the test process's
  own environment only ``PATH`` is passed on (the image would bring its own); ``HOME`` is the pod's
  directory and ``HOSTNAME`` the pod's name, as in a container.
* **volumes**, each materialised in the pod's directory (``<root>/volumes/<name>``):
  ``emptyDir`` as an empty directory; ``configMap`` exactly as the kubelet's atomic writer lays it
  out: a timestamped ``..<ts>`` directory holding the projected keys (``items`` → ``path``, file
  modes from ``mode`` / ``defaultMode``), a ``..data`` symlink to it, and a symlink per visible
  name (``assignment.json -> ..data/assignment.json``). :class:`Kubelet` keeps them in step with
  the API server: a changed ConfigMap gets a new timestamped directory and ``..data`` is swapped
  to it in one ``rename``. Other volume types, and ``subPath`` mounts, are errors.

What is rewritten, and why (a container sees its own filesystem and network; a local process
shares the host's):

1. **Container paths.** An arg, or a literal env ``value``, that is a volume's ``mountPath`` or a
   path below it (also as ``--flag=PATH``) is rewritten to the same path under that volume's local
   directory: ``/etc/optionfeed/assignment.json`` → ``<root>/volumes/assignment/assignment.json``,
   ``OPTIONFEED_SPOOL_DIR=/var/lib/optionfeed/spool`` → ``<root>/volumes/spool``. Values read from
   Secrets and ConfigMaps are never rewritten. An absolute path that no mount covers is an error:
   it would name the image's read-only root filesystem, which does not exist here.
2. **/tmp.** When a volume is mounted at ``/tmp`` and the container sets no ``TMPDIR``, ``TMPDIR``
   is set to that volume's directory, so that what the process writes to its temporary directory
   lands where the container's would.
3. **Ports.** Each ``containerPort`` gets a free loopback port. The flags in :data:`PORT_FLAGS`
   (``--metrics-port``) must name a declared ``containerPort`` and are rewritten to its local port,
   and ``--metrics-host 127.0.0.1`` is set: in the container the server listens on every address
   of the pod's own network namespace; here that would be every address of the machine.
4. **Working directory.** The container's ``workingDir`` (if any) is mapped like a path; without
   one the process runs in ``<root>/rootfs``, an empty directory standing in for the image's.

Nothing else is changed: probes, resources and security contexts are not enforced, but
:meth:`LocalPod.probe` asks a probe's ``httpGet`` endpoint on the mapped port the way the kubelet
would. Every rewrite is listed in :attr:`LocalPod.rewrites`, so a test can show or check them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from harness.control_plane import ApiError, ControlPlane
from harness.ports import free_port
from harness.processes import die_with_parent

# The image's entrypoint → the same program from this checkout's environment.
ENTRYPOINTS: dict[tuple[str, ...], list[str]] = {
    ("optionfeed",): [sys.executable, "-m", "optionfeed"],
}
# Flags whose value is a containerPort the process listens on, and the host flag that goes with
# them (set to loopback).
PORT_FLAGS = ("--metrics-port",)
HOST_FLAG = ("--metrics-host", "127.0.0.1")
DATA_LINK = "..data"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodSpecError(RuntimeError):
    """The pod template uses something this runner does not reproduce (or is inconsistent)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is ``$``, anything
    else is left as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, text)


def _get(cp: ControlPlane, path: str) -> dict[str, Any] | None:
    try:
        return cp.api("GET", path)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _configmap_bytes(configmap: Mapping[str, Any]) -> dict[str, bytes]:
    data = {key: str(value).encode() for key, value in (configmap.get("data") or {}).items()}
    for key, value in (configmap.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


# --- ConfigMap volumes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Swap:
    """One update of a ConfigMap volume: ``..data`` now points at ``directory``."""

    pod: str
    volume: str
    resource_version: str
    directory: str
    at: float  # time.monotonic()


class ConfigMapVolume:
    """A ``configMap`` volume laid out like the kubelet's atomic writer does it."""

    def __init__(self, pod: str, name: str, directory: Path, source: Mapping[str, Any]) -> None:
        self.pod = pod
        self.name = name
        self.directory = directory
        self.configmap = str(source["name"])
        self.items: list[dict[str, Any]] | None = source.get("items")
        self.default_mode = int(source.get("defaultMode", 0o644))
        self.optional = bool(source.get("optional", False))
        self.payload: dict[str, tuple[bytes, int]] | None = None
        for item in self.items or []:
            path = PurePosixPath(item["path"])
            if path.is_absolute() or ".." in path.parts or str(path).startswith(".."):
                raise PodSpecError(f"volume {name}: item path {item['path']!r} is not allowed")

    def project(self, configmap: Mapping[str, Any] | None) -> dict[str, tuple[bytes, int]]:
        """The files of the volume for this version of the ConfigMap: path → (content, mode)."""
        if configmap is None:
            if self.optional:
                return {}
            raise PodSpecError(f"volume {self.name}: ConfigMap {self.configmap} not found")
        data = _configmap_bytes(configmap)
        if self.items is None:
            return {key: (value, self.default_mode) for key, value in data.items()}
        payload: dict[str, tuple[bytes, int]] = {}
        for item in self.items:
            key = item["key"]
            if key not in data:
                if self.optional:
                    continue
                raise PodSpecError(f"volume {self.name}: ConfigMap {self.configmap} has no {key}")
            payload[str(item["path"])] = (data[key], int(item.get("mode", self.default_mode)))
        return payload

    def write(self, payload: dict[str, tuple[bytes, int]]) -> str | None:
        """Publish ``payload`` if it differs from what is there; returns the new data directory.

        A new ``..<timestamp>.<random>`` directory is written in full, a ``..data_tmp`` symlink
        to it is renamed over ``..data`` (one atomic step: a reader sees the old set of files or
        the new one, never a mix), the per-name symlinks are added or removed, and the previous
        directory is deleted.
        """
        if payload == self.payload:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
        fresh = Path(tempfile.mkdtemp(prefix=stamp, dir=self.directory))
        fresh.chmod(0o755)
        for relative, (content, mode) in payload.items():
            target = fresh / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode)
        data_link = self.directory / DATA_LINK
        previous = os.readlink(data_link) if data_link.is_symlink() else None
        staging = self.directory / f"{DATA_LINK}_tmp"
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        staging.symlink_to(fresh.name)
        os.replace(staging, data_link)
        visible = {PurePosixPath(path).parts[0] for path in payload}
        for name in sorted(visible):
            link = self.directory / name
            if not link.is_symlink():
                link.symlink_to(f"{DATA_LINK}/{name}")
        for old in {PurePosixPath(path).parts[0] for path in self.payload or {}} - visible:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / old).unlink()
        if previous is not None:
            shutil.rmtree(self.directory / previous, ignore_errors=True)
        self.payload = payload
        return fresh.name


# --- one pod -------------------------------------------------------------------------------------


@dataclass
class LocalPod:
    """The container of one pod, as a local process (see the module docstring)."""

    name: str
    namespace: str
    labels: dict[str, str]
    root: Path
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    mounts: dict[str, Path]  # container mountPath → local directory
    ports: dict[str, int]  # container port, by name and by number → local port
    container: dict[str, Any]
    configmap_volumes: list[ConfigMapVolume]
    termination_grace: float
    rewrites: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    terminated: bool = False

    @property
    def log_path(self) -> Path:
        return self.root / "container.log"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def local_path(self, container_path: str) -> Path:
        """Where a path of the container's filesystem is for this process."""
        mapped = _map_path(container_path, self.mounts)
        if mapped is None:
            raise PodSpecError(f"{container_path} is on no volume of {self.name}")
        return Path(mapped)

    def start(self) -> LocalPod:
        assert self.process is None, f"{self.name} already started"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM, once: a second one would be a second signal to the process (which the
        collector takes as "stop without draining"), not what the kubelet does."""
        if self.process is not None and not self.terminated and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after the pod's termination grace period (or ``grace``), as the
        kubelet stops a container; returns the exit code (None if it was never started)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            self.terminate()
            try:
                process.wait(self.termination_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.exit_code = process.returncode
        return self.exit_code

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def probe(self, kind: str = "readinessProbe", timeout: float = 2.0) -> bool:
        """Ask the container's ``httpGet`` probe on its local port; True on a 2xx/3xx answer."""
        spec = self.container.get(kind)
        if not spec or "httpGet" not in spec:
            raise PodSpecError(f"{self.name} has no httpGet {kind}")
        get = spec["httpGet"]
        port = self.ports.get(str(get["port"]))
        if port is None:
            raise PodSpecError(f"{kind} names port {get['port']!r}, which the container lacks")
        url = f"http://127.0.0.1:{port}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return 200 <= int(response.status) < 400
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def tcp_ports(self) -> set[int]:
        """Local ports of the process's open TCP sockets (from /proc), to tell its connections
        apart in a server's records of its peers."""
        assert self.process is not None
        inodes: set[str] = set()
        fd_dir = Path(f"/proc/{self.process.pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        ports: set[int] = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                lines = Path(f"/proc/{self.process.pid}/net/{table}").read_text().splitlines()
                for line in lines[1:]:
                    fields = line.split()
                    if len(fields) > 9 and fields[9] in inodes:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports


def _map_path(value: str, mounts: Mapping[str, Path]) -> str | None:
    """``value`` with its container mount prefix replaced by the local directory, or None when
    no mount covers it. The longest mountPath wins, as with nested mounts in a container."""
    for mount in sorted(mounts, key=len, reverse=True):
        base = mount.rstrip("/")
        if value in (mount, base):
            return str(mounts[mount])
        if value.startswith(base + "/"):
            return str(mounts[mount] / value[len(base) + 1 :])
    return None


def _rewrite(value: str, mounts: Mapping[str, Path], where: str, rewrites: list[str]) -> str:
    """Rewrite a container path (``PATH`` or ``--flag=PATH``) to its local directory."""
    prefix, path = "", value
    if value.startswith("-") and "=" in value:
        prefix, path = value.split("=", 1)
        prefix += "="
    if not path.startswith("/"):
        return value
    mapped = _map_path(path, mounts)
    if mapped is None:
        raise PodSpecError(
            f"{where}: {path} is on no volume (the image's root filesystem is not reproduced)"
        )
    rewrites.append(f"{where}: {value} -> {prefix}{mapped}")
    return prefix + mapped


def _set_flag(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value set (``--flag V`` or ``--flag=V`` replaced, else appended)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if arg.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    return [*out, flag, value]


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


class _EnvResolver:
    """Reads the Secrets and ConfigMaps that env entries refer to, once each."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp = cp
        self.namespace = namespace
        self._cache: dict[tuple[str, str], dict[str, bytes] | None] = {}

    def _data(self, kind: str, name: str) -> dict[str, bytes] | None:
        if (kind, name) not in self._cache:
            obj = _get(self.cp, f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")
            if obj is None:
                self._cache[kind, name] = None
            elif kind == "secrets":
                self._cache[kind, name] = {
                    k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()
                }
            else:
                self._cache[kind, name] = _configmap_bytes(obj)
        return self._cache[kind, name]

    def key(self, kind: str, ref: Mapping[str, Any], variable: str) -> str | None:
        data = self._data(kind, str(ref["name"]))
        value = None if data is None else data.get(str(ref["key"]))
        if value is None:
            if ref.get("optional"):
                return None
            raise PodSpecError(
                f"env {variable}: {kind[:-1]} {ref['name']} has no key {ref['key']!r} "
                "(the kubelet would not start the container)"
            )
        return value.decode()


def local_pod(
    cp: ControlPlane,
    deployment: Mapping[str, Any],
    root: Path,
    *,
    entrypoints: Mapping[tuple[str, ...], list[str]] = ENTRYPOINTS,
) -> LocalPod:
    """Build the local process for the (single) container of a live Deployment's pod template."""
    meta = deployment["metadata"]
    namespace = str(meta["namespace"])
    template = deployment["spec"]["template"]
    pod_spec = template["spec"]
    containers = pod_spec["containers"]
    if len(containers) != 1 or pod_spec.get("initContainers"):
        raise PodSpecError(f"{meta['name']}: expected one container and no init containers")
    container = containers[0]
    name = f"{meta['name']}-local"
    root.mkdir(parents=True, exist_ok=True)
    rewrites: list[str] = []

    # Volumes and mounts.
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    local_dirs: dict[str, Path] = {}
    configmap_volumes: list[ConfigMapVolume] = []
    for volume_name, volume in volumes.items():
        directory = root / "volumes" / volume_name
        if "emptyDir" in volume:
            directory.mkdir(parents=True, exist_ok=True)
        elif "configMap" in volume:
            configmap_volumes.append(
                ConfigMapVolume(name, volume_name, directory, volume["configMap"])
            )
        else:
            kinds = sorted(set(volume) - {"name"})
            raise PodSpecError(f"volume {volume_name}: {kinds} volumes are not reproduced")
        local_dirs[volume_name] = directory
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise PodSpecError(f"mount {mount['mountPath']}: subPath mounts are not reproduced")
        mounts[str(mount["mountPath"])] = local_dirs[mount["name"]]

    # Ports.
    ports: dict[str, int] = {}
    for port in container.get("ports") or []:
        local = free_port()
        ports[str(port["containerPort"])] = local
        if port.get("name"):
            ports[str(port["name"])] = local

    # Environment, in order, as the kubelet resolves it.
    resolver = _EnvResolver(cp, namespace)
    if container.get("envFrom"):
        raise PodSpecError("envFrom is not reproduced")
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        variable = str(entry["name"])
        if "value" in entry or "valueFrom" not in entry:
            value = expand(str(entry.get("value", "")), env)
            env[variable] = _rewrite(value, mounts, f"env {variable}", rewrites)
            continue
        source = entry["valueFrom"]
        resolved: str | None
        if "secretKeyRef" in source:
            resolved = resolver.key("secrets", source["secretKeyRef"], variable)
        elif "configMapKeyRef" in source:
            resolved = resolver.key("configmaps", source["configMapKeyRef"], variable)
        elif "fieldRef" in source and source["fieldRef"]["fieldPath"] == "metadata.name":
            resolved = name
        elif "fieldRef" in source and source["fieldRef"]["fieldPath"] == "metadata.namespace":
            resolved = namespace
        else:
            raise PodSpecError(f"env {variable}: valueFrom {sorted(source)} is not reproduced")
        if resolved is not None:
            env[variable] = resolved
    if "/tmp" in mounts and "TMPDIR" not in env:
        env["TMPDIR"] = str(mounts["/tmp"])
        rewrites.append(f"env TMPDIR (unset in the container) -> {mounts['/tmp']}")

    # Command and args.
    command = [expand(c, env) for c in container.get("command") or []]
    args = [expand(a, env) for a in container.get("args") or []]
    if tuple(command) not in entrypoints:
        raise PodSpecError(f"no local entrypoint for the container's command {command}")
    args = [_rewrite(a, mounts, "arg", rewrites) for a in args]
    for flag in PORT_FLAGS:
        declared = _flag_value(args, flag)
        if declared is None:
            continue
        if declared not in ports:
            raise PodSpecError(f"{flag} {declared} is not a containerPort of {meta['name']}")
        args = _set_flag(args, flag, str(ports[declared]))
        rewrites.append(f"arg: {flag} {declared} -> {ports[declared]} (loopback)")
        args = _set_flag(args, *HOST_FLAG)
        rewrites.append(f"arg: {HOST_FLAG[0]} {HOST_FLAG[1]} (added)")
    argv = [*entrypoints[tuple(command)], *args]

    working_dir = container.get("workingDir")
    if working_dir:
        workdir = Path(_rewrite(str(working_dir), mounts, "workingDir", rewrites))
    else:
        workdir = root / "rootfs"
    workdir.mkdir(parents=True, exist_ok=True)
    process_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "HOSTNAME": name,
        **env,
    }
    return LocalPod(
        name=name,
        namespace=namespace,
        labels=dict(template["metadata"].get("labels") or {}),
        root=root,
        argv=argv,
        env=process_env,
        workdir=workdir,
        mounts=mounts,
        ports=ports,
        container=container,
        configmap_volumes=configmap_volumes,
        termination_grace=float(pod_spec.get("terminationGracePeriodSeconds", 30)),
        rewrites=rewrites,
    )


# --- the kubelet's volume sync -------------------------------------------------------------------


class Kubelet:
    """Keeps the ConfigMap volumes of local pods in step with the API server.

    A real kubelet notices a changed ConfigMap through its watch or cache and rewrites the volume
    within its sync period (up to about a minute); this one asks the API server every
    ``interval`` seconds, so that a test sees the same kind of update sooner. :meth:`mount`
    writes the first version before a process starts, as the kubelet does before it starts a
    container (a missing ConfigMap or key fails there). Later failures do not stop the loop: a
    volume keeps its last content, as with the kubelet, and the error is kept for :meth:`stop`.
    """

    def __init__(self, cp: ControlPlane, pods: Iterable[LocalPod], interval: float = 0.5) -> None:
        self.cp = cp
        self.pods = list(pods)
        self.interval = interval
        self.swaps: list[Swap] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def mount(self) -> None:
        self._sync(initial=True)

    def start(self) -> Kubelet:
        self._thread = threading.Thread(target=self._run, name="kubelet-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def swaps_of(self, pod: LocalPod, since: float = 0.0) -> list[Swap]:
        with self._lock:
            return [s for s in self.swaps if s.pod == pod.name and s.at >= since]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sync(initial=False)
            except Exception as exc:  # the loop goes on, as the kubelet's does
                with self._lock:
                    self.errors.append(repr(exc))

    def _sync(self, *, initial: bool) -> None:
        configmaps: dict[tuple[str, str], dict[str, Any] | None] = {}
        for pod in self.pods:
            for volume in pod.configmap_volumes:
                key = (pod.namespace, volume.configmap)
                if key not in configmaps:
                    configmaps[key] = _get(
                        self.cp, f"/api/v1/namespaces/{key[0]}/configmaps/{key[1]}"
                    )
                configmap = configmaps[key]
                try:
                    payload = volume.project(configmap)
                except PodSpecError as exc:
                    if initial:
                        raise
                    with self._lock:
                        self.errors.append(f"{pod.name}: kept the last content: {exc}")
                    continue
                directory = volume.write(payload)
                if directory is not None and not initial:
                    version = str((configmap or {}).get("metadata", {}).get("resourceVersion"))
                    with self._lock:
                        self.swaps.append(
                            Swap(pod.name, volume.name, version, directory, time.monotonic())
                        )


def stop_all(pods: Iterable[LocalPod], grace: float | None = None) -> dict[str, int | None]:
    """Stop every pod at once (SIGTERM to all, then wait for each); returns the exit codes."""
    pods = list(pods)
    for pod in pods:
        pod.terminate()
    return {pod.name: pod.stop(grace) for pod in pods}
