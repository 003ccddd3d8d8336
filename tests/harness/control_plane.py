"""A real Kubernetes control plane on 127.0.0.1 for the tests (built by build-control-plane.sh).

Tier 1 runs etcd and kube-apiserver: enough for CRDs, validation, RBAC and objects that no
controller acts on. Tier 2 adds kube-controller-manager, kube-scheduler and kwok with fake Nodes,
so Deployments get pods that are scheduled and report Running/Ready (no container ever runs),
and garbage collection, namespace deletion and default ServiceAccounts work.

The node tier (harness/node.py) runs the same processes with options: the API server on the
address of a bridge that pods can reach, kubelets authenticated as `system:node:<name>` under the
Node authorizer, and no kwok.

Everything lives in a fresh temporary directory (certificates, etcd data, logs, kubeconfigs) that
`stop()` removes after terminating every process group it started. The binaries come from
`build-control-plane.sh`, which builds them from Go modules and caches them by version.

    with ControlPlane(tier=2) as cp:
        cp.kubectl("get", "nodes")
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from harness import builds
from harness.processes import Service, die_with_parent

HARNESS_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = HARNESS_DIR / "build-control-plane.sh"
# The certificates are made with Debian's openssl, which `make k8s` installs when it is missing.
OPENSSL = Path("/usr/bin/openssl")
KWOK_STAGES = HARNESS_DIR / "kwok-stages.yaml"

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# The first address of the service range is the `kubernetes` Service; the serving cert names it
# so that in-cluster style clients would also verify.
KUBERNETES_SERVICE_IP = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CLUSTER_NAME = "optionfeed-test"
ADMIN_USER = "admin"
# Set to keep the temporary directory (logs, certs, etcd data) after stop() for debugging.
KEEP_DIR_ENV = "OPTIONFEED_K8S_KEEP"

LOG_TAIL_LINES = 40
STOP_GRACE_SECONDS = 5.0
START_ATTEMPTS = 3
POLL_SECONDS = 0.2
# The kubectl/helm helpers: run(*args, kubeconfig=None, check=True, input=None, timeout=...).
ToolRunner = Callable[..., subprocess.CompletedProcess[str]]


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or used."""


class CommandError(ControlPlaneError):
    """A kubectl/helm command exited non-zero; the message carries its output."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.args_run = list(args)
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        super().__init__(
            f"{' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )


class ApiError(ControlPlaneError):
    """The API server answered a request with an error status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:2000]}")


# --- binaries ---------------------------------------------------------------------------------


def find_bin_dir() -> Path | None:
    """The cached bin dir if the build script says it is complete, else None (never builds)."""
    return builds.cached(BUILD_SCRIPT)


def ensure_binaries(progress: TextIO | None = None) -> Path:
    """The bin dir, building the control plane first when it is not cached (many minutes cold).

    The build's progress lines go to `progress` (default: this process's stderr).
    """
    try:
        bin_dir = builds.ensure_built(BUILD_SCRIPT, progress=progress)
    except builds.BuildFailed as exc:
        raise ControlPlaneError(str(exc)) from exc
    if not (bin_dir / "kube-apiserver").exists():
        raise ControlPlaneError(f"{BUILD_SCRIPT} finished but {bin_dir} has no kube-apiserver")
    return bin_dir


