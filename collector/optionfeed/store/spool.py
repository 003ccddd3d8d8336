"""The disk spool: where batches wait while the database cannot take them.

The spool is a :class:`~optionfeed.store.sink.BatchSink`, the writer's ``fallback``. When the
database fails, batches are appended here instead; while anything is spooled the writer sends new
batches here too (it does not wait on a database that is down), and replays the spool into the
database, oldest first, as soon as it answers again. Replays are idempotent: every table merges on
its natural key, so a batch replayed twice (a crash between the commit and the segment's deletion)
stores nothing twice.

On disk, ``--spool-dir`` holds segment files ``<number>.seg``, append-only. Each record is one
batch: a 4-byte length, a 4-byte CRC-32, then the zlib-compressed JSON of ``{table: [rows]}``.
Every append is fsync'd before the writer considers the batch safe. A torn record at the end of
a segment (the process died mid-append) fails its length or CRC check and is cut off at the next
start; nothing before it is affected. A segment is deleted once every record in it is in the
database. The spool survives restarts: a collector that finds segments at start replays them.

The spool is bounded by ``max_bytes``. ``optionfeed_spool_bytes`` and
``optionfeed_spool_fill_ratio`` show the fill, and a warning is logged when it crosses 50, 75, 90
and 100 %. **When the spool is full** it refuses further batches. The writer then keeps its batch
in memory and retries the database; its buffer fills, ``put()`` waits, and reading from the
exchange slows down until Deribit drops the connection as too slow. Those disconnects are
recorded as gaps, and the missed trades are fetched by sequence number when the database returns.
Nothing is ever dropped without a count: memory stays bounded, and what cannot be kept is
accounted for as a gap.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from opentelemetry import trace
from prometheus_client import Counter, Gauge

from optionfeed.store.errors import BatchNotWritten, StoreError
from optionfeed.store.sink import Batch, WriteResult
from optionfeed.store.tables import BY_NAME, Row, Table

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_SEGMENT_BYTES = 64 * 1024**2
FILL_ALARMS = (0.5, 0.75, 0.9, 1.0)


class SpoolFull(StoreError):
    def __init__(self, used: int, limit: int) -> None:
        super().__init__(f"the spool is full ({used} of {limit} bytes)")


class SpoolMetrics(Protocol):
    spool_bytes: Gauge
    spool_capacity_bytes: Gauge
    spool_fill_ratio: Gauge
    spooled_rows_total: Counter
    spool_replayed_rows_total: Counter


# --------------------------------------------------------------------------- row (de)serialisation

Encode = Callable[[Any], Any]
Decode = Callable[[Any], Any]


def _bytes_to_text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes | bytearray) else value


def _text_to_bytes(value: Any) -> Any:
    return value.encode() if isinstance(value, str) else value


def _uuid_to_text(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def _text_to_uuid(value: Any) -> Any:
    return uuid.UUID(value) if isinstance(value, str) else value


_CODECS: dict[str, tuple[Encode, Decode]] = {
    "jsonb": (_bytes_to_text, _text_to_bytes),  # rows carry jsonb as the JSON's bytes
    "uuid": (_uuid_to_text, _text_to_uuid),
}


@dataclass(frozen=True, slots=True)
class _RowCodec:
    """Turns a table's rows into JSON-able lists and back, column by column."""

    encoders: tuple[tuple[int, Encode], ...]
    decoders: tuple[tuple[int, Decode], ...]

    @classmethod
    def of(cls, table: Table) -> _RowCodec:
        enc, dec = [], []
        for index, column in enumerate(table.columns):
            codec = _CODECS.get(column.sql_type)
            if codec is not None:
                enc.append((index, codec[0]))
                dec.append((index, codec[1]))
        return cls(tuple(enc), tuple(dec))

    def encode(self, rows: list[Row]) -> list[Any]:
        if not self.encoders:
            return rows
        out = []
        for row in rows:
            values = list(row)
            for index, fn in self.encoders:
                values[index] = fn(values[index])
            out.append(values)
        return out

    def decode(self, rows: list[list[Any]]) -> list[Row]:
        out = []
        for values in rows:
            for index, fn in self.decoders:
                values[index] = fn(values[index])
            out.append(tuple(values))
        return out


