"""The node harness itself: stopping a node undoes everything starting it and running a pod did
to this machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from harness.node import CGROUP_ROOT, KUBELET_SYSCTLS, Node, pause_image
from node.stack import FIGURES, NodeCluster, is_ready, wait_for


def _sysctls() -> dict[str, str]:
    return {k: Path("/proc/sys", *k.split(".")).read_text().strip() for k in KUBELET_SYSCTLS}


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and proc.name != str(os.getpid()):
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_stopping_a_node_leaves_no_process_bridge_namespace_mount_or_cgroup_behind(
    node_cluster: NodeCluster,
) -> None:
    # A second node beside the session's: they share nothing but the machine.
    sysctls = _sysctls()
    node = Node(name="ofnode-check")
    node.start()
    try:
        version = node.kubernetes.bin_dir.parent.name.removeprefix("k8s-")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "idle", "namespace": "default"},
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "idle", "image": pause_image(version), "imagePullPolicy": "Never"}
                ],
            },
        }
        node.kubernetes.kubectl("apply", "-f", "-", input=json.dumps(pod))
        wait_for(
            "the pod Running and Ready",
            lambda: is_ready(
                json.loads(node.kubernetes.kubectl("get", "pod", "idle", "-o", "json").stdout)
            ),
            timeout=60,
        )
        workdir = node.kubernetes.workdir
        bridge, index = node.bridge, node.index
        netns = node.sandbox_netns()
        assert netns, "the pod's sandbox has a network namespace"
        assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode == 0
    finally:
        node.stop()
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    assert not [p for p in netns if os.path.exists(p)], netns
    assert not _processes_mentioning(str(workdir))
    with open("/proc/mounts") as mounts:
        assert not [line for line in mounts if str(workdir) in line]
    assert not workdir.exists()
    assert not list(CGROUP_ROOT.glob(f"*/optionfeed-{index}"))
    assert _sysctls() == sysctls
    FIGURES.append(
        f"a second node up in {node.timings['total']:.1f}s, a pod Ready, then stopped: nothing "
        "left (processes, bridge, network namespace, mounts, cgroups, sysctls)"
    )
