"""The operator's few requests to the API server, over lightkube's async client.

Reads come back as plain dicts (the JSON the API server sent) so that the rest of the operator
compares them with the dicts :mod:`optionfeed_operator.manifests` renders. Writes are server-side
apply with the operator's field manager, forced: the operator owns the fields it renders and takes
them back from whoever changed them. Absent objects are ``None`` rather than errors; every other
failure is lightkube's :class:`~lightkube.ApiError`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import CascadeType, PatchType

from optionfeed_operator import api

logger = logging.getLogger(__name__)

OptionFeed = create_namespaced_resource(api.GROUP, api.VERSION, api.KIND, api.PLURAL)
_KINDS: dict[str, Any] = {"Deployment": Deployment, "ConfigMap": ConfigMap}


def _not_found(exc: ApiError) -> bool:
    return bool(exc.status.code == 404)


class Cluster:
    """Reads and writes of feeds and their children."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get_feed(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self._client.get(OptionFeed, name, namespace=namespace)
        except ApiError as exc:
            if _not_found(exc):
                return None
            raise
        return dict(obj)

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj = await self._client.get(ConfigMap, name, namespace=namespace)
        except ApiError as exc:
            if _not_found(exc):
                return None
            raise
        return dict(obj.to_dict())

    async def list_deployments(
        self, namespace: str, labels: Mapping[str, str]
    ) -> dict[str, Mapping[str, Any]]:
        """The Deployments with all of ``labels``, by name."""
        found: dict[str, Mapping[str, Any]] = {}
        selector: dict[str, Any] = dict(labels)
        async for obj in self._client.list(Deployment, namespace=namespace, labels=selector):
            body = dict(obj.to_dict())
            found[body["metadata"]["name"]] = body
        return found

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of a rendered Deployment or ConfigMap; returns the object as stored."""
        meta = manifest["metadata"]
        logger.debug("%s/%s: apply %s", meta["namespace"], meta["name"], manifest["kind"])
        obj = await self._client.patch(
            _KINDS[manifest["kind"]],
            meta["name"],
            dict(manifest),
            namespace=meta["namespace"],
            patch_type=PatchType.APPLY,
            field_manager=api.FIELD_MANAGER,
            force=True,
        )
        return dict(obj.to_dict())

    async def delete_deployment(self, namespace: str, name: str) -> None:
        """Delete a Deployment (its ReplicaSets and pods follow in the background); one that is
        already gone is fine."""
        logger.debug("%s/%s: delete Deployment", namespace, name)
        try:
            await self._client.delete(
                Deployment, name, namespace=namespace, cascade=CascadeType.BACKGROUND
            )
        except ApiError as exc:
            if not _not_found(exc):
                raise

    async def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A JSON merge patch of the feed's status subresource; a feed that is gone is fine."""
        logger.debug("%s/%s: patch status (%s)", namespace, name, ", ".join(patch["status"]))
        try:
            await self._client.patch(
                OptionFeed.Status,
                name,
                dict(patch),
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        except ApiError as exc:
            if not _not_found(exc):
                raise
