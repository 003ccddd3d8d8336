import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from harness.collector import assignment_doc
from optionfeed.collector.assignment import read_assignment, watch_assignment
from optionfeed.shard_document import InvalidShardDocument

DOC = assignment_doc(
    ["ETH-9NOV25-3375-P", "ETH-9NOV25-3400-C"],
    exchange_url="wss://www.deribit.com/ws/api/v2",
    shards=2,
    generation=7,
)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidShardDocument, match="cannot read assignment file"):
        read_assignment(tmp_path / "nope.json")


class _Seen(logging.Handler):
    """Sets an event when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


async def test_the_watcher_sees_a_kubelet_style_symlink_swap_and_skips_bad_versions(
    tmp_path: Path,
) -> None:
    # The kubelet's layout: file -> ..data/file, ..data -> ..<timestamp> swapped atomically.
    def publish(version: str, doc: Any) -> None:
        target = tmp_path / version
        target.mkdir()
        (target / "assignment.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
        link = tmp_path / "..data_tmp"
        link.symlink_to(version)
        link.replace(tmp_path / "..data")

    publish("..v1", DOC)
    path = tmp_path / "assignment.json"
    path.symlink_to("..data/assignment.json")
    current = read_assignment(path)
    updates = watch_assignment(path, current, poll_interval=0.01)

    seen = _Seen("keeping the current assignment")
    logging.getLogger("optionfeed.collector.assignment").addHandler(seen)
    publish("..v2", "{broken")
    pending = asyncio.ensure_future(anext(updates))
    await asyncio.wait_for(seen.event.wait(), 5)
    assert not pending.done()
    publish("..v3", {**DOC, "instruments": ["ETH-9NOV25-3375-P"], "generation": 8})
    new = await asyncio.wait_for(pending, 5)
    assert new.generation == 8
    assert new.instruments == ("ETH-9NOV25-3375-P",)
    await updates.aclose()
