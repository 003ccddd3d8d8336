"""The children of a feed, rendered as plain dicts: its assignment ConfigMap and one Deployment per
shard. Pure functions of a :class:`~optionfeed_operator.api.OptionFeedSpec`, checked against
golden files in ``tests/golden/`` and applied with server-side apply by
:mod:`optionfeed_operator.reconcile`.

Skipping unchanged work: every Deployment carries ``optionfeed.io/input-hash``, a hash of
everything rendered here (labels, owner, replicas, pod template). When the live Deployment carries
the hash of the current rendering and nobody has edited its spec since the operator applied it,
the pass sends nothing. The hash sits on the Deployment's own metadata, not on the pod template,
so a change of replicas (suspend, resume, ``replicasPerShard``) never rolls the pods.

What is deliberately *not* rendered into a Deployment, and therefore not in its hash:

- the assignment (which instruments a shard records). The collector re-reads its mounted file and
  subscribes the difference, so a re-rank, a new expiry or a re-shard must not restart anyone.
  That is why there is no "checksum of the ConfigMap" annotation on the pod template, the usual
  way to force a restart when a config file changes.
- the feed's ``metadata.generation``: it moves on every edit of the feed, also for edits that
  change nothing in a Deployment (``topN``, ``refreshInterval``).
- ranking inputs and times (``topN``, ``rankBy``, ``lastRankedAt``): they only reach the ConfigMap.

Tracing: when the operator runs with an OTLP endpoint (:class:`CollectorTracing`), each collector
gets the same ``OTEL_*`` exporter and sampler settings, ``OTEL_SERVICE_NAME``, and
``OTEL_RESOURCE_ATTRIBUTES`` naming its feed, shard, namespace and pod (the pod's name through the
downward API). The collector adds its own version (``service.version``), which is exact even when
``spec.collector.image`` pins another release than the operator's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optionfeed import __version__
from optionfeed.telemetry import endpoints
from optionfeed.telemetry.tracing import ENDPOINT_VARIABLES, PROTOCOL_VARIABLES, endpoint
from optionfeed_operator.api import (
    API_VERSION,
    COMPONENT,
    FIELD_MANAGER,
    KIND,
    Annotations,
    Labels,
    OptionFeedSpec,
    parse_time,
)
from optionfeed_operator.assignment import (
    Assignment,
    document_key,
    read_documents,
    verified_selection,
)

DEFAULT_IMAGE = f"ghcr.io/optionfeed/optionfeed:{__version__}"
CONTAINER_NAME = "collector"
ASSIGNMENT_DIR = "/etc/optionfeed"
ASSIGNMENT_FILE = "assignment.json"
ASSIGNMENT_PATH = f"{ASSIGNMENT_DIR}/{ASSIGNMENT_FILE}"
SPOOL_DIR = "/var/lib/optionfeed/spool"
# An unprivileged uid/gid that exists in distroless-style images; the pod never runs as root.
RUN_AS_USER = 65532

# Environment the operator sets itself; spec.collector.env may not name these (the CRD rejects
# them, and the renderer drops them should one slip through).
DATABASE_URL_ENV = "DATABASE_URL"
CLIENT_ID_ENV = "OPTIONFEED_CLIENT_ID"
CLIENT_SECRET_ENV = "OPTIONFEED_CLIENT_SECRET"
SPOOL_DIR_ENV = "OPTIONFEED_SPOOL_DIR"
RETENTION_ENV = "OPTIONFEED_RETENTION"
RESERVED_ENV = frozenset({DATABASE_URL_ENV, CLIENT_ID_ENV, CLIENT_SECRET_ENV, SPOOL_DIR_ENV})
# Tracing (only with an endpoint). The pod's name comes from the downward API into POD_NAME_ENV,
# which OTEL_RESOURCE_ATTRIBUTES refers to as $(K8S_POD_NAME): the kubelet expands it.
COLLECTOR_SERVICE_NAME = "optionfeed-collector"
POD_NAME_ENV = "K8S_POD_NAME"
# The operator's own settings that collectors inherit, when the operator has them.
INHERITED_OTEL_ENV = (
    *ENDPOINT_VARIABLES,
    *PROTOCOL_VARIABLES,
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)
# Keys of the credentials Secret (docs/design.md: a Deribit client_id/client_secret).
CLIENT_ID_KEY = "client_id"
CLIENT_SECRET_KEY = "client_secret"

DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


@dataclass(frozen=True, slots=True)
class CollectorTracing:
    """The ``OTEL_*`` settings collector pods get: the operator's own exporter and sampler."""

    env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> CollectorTracing | None:
        """The settings to pass on, or None when the operator has no OTLP endpoint."""
        if endpoint(environ) is None:
            return None
        return cls({name: environ[name] for name in INHERITED_OTEL_ENV if environ.get(name)})


# --- names and labels -------------------------------------------------------------------------


def shard_name(feed_name: str, shard: int) -> str:
    return f"{feed_name}-shard-{shard}"


def shard_names(feed_name: str, shards: int) -> list[str]:
    """The Deployments a feed of ``shards`` shards has, in shard order. The reconciler creates
    exactly these and deletes any other Deployment it owns for the feed."""
    return [shard_name(feed_name, i) for i in range(shards)]


