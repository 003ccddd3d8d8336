"""How long the failure drills run: short under `make test`, full length under `make drills`."""

from __future__ import annotations

import os


def drills_full() -> bool:
    """`make drills` runs the drills at full length; `make test` runs them short."""
    return os.environ.get("OPTIONFEED_DRILLS", "").lower() == "full"