# --- small helpers ----------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_openssl(args: Sequence[str], cwd: Path) -> None:
    if not OPENSSL.is_file():
        raise ControlPlaneError(
            f"the control plane needs {OPENSSL}: run `make k8s`, it installs it"
        )
    result = subprocess.run(
        [str(OPENSSL), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Certificates:
    """A throwaway CA, the API server's serving cert and the service-account signing key."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path

    @classmethod
    def create(cls, directory: Path, extra_ips: Sequence[str] = ()) -> Certificates:
        """The CA and keys; `extra_ips` are more addresses the serving cert names."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "openssl.cnf").write_text(_openssl_config(extra_ips))
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _run_openssl(
            ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "7",
             "-config", "openssl.cnf", "-extensions", "v3_ca", "-subj", "/CN=optionfeed-test-ca"],
            directory,
        )  # fmt: skip
        _run_openssl(
            ["req", "-new", *ec, "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-config", "openssl.cnf", "-subj", "/CN=kube-apiserver"],
            directory,
        )  # fmt: skip
        _run_openssl(
            ["x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "7", "-out", "apiserver.crt",
             "-extfile", "openssl.cnf", "-extensions", "v3_serving"],
            directory,
        )  # fmt: skip
        # RSA for the service-account tokens: every JWT consumer understands RS256.
        _run_openssl(
            ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key"],
            directory,
        )
        _run_openssl(["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"], directory)
        return cls(
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            serving_cert=directory / "apiserver.crt",
            serving_key=directory / "apiserver.key",
            sa_key=directory / "sa.key",
            sa_pub=directory / "sa.pub",
        )


def _openssl_config(extra_ips: Sequence[str]) -> str:
    extra = "".join(f",IP:{ip}" for ip in extra_ips)
    return _OPENSSL_CONFIG.replace("IP:127.0.0.1,", f"IP:127.0.0.1{extra},", 1)


_OPENSSL_CONFIG = f"""\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[v3_serving]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,DNS:localhost,IP:{KUBERNETES_SERVICE_IP},DNS:kubernetes,\
DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
[v3_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
"""


def issue_client_cert(certs: Certificates, name: str, subject: str) -> tuple[Path, Path]:
    """A client certificate signed by the test CA (e.g. the API server's, for kubelets);
    returns (cert, key) paths in the CA's directory."""
    directory = certs.ca_cert.parent
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run_openssl(
        ["req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
         "-config", "openssl.cnf", "-subj", subject],
        directory,
    )  # fmt: skip
    _run_openssl(
        ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "7", "-out", f"{name}.crt",
         "-extfile", "openssl.cnf", "-extensions", "v3_client"],
        directory,
    )  # fmt: skip
    return directory / f"{name}.crt", directory / f"{name}.key"


@dataclass
class Component:
    """One running binary, in its own process group, logging to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    @classmethod
    def spawn(cls, name: str, args: Sequence[str], log_path: Path, *, cwd: Path) -> Component:
        """Start ``args`` in a process group of its own, appending its output to ``log_path``."""
        log_file = log_path.open("ab")
        log_file.write(f"$ {' '.join(args)}\n".encode())
        log_file.flush()
        # PDEATHSIG is tied to the forking thread, so only ask for it from the main thread.
        preexec: Callable[[], None] | None = (
            die_with_parent if threading.current_thread() is threading.main_thread() else None
        )
        process = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )
        return cls(name, process, log_path, log_file)

    def exited(self) -> int | None:
        return self.process.poll()

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        self.log_file.flush()
        return _tail(self.log_path, lines)

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def close_log(self) -> None:
        with contextlib.suppress(OSError):
            self.log_file.close()


def build_kubeconfig(server: str, ca_cert: Path, user: str, token: str, namespace: str) -> str:
    """A kubeconfig as JSON (a subset of YAML), with the CA inline so the file stands alone."""
    ca_data = base64.b64encode(ca_cert.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": f"{user}@{CLUSTER_NAME}",
                "context": {"cluster": CLUSTER_NAME, "user": user, "namespace": namespace},
            }
        ],
        "current-context": f"{user}@{CLUSTER_NAME}",
        "preferences": {},
    }
    return json.dumps(config, indent=2) + "\n"


def fake_node(name: str) -> dict[str, Any]:
    """A Node for kwok to manage. No taints, so pods need no tolerations to land on it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
            },
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }


def _node_ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and not node.get("spec", {}).get("taints")


# --- the control plane ------------------------------------------------------------------------


