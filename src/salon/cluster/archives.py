"""Stopping an archive through any node of a cluster.

An archive is recorded by the node it was started through (its archiver, its pipes of the
streams published elsewhere). A stop asked of another node (``POST …/archive/ID/stop``) is
forwarded to the node that records it: an ``archive_stop`` request on each live node's inbox
(:class:`~salon.cluster.pipes.NodeMediaLink`), until one answers that it stopped it. The
archive's record is in PostgreSQL, so listing and getting archives work on any node as is.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from salon.archive.service import ArchiveService
from salon.cluster.node import NODES_KEY, _done, node_key
from salon.cluster.pipes import NodeMediaLink
from salon.errors import ConflictError, InvalidRequestError
from salon.media.plane import NodeRequestFailed
from salon.store import ArchiveRecord

__all__ = ["ARCHIVE_STOP", "ArchiveForwarding"]

logger = logging.getLogger(__name__)

ARCHIVE_STOP = "archive_stop"
#: How long a node waits for another's answer to a forwarded stop (seconds).
STOP_TIMEOUT = 10.0


class ArchiveForwarding:
    """This node's side of stopping archives recorded elsewhere: :meth:`stop_elsewhere` asks
    the others, :meth:`serve` answers them."""

    def __init__(self, link: NodeMediaLink, archives: ArchiveService) -> None:
        self.link = link
        self.archives = archives

    async def _live_nodes(self) -> list[str]:
        client = self.link.node.client
        try:
            names = sorted(await _done(client.smembers(NODES_KEY)))
            return [n for n in names if n != self.link.name and await client.exists(node_key(n))]
        except (RedisError, OSError) as exc:
            raise InvalidRequestError(
                f"the archive is recorded by another node, which cannot be reached: {exc!r}",
                code="node_unavailable",
            ) from exc

    async def stop_elsewhere(self, api_key: str, archive_id: str) -> ArchiveRecord:
        """Have the node recording the archive stop it; the archive's record then.

        :raises ConflictError: no live node records it (as for a single server: the archive
            is not being recorded)."""
        body = {"op": ARCHIVE_STOP, "api_key": api_key, "archive_id": archive_id}
        for name in await self._live_nodes():
            try:
                await self.link.request(name, body, timeout=STOP_TIMEOUT)
            except NodeRequestFailed as exc:
                if exc.code not in ("not_found", "conflict", "NotFoundError", "ConflictError"):
                    logger.warning("archive %s: node %s did not answer a stop: %s", archive_id, name, exc)
                continue
            logger.info("archive %s stopped by node %s, as asked through this node", archive_id, name)
            record = await self.archives.get(api_key, archive_id)
            return record
        raise ConflictError("Archive is not in started state")

    async def serve(self, origin: str, body: dict[str, Any]) -> dict[str, Any]:
        """Another node forwards a stop: stop the archive if this node records it (raises
        :class:`~salon.errors.ConflictError` / :class:`~salon.errors.NotFoundError` if not)."""
        record = await self.archives.stop(
            str(body["archive_id"]), api_key=str(body["api_key"]), forward=False
        )
        logger.info("archive %s stopped as asked by node %s", record.archive_id, origin)
        return {"status": str(record.status)}
