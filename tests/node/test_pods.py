"""The node runs real pods from the project's image: the smallest end-to-end check of the
node tier (image import, sandbox, CNI, container start, logs)."""

from __future__ import annotations

import json
import time

from node.conftest import version
from node.stack import NodeCluster, wait_for


def test_a_pod_from_the_optionfeed_image_prints_the_program_version(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "version", "namespace": node_namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {
                    "name": "optionfeed",
                    "image": node_cluster.optionfeed_image,
                    "imagePullPolicy": "Never",
                    "command": ["optionfeed", "--version"],
                    "securityContext": {"readOnlyRootFilesystem": True},
                }
            ],
        },
    }
    started = time.monotonic()
    node_cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))

    def finished() -> str | None:
        got = json.loads(
            node_cluster.kubectl("get", "pod", "version", "-n", node_namespace, "-o", "json").stdout
        )
        phase = got["status"].get("phase")
        assert phase != "Failed", got["status"]
        return phase if phase == "Succeeded" else None

    wait_for("the version pod to succeed", finished, timeout=60)
    elapsed = time.monotonic() - started
    logs = node_cluster.kubectl("logs", "version", "-n", node_namespace).stdout
    assert version() in logs, logs
    print(f"pod Succeeded {elapsed:.1f}s after create; logs: {logs.strip()}")
