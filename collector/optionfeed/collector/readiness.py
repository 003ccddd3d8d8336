"""The collector's readiness checks (``/readyz``): each is ``(ready, detail)``.

A check reads the part it judges as it is when asked, which is None until that part started.
"""

from __future__ import annotations

from optionfeed.collector.connection_pool import ConnectionPool
from optionfeed.collector.router import Router
from optionfeed.store.spool import Spool
from optionfeed.store.writer import Writer

# A commit this old with rows waiting means the database is not keeping up.
COMMIT_STALE_AFTER = 30.0


def subscribed(pool: ConnectionPool | None) -> tuple[bool, str]:
    """Every channel is acknowledged (or refused for good) on connections that are up."""
    if pool is None or not pool.connections:
        return False, "not connected yet"
    acked, held = len(pool.acknowledged), len(pool.channels)
    refused = len(pool.refused)
    detail = f"{acked}/{held} channels acknowledged" + (f", {refused} refused" if refused else "")
    return pool.subscribed, detail


def fresh(router: Router | None, heartbeat_interval: float, now: float) -> tuple[bool, str]:
    """A message arrived within two heartbeat intervals."""
    if router is None or router.last_message_at == 0:
        return False, "no message yet"
    age = now - router.last_message_at
    limit = 2 * heartbeat_interval
    return age < limit, f"last message {age:.1f} s ago (limit {limit:g} s)"


def database(writer: Writer | None, spool: Spool | None, now: float) -> tuple[bool, str]:
    """Rows reach the database, or wait in a spool that is not full."""
    if writer is None or writer.closed:
        return False, "writer not open"
    if spool is not None and spool.engaged:
        full = spool.fill_ratio >= 1.0
        return not full, f"spooling to disk ({spool.fill_ratio:.0%} of the spool used)"
    pending = writer.buffered_rows
    if pending == 0:
        return True, "nothing waiting"
    age = now - writer.last_commit_at if writer.last_commit_at else float("inf")
    return age < COMMIT_STALE_AFTER, f"{pending} rows waiting, last commit {age:.1f} s ago"
