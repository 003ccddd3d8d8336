"""Where the collector's CPU goes under load: a py-spy profile of one end-to-end stage.

Run it from the repository root::

    uv run python tests/bench/profile_collector.py [--rate 20000] [--seconds 30] [--native]
    uv run python tests/bench/profile_collector.py --summarise bench-results/collector-20000.txt

It runs one stage of ``bench_e2e.py`` (the same simulator, collector and PostgreSQL, 2,000
instruments x ticker, trades, book at raw) with py-spy sampling the collector process at 250 Hz
during the measured window (``--nonblocking`` is not used: samples are exact, and the stage's own
figures are slightly pessimistic because of it). The stacks are written, collapsed (one
``frame;frame;... count`` a line, which speedscope and flamegraph.pl open), to
``bench-results/collector-<rate>.txt`` (git-ignored). Then it prints:

- the share of samples per component, each stack charged to the component of its innermost
  frame that belongs to one (reading frames, JSON, routing, normalising, buffering, COPY,
  metrics, event loop...);
- the functions with the most samples of their own (self time) and the most in total (inclusive).

py-spy counts only samples where the collector's thread is busy (an idle event loop waiting in
``epoll`` is not sampled), so the shares are of CPU time, not of wall time. ``--native`` adds C
frames (orjson, asyncpg's Cython encoder, CPython internals) when py-spy can unwind them.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

ROOT = HERE.parents[1]

# Components, tried from the innermost frame outwards; the first pattern that matches a frame
# names the component the sample is charged to. Patterns match "function (file)" of py-spy.
COMPONENTS: list[tuple[str, re.Pattern[str]]] = [
    ("garbage collector", re.compile(r"^<gc>|gc_collect|collect_generations")),
    ("JSON parse (orjson.loads)", re.compile(r"orjson|^loads ")),
    ("commit-lag histogram", re.compile(r"observe_lags|bucket_counts")),
    ("Prometheus metrics", re.compile(r"prometheus_client")),
    ("normalise (payload -> row)", re.compile(r"\(optionfeed/collector/normalize\.py\)")),
    ("gap detectors", re.compile(r"\(optionfeed/collector/sequences\.py\)")),
    ("COPY + merge (asyncpg)", re.compile(r"asyncpg|\(optionfeed/store/sink\.py\)")),
    ("writer (buffer, batches)", re.compile(r"\(optionfeed/store/writer\.py\)")),
    ("router (dispatch)", re.compile(r"\(optionfeed/collector/router\.py\)")),
    ("WebSocket frames (aiohttp)", re.compile(r"aiohttp|_websocket|WebSocketReader|reader_c")),
    ("reader loop (_read_frames)", re.compile(r"_read_frames|\(optionfeed/collector/connection")),
    ("event loop, sockets", re.compile(r"asyncio|selectors|_run_once|socket")),
]
OTHER = "other"


# A thread blocked on a lock or a condition (the default executor's idle workers) is waiting,
# not working; with --native py-spy does not always recognise it as idle.
WAITING = re.compile(r"PyThread_acquire_lock|pthread_cond_(timed)?wait|SimpleQueue_get")


def parse_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """Stacks (outermost frame first) and their sample counts, waiting threads left out."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or WAITING.search(stack):
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def component_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in COMPONENTS:
            if pattern.search(frame):
                return name
    return OTHER


def summarise(path: Path, top: int = 15) -> str:
    stacks = parse_collapsed(path)
    total = sum(n for _, n in stacks)
    if not total:
        return f"{path}: no samples"
    by_component: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        by_component[component_of(frames)] += n
        self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{path}: {total:,} samples (250 Hz while busy)", "", "by component:"]
    for name, n in by_component.most_common():
        lines.append(f"  {n / total:6.1%}  {name}")
    lines += ["", f"top {top} by self time:"]
    for frame, n in self_time.most_common(top):
        lines.append(f"  {n / total:6.1%}  {frame}")
    lines += ["", f"top {top} by inclusive time (below the event loop):"]
    shown = 0
    for frame, n in inclusive.most_common():
        if n / total > 0.97:
            continue  # the entry points every busy stack runs under
        lines.append(f"  {n / total:6.1%}  {frame}")
        shown += 1
        if shown == top:
            break
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20_000, help="target msg/s of the stage")
    parser.add_argument("--seconds", type=float, default=30.0, help="profiled window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--native", action="store_true", help="include C extension frames")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results" / "collector.txt")
    parser.add_argument("--collector-args", default="", help="extra flags for optionfeed collect")
    parser.add_argument("--summarise", type=Path, help="only summarise this collapsed-stack file")
    args = parser.parse_args()
    if args.summarise:
        print(summarise(args.summarise))
        return 0

    import bench_e2e

    argv = [
        "--rates", f"{args.rate:g}", "--window", f"{args.seconds:g}",
        "--warmup", f"{args.warmup:g}", "--profile", str(args.output), "--stop-after", "1",
    ]  # fmt: skip
    if args.collector_args:
        argv += ["--collector-args", args.collector_args]
    if args.native:
        argv.append("--profile-native")
    print(f"profiling: uv run python tests/bench/profile_collector.py {' '.join(sys.argv[1:])}")
    bench_e2e.main(argv)
    output = args.output.with_name(
        f"{args.output.stem}-{int(args.rate)}{args.output.suffix or '.txt'}"
    )
    print()
    print(summarise(output))
    print(f"\nflame graph: open {output} in https://www.speedscope.app (collapsed stacks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