def configmap_name(feed_name: str) -> str:
    return f"{feed_name}-assignment"


def feed_labels(feed_name: str) -> dict[str, str]:
    """Labels on everything made for a feed (the ConfigMap, which serves every shard, has these)."""
    return {
        Labels.NAME.value: COMPONENT,
        Labels.INSTANCE.value: feed_name,
        Labels.MANAGED_BY.value: FIELD_MANAGER,
        Labels.FEED.value: feed_name,
    }


def shard_labels(feed_name: str, shard: int) -> dict[str, str]:
    return {**feed_labels(feed_name), Labels.SHARD.value: str(shard)}


def _selector_labels(feed_name: str, shard: int) -> dict[str, str]:
    # A Deployment's selector is immutable: only labels that never change for a shard.
    return {
        Labels.NAME.value: COMPONENT,
        Labels.FEED.value: feed_name,
        Labels.SHARD.value: str(shard),
    }


def feed_selector(feed_name: str) -> str:
    """``status.selector``: the label selector of every collector pod of the feed (what the scale
    subresource hands to an autoscaler)."""
    return f"{Labels.NAME.value}={COMPONENT},{Labels.FEED.value}={feed_name}"


def owner_reference(feed: OptionFeedSpec) -> dict[str, Any]:
    """The controller reference to the feed, the same shape as ``kopf.build_owner_reference``.

    Built here rather than with ``kopf.adopt``, which would also copy the feed's own labels onto
    every child: a user's label on the feed would then change (and roll) every Deployment.
    ``blockOwnerDeletion`` lets a foreground deletion of the feed wait for its children.
    """
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": feed.name,
        "uid": feed.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def input_hash(manifest: Mapping[str, Any]) -> str:
    """A short hash of a rendered object, ignoring the hash annotation itself."""
    body = json.loads(json.dumps(manifest))
    body.get("metadata", {}).get("annotations", {}).pop(Annotations.INPUT_HASH.value, None)
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


# --- the ConfigMap ----------------------------------------------------------------------------


