"""The ``OptionFeed`` resource (``optionfeed.io/v1alpha1``): names, JSON shapes, the parsed spec.

The CRD in ``crds/optionfeed.io_optionfeeds.yaml`` is the schema the API server enforces; this
module reads what it admitted. A feed is parsed once, at the start of each reconcile pass, into a
frozen :class:`OptionFeedSpec`; every other module works from that and never looks at raw JSON
again.
Defaults are applied here as well as in the CRD so that a body written before a default existed
still parses the same way.

Conditions follow the Kubernetes convention (``type``, ``status``, ``reason``, ``message``,
``lastTransitionTime``, ``observedGeneration``); :class:`ConditionType` documents what each one's
True, False and Unknown mean.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from optionfeed.deribit.channels import FEED_CHANNELS, Interval
from optionfeed.deribit.exchange import DEFAULT_EXCHANGE_URL, OPTION_CURRENCIES
from optionfeed.deribit.ranking import RankBy

GROUP = "optionfeed.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "OptionFeed"
PLURAL = "optionfeeds"

# Who writes the children: the field manager of every server-side apply, and the value of the
# managed-by label (docs/design.md).
FIELD_MANAGER = "optionfeed-operator"
COMPONENT = "optionfeed-collector"

DEFAULT_CHANNELS: tuple[str, ...] = ("ticker", "trades")
DEFAULT_REFRESH_INTERVAL = "5m"

# A feed's name goes into label values (at most 63 characters) and into `<feed>-shard-<i>`.
MAX_FEED_NAME_LENGTH = 52


class Labels(StrEnum):
    """Label keys on everything the operator makes (docs/design.md)."""

    NAME = "app.kubernetes.io/name"
    INSTANCE = "app.kubernetes.io/instance"
    MANAGED_BY = "app.kubernetes.io/managed-by"
    FEED = "optionfeed.io/feed"
    SHARD = "optionfeed.io/shard"


class Annotations(StrEnum):
    """Annotation keys the operator writes on its children."""

    # On each Deployment: hash of the rendered Deployment; equal hash = nothing to apply.
    INPUT_HASH = "optionfeed.io/input-hash"
    # On the ConfigMap: which ranking inputs produced the selection, when, and a hash of the
    # assignment it holds, so that a restarted operator can trust it without asking the exchange.
    RANKING_KEY = "optionfeed.io/ranking-key"
    RANKED_AT = "optionfeed.io/ranked-at"
    ASSIGNMENT_HASH = "optionfeed.io/assignment-hash"


class ConditionType(StrEnum):
    """The conditions in ``status.conditions``; each carries ``observedGeneration``.

    ``Ready``
        True: every shard Deployment runs all of its ``replicasPerShard`` collectors, updated to
        the current pod template and available. False: at least one shard is not there yet, or
        the feed is suspended (reason ``Suspended``), or its children could not be written.
        Unknown (or absent): the operator has not yet looked at the feed's children.

    ``Progressing``
        True: the operator is changing the children (creating, re-sharding, rolling a new pod
        template, deleting extra shards) or a Deployment is still rolling out. False: every
        rollout has finished (reason ``RolloutComplete``), or the feed is suspended, or nothing
        can move until the problem in ``Degraded`` is resolved. Unknown (or absent): not yet
        evaluated.

    ``Degraded``
        True: the last pass could not do everything it should; the reason says why
        (``ExchangeUnreachable``, ``ExchangeError``, ``InvalidSpec``, ``KubernetesError``,
        ``RolloutFailed``). Running shards are left as they were. False: the last pass did its
        work (reason ``AsExpected``). Unknown (or absent): not yet evaluated.
    """

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Machine-readable ``reason`` values of the conditions (CamelCase, as Kubernetes wants)."""

    ALL_SHARDS_READY = "AllShardsReady"
    SHARDS_NOT_READY = "ShardsNotReady"
    SUSPENDED = "Suspended"
    RECONCILING = "Reconciling"
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    AS_EXPECTED = "AsExpected"
    EXCHANGE_UNREACHABLE = "ExchangeUnreachable"
    EXCHANGE_ERROR = "ExchangeError"
    INVALID_SPEC = "InvalidSpec"
    KUBERNETES_ERROR = "KubernetesError"
    ROLLOUT_FAILED = "RolloutFailed"


# --- raw JSON shapes --------------------------------------------------------------------------


class NameRef(TypedDict):
    name: str


class SecretKeySelector(TypedDict):
    name: str
    key: str


class DatabaseJSON(TypedDict):
    secretRef: SecretKeySelector
    retention: NotRequired[str]


class ExchangeJSON(TypedDict, total=False):
    url: str


class CollectorJSON(TypedDict, total=False):
    image: str
    imagePullPolicy: str
    resources: dict[str, Any]
    nodeSelector: dict[str, str]
    tolerations: list[dict[str, Any]]
    affinity: dict[str, Any]
    env: list[dict[str, Any]]