def encode_batch(batch: Batch, codecs: Mapping[str, _RowCodec]) -> bytes:
    doc = {table.name: codecs[table.name].encode(rows) for table, rows in batch.rows.items()}
    payload = zlib.compress(orjson.dumps(doc), 1)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_batch(payload: bytes, codecs: Mapping[str, _RowCodec], seq: int) -> Batch:
    doc = orjson.loads(zlib.decompress(payload))
    rows: dict[Table, list[Row]] = {}
    for name, table_rows in doc.items():
        table = BY_NAME.get(name)
        if table is None:
            raise ValueError(f"spooled rows of an unknown table {name!r}")
        rows[table] = codecs[name].decode(table_rows)
    return Batch(seq, rows)


def read_records(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """The intact records of a segment as (offset, payload), and where the intact part ends."""
    records, offset = [], 0
    while offset + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        records.append((offset, payload))
        offset = start + length
    return records, offset


# --------------------------------------------------------------------------- the spool


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int


class Spool:
    """A bounded, append-only, fsync'd queue of batches on disk; see the module docstring."""

    def __init__(
        self,
        directory: Path | str,
        *,
        metrics: SpoolMetrics,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.metrics = metrics
        self._codecs = {name: _RowCodec.of(table) for name, table in BY_NAME.items()}
        self._segments: list[_Segment] = []  # oldest first; the last one takes appends
        self._used = 0
        self._refused = False  # a batch did not fit: full, whatever the byte count says
        self._lock = asyncio.Lock()  # one append or segment switch at a time
        self._alarm = 0  # index into FILL_ALARMS of the next threshold to announce
        self._seq = 0

    # ------------------------------------------------------------------ state

    @property
    def engaged(self) -> bool:
        """Batches are waiting here: new ones must queue behind them, the database is behind."""
        return self._used > 0

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def fill_ratio(self) -> float:
        """0 to 1; 1 as soon as a batch was refused for lack of room, until a replay frees some."""
        return 1.0 if self._refused else min(1.0, self._used / self.max_bytes)

    def _publish(self) -> None:
        m = self.metrics
        m.spool_bytes.set(self._used)
        m.spool_fill_ratio.set(self.fill_ratio)
        fill = self.fill_ratio
        while self._alarm < len(FILL_ALARMS) and fill >= FILL_ALARMS[self._alarm]:
            threshold = FILL_ALARMS[self._alarm]
            self._alarm += 1
            level = logging.ERROR if threshold >= 1.0 else logging.WARNING
            log.log(
                level,
                "the disk spool is %d%% full (%d of %d bytes in %s)%s",
                int(threshold * 100),
                self._used,
                self.max_bytes,
                self.directory,
                "; new batches wait in memory and reading from the exchange slows down"
                if threshold >= 1.0
                else "",
            )
        while self._alarm > 0 and fill < FILL_ALARMS[self._alarm - 1] / 2:
            self._alarm -= 1  # announce a threshold again only after the spool really drained

    # ------------------------------------------------------------------ BatchSink

    async def open(self) -> None:
        await asyncio.to_thread(self._scan)
        self.metrics.spool_capacity_bytes.set(self.max_bytes)
        self._publish()
        if self._segments and self._used:
            log.warning(
                "the disk spool holds %d bytes from an earlier run in %s; replaying them into "
                "the database",
                self._used,
                self.directory,
            )

    def _scan(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = []
        for path in sorted(self.directory.glob("*.seg")):
            try:
                number = int(path.stem)
            except ValueError:
                continue
            data = path.read_bytes()
            _, intact = read_records(data)
            if intact < len(data):
                log.warning(
                    "spool segment %s ends with a torn record (%d bytes cut off)",
                    path,
                    len(data) - intact,
                )
                with path.open("r+b") as f:
                    f.truncate(intact)
                    os.fsync(f.fileno())
            if intact == 0:
                path.unlink()
                continue
            segments.append(_Segment(number, path, intact))
        self._segments = segments
        self._used = sum(s.size for s in segments)

    async def write(self, batch: Batch) -> WriteResult:
        with tracer.start_as_current_span(
            "optionfeed.spool.write",
            attributes={"optionfeed.batch.seq": batch.seq, "optionfeed.batch.rows": batch.count},
        ) as span:
            result = await self._write(batch)
            span.set_attributes(
                {
                    "optionfeed.spool.used_bytes": self._used,
                    "optionfeed.spool.segments": len(self._segments),
                }
            )
            return result

    async def _write(self, batch: Batch) -> WriteResult:
        record = encode_batch(batch, self._codecs)
        async with self._lock:
            if self._used + len(record) > self.max_bytes:
                self._refused = True
                self._publish()
                raise BatchNotWritten("spool_full", SpoolFull(self._used, self.max_bytes))
            segment = self._segments[-1] if self._segments else None
            if segment is None or segment.size >= self.segment_bytes:
                number = segment.number + 1 if segment else 1
                segment = _Segment(number, self.directory / f"{number:012d}.seg", 0)
                self._segments.append(segment)
            try:
                await asyncio.to_thread(_append, segment.path, record, segment.size == 0)
            except OSError as exc:
                raise BatchNotWritten("spool_io", exc) from exc
            segment.size += len(record)
            self._used += len(record)
        self.metrics.spooled_rows_total.inc(batch.count)
        self._publish()
        return WriteResult(committed_at=time.time())

    async def close(self) -> None:
        self._publish()

    # ------------------------------------------------------------------ replay

    async def replay(self, write: Callable[[Batch], Any]) -> int:
        """Write the oldest segment's batches with ``write``, then delete it; rows replayed.

        ``write`` raises (``BatchNotWritten``) when the database is still away; the segment then
        stays, and the next call starts it again from its beginning (writes are idempotent).
        """
        if not self._segments:
            return 0
        # A span per segment; the batches' COPY and merge spans are its children.
        with tracer.start_as_current_span("optionfeed.spool.replay") as span:
            replayed = await self._replay(write)
            span.set_attribute("optionfeed.spool.replayed_rows", replayed)
            return replayed

    async def _replay(self, write: Callable[[Batch], Any]) -> int:
        async with self._lock:
            if not self._segments:
                return 0
            segment = self._segments[0]
            trace.get_current_span().set_attributes(
                {
                    "optionfeed.spool.segment": segment.number,
                    "optionfeed.spool.segment_bytes": segment.size,
                }
            )
            if segment is self._segments[-1]:
                # Seal the segment that takes appends, so the replay reads a fixed file.
                number = segment.number + 1
                self._segments.append(_Segment(number, self.directory / f"{number:012d}.seg", 0))
        data = await asyncio.to_thread(segment.path.read_bytes)
        records, _ = read_records(data[: segment.size])
        replayed = 0
        for _, payload in records:
            self._seq += 1
            batch = decode_batch(payload, self._codecs, self._seq)
            await write(batch)
            replayed += batch.count
        async with self._lock:
            await asyncio.to_thread(_remove, segment.path)
            self._segments.remove(segment)
            self._used -= segment.size
            self._refused = False
            if len(self._segments) == 1 and not self._segments[0].size:
                self._segments.clear()  # nothing left: the next append starts a new segment
        self.metrics.spool_replayed_rows_total.inc(replayed)
        self._publish()
        return replayed


def _append(path: Path, record: bytes, new: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        view = memoryview(record)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        _fsync_directory(path.parent)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # A new or deleted segment survives a crash only once its directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
