"""What one collector is told: where to read and write, what to record, how often to report."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from optionfeed.collector.gaps import DEFAULT_STALE_AFTER
from optionfeed.deribit.exchange import DEFAULT_EXCHANGE_URL
from optionfeed.deribit.ranking import RankBy
from optionfeed.store import timescale
from optionfeed.store.spool import DEFAULT_MAX_BYTES
from optionfeed.telemetry import endpoints


@dataclass(frozen=True, slots=True)
class LocalPlan:
    """Local mode: the collector ranks the currency's options by itself."""

    currency: str
    top: int | None
    channels: tuple[str, ...]
    interval: str
    rank_by: RankBy = RankBy.VOLUME_USD

    @property
    def feed(self) -> str:
        top = "all" if self.top is None else f"top{self.top}"
        return f"{self.currency.lower()}-{top}"


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    exchange_url: str = DEFAULT_EXCHANGE_URL
    database_url: str | None = None
    data_dir: Path = Path(".optionfeed")
    spool_dir: Path | None = None  # default: <data_dir>/spool
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    timescale: timescale.Settings = field(default_factory=timescale.Settings)
    metrics_port: int = endpoints.DEFAULT_PORT
    metrics_host: str = "0.0.0.0"
    duration: float | None = None
    assignment_path: Path | None = None
    local: LocalPlan | None = None
    client_id: str | None = None
    client_secret: str | None = None
    heartbeat_interval: float = 10.0
    data_timeout: float | None = 30.0
    channels_per_connection: int = 1_000
    max_connections: int = 8
    flush_interval: float = 0.25
    batch_rows: int = 10_000
    buffer_rows: int = 50_000
    refresh_interval: float = 300.0
    stale_after: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STALE_AFTER))
    backfill_workers: int = 2
    stats_interval: float = 60.0
    status_interval: float = 15.0
    pod: str = field(default_factory=lambda: os.environ.get("POD_NAME") or socket.gethostname())

    def __post_init__(self) -> None:
        if (self.assignment_path is None) == (self.local is None):
            raise ValueError("give either an assignment file or a local plan (currency, top)")

    @property
    def spool_path(self) -> Path:
        return self.spool_dir if self.spool_dir is not None else self.data_dir / "spool"