class OptionFeedSpecJSON(TypedDict):
    currency: str
    database: DatabaseJSON
    underlyings: NotRequired[list[str]]
    topN: NotRequired[int]
    rankBy: NotRequired[str]
    channels: NotRequired[list[str]]
    interval: NotRequired[str]
    credentialsSecretRef: NotRequired[NameRef]
    shards: NotRequired[int]
    replicasPerShard: NotRequired[int]
    refreshInterval: NotRequired[str]
    exchange: NotRequired[ExchangeJSON]
    suspend: NotRequired[bool]
    collector: NotRequired[CollectorJSON]


class ConditionJSON(TypedDict):
    type: str
    status: str
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


class OptionFeedStatusJSON(TypedDict, total=False):
    observedGeneration: int
    conditions: list[ConditionJSON]
    shards: int
    readyShards: int
    instruments: int
    assignmentHash: str
    lastRankedAt: str
    selector: str


class ObjectMetaJSON(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    generation: int
    resourceVersion: str
    labels: dict[str, str]
    annotations: dict[str, str]
    deletionTimestamp: str


class OptionFeedJSON(TypedDict):
    apiVersion: str
    kind: str
    metadata: ObjectMetaJSON
    spec: OptionFeedSpecJSON
    status: NotRequired[OptionFeedStatusJSON]


# --- the parsed spec --------------------------------------------------------------------------


class InvalidOptionFeed(ValueError):
    """An ``OptionFeed`` the operator cannot act on. The API server's schema normally prevents
    this; it remains possible for a body that predates a schema change."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True, slots=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class CollectorSpec:
    """``spec.collector``: how the collector pods run. Values are copies of the resource's."""

    image: str | None = None
    image_pull_policy: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    env: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True, slots=True)
class OptionFeedSpec:
    """One ``OptionFeed``, parsed and defaulted: everything a reconcile pass needs to know."""

    name: str
    namespace: str
    uid: str
    generation: int
    currency: str
    database: SecretKeyRef
    retention: str | None = None  # TimescaleDB retention: e.g. "90d", or "forever"
    underlyings: tuple[str, ...] = ()
    top_n: int | None = None
    rank_by: RankBy = RankBy.VOLUME_USD
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    interval: Interval = Interval.MS100
    credentials_secret: str | None = None
    shards: int = 1
    replicas_per_shard: int = 1
    refresh_interval: str = DEFAULT_REFRESH_INTERVAL
    exchange_url: str = DEFAULT_EXCHANGE_URL
    suspend: bool = False
    collector: CollectorSpec = field(default_factory=CollectorSpec)

    @property
    def refresh_seconds(self) -> float:
        return parse_duration(self.refresh_interval)

    @property
    def replicas(self) -> int:
        """Pods per shard Deployment: ``replicasPerShard``, or 0 while suspended."""
        return 0 if self.suspend else self.replicas_per_shard


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """The inverse of :func:`format_time`; raises ValueError."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as ``5m``, ``90s``, ``1h30m`` or ``500ms``."""
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m or 1h30m")
    return total


def _require(value: Any, kind: type | tuple[type, ...], path: str) -> Any:
    # bool is an int in Python; a JSON boolean is never a valid count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InvalidOptionFeed(path, f"expected {names}, got {value!r}")
    return value


def _mapping(value: Any, path: str) -> dict[str, Any]:
    return copy.deepcopy(dict(_require(value, dict, path)))


def _list_of_mappings(value: Any, path: str) -> tuple[dict[str, Any], ...]:
    items = _require(value, list, path)
    return tuple(_mapping(item, f"{path}[{i}]") for i, item in enumerate(items))


# What spec.database.retention takes (the CRD's pattern); the collector's --retention reads it.
_RETENTION_RE = re.compile(r"^([1-9][0-9]*(h|d|w)|forever)$")


def _retention(value: Any) -> str | None:
    if value is None:
        return None
    text = str(_require(value, str, "spec.database.retention"))
    if not _RETENTION_RE.match(text):
        raise InvalidOptionFeed(
            "spec.database.retention", f"use e.g. 90d, 12h, 2w or forever, got {text!r}"
        )
    return text


def _positive(value: Any, path: str) -> int:
    number = int(_require(value, int, path))
    if number < 1:
        raise InvalidOptionFeed(path, f"must be at least 1, got {number}")
    return number


def _parse_collector(raw: Any) -> CollectorSpec:
    body = _mapping(raw if raw is not None else {}, "spec.collector")
    image = body.get("image")
    policy = body.get("imagePullPolicy")
    return CollectorSpec(
        image=str(_require(image, str, "spec.collector.image")) if image else None,
        image_pull_policy=str(policy) if policy else None,
        resources=_mapping(body.get("resources", {}), "spec.collector.resources"),
        node_selector={
            str(k): str(v)
            for k, v in _mapping(
                body.get("nodeSelector", {}), "spec.collector.nodeSelector"
            ).items()
        },
        tolerations=_list_of_mappings(body.get("tolerations", []), "spec.collector.tolerations"),
        affinity=_mapping(body.get("affinity", {}), "spec.collector.affinity"),
        env=_list_of_mappings(body.get("env", []), "spec.collector.env"),
    )


def _parse_channels(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_CHANNELS
    channels = _require(raw, list, "spec.channels")
    unknown = [c for c in channels if c not in FEED_CHANNELS]
    if unknown:
        raise InvalidOptionFeed(
            "spec.channels", f"unknown channel(s) {unknown}; use {FEED_CHANNELS}"
        )
    if not channels:
        raise InvalidOptionFeed("spec.channels", "must name at least one channel")
    # Canonical order, so that the same set always renders the same assignment.
    return tuple(c for c in FEED_CHANNELS if c in channels)


def parse_feed(body: Mapping[str, Any]) -> OptionFeedSpec:
    """The :class:`OptionFeedSpec` of an ``OptionFeed`` body; raises :class:`InvalidOptionFeed`."""
    meta = _mapping(body.get("metadata", {}), "metadata")
    spec = _mapping(body.get("spec", {}), "spec")
    name = str(_require(meta.get("name"), str, "metadata.name"))
    if len(name) > MAX_FEED_NAME_LENGTH:
        raise InvalidOptionFeed("metadata.name", f"at most {MAX_FEED_NAME_LENGTH} characters")

    currency = _require(spec.get("currency"), str, "spec.currency")
    if currency not in OPTION_CURRENCIES:
        raise InvalidOptionFeed(
            "spec.currency", f"must be one of {OPTION_CURRENCIES}, got {currency!r}"
        )

    database = _mapping(spec.get("database"), "spec.database")
    secret_ref = _mapping(database.get("secretRef"), "spec.database.secretRef")
    top_n = spec.get("topN")
    credentials = spec.get("credentialsSecretRef")
    try:
        rank_by = RankBy(spec.get("rankBy", RankBy.VOLUME_USD))
    except ValueError:
        raise InvalidOptionFeed("spec.rankBy", f"unknown ranking {spec.get('rankBy')!r}") from None
    try:
        interval = Interval(spec.get("interval", Interval.MS100))
    except ValueError:
        raise InvalidOptionFeed(
            "spec.interval", f"unknown interval {spec.get('interval')!r}"
        ) from None
    if interval is Interval.RAW and credentials is None:
        raise InvalidOptionFeed("spec.interval", "raw needs spec.credentialsSecretRef")
    refresh = str(
        _require(spec.get("refreshInterval", DEFAULT_REFRESH_INTERVAL), str, "spec.refreshInterval")
    )
    try:
        parse_duration(refresh)
    except ValueError as exc:
        raise InvalidOptionFeed("spec.refreshInterval", str(exc)) from None
    shards = _positive(spec.get("shards", 1), "spec.shards")
    if top_n is not None:
        top_n = _positive(top_n, "spec.topN")
        if shards > top_n:
            raise InvalidOptionFeed("spec.shards", f"{shards} shards exceed topN {top_n}")
    exchange = _mapping(spec.get("exchange", {}), "spec.exchange")

    return OptionFeedSpec(
        name=name,
        namespace=str(_require(meta.get("namespace"), str, "metadata.namespace")),
        uid=str(_require(meta.get("uid"), str, "metadata.uid")),
        generation=int(_require(meta.get("generation", 1), int, "metadata.generation")),
        currency=currency,
        database=SecretKeyRef(
            name=str(_require(secret_ref.get("name"), str, "spec.database.secretRef.name")),
            key=str(_require(secret_ref.get("key"), str, "spec.database.secretRef.key")),
        ),
        retention=_retention(database.get("retention")),
        underlyings=tuple(
            str(u).upper() for u in _require(spec.get("underlyings", []), list, "spec.underlyings")
        ),
        top_n=top_n,
        rank_by=rank_by,
        channels=_parse_channels(spec.get("channels")),
        interval=interval,
        credentials_secret=(
            str(
                _require(
                    _mapping(credentials, "spec.credentialsSecretRef").get("name"),
                    str,
                    "spec.credentialsSecretRef.name",
                )
            )
            if credentials is not None
            else None
        ),
        shards=shards,
        replicas_per_shard=_positive(spec.get("replicasPerShard", 1), "spec.replicasPerShard"),
        refresh_interval=refresh,
        exchange_url=str(
            _require(exchange.get("url", DEFAULT_EXCHANGE_URL), str, "spec.exchange.url")
        ),
        suspend=bool(_require(spec.get("suspend", False), bool, "spec.suspend")),
        collector=_parse_collector(spec.get("collector")),
    )
