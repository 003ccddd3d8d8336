"""A private containerd for the image tests: its own root, state and socket under a temporary
folder, Debian's containerd 1.6 and runc (``make containerd`` installs them), driven with ``ctr``.

It needs root, as containerd does; it never touches a system containerd or its images.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from harness import processes

CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"
# Images and tasks only: no Kubernetes CRI, no metrics.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/containerd.sock"
"""


class ContainerdError(Exception):
    """containerd did not start, or a ``ctr`` command failed."""


class PrivateContainerd:
    """``with PrivateContainerd() as ctd: ctd.ctr("images", "ls")``"""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="optionfeed-containerd-")
        self.root = Path(self._tmp.name)
        self.socket = self.root / "containerd.sock"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrivateContainerd:
        missing = [c for c in ("containerd", "ctr", "runc") if shutil.which(c) is None]
        if missing:
            raise ContainerdError(f"{', '.join(missing)} not found: run `make containerd`")
        config = self.root / "config.toml"
        config.write_text(CONFIG.format(root=self.root))
        log = (self.root / "containerd.log").open("wb")
        self._process = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            probe = subprocess.run(
                ["ctr", "--address", str(self.socket), "version"], capture_output=True
            )
            if probe.returncode == 0:
                return self
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise ContainerdError(f"containerd did not start: see {self.root}/containerd.log")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        processes.stop(self._process, grace=20)
        # Snapshots may still be mounted if a task outlived its test.
        subprocess.run(["umount", "-R", "-l", str(self.root / "root")], capture_output=True)
        self._tmp.cleanup()

    def ctr(self, *args: str, namespace: str = "optionfeed-test", timeout: float = 120) -> str:
        """Run ``ctr`` against this containerd; its stdout, or ContainerdError with stderr."""
        argv = ["ctr", "--address", str(self.socket), "--namespace", namespace, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ContainerdError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout
