"""Versioned SQL migrations from ``schema/``, applied idempotently under an advisory lock.

Files are named ``NNNN_what.sql``; ``NNNN`` is the version. Each pending file runs in its own
transaction together with the ``schema_migrations`` row that records it (version, name, SHA-256 of
the file, time), so a migration is either wholly applied and recorded or not at all.

Concurrent runs are safe: every run holds a session-level ``pg_advisory_lock`` while it reads and
applies, so a second collector starting at the same moment waits, then finds nothing to do.

An applied migration whose file has changed since is an error (:class:`MigrationError`): the
database would no longer match the files. Versions recorded in the database but unknown to this
program (a newer program migrated it) are logged and tolerated, so an older collector keeps
running during a rolling update.

Where the files are: in an installed wheel they ship inside the package as ``optionfeed/schema``
(``force-include`` in pyproject.toml); in a source checkout they are the repository's ``schema/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg
from opentelemetry import trace

from optionfeed.store.errors import MigrationError

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# pg_advisory_lock key held while migrating (any constant unique to optionfeed).
MIGRATION_LOCK_KEY = 0x6F70_7466_6D69_6772  # "optfmigr"

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def schema_dir() -> Path:
    """The directory holding the migration files, installed or in a source checkout."""
    packaged = resources.files("optionfeed").joinpath("schema")
    if packaged.is_dir():
        return Path(str(packaged))
    # collector/optionfeed/store/migrations.py -> the repository root is three levels up.
    source = Path(__file__).resolve().parents[3] / "schema"
    if source.is_dir():
        return source
    raise MigrationError(
        "the schema files were not found: neither optionfeed/schema in the installed package "
        f"nor {source}"
    )


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default :func:`schema_dir`), in version order."""
    folder = directory if directory is not None else schema_dir()
    found: dict[int, Migration] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_RE.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version} appears twice")
        found[version] = Migration(version, match.group(2), path.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migration files in {folder}")
    return [found[v] for v in sorted(found)]


async def applied_versions(connection: asyncpg.Connection) -> dict[int, str]:
    """version -> checksum of what the database records as applied (empty on a new database)."""
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await connection.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def migrate(
    connection: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply every pending migration; returns those applied by this call (often none)."""
    with tracer.start_as_current_span("optionfeed.migrate") as span:
        done = await _migrate(connection, migrations)
        span.set_attributes(
            {
                "optionfeed.migrations.applied": len(done),
                "optionfeed.migrations.versions": [m.version for m in done],
            }
        )
        return done


async def _migrate(
    connection: asyncpg.Connection, migrations: list[Migration] | None
) -> list[Migration]:
    pending_files = migrations if migrations is not None else load_migrations()
    got_lock = await connection.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
    if not got_lock:
        log.info("another process is migrating this database; waiting for it to finish")
        trace.get_current_span().add_event("waiting for the migration lock")
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(SCHEMA_MIGRATIONS_DDL)
        applied = await applied_versions(connection)
        known = {m.version for m in pending_files}
        for migration in pending_files:
            recorded = applied.get(migration.version)
            if recorded is not None and recorded != migration.checksum:
                raise MigrationError(
                    f"migration {migration.filename} was changed after it was applied "
                    "(checksum differs from schema_migrations): add a new migration instead"
                )
        newer = sorted(set(applied) - known)
        if newer:
            log.warning(
                "the database has migrations this program does not know (%s): "
                "it was migrated by a newer optionfeed",
                ", ".join(map(str, newer)),
            )
        done: list[Migration] = []
        for migration in pending_files:
            if migration.version in applied:
                continue
            try:
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {migration.filename} failed: {exc}") from exc
            log.info("applied migration %s", migration.filename)
            done.append(migration)
        return done
    finally:
        # A broken connection has released the lock with its session; don't mask the real error.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            if not connection.is_closed():
                await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
