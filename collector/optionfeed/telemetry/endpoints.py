"""Where a collector's telemetry is served: the port unless told otherwise, and the paths.

Light on purpose: the command line and the operator's manifests name these without loading the
server (:mod:`optionfeed.telemetry.health`).
"""

from __future__ import annotations

DEFAULT_PORT = 9464
METRICS_PATH = "/metrics"
LIVENESS_PATH = "/livez"
READINESS_PATH = "/readyz"
