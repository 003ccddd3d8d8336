"""A real Kubernetes node for the tests: the control plane of harness/control_plane.py plus a
kubelet, a private containerd (runc, CNI bridge + host-local) and images imported from archives.

Pods run for real: containers in their own namespaces and cgroups, IPs on a bridge the test run
creates (`ofbr<N>`, 10.244.<N>.0/24, chosen free at start). The API server listens on the bridge's
gateway address (10.244.<N>.1), which is also the node's InternalIP, so pods reach it there and it
reaches the kubelet there. Nothing listens on or talks to any other address than that network and
127.0.0.1; no iptables rule is written (no kube-proxy, no masquerade).

`stop()` leaves nothing behind: pods are deleted through the API first (the kubelet tears down
their sandboxes and networks), then the kubelet and containerd stop, leftover tasks are killed,
and the bridge, network namespaces, mounts, cgroups and the kernel settings the kubelet changed
are restored.

    with Node() as node:
        node.cluster.kubectl("get", "nodes")
        node.import_image(Path("image.oci.tar"))
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from harness import builds
from harness.control_plane import (
    STOP_GRACE_SECONDS,
    Component,
    ControlPlane,
    ControlPlaneError,
    build_kubeconfig,
    ensure_binaries,
    free_ports,
)
from harness.processes import Service

HARNESS_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = HARNESS_DIR / "build-node.sh"
ENSURE_SCRIPT = HARNESS_DIR / "ensure-node.sh"
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The kubelet sets these on the host when protectKernelDefaults is false (the default).
KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
# containerd 1.6's CNI library keeps results here whatever the configuration says.
CNI_RESULTS_DIR = Path("/var/lib/cni/results")
# The kubelet links container logs here (a fixed path); the links point into our pod log dir.
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CTR_NAMESPACE = "k8s.io"


def pause_image(version: str) -> str:
    return f"localhost/pause:{version}"


# --- building -----------------------------------------------------------------------------------


def find_node_dir() -> Path | None:
    """The version dir holding bin/kubelet and node/pause.oci.tar if built, else None."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-dir"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None
    return Path(result.stdout.strip().splitlines()[-1])


def ensure_node_components(progress: TextIO | None = None) -> Path:
    """Install Debian's containerd/runc/CNI plugins if missing, build the control plane, the
    kubelet and the pause image if not cached; returns the version dir."""
    ensure_binaries(progress)
    _run_script(ENSURE_SCRIPT, progress)
    cached = find_node_dir()
    if cached is not None:
        return cached
    return Path(_run_script(BUILD_SCRIPT, progress)[-1].strip())


def _run_script(script: Path, progress: TextIO | None) -> list[str]:
    """Run a build/install script, its output shown live; returns its lines."""
    try:
        return builds.run_streamed(script, progress) or [""]
    except builds.BuildFailed as exc:
        raise ControlPlaneError(str(exc)) from exc


# --- the network --------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ControlPlaneError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _subnet_in_use(index: int) -> bool:
    if _ip("link", "show", f"ofbr{index}", check=False).returncode == 0:
        return True
    routes = _ip("-4", "route", "show", "table", "all").stdout
    addrs = _ip("-4", "-o", "addr", "show").stdout
    return f"10.244.{index}." in routes or f"10.244.{index}." in addrs


def choose_network_index() -> int:
    """A subnet index N in 2..250 whose bridge `ofbr<N>` and 10.244.N.0/24 nobody uses,
    starting from one derived from the process id (several test runs on one machine)."""
    start = 2 + os.getpid() % 240
    for step in range(249):
        index = 2 + (start - 2 + step) % 249
        if not _subnet_in_use(index):
            return index
    raise ControlPlaneError("no free 10.244.N.0/24 for the pod bridge")


