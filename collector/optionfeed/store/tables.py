"""The tables the writer fills: columns, natural keys, and the SQL that merges a batch.

This module is the single source of a row's shape. A row is a plain tuple whose items follow
``Table.columns`` in order; the normalisers (``optionfeed.collector.normalize``) build them, the
writer COPYs them unchanged. ``schema/`` holds the DDL of the same tables; a test checks the two
agree, and :func:`optionfeed.store.sink.check_schema` refuses to write into a database whose
columns differ.

Timestamps travel as numbers, not ``datetime`` objects, because building a ``datetime`` per row is
the most expensive step of a naive writer:

- ``Carry.EPOCH_MS``: an ``int`` of milliseconds since the Unix epoch, as Deribit sends
  ``timestamp``; the merge turns it into ``timestamptz`` exactly (integer arithmetic).
- ``Carry.EPOCH_S``: a ``float`` of seconds since the epoch, as ``time.time()`` returns it (our own
  clocks: ``recv_ts``, first/last seen); ``to_timestamp`` rounds it to the microsecond.

The staging tables hold those numbers; the merge (``INSERT … SELECT … ON CONFLICT``) converts them
while it deduplicates on the natural key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

Row = tuple[Any, ...]

MS_PER_DAY = 86_400_000


class Carry(Enum):
    """How a row carries a column's value to the database."""

    VALUE = "value"
    EPOCH_MS = "epoch_ms"
    EPOCH_S = "epoch_s"


class Conflict(Enum):
    """What the merge does with a row whose natural key is already stored."""

    NOTHING = "nothing"  # keep the stored row: market data is immutable
    UPDATE = "update"  # reference data and heartbeats: the newest row wins


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql_type: str
    carry: Carry = Carry.VALUE

    @property
    def staging_type(self) -> str:
        if self.carry is Carry.EPOCH_MS:
            return "bigint"
        if self.carry is Carry.EPOCH_S:
            return "double precision"
        return self.sql_type

    @property
    def select_expression(self) -> str:
        """How the merge reads this column out of the staging table."""
        name = quote_ident(self.name)
        if self.carry is Carry.EPOCH_MS:
            return f"'epoch'::timestamptz + {name} * interval '1 millisecond'"
        if self.carry is Carry.EPOCH_S:
            return f"to_timestamp({name})"
        return name


@dataclass(frozen=True)
class Table:
    """One table: its columns in row order, its natural key and how duplicates merge.

    ``key`` is the conflict target as declared in ``schema/`` (for partitioned tables it includes
    ``ts``). ``partitioned`` tables are partitioned by day on ``ts``, which rows carry as epoch
    milliseconds at index ``ts_index``. For ``Conflict.UPDATE`` tables, ``newest`` names the column
    that picks the winner when one batch holds the same key twice, and ``keep`` maps a column to
    the expression it is updated with instead of the incoming value. ``family`` names the channel
    family whose notifications the table holds (``ticker``, ``trades``...), for market-data tables.
    """

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    partitioned: bool = False
    family: str | None = None
    conflict: Conflict = Conflict.NOTHING
    newest: str | None = None
    keep: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = self.column_names
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names")
        for column in (*self.key, *self.keep, *((self.newest,) if self.newest else ())):
            if column not in names:
                raise ValueError(f"{self.name}: unknown column {column!r}")
        if self.partitioned and (
            "ts" not in self.key or self.columns[names.index("ts")].carry is not Carry.EPOCH_MS
        ):
            raise ValueError(f"{self.name}: a partitioned table needs ts (epoch ms) in its key")
        if self.conflict is Conflict.UPDATE and self.newest is None:
            raise ValueError(f"{self.name}: an UPDATE merge needs a 'newest' column")

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Table) and other.name == self.name

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def width(self) -> int:
        return len(self.columns)

    @property
    def ts_index(self) -> int | None:
        """Index of the exchange timestamp (epoch ms) in a row, when the table has one."""
        for i, column in enumerate(self.columns):
            if column.name == "ts" and column.carry is Carry.EPOCH_MS:
                return i
        return None

    @property
    def staging_name(self) -> str:
        return f"stage_{self.name}"

    def staging_ddl(self) -> str:
        """A temporary table with the row's shape; emptied by every commit, no catalog churn."""
        cols = ", ".join(f"{quote_ident(c.name)} {c.staging_type}" for c in self.columns)
        return (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote_ident(self.staging_name)} ({cols}) "
            "ON COMMIT DELETE ROWS"
        )

    def merge_sql(self) -> str:
        """Move the staging table into the table; duplicates of stored keys are left out."""
        target = ", ".join(quote_ident(c) for c in self.column_names)
        select = ", ".join(c.select_expression for c in self.columns)
        conflict_target = ", ".join(quote_ident(c) for c in self.key)
        source = f"pg_temp.{quote_ident(self.staging_name)}"
        if self.conflict is Conflict.NOTHING:
            return (
                f"INSERT INTO {quote_ident(self.name)} ({target}) SELECT {select} FROM {source} "
                f"ON CONFLICT ({conflict_target}) DO NOTHING"
            )
        # ON CONFLICT DO UPDATE may touch a row only once per statement: keep the newest copy of
        # each key in the batch.
        assert self.newest is not None
        key = ", ".join(quote_ident(c) for c in self.key)
        newest = quote_ident(self.newest)
        updates = ", ".join(
            f"{quote_ident(c)} = {self.keep.get(c, 'EXCLUDED.' + quote_ident(c))}"
            for c in self.column_names
            if c not in self.key
        )
        return (
            f"INSERT INTO {quote_ident(self.name)} AS t ({target}) "
            f"SELECT DISTINCT ON ({key}) {select} FROM {source} ORDER BY {key}, {newest} DESC "
            f"ON CONFLICT ({conflict_target}) DO UPDATE SET {updates}"
        )


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cols(*specs: str | tuple[str, str] | tuple[str, str, Carry]) -> tuple[Column, ...]:
    """Columns from compact specs: ``"name"`` is a double, ``(name, type[, carry])`` otherwise."""
    out: list[Column] = []
    for spec in specs:
        if isinstance(spec, str):
            out.append(Column(spec, "double precision"))
        elif len(spec) == 2:
            out.append(Column(spec[0], spec[1]))
        else:
            out.append(Column(spec[0], spec[1], spec[2]))
    return tuple(out)


