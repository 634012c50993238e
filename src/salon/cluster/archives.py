"""Starting and stopping an archive through any node of a cluster.

An archive is recorded by the node it was started through (its archiver, its pipes of the
streams published elsewhere), if that node has a client in the session; otherwise the start
is forwarded (an ``archive_start`` request, :class:`~salon.cluster.pipes.NodeMediaLink`) to a
node that has one (the first by name, from the session's presence hash). A stop asked of a
node that does not record the archive (``POST …/archive/ID/stop``) is forwarded to the one
that does: an ``archive_stop`` request on each live node's inbox until one answers that it
stopped it. The archive's record is in PostgreSQL, so listing and getting archives work on
any node as is.

With local storage the archive's file is on the disk of the node that recorded it. A download
asked of another node (its own signed URL, checked there) asks the live nodes in turn for the
file (an ``archive_file`` request on their Redis inbox): the node that has it answers with a
fresh signed download URL of its own (at its ``--node-url``, valid for ten minutes), and the
asking node streams the file from there to its client. The Redis bus is the only trust
between nodes: no other credential is shared, and the URL (a credential) is never logged.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import httpx
from redis.exceptions import RedisError

from salon.archive.models import Layout, OutputMode, StreamMode
from salon.archive.service import ArchiveService, StartOptions
from salon.archive.storage import LocalStorage, RemoteFile, StorageError
from salon.cluster.node import NODES_KEY, _done, conns_key, node_key
from salon.cluster.pipes import NodeMediaLink
from salon.errors import ClientError, ConflictError, InvalidRequestError, NotFoundError, UnavailableError
from salon.media.plane import NodeRequestFailed
from salon.store import ArchiveRecord

__all__ = ["ARCHIVE_FILE", "ARCHIVE_START", "ARCHIVE_STOP", "ArchiveForwarding"]

logger = logging.getLogger(__name__)

ARCHIVE_START = "archive_start"
ARCHIVE_STOP = "archive_stop"
ARCHIVE_FILE = "archive_file"
#: How long a node waits for another's answer to a forwarded stop, and to a forwarded start
#: (which starts an archiver process: seconds on a loaded machine).
STOP_TIMEOUT = 10.0
START_TIMEOUT = 30.0
#: How long a node waits for another's answer to where an archive's file is, and for the
#: connection to the node that has it.
FILE_TIMEOUT = 5.0


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

    async def start_elsewhere(self, api_key: str, options: StartOptions) -> ArchiveRecord:
        """Have a node with a client in the session start the archive; its record then.

        :raises InvalidRequestError: no live node has a client in the session.
        :raises ClientError: that node refused it (its error, e.g. a conflict)."""
        client = self.link.node.client
        try:
            conns = await _done(client.hvals(conns_key(options.session_id)))
        except (RedisError, OSError) as exc:
            raise InvalidRequestError(
                f"the session's nodes cannot be reached: {exc!r}", code="node_unavailable"
            ) from exc
        holding = {str(json.loads(text).get("node") or "") for text in conns} - {"", self.link.name}
        live = [n for n in await self._live_nodes() if n in holding]
        if not live:
            raise InvalidRequestError("No clients are actively connected to the OpenTok session")
        body = {
            "op": ARCHIVE_START,
            "api_key": api_key,
            "options": {
                "session_id": options.session_id,
                "name": options.name,
                "has_audio": options.has_audio,
                "has_video": options.has_video,
                "output_mode": options.output_mode.value,
                "resolution": options.resolution,
                "layout": [options.layout.type, options.layout.stylesheet, options.layout.screenshare_type],
                "stream_mode": options.stream_mode.value,
                "multi_archive_tag": options.multi_archive_tag,
            },
        }
        try:
            reply = await self.link.request(live[0], body, timeout=START_TIMEOUT)
        except NodeRequestFailed as exc:
            errors: dict[str, type[ClientError]] = {"not_found": NotFoundError, "conflict": ConflictError}
            raise errors.get(exc.code, InvalidRequestError)(str(exc), code=exc.code) from exc
        logger.info("archive %s started by node %s, as asked through this node", reply["archive_id"], live[0])
        return await self.archives.get(api_key, str(reply["archive_id"]))

    async def file_elsewhere(self, record: ArchiveRecord) -> RemoteFile:
        """The archive's file, streamed from the node that has it on its disk.

        :raises UnavailableError: no live node answers that it has it (the node that recorded
            it is down, cut off, or has no ``--node-url``), or that node cannot be read from."""
        body = {"op": ARCHIVE_FILE, "archive_id": record.archive_id}
        problems: list[str] = []
        try:
            live = await self._live_nodes()
        except InvalidRequestError as exc:
            raise UnavailableError(exc.message) from exc
        for name in live:
            try:
                reply = await self.link.request(name, body, timeout=FILE_TIMEOUT)
            except NodeRequestFailed as exc:
                if exc.code not in ("not_found", "NotFoundError"):
                    problems.append(str(exc))
                continue
            return await self._open(name, record, str(reply["url"]))
        detail = "; ".join(problems) or "no live node has it"
        raise UnavailableError(
            f"archive {record.archive_id}'s file is on the disk of the node that recorded it, "
            f"which cannot be reached ({detail})"
        )

    async def _open(self, name: str, record: ArchiveRecord, url: str) -> RemoteFile:
        archive_id = record.archive_id
        # The transport itself, not a client: a client logs each request's URL, and this one
        # carries a signature.
        transport = httpx.AsyncHTTPTransport()
        timeout = {"connect": FILE_TIMEOUT, "read": 60.0, "write": FILE_TIMEOUT, "pool": FILE_TIMEOUT}
        request = httpx.Request("GET", url, extensions={"timeout": timeout})
        try:
            response = await transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            await transport.aclose()
            raise UnavailableError(
                f"archive {archive_id}'s file is on node {name}, which cannot be reached over HTTP "
                f"(its --node-url): {exc.__class__.__name__}"
            ) from exc

        async def close() -> None:
            try:
                await response.aclose()
            finally:
                await transport.aclose()

        if response.status_code != 200:
            await close()
            raise UnavailableError(
                f"archive {archive_id}'s file is on node {name}, which answered {response.status_code}"
            )
        length = response.headers.get("content-length")
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        logger.info("archive %s: its file streamed from node %s", archive_id, name)
        return RemoteFile(
            size=int(length) if length and length.isdigit() else None,
            filename=pathlib.PurePosixPath(record.location or "").name or archive_id,
            chunks=aiter(stream),
            close=close,
        )

    async def _file_here(self, archive_id: str) -> dict[str, Any]:
        """A signed download URL of this node for the archive's file, if it is on its disk."""
        storage = self.archives.storage
        record = await self.archives.store.get_archive(archive_id)
        if not isinstance(storage, LocalStorage) or record is None or record.location is None:
            raise NotFoundError("archive not found")
        try:
            path = storage.path(record.location)
        except StorageError as exc:
            raise NotFoundError("archive not found") from exc
        if not path.is_file():
            raise NotFoundError("archive not found")
        base = self.link.node.client_url
        if not base:
            raise InvalidRequestError(
                "this node has the archive's file but no --node-url to serve it at", code="no_node_url"
            )
        return {"url": storage.url(archive_id, record.location, base)}

    async def serve(self, origin: str, body: dict[str, Any]) -> dict[str, Any]:
        """Another node forwards a start (this node has a client in the session) or a stop
        (stop the archive if this node records it; raises
        :class:`~salon.errors.ConflictError` / :class:`~salon.errors.NotFoundError` if not)."""
        if body.get("op") == ARCHIVE_FILE:
            return await self._file_here(str(body["archive_id"]))
        if body.get("op") == ARCHIVE_START:
            raw = body["options"]
            layout_type, stylesheet, screenshare = raw["layout"]
            options = StartOptions(
                session_id=str(raw["session_id"]),
                name=raw["name"],
                has_audio=bool(raw["has_audio"]),
                has_video=bool(raw["has_video"]),
                output_mode=OutputMode(raw["output_mode"]),
                resolution=raw["resolution"],
                layout=Layout(layout_type, stylesheet, screenshare),
                stream_mode=StreamMode(raw["stream_mode"]),
                multi_archive_tag=raw["multi_archive_tag"],
            )
            started = await self.archives.start_archive(str(body["api_key"]), options, forward=False)
            logger.info("archive %s started as asked by node %s", started.archive_id, origin)
            return {"archive_id": started.archive_id}
        record = await self.archives.stop(
            str(body["archive_id"]), api_key=str(body["api_key"]), forward=False
        )
        logger.info("archive %s stopped as asked by node %s", record.archive_id, origin)
        return {"status": str(record.status)}
