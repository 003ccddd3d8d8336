"""Comparing two placements of instruments on shards, for the tests of the operator's sharding."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def moved(
    before: Sequence[Iterable[str]], after: Sequence[Iterable[str]]
) -> dict[str, tuple[int, int]]:
    """Instruments present in both placements that changed shard: name -> (old, new)."""
    old = {name: shard for shard, names in enumerate(before) for name in names}
    new = {name: shard for shard, names in enumerate(after) for name in names}
    return {
        name: (old[name], new[name])
        for name in sorted(old.keys() & new.keys())
        if old[name] != new[name]
    }