_TIME = (
    ("instrument", "text"),
    ("ts", "timestamptz", Carry.EPOCH_MS),
    ("recv_ts", "timestamptz", Carry.EPOCH_S),
)

TICKERS = Table(
    "option_tickers",
    _cols(
        *_TIME,
        ("state", "text"),
        "best_bid_price",
        "best_bid_amount",
        "best_ask_price",
        "best_ask_amount",
        "bid_iv",
        "ask_iv",
        "mark_price",
        "mark_iv",
        "last_price",
        "index_price",
        "underlying_price",
        ("underlying_index", "text"),
        "open_interest",
        "interest_rate",
        "min_price",
        "max_price",
        "settlement_price",
        "delivery_price",
        "estimated_delivery_price",
        ("expired", "boolean"),
        "delta",
        "gamma",
        "vega",
        "theta",
        "rho",
        "stats_volume",
        "stats_volume_usd",
        "stats_volume_notional",
        "stats_low",
        "stats_high",
        "stats_price_change",
        ("extra", "jsonb"),
    ),
    key=("instrument", "ts"),
    partitioned=True,
    family="ticker",
)

QUOTES = Table(
    "option_quotes",
    _cols(
        *_TIME,
        "best_bid_price",
        "best_bid_amount",
        "best_ask_price",
        "best_ask_amount",
        ("extra", "jsonb"),
    ),
    key=("instrument", "ts"),
    partitioned=True,
    family="quote",
)

TRADES = Table(
    "option_trades",
    _cols(
        *_TIME,
        ("trade_id", "text"),
        ("trade_seq", "bigint"),
        "price",
        "amount",
        "contracts",
        ("direction", "text"),
        ("tick_direction", "integer"),
        "index_price",
        "mark_price",
        "iv",
        ("liquidation", "text"),
        ("block_trade_id", "text"),
        ("block_trade_leg_count", "integer"),
        ("combo_id", "text"),
        ("combo_trade_id", "text"),
        ("block_rfq_id", "bigint"),
        ("extra", "jsonb"),
    ),
    key=("instrument", "trade_id", "ts"),
    partitioned=True,
    family="trades",
)

BOOK = Table(
    "option_book",
    _cols(
        *_TIME,
        ("change_id", "bigint"),
        ("prev_change_id", "bigint"),
        ("type", "text"),
        ("bids", "jsonb"),
        ("asks", "jsonb"),
        ("extra", "jsonb"),
    ),
    key=("instrument", "change_id", "ts"),
    partitioned=True,
    family="book",
)

