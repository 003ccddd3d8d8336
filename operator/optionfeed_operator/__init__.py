"""The optionfeed control plane: a kopf operator that turns ``OptionFeed`` resources into sharded
collector Deployments.

Pure modules (no I/O) first, then the layers that talk to the exchange and to Kubernetes:

- :mod:`~optionfeed_operator.api`: the resource's names, its raw JSON shapes and the parsed,
  frozen :class:`~optionfeed_operator.api.OptionFeedSpec`; condition types and reasons;
- :mod:`~optionfeed_operator.assignment`: rendezvous hashing of instruments onto shards and the
  ``shard-<i>.json`` documents the collectors read;
- :mod:`~optionfeed_operator.manifests`: the ConfigMap and Deployments, rendered as dicts;
- :mod:`~optionfeed_operator.status`: conditions and the status block;
- :mod:`~optionfeed_operator.ranking`: the top-N ranking over REST at ``spec.exchange.url``, and
  when a feed needs one;
- :mod:`~optionfeed_operator.cluster`: the few requests to the API server (lightkube);
- :mod:`~optionfeed_operator.reconcile`: one idempotent pass from a feed to its children;
- :mod:`~optionfeed_operator.handlers`: the kopf wiring; :mod:`~optionfeed_operator.command`:
  ``optionfeed operator``.
"""