def render_configmap(
    feed: OptionFeedSpec, assignment: Assignment, *, ranking_key: str, ranked_at: str
) -> dict[str, Any]:
    """ConfigMap ``<feed>-assignment``: one ``shard-<i>.json`` key per shard (docs/design.md)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(feed.name),
            "namespace": feed.namespace,
            "labels": feed_labels(feed.name),
            "annotations": {
                Annotations.RANKING_KEY.value: ranking_key,
                Annotations.RANKED_AT.value: ranked_at,
                Annotations.ASSIGNMENT_HASH.value: assignment.hash,
            },
            "ownerReferences": [owner_reference(feed)],
        },
        "data": dict(assignment.documents),
    }


@dataclass(frozen=True, slots=True)
class StoredAssignment:
    """What a live assignment ConfigMap says, read back."""

    instruments: int
    hash: str
    ranking_key: str
    ranked_at: datetime
    # The selection, only when the documents are intact (their hash is the recorded one).
    selection: frozenset[str] | None


def read_configmap(configmap: Mapping[str, Any] | None) -> StoredAssignment | None:
    """The assignment in a ConfigMap rendered by :func:`render_configmap`, or None when it is
    absent or not in that shape (say, after a hand edit of its annotations)."""
    if configmap is None:
        return None
    meta = configmap.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    data = configmap.get("data") or {}
    stored = read_documents(data)
    recorded = annotations.get(Annotations.ASSIGNMENT_HASH.value)
    key = annotations.get(Annotations.RANKING_KEY.value)
    try:
        ranked_at = parse_time(str(annotations.get(Annotations.RANKED_AT.value)))
    except ValueError:
        return None
    if stored is None or not recorded or not key:
        return None
    return StoredAssignment(
        instruments=sum(len(document.instruments) for document in stored),
        hash=str(recorded),
        ranking_key=str(key),
        ranked_at=ranked_at,
        selection=verified_selection(data, str(recorded)),
    )


# --- the Deployments --------------------------------------------------------------------------


def _tracing_env(
    feed: OptionFeedSpec, shard: int, tracing: CollectorTracing, taken: set[str]
) -> list[dict[str, Any]]:
    """``OTEL_*`` for a collector; a name the feed's own env already sets is left to it."""
    attributes = ",".join(
        [
            f"optionfeed.feed={feed.name}",
            f"optionfeed.shard={shard}",
            f"k8s.namespace.name={feed.namespace}",
            f"k8s.pod.name=$({POD_NAME_ENV})",
        ]
    )
    env: list[dict[str, Any]] = [
        # apiVersion as the API server defaults it, so that the stored object is what was rendered.
        {
            "name": POD_NAME_ENV,
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        *({"name": name, "value": value} for name, value in sorted(tracing.env.items())),
        {"name": "OTEL_SERVICE_NAME", "value": COLLECTOR_SERVICE_NAME},
        {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": attributes},
    ]
    return [entry for entry in env if entry["name"] not in taken]


def _env(
    feed: OptionFeedSpec, shard: int, tracing: CollectorTracing | None
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {
            "name": DATABASE_URL_ENV,
            "valueFrom": {"secretKeyRef": {"name": feed.database.name, "key": feed.database.key}},
        },
        {"name": SPOOL_DIR_ENV, "value": SPOOL_DIR},
    ]
    if feed.retention is not None:
        env.append({"name": RETENTION_ENV, "value": feed.retention})
    if feed.credentials_secret is not None:
        for name, key in ((CLIENT_ID_ENV, CLIENT_ID_KEY), (CLIENT_SECRET_ENV, CLIENT_SECRET_KEY)):
            env.append(
                {
                    "name": name,
                    "valueFrom": {"secretKeyRef": {"name": feed.credentials_secret, "key": key}},
                }
            )
    seen = {entry["name"] for entry in env}
    for entry in feed.collector.env:
        user_name = entry.get("name")
        # Server-side apply treats env as a map keyed by name: a duplicate would fail the apply.
        if isinstance(user_name, str) and user_name not in seen:
            env.append(dict(entry))
            seen.add(user_name)
    if tracing is not None:
        # After the feed's env: $(K8S_POD_NAME) must be defined before the entry that uses it,
        # and a user's own OTEL_* setting wins over the inherited one.
        env.extend(_tracing_env(feed, shard, tracing, seen))
    return env


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "metrics", "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container(
    feed: OptionFeedSpec, shard: int, image: str, tracing: CollectorTracing | None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": feed.collector.image or image,
        "command": ["optionfeed"],
        "args": [
            "collect",
            "--assignment",
            ASSIGNMENT_PATH,
            "--metrics-port",
            str(endpoints.DEFAULT_PORT),
        ],
        "env": _env(feed, shard, tracing),
        "ports": [{"name": "metrics", "containerPort": endpoints.DEFAULT_PORT, "protocol": "TCP"}],
        # Up to 2 minutes to connect, subscribe and reach the database before liveness counts.
        "startupProbe": _probe(endpoints.LIVENESS_PATH, period=2, failures=60),
        "livenessProbe": _probe(endpoints.LIVENESS_PATH, period=10, failures=3),
        "readinessProbe": _probe(endpoints.READINESS_PATH, period=5, failures=3),
        "resources": dict(feed.collector.resources) or DEFAULT_RESOURCES,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            # The directory, never the file via subPath: the kubelet updates a ConfigMap volume
            # by writing a new timestamped directory and swapping the `..data` symlink in one
            # rename, so the collector sees the new assignment.json atomically and can reload it
            # live. A subPath mount binds the file that existed at start and is never updated.
            {"name": "assignment", "mountPath": ASSIGNMENT_DIR, "readOnly": True},
            {"name": "spool", "mountPath": SPOOL_DIR},
            # The root filesystem is read-only; Python and its libraries still want a /tmp.
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if feed.collector.image_pull_policy:
        container["imagePullPolicy"] = feed.collector.image_pull_policy
    return container


def _pod_spec(
    feed: OptionFeedSpec, shard: int, image: str, tracing: CollectorTracing | None
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        # The collector never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # Time to write every buffered row after SIGTERM (the collector's shutdown order).
        "terminationGracePeriodSeconds": 60,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(feed, shard, image, tracing)],
        "volumes": [
            {
                "name": "assignment",
                "configMap": {
                    "name": configmap_name(feed.name),
                    "items": [{"key": document_key(shard), "path": ASSIGNMENT_FILE}],
                    "defaultMode": 0o444,
                },
            },
            {"name": "spool", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }
    if feed.collector.node_selector:
        pod["nodeSelector"] = dict(feed.collector.node_selector)
    if feed.collector.tolerations:
        pod["tolerations"] = [dict(t) for t in feed.collector.tolerations]
    if feed.collector.affinity:
        pod["affinity"] = dict(feed.collector.affinity)
    return pod


def render_deployment(
    feed: OptionFeedSpec,
    shard: int,
    *,
    image: str = DEFAULT_IMAGE,
    tracing: CollectorTracing | None = None,
) -> dict[str, Any]:
    """Deployment ``<feed>-shard-<shard>``, with its input hash. ``image`` is the operator's
    default collector image, used when the feed names none; ``tracing`` the ``OTEL_*`` settings
    its collectors get (none without)."""
    if not 0 <= shard < feed.shards:
        raise ValueError(f"shard {shard} is outside 0..{feed.shards - 1}")
    labels = shard_labels(feed.name, shard)
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": shard_name(feed.name, shard),
            "namespace": feed.namespace,
            "labels": labels,
            "annotations": {},
            "ownerReferences": [owner_reference(feed)],
        },
        "spec": {
            "replicas": feed.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": _selector_labels(feed.name, shard)},
            # The new pod records before the old one stops; the database drops the overlap.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {"kubectl.kubernetes.io/default-container": CONTAINER_NAME},
                },
                "spec": _pod_spec(feed, shard, image, tracing),
            },
        },
    }
    deployment["metadata"]["annotations"][Annotations.INPUT_HASH.value] = input_hash(deployment)
    return deployment