INSTRUMENTS = Table(
    "instruments",
    _cols(
        ("instrument", "text"),
        ("kind", "text"),
        ("base_currency", "text"),
        ("quote_currency", "text"),
        ("counter_currency", "text"),
        ("settlement_currency", "text"),
        ("option_type", "text"),
        "strike",
        ("expiration_timestamp", "timestamptz", Carry.EPOCH_MS),
        ("creation_timestamp", "timestamptz", Carry.EPOCH_MS),
        ("settlement_period", "text"),
        "tick_size",
        ("tick_size_steps", "jsonb"),
        "contract_size",
        "min_trade_amount",
        "maker_commission",
        "taker_commission",
        "block_trade_commission",
        "block_trade_min_trade_amount",
        "block_trade_tick_size",
        "max_leverage",
        "max_liquidation_commission",
        ("instrument_id", "bigint"),
        ("price_index", "text"),
        ("instrument_type", "text"),
        ("state", "text"),
        ("is_active", "boolean"),
        ("rfq", "boolean"),
        ("extra", "jsonb"),
        ("first_seen", "timestamptz", Carry.EPOCH_S),
        ("last_seen", "timestamptz", Carry.EPOCH_S),
        ("expired_at", "timestamptz", Carry.EPOCH_S),
    ),
    key=("instrument",),
    conflict=Conflict.UPDATE,
    newest="last_seen",
    keep={
        "first_seen": "LEAST(t.first_seen, EXCLUDED.first_seen)",
        "last_seen": "GREATEST(t.last_seen, EXCLUDED.last_seen)",
        "expired_at": "LEAST(t.expired_at, EXCLUDED.expired_at)",
    },
)

GAPS = Table(
    "data_gaps",
    _cols(
        ("gap_id", "uuid"),
        ("feed", "text"),
        ("shard", "integer"),
        ("instrument", "text"),
        ("channel", "text"),
        ("gap_start", "timestamptz", Carry.EPOCH_S),
        ("gap_end", "timestamptz", Carry.EPOCH_S),
        ("reason", "text"),
        ("seq_from", "bigint"),
        ("seq_to", "bigint"),
        ("rows_recovered", "bigint"),
        ("detected_at", "timestamptz", Carry.EPOCH_S),
        ("updated_at", "timestamptz", Carry.EPOCH_S),
    ),
    key=("gap_id",),
    conflict=Conflict.UPDATE,
    newest="updated_at",
    keep={
        "detected_at": "t.detected_at",
        "gap_end": "COALESCE(EXCLUDED.gap_end, t.gap_end)",
        "seq_from": "COALESCE(EXCLUDED.seq_from, t.seq_from)",
        "seq_to": "COALESCE(EXCLUDED.seq_to, t.seq_to)",
        "rows_recovered": "GREATEST(t.rows_recovered, EXCLUDED.rows_recovered)",
        "updated_at": "GREATEST(t.updated_at, EXCLUDED.updated_at)",
    },
)

STATUS = Table(
    "collector_status",
    _cols(
        ("feed", "text"),
        ("shard", "integer"),
        ("pod", "text"),
        ("started_at", "timestamptz", Carry.EPOCH_S),
        ("last_seen", "timestamptz", Carry.EPOCH_S),
        ("version", "text"),
        ("instruments", "integer"),
        ("connections", "integer"),
        ("counters", "jsonb"),
    ),
    key=("feed", "shard", "pod"),
    conflict=Conflict.UPDATE,
    newest="last_seen",
    keep={"last_seen": "GREATEST(t.last_seen, EXCLUDED.last_seen)"},
)

REJECTED = Table(
    "rejected_messages",
    _cols(
        ("id", "uuid"),
        ("recv_ts", "timestamptz", Carry.EPOCH_S),
        ("channel", "text"),
        ("reason", "text"),
        ("raw", "text"),
    ),
    key=("id",),
)

ALL: tuple[Table, ...] = (TICKERS, QUOTES, TRADES, BOOK, INSTRUMENTS, GAPS, STATUS, REJECTED)
BY_NAME: dict[str, Table] = {t.name: t for t in ALL}
TIME_TABLES: tuple[Table, ...] = tuple(t for t in ALL if t.partitioned)
# The market-data tables by channel family, in the order reports and summaries show them.
BY_FAMILY: dict[str, Table] = {t.family: t for t in ALL if t.family is not None}
FAMILIES: tuple[str, ...] = tuple(BY_FAMILY)


def index_of(table: Table, column: str) -> int:
    """Position of ``column`` in ``table``'s rows (for code that reads rows back by name)."""
    return table.column_names.index(column)