class Node(Service):
    """A control plane plus one real kubelet node (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str = "ofnode-0",
        network_index: int | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.name = name
        self.index = network_index
        self.startup_timeout = startup_timeout
        self.cluster: ControlPlane | None = None
        self._components: list[Component] = []
        self._dir: Path | None = None
        self._version_dir: Path | None = None
        self._sysctls: dict[str, str] = {}
        self._bridge_created = False
        self._cgroup_dirs: list[Path] = []
        self._netns: set[str] = set()
        self.timings: dict[str, float] = {}

    # -- names --

    @property
    def bridge(self) -> str:
        return f"ofbr{self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        """The bridge's address: the node's InternalIP and where the API server listens."""
        return f"10.244.{self.index}.1"

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            raise ControlPlaneError("node not started")
        return self._dir

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def kubernetes(self) -> ControlPlane:
        if self.cluster is None:
            raise ControlPlaneError("node not started")
        return self.cluster

    def log_path(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    # -- lifecycle --

    def start(self) -> Node:
        t0 = time.monotonic()
        self._version_dir = ensure_node_components()
        atexit.register(self.stop)
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _start_all(self) -> None:
        assert self._version_dir is not None
        with self._timed("bridge"):
            if self.index is None:
                self.index = choose_network_index()
            self._create_bridge()
        self.cluster = ControlPlane(
            tier=2,
            bin_dir=self._version_dir / "bin",
            nodes=0,
            startup_timeout=self.startup_timeout,
            address=self.gateway,
            kubelets=[self.name],
        )
        with self._timed("control-plane"):
            self.cluster.start()
        self._dir = self.cluster.workdir / "node"
        for sub in ("logs", "containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs", "opt"):
            (self._dir / sub).mkdir(parents=True, exist_ok=True)
        self._write_configs()
        with self._timed("containerd"):
            containerd = self._spawn(
                "containerd", ["containerd", "--config", str(self._dir / "containerd.toml")]
            )
            self._wait("containerd's socket", self._containerd_answers, containerd)
        with self._timed("pause-image"):
            self.import_image(self._version_dir / "node" / "pause.oci.tar")
        with self._timed("kubelet"):
            self._save_sysctls()
            self._create_cgroup_root()
            kubelet = self._spawn("kubelet", self._kubelet_args())
            self._wait("node Ready and untainted", self._node_ready, kubelet)

    def stop(self) -> None:
        """Delete every pod, stop the node, then the control plane; undo every host change."""
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)
        cluster = self.cluster
        if cluster is not None and self._components:
            # The kubelet tears the sandboxes down (CNI DEL, network namespace) while it runs.
            cluster.kubectl(
                "delete", "pods", "--all", "--all-namespaces", "--grace-period=1",
                "--wait=true", "--timeout=60s", check=False, timeout=90,
            )  # fmt: skip
        self._remember_netns()
        for component in reversed(self._components):
            if component.name == "containerd":
                self._kill_leftover_tasks()
            component.signal_group(signal.SIGTERM)
            try:
                component.process.wait(timeout=STOP_GRACE_SECONDS * 2)
            except subprocess.TimeoutExpired:
                component.signal_group(signal.SIGKILL)
                component.process.wait()
            component.signal_group(signal.SIGKILL)
            component.close_log()
        self._components = []
        self._cleanup_host()
        self.cluster = None
        if cluster is not None:
            # The node's files (containerd root, pod volumes) live in the cluster's temp dir.
            with contextlib.suppress(ControlPlaneError):
                self._unmount_under(cluster.workdir)
            cluster.stop()
        self._dir = None

    def pod_memory_peak(self, pod_uid: str) -> int | None:
        """The most memory the pod's cgroup has held (bytes, the figure its limit applies to),
        or None when the pod has no cgroup on this node (cgroup v1 memory controller)."""
        base = CGROUP_ROOT / "memory" / f"optionfeed-{self.index}" / "kubepods"
        for path in (base / f"pod{pod_uid}", *base.glob(f"*/pod{pod_uid}")):
            peak = path / "memory.max_usage_in_bytes"
            if peak.exists():
                return int(peak.read_text())
        return None

    # -- images --

    def ctr(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.socket), "--namespace", CTR_NAMESPACE, *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise ControlPlaneError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
        return result

    def import_image(self, archive: Path) -> list[str]:
        """Import an OCI archive into the node's containerd; returns the image names it holds
        (from the index's io.containerd.image.name or ref name annotations)."""
        self.ctr("images", "import", str(archive))
        return image_names(archive)

    # -- pieces --

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.timings[phase] = time.monotonic() - t0

    def _spawn(self, name: str, args: Sequence[str]) -> Component:
        component = Component.spawn(name, args, self.log_path(name), cwd=self.workdir)
        self._components.append(component)
        return component

    def _wait(self, what: str, ready: Callable[[], bool], blame: Component) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while True:
            rc = blame.exited()
            if rc is not None:
                raise ControlPlaneError(
                    f"{blame.name} exited with {rc}; last lines of {blame.log_path}:\n"
                    f"{blame.tail()}"
                )
            try:
                if ready():
                    return
            except (OSError, ControlPlaneError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out waiting for {what} ({last}); last lines of {blame.log_path}:\n"
                    f"{blame.tail()}"
                )
            time.sleep(0.2)

    def _create_bridge(self) -> None:
        # The CNI bridge plugin (isGateway) reuses a bridge that already has the gateway
        # address. It must exist before the API server binds that address and before the
        # kubelet, which refuses a loopback node IP.
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_created = True
        _ip("addr", "replace", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def _containerd_answers(self) -> bool:
        if not self.socket.exists():
            return False
        self.ctr("version", timeout=10)
        return True

    def _node_ready(self) -> bool:
        node = self.kubernetes.api("GET", f"/api/v1/nodes/{self.name}")
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        if not ready or node.get("spec", {}).get("taints"):
            return False
        # Pods are refused until the controller manager made the namespace's default account.
        return self.kubernetes.exists("/api/v1/namespaces/default/serviceaccounts/default")

    def _write_configs(self) -> None:
        assert self._version_dir is not None
        d = self.workdir
        cluster = self.kubernetes
        (d / "containerd.toml").write_text(
            _CONTAINERD_CONFIG.format(
                dir=d, pause=pause_image(_version(self._version_dir)), cni_bin=CNI_BIN_DIR
            )
        )
        conflist = {
            "cniVersion": "1.0.0",
            "name": f"optionfeed-{self.index}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    # No masquerade and no port maps: no iptables rule on the host.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(d / "cni" / "ipam"),
                        "ranges": [[{"subnet": self.pod_cidr, "gateway": self.gateway}]],
                    },
                }
            ],
        }
        (d / "cni" / "net.d" / "10-optionfeed.conflist").write_text(json.dumps(conflist))
        (d / "resolv.conf").write_text("")
        (d / "kubelet.kubeconfig").write_text(
            build_kubeconfig(
                cluster.server,
                cluster.ca_cert,
                f"system:node:{self.name}",
                cluster.kubelet_tokens[self.name],
                "default",
            )
        )
        (healthz_port,) = free_ports(1)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Serving (logs, exec) on the bridge address only; the API server dials it there.
            "address": self.gateway,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "cgroupDriver": "cgroupfs",
            # Our own cgroup subtree, so that another node on this machine never shares it.
            "cgroupRoot": f"/optionfeed-{self.index}",
            "failSwapOn": False,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(cluster.ca_cert)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "podCIDR": self.pod_cidr,
            "podLogsDir": str(d / "pod-logs"),
            "resolvConf": str(d / "resolv.conf"),
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "registerNode": True,
            # Status reaches the API server sooner: readiness flips show up within a second.
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
        }
        (d / "kubelet" / "config.json").write_text(json.dumps(config, indent=2))

    def _kubelet_args(self) -> list[str]:
        assert self._version_dir is not None
        d = self.workdir
        return [
            str(self._version_dir / "bin" / "kubelet"),
            f"--config={d / 'kubelet' / 'config.json'}",
            f"--kubeconfig={d / 'kubelet.kubeconfig'}",
            f"--root-dir={d / 'kubelet' / 'root'}",
            f"--cert-dir={d / 'kubelet' / 'pki'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.gateway}",
            "--v=2",
        ]

    def _save_sysctls(self) -> None:
        for key in KUBELET_SYSCTLS:
            self._sysctls[key] = Path("/proc/sys", *key.split(".")).read_text().strip()

    def _create_cgroup_root(self) -> None:
        # cgroup v1: one hierarchy per controller; the kubelet wants its root in each.
        for hierarchy in sorted(CGROUP_ROOT.iterdir()):
            if not hierarchy.is_dir() or hierarchy.name in ("unified",):
                continue
            target = hierarchy / f"optionfeed-{self.index}"
            with contextlib.suppress(OSError):
                target.mkdir(exist_ok=True)
                self._cgroup_dirs.append(target)
                if hierarchy.name == "cpuset":
                    for knob in ("cpuset.cpus", "cpuset.mems"):
                        (target / knob).write_text((hierarchy / knob).read_text())

    def sandbox_netns(self) -> set[str]:
        """The network namespace paths of the node's pod sandboxes (containerd's view)."""
        found: set[str] = set()
        if self._dir is None or not self.socket.exists():
            return found
        with contextlib.suppress(ControlPlaneError, subprocess.TimeoutExpired):
            for cid in self.ctr("containers", "ls", "-q", timeout=30).stdout.split():
                info = json.loads(self.ctr("containers", "info", cid, timeout=30).stdout)
                for ns in info.get("Spec", {}).get("linux", {}).get("namespaces", []):
                    if ns.get("type") == "network" and ns.get("path"):
                        found.add(ns["path"])
        return found

    def _remember_netns(self) -> None:
        # Any the kubelet did not remove (a kubelet that died) go after containerd stops.
        self._netns |= self.sandbox_netns()

    def _kill_leftover_tasks(self) -> None:
        with contextlib.suppress(ControlPlaneError, subprocess.TimeoutExpired):
            tasks = self.ctr("tasks", "ls", "-q", timeout=30).stdout.split()
            for task in tasks:
                with contextlib.suppress(ControlPlaneError):
                    self.ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=30)
            deadline = time.monotonic() + 10
            for task in tasks:
                while time.monotonic() < deadline:
                    try:
                        self.ctr("tasks", "delete", task, timeout=30)
                        break
                    except ControlPlaneError as exc:
                        if "not found" in str(exc):
                            break
                        time.sleep(0.2)
            for cid in self.ctr("containers", "ls", "-q", timeout=30).stdout.split():
                with contextlib.suppress(ControlPlaneError):
                    self.ctr("containers", "delete", cid, timeout=30)

    def _cleanup_host(self) -> None:
        for path in sorted(self._netns):
            if os.path.exists(path):
                with contextlib.suppress(OSError):
                    subprocess.run(["umount", "-l", path], capture_output=True, check=False)
                    os.unlink(path)
        self._netns.clear()
        if self._bridge_created:
            _ip("link", "del", self.bridge, check=False)
            self._bridge_created = False
        for key, value in self._sysctls.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", *key.split(".")).write_text(value)
        self._sysctls.clear()
        # The kubelet also makes its root in hierarchies we did not (cgroup v2's "unified").
        if self.index is not None:
            self._cgroup_dirs += [
                p
                for p in CGROUP_ROOT.glob(f"*/optionfeed-{self.index}")
                if p not in self._cgroup_dirs
            ]
        for top in reversed(self._cgroup_dirs):
            # Children first: a cgroup directory can only go once it has none.
            for sub in sorted(
                (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
        self._cgroup_dirs.clear()
        if self._dir is not None and CONTAINER_LOG_LINKS.is_dir():
            pod_logs = str(self._dir / "pod-logs")
            for link in CONTAINER_LOG_LINKS.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and os.readlink(link).startswith(pod_logs):
                        link.unlink()
        for path in (CNI_RESULTS_DIR, CNI_RESULTS_DIR.parent):
            with contextlib.suppress(OSError):
                path.rmdir()

    @staticmethod
    def _unmount_under(directory: Path) -> None:
        prefix = str(directory) + "/"
        with open("/proc/mounts") as mounts:
            targets = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
        for target in sorted(targets, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def _version(version_dir: Path) -> str:
    return version_dir.name.removeprefix("k8s-")


def image_names(archive: Path) -> list[str]:
    """The image names in an OCI archive's index (what `ctr images import` names them)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ControlPlaneError(f"{archive} has no index.json")
        index: dict[str, Any] = json.load(member)
    names = []
    for manifest in index.get("manifests", []):
        annotations = manifest.get("annotations", {})
        name = annotations.get("io.containerd.image.name") or annotations.get(
            "org.opencontainers.image.ref.name"
        )
        if name:
            names.append(name)
    return names


_CONTAINERD_CONFIG = """\
version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
[grpc]
  address = "{dir}/containerd/containerd.sock"
[ttrpc]
  address = "{dir}/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Root on these machines may lack CAP_SYS_RESOURCE: a negative oom_score_adj (the sandbox's
  # -998) then makes runc fail with "can't get final child's PID from pipe: EOF". Clamp each
  # score to containerd's own instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{dir}/cni/net.d"
"""
