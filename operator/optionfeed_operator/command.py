"""``optionfeed operator``: run the kopf operator.

It talks to the cluster of ``$KUBECONFIG`` (or ``~/.kube/config``), or to the one it runs in. The
flags are the ones a kopf user expects (``--namespace``, ``--all-namespaces``, ``--liveness``,
``--standalone`` or ``--peering``) plus the collector image and the resync interval; each also
reads ``OPTIONFEED_<NAME>`` (``OPTIONFEED_NAMESPACE`` takes a comma-separated list).

Only one operator should act on a feed at a time. The shipped Deployment runs one replica with the
``Recreate`` strategy and ``--standalone``: kopf's peering does not elect a leader (operators of the
same priority all keep working, with a warning), so it cannot make a second replica safe.
``--peering`` is there for the case kopf designed it for: pausing the in-cluster operator while a
developer runs one with a higher ``--priority`` (it needs kopf's peering CRDs and RBAC for them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from optionfeed.settings import add_option, env_names, positive_float
from optionfeed_operator.manifests import DEFAULT_IMAGE

NAMESPACE_ENV = env_names("namespace")[0]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_argument_group("what to watch (default: every namespace)")
    env_namespaces = [n for n in os.environ.get(NAMESPACE_ENV, "").split(",") if n.strip()]
    scope.add_argument(
        "-n",
        "--namespace",
        dest="namespaces",
        action="append",
        default=None,
        metavar="NAMESPACE",
        help="watch OptionFeeds in this namespace; repeat for several "
        f"[env: {NAMESPACE_ENV}, comma-separated]",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch OptionFeeds in every namespace (needs the ClusterRole binding)",
    )
    parser.set_defaults(env_namespaces=[n.strip() for n in env_namespaces])

    peers = parser.add_mutually_exclusive_group()
    peers.add_argument(
        "--standalone",
        action="store_true",
        default=True,
        help="do not coordinate with other kopf operators (the default)",
    )
    add_option(
        peers,
        "--peering",
        help="coordinate through this kopf peering object instead (kopf's peering CRDs must be "
        "installed); the operator with the highest --priority works, the others pause",
        metavar="NAME",
    )
    add_option(parser, "--priority", type=int, default=0, help="priority among peering operators")
    add_option(
        parser,
        "--liveness",
        help="serve kopf's liveness probe at this URL, e.g. http://0.0.0.0:8080/healthz",
        metavar="URL",
    )
    add_option(
        parser,
        "--metrics-port",
        type=int,
        default=0,
        help="serve the operator's Prometheus metrics at http://0.0.0.0:PORT/metrics (0: off)",
        metavar="PORT",
    )
    add_option(
        parser,
        "--collector-image",
        default=DEFAULT_IMAGE,
        help="collector image for feeds that name none in spec.collector.image",
        metavar="IMAGE",
    )
    add_option(
        parser,
        "--resync-interval",
        type=positive_float,
        default=30.0,
        help="seconds between resync passes of each feed: drift correction, and a re-rank "
        "once the feed's refreshInterval has passed",
        metavar="SECONDS",
    )


def run(args: argparse.Namespace) -> int:
    import kopf

    from optionfeed.telemetry import tracing
    from optionfeed_operator.handlers import OperatorOptions, build_registry, configure_settings
    from optionfeed_operator.manifests import CollectorTracing

    namespaces: list[str] = args.namespaces or args.env_namespaces
    if namespaces and args.all_namespaces:
        print("optionfeed operator: use --namespace or --all-namespaces, not both", file=sys.stderr)
        return 2
    # lightkube's HTTP client logs every request at INFO; the reconciler reports what matters.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    settings = kopf.OperatorSettings()
    configure_settings(settings)
    registry = build_registry(
        OperatorOptions(
            image=args.collector_image,
            resync_interval=args.resync_interval,
            metrics_port=args.metrics_port,
            collector_tracing=CollectorTracing.from_environment(os.environ),
        )
    )
    traces = tracing.setup("optionfeed-operator")
    try:
        kopf.run(
            registry=registry,
            settings=settings,
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=args.priority,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(),
        )
    finally:
        if traces is not None:
            traces.shutdown()
    return 0
