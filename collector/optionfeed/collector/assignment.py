"""The assignment file: the shard document (:mod:`optionfeed.shard_document`) a collector reads
at start and re-reads when it changes.

In a pod the file is a ConfigMap key mounted in a directory. The kubelet replaces it by swapping a
symlink, never by writing in place, so the watcher compares the content it reads through the path
rather than relying on inotify events or modification times of the link itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from optionfeed.shard_document import InvalidShardDocument, ShardDocument, parse_shard_document

log = logging.getLogger(__name__)


def read_assignment(path: Path) -> ShardDocument:
    """The document at ``path``; raises :class:`InvalidShardDocument` if unreadable or invalid."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidShardDocument(f"cannot read assignment file {path}: {exc.strerror}") from None
    return parse_shard_document(text, where=str(path))


async def watch_assignment(
    path: Path, current: ShardDocument, *, poll_interval: float = 1.0
) -> AsyncIterator[ShardDocument]:
    """Yield each new valid assignment found at ``path``; invalid versions are logged and skipped.

    Polling the content is deliberate: it sees the kubelet's symlink swap, an editor's
    write-then-rename and an in-place write alike, for the cost of reading a small file each second.
    """
    digest: str | None = None  # the first read compares as changed; equal content yields nothing
    while True:
        await asyncio.sleep(poll_interval)
        try:
            text = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            log.warning("assignment file %s unreadable (%s); keeping the current one", path, exc)
            continue
        seen = hashlib.blake2b(text).hexdigest()
        if seen == digest:
            continue
        digest = seen  # a bad version is reported once, not every second
        try:
            new = parse_shard_document(text, where=str(path))
        except InvalidShardDocument as exc:
            log.error("%s; keeping the current assignment", exc)
            continue
        if new != current:
            current = new
            yield new
