"""The cached builds the tests need: the control plane, TimescaleDB, the OTLP receiver; and uv.

Each is a script beside this file that builds once, caches by version outside the work tree and
prints what it built (a directory or a binary) as the last line of its standard output. Asked with
its check flag, it prints the same path and exits 0 when the build is there, 1 when it is not,
and never builds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TextIO

LOG_TAIL_LINES = 30
ROOT = Path(__file__).resolve().parents[2]


class BuildFailed(RuntimeError):
    """A build script failed; the message carries the tail of its output."""


def cached(script: Path, check_flag: str = "--print-bin-dir") -> Path | None:
    """What ``script`` built, when it is already there; None otherwise (never builds)."""
    result = subprocess.run(
        ["bash", str(script), check_flag], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None
    return Path(result.stdout.strip().splitlines()[-1])


def ensure_built(
    script: Path, check_flag: str = "--print-bin-dir", progress: TextIO | None = None
) -> Path:
    """What ``script`` built, running it first when needed (minutes when cold).

    Its progress lines go to ``progress`` (default: this process's stderr) as they come.
    """
    found = cached(script, check_flag)
    if found is not None:
        return found
    lines = run_streamed(script, progress)
    if not lines:
        raise BuildFailed(f"{script} printed nothing: no path to return")
    return Path(lines[-1].strip())


def run_streamed(script: Path, progress: TextIO | None = None) -> list[str]:
    """Run ``script``, its output shown live on ``progress`` (default: stderr); its lines.

    Raises BuildFailed, with the tail of the output, when it exits non-zero.
    """
    out = progress if progress is not None else sys.stderr
    with subprocess.Popen(
        ["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as build:
        assert build.stdout is not None
        lines: list[str] = []
        for line in build.stdout:
            lines.append(line)
            out.write(line)
            out.flush()
        rc = build.wait()
    if rc != 0:
        tail = "".join(lines[-LOG_TAIL_LINES:])
        raise BuildFailed(f"{script} failed with exit {rc}; last output:\n{tail}")
    return lines


def uv() -> str:
    """The project's uv: $UV (``uv run``, and so every make target, names its own binary there),
    else the one `make setup` installs in ./.tools; uv is not expected on PATH."""
    found = os.environ.get("UV") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).is_file():
        raise FileNotFoundError(f"uv not found at {found}: run `make setup` first")
    return found