class ControlPlane(Service):
    """etcd + kube-apiserver (tier 1), plus controller manager, scheduler and kwok (tier 2)."""

    def __init__(
        self,
        tier: int = 2,
        *,
        bin_dir: Path | None = None,
        nodes: int = 2,
        startup_timeout: float = 180.0,
        address: str = "127.0.0.1",
        kubelets: Sequence[str] = (),
    ) -> None:
        """`nodes` kwok nodes (tier 2; 0 = no kwok at all). `address`: where the API server
        listens and what it advertises (the node tier: the pod bridge's gateway, so that pods
        reach it). `kubelets`: names of real nodes that will register; each gets a token as
        `system:node:<name>`, the Node authorizer is on, and the API server gets a client
        certificate for the kubelets' HTTPS port (logs, exec)."""
        if tier not in (1, 2):
            raise ValueError(f"tier must be 1 or 2, not {tier}")
        self.tier = tier
        self.node_names = [f"kwok-node-{i}" for i in range(nodes)] if tier == 2 else []
        self.address = address
        self.kubelets = list(kubelets)
        self.kubelet_tokens = {name: secrets.token_hex(24) for name in self.kubelets}
        self.startup_timeout = startup_timeout
        self._bin_dir = bin_dir
        self._workdir: Path | None = None
        self._components: list[Component] = []
        self._certs: Certificates | None = None
        self._port = 0
        self.admin_token = secrets.token_hex(24)
        # Seconds each start phase took, for reports and slow-start diagnosis.
        self.timings: dict[str, float] = {}
        self._atexit_registered = False

    # -- public properties --

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            raise ControlPlaneError("bin dir unknown before start()")
        return self._bin_dir

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ControlPlaneError("control plane not started")
        return self._workdir

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig: server https://127.0.0.1:PORT, the CA inline, the admin token."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_cert(self) -> Path:
        assert self._certs is not None
        return self._certs.ca_cert

    def log_path(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """os.environ plus KUBECONFIG, the bin dir first on PATH, and kubectl/helm state
        directories inside the temp dir (so tests never touch ~/.kube or ~/.config/helm)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(kubeconfig or self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBECACHEDIR"] = str(self.workdir / "kube-cache")
        for name in ("CACHE", "CONFIG", "DATA"):
            env[f"HELM_{name}_HOME"] = str(self.workdir / "helm" / name.lower())
        return env

    # -- lifecycle --

    def start(self) -> ControlPlane:
        """Start the tier's components and wait until they are usable; on failure nothing is
        left running and ControlPlaneError carries the failing component's log tail."""
        if self._workdir is not None:
            raise ControlPlaneError("control plane already started")
        t0 = time.monotonic()
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
                break
            except ControlPlaneError as exc:
                # Free ports are picked before the components bind them, so another process
                # can take one in between; a fresh start with new ports gets past that.
                if "address already in use" not in str(exc) or attempt == START_ATTEMPTS:
                    raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _start_once(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="optionfeed-k8s-"))
        (self._workdir / "logs").mkdir()
        atexit.register(self.stop)
        self._atexit_registered = True
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise

    def _start_all(self) -> None:
        with self._timed("certificates"):
            extra_ips = [self.address] if self.address != "127.0.0.1" else []
            self._certs = Certificates.create(self.workdir / "pki", extra_ips)
        etcd_port, etcd_peer, api_port, kcm_port, sched_port, kwok_port = free_ports(6)
        self._port = api_port
        with self._timed("etcd"):
            etcd = self._start_etcd(etcd_port, etcd_peer)
            self._wait_http(f"http://127.0.0.1:{etcd_port}/readyz", etcd, verify=None)
        with self._timed("kube-apiserver"):
            api = self._start_apiserver(etcd_port)
            self._wait_http(f"{self.server}/readyz", api, verify=self.ca_cert)
        self.kubeconfig.write_text(
            build_kubeconfig(self.server, self.ca_cert, ADMIN_USER, self.admin_token, "default")
        )
        if self.tier == 2:
            self._start_tier2(kcm_port, sched_port, kwok_port)

    def _start_tier2(self, kcm_port: int, sched_port: int, kwok_port: int) -> None:
        with self._timed("kube-controller-manager"):
            kcm = self._start_controller_manager(kcm_port)
            self._wait_http(f"https://127.0.0.1:{kcm_port}/healthz", kcm, verify=False)
        with self._timed("kube-scheduler"):
            sched = self._start_scheduler(sched_port)
            self._wait_http(f"https://127.0.0.1:{sched_port}/healthz", sched, verify=False)
        if not self.node_names:
            with self._timed("default-serviceaccount"):
                self._wait_until(
                    "ServiceAccount default/default",
                    lambda: self.exists("/api/v1/namespaces/default/serviceaccounts/default"),
                    kcm,
                )
            return
        with self._timed("kwok"):
            kwok = self._start_kwok(kwok_port)
            self._wait_http(f"http://127.0.0.1:{kwok_port}/healthz", kwok, verify=None)
        with self._timed("nodes"):
            for name in self.node_names:
                self.api("POST", "/api/v1/nodes", fake_node(name))
            self._wait_until("fake nodes Ready and untainted", self._nodes_ready, kwok)
        with self._timed("default-serviceaccount"):
            self._wait_until(
                "ServiceAccount default/default",
                lambda: self.exists("/api/v1/namespaces/default/serviceaccounts/default"),
                kcm,
            )

    def stop(self) -> None:
        """Terminate every process group, newest first, then remove the temp dir.

        One at a time: the API server shuts down in about a second while etcd is up, but hangs
        until killed if etcd goes first.
        """
        components, self._components = self._components, []
        for component in reversed(components):
            component.signal_group(signal.SIGTERM)
            try:
                component.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                component.signal_group(signal.SIGKILL)
                component.process.wait()
            # Children that outlived their leader (none expected) go with the group.
            component.signal_group(signal.SIGKILL)
            component.close_log()
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        workdir, self._workdir = self._workdir, None
        if workdir is not None and not os.environ.get(KEEP_DIR_ENV):
            shutil.rmtree(workdir, ignore_errors=True)

    # -- components --

    def _spawn(self, name: str, args: Sequence[str]) -> Component:
        component = Component.spawn(name, args, self.log_path(name), cwd=self.workdir)
        self._components.append(component)
        return component

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _start_etcd(self, client_port: int, peer_port: int) -> Component:
        client = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        return self._spawn(
            "etcd",
            [
                self._bin("etcd"),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self, etcd_port: int) -> Component:
        assert self._certs is not None
        tokens = self.workdir / "tokens.csv"
        lines = [f'{self.admin_token},{ADMIN_USER},admin-uid,"system:masters"']
        lines += [
            f'{token},system:node:{name},node-{name},"system:nodes"'
            for name, token in self.kubelet_tokens.items()
        ]
        tokens.write_text("\n".join(lines) + "\n")
        args = [
            self._bin("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={self._port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self._certs.serving_cert}",
            f"--tls-private-key-file={self._certs.serving_key}",
            f"--client-ca-file={self._certs.ca_cert}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self._certs.sa_pub}",
            f"--service-account-signing-key-file={self._certs.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            # The `kubernetes` Service's endpoints would be 127.0.0.1, which the API rejects
            # (loopback) every few seconds in the log; nothing here reaches it via the Service.
            "--endpoint-reconciler-type=none",
            # On top of the default plugins: setting blockOwnerDeletion in an ownerReference
            # needs `update` on the owner's finalizers subresource, as on clusters that enable
            # it, so an operator's RBAC is tested for that permission too.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement"
            + (",NodeRestriction" if self.kubelets else ""),
        ]
        if self.kubelets:
            client_cert, client_key = issue_client_cert(
                self._certs, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver"
            )
            args = [a for a in args if not a.startswith("--authorization-mode=")]
            args += [
                "--authorization-mode=Node,RBAC",
                f"--kubelet-client-certificate={client_cert}",
                f"--kubelet-client-key={client_key}",
                # The default order starts with Hostname, which the API server would resolve
                # through the machine's DNS; a node's InternalIP is on the pod bridge.
                "--kubelet-preferred-address-types=InternalIP",
            ]
        if self.tier == 1:
            # Without the controller manager no namespace gets a default ServiceAccount, and the
            # ServiceAccount admission plugin would then reject every pod.
            args.append("--disable-admission-plugins=ServiceAccount")
        return self._spawn("kube-apiserver", args)

    def _delegated_auth_args(self) -> list[str]:
        # The controller manager and scheduler check callers of their own HTTPS endpoints
        # against the API server; /healthz stays open to anonymous callers.
        kubeconfig = str(self.kubeconfig)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]

    def _start_controller_manager(self, port: int) -> Component:
        assert self._certs is not None
        return self._spawn(
            "kube-controller-manager",
            [
                self._bin("kube-controller-manager"),
                *self._delegated_auth_args(),
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                f"--service-account-private-key-file={self._certs.sa_key}",
                f"--root-ca-file={self._certs.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # Tests create and delete many objects quickly; the default 20 qps throttles GC.
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                # Each controller acts as its own ServiceAccount, as kubeadm sets it up, so
                # real pods meet the same RBAC as on a cluster.
                *(["--use-service-account-credentials=true"] if self.kubelets else []),
            ],
        )

    def _start_scheduler(self, port: int) -> Component:
        return self._spawn(
            "kube-scheduler",
            [
                self._bin("kube-scheduler"),
                *self._delegated_auth_args(),
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
            ],
        )

    def _start_kwok(self, port: int) -> Component:
        return self._spawn(
            "kwok",
            [
                self._bin("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=true",
                f"--server-address=127.0.0.1:{port}",
                "--node-ip=127.0.0.1",
                # Pod IPs apart from the service range (kwok defaults to 10.0.0.0/24).
                "--cidr=10.244.0.0/16",
            ],
        )

    # -- waiting --

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.timings[phase] = time.monotonic() - t0

    def _check_alive(self) -> None:
        for component in self._components:
            rc = component.exited()
            if rc is not None:
                raise ControlPlaneError(
                    f"{component.name} exited with {rc}; last lines of {component.log_path}:\n"
                    f"{component.tail()}"
                )

    def _wait_until(
        self,
        what: str,
        ready: Callable[[], bool],
        blame: Component | None,
        timeout: float | None = None,
    ) -> None:
        limit = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        last_error = ""
        while True:
            self._check_alive()
            try:
                if ready():
                    return
            except (OSError, ControlPlaneError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                message = f"timed out after {limit:.0f}s waiting for {what}"
                if last_error:
                    message += f" (last error: {last_error})"
                if blame is not None:
                    message += f"; last lines of {blame.log_path}:\n{blame.tail()}"
                raise ControlPlaneError(message)
            time.sleep(POLL_SECONDS)

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll `ready` (errors count as not yet) until it returns True; raise ControlPlaneError
        after `timeout` seconds, or at once if a component has died (with its log's tail)."""
        self._wait_until(what, ready, None, timeout)

    def wait_for_service_account(self, namespace: str, name: str, timeout: float = 60.0) -> None:
        """Wait until the ServiceAccount exists. A new namespace gets `default` from the
        controller manager a moment after it is created; until then pods there are rejected."""

        def exists() -> bool:
            return self.exists(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")

        self.wait_until(f"ServiceAccount {namespace}/{name}", exists, timeout)

    def _wait_http(self, url: str, component: Component, verify: Path | bool | None) -> None:
        context = self._ssl_context(verify)

        def answers_ok() -> bool:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                return bool(response.status == 200)

        self._wait_until(f"{component.name} at {url}", answers_ok, component)

    @staticmethod
    def _ssl_context(verify: Path | bool | None) -> ssl.SSLContext | None:
        """None for plain HTTP; a CA path verifies against it; False trusts any certificate
        (the controller manager and scheduler serve self-signed certs of their own)."""
        if verify is None:
            return None
        if verify is False:
            return ssl._create_unverified_context()
        if verify is True:
            return ssl.create_default_context()
        return ssl.create_default_context(cafile=str(verify))

    def _nodes_ready(self) -> bool:
        nodes = {n["metadata"]["name"]: n for n in self.api("GET", "/api/v1/nodes")["items"]}
        return all(name in nodes and _node_ready(nodes[name]) for name in self.node_names)

    def exists(self, path: str) -> bool:
        """Whether a GET of ``path`` finds the object (404: it does not)."""
        try:
            self.api("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- using it --

    def api(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One JSON request to the API server as admin (or as `token`); raises ApiError."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.server}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {token or self.admin_token}",
                "Accept": "application/json",
                "Content-Type": content_type,
            },
        )
        context = self._ssl_context(self.ca_cert)
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(payload) if payload else {}

    def server_version(self) -> dict[str, Any]:
        return self.api("GET", "/version")

    def _run_tool(
        self,
        tool: str,
        args: Iterable[str],
        *,
        kubeconfig: Path | None,
        check: bool,
        input: str | None,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        argv = [self._bin(tool), *args]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(kubeconfig),
            cwd=self.workdir,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise CommandError(argv, result)
        return result

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl (as admin unless `kubeconfig` is given); raises CommandError if check."""
        return self._run_tool(
            "kubectl", args, kubeconfig=kubeconfig, check=check, input=input, timeout=timeout
        )

    def helm(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this control plane; raises CommandError if check."""
        return self._run_tool(
            "helm", args, kubeconfig=kubeconfig, check=check, input=input, timeout=timeout
        )

    def mint_token(
        self,
        namespace: str,
        service_account: str,
        *,
        expiration_seconds: int = 3600,
        audiences: Sequence[str] = (),
    ) -> str:
        """A bound token for an existing ServiceAccount, from the TokenRequest API."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        response = self.api(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(response["status"]["token"])

    def service_account_kubeconfig(
        self,
        namespace: str,
        service_account: str,
        *,
        path: Path | None = None,
        expiration_seconds: int = 3600,
    ) -> Path:
        """Write a kubeconfig that acts as namespace/service_account (for RBAC tests) and
        return its path; its context's default namespace is `namespace`."""
        token = self.mint_token(namespace, service_account, expiration_seconds=expiration_seconds)
        user = f"system:serviceaccount:{namespace}:{service_account}"
        target = path or self.workdir / f"sa-{namespace}-{service_account}.kubeconfig"
        target.write_text(build_kubeconfig(self.server, self.ca_cert, user, token, namespace))
        return target

    def component_logs(self) -> dict[str, Path]:
        """Log file of each running component, by name (etcd, kube-apiserver, ...)."""
        return {c.name: c.log_path for c in self._components}

    def component_pids(self) -> dict[str, int]:
        """Process id of each running component; each is the leader of its process group."""
        return {c.name: c.process.pid for c in self._components}
