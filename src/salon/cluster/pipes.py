"""Requests between nodes on the cluster's Redis, for node-to-node media pipes.

A stream published on node A reaches a subscriber whose media is on node B through a pipe
(:mod:`salon.media.pipe`) whose sending end is on A: B asks A to open it, then to connect it
(:meth:`~salon.media.plane.SfuMediaPlane.node_request` answers on A). :class:`NodeMediaLink` is
the plane's :class:`~salon.media.plane.NodeLink`:

* a request is one entry (``body``: JSON, with the asking node, a reply key and a deadline) of
  the asked node's inbox stream ``salon:n:<name>:inbox``, which that node reads with a blocking
  ``XREAD`` from when it started;
* the reply is pushed (``RPUSH``) onto the request's reply key, which expires; the asker waits
  for it with ``BLPOP`` and a timeout (:data:`REQUEST_TIMEOUT`), so a dead or cut-off node fails
  the request in bounded time; the wait is cut into seconds, between which the asked node's
  registry record is checked: a node that is gone (or dies while asked) fails the request
  within the node timeout (``node_gone``), not at the deadline;
* which node publishes a stream comes from the session's presence hashes (the stream's
  connection's node).

The requests carry the pipes' SRTP master keys: Redis is the cluster's trusted control channel
(docs/security.md: keep it private, or TLS with ``rediss://``). Keys are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from salon.cluster.node import PREFIX, ClusterNode, _done, conns_key, node_key, streams_key
from salon.errors import ClientError
from salon.media.errors import MediaStateError
from salon.media.plane import NodeRequestFailed

__all__ = ["REQUEST_TIMEOUT", "NodeMediaLink", "inbox_key", "pipe_address_problem"]

logger = logging.getLogger(__name__)

#: How long a node waits for another's reply (seconds).
REQUEST_TIMEOUT = 10.0
#: Entries an inbox keeps (requests are read within milliseconds).
INBOX_MAXLEN = 1000
READ_BLOCK_MS = 1000
#: Seconds one wait for a reply lasts before the asked node's registry record is checked.
REPLY_POLL = 1

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""(asking node, request body) → the reply body; raising sends the error back."""


def pipe_address_problem(address: str) -> str | None:
    """Why node-to-node pipes cannot use ``address`` (a node's ``--node-address``), or None."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (
            "not an IP address: media pipes between nodes cannot bind on it "
            "(subscribing here to streams published on other nodes fails)"
        )
    if ip.is_unspecified:
        return "the other nodes cannot reach an unspecified address: media pipes between nodes fail"
    return None


def inbox_key(name: str) -> str:
    return f"{PREFIX}n:{name}:inbox"


def _reply_key(request_id: str) -> str:
    return f"{PREFIX}reply:{request_id}"


class NodeMediaLink:
    """This node's requests to and from the others (see the module docstring)."""

    def __init__(
        self,
        node: ClusterNode,
        handler: Handler,
        *,
        watched: Callable[[], set[str]] = set,
        gone: Callable[[str], None] = lambda _node: None,
    ) -> None:
        self.node = node
        self.handler = handler
        #: The nodes this one serves pipes to, and what to do when one of them is gone (its
        #: registry record expired): close the pipes' sending ends toward it.
        self.watched = watched
        self.gone = gone
        # Its own clients: BLPOP and XREAD block (longer than the node's socket timeout).
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            node.url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=REQUEST_TIMEOUT + 5
        )
        self._reader: aioredis.Redis = aioredis.Redis.from_url(
            node.url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=READ_BLOCK_MS / 1000 + 5,
        )
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self.requests_sent = 0
        self.requests_failed = 0
        self.requests_served = 0
        self.watch_rounds = 0

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def address(self) -> str:
        return self.node.address

    async def start(self) -> None:
        # Read from now on: a request older than this node's start was for a predecessor.
        last = await self._reader.xrevrange(inbox_key(self.name), count=1)
        start = last[0][0] if last else "0-0"
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._read(start), name="salon-node-inbox")
        self._watcher = loop.create_task(self._watch(), name="salon-node-pipe-peers")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, self._watcher, *self._handling] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = self._watcher = None
        await self._client.aclose()
        await self._reader.aclose()

    async def publisher_node(self, session_id: str, stream_id: str) -> str | None:
        try:
            stream = await _done(self._client.hget(streams_key(session_id), stream_id))
            if stream is None:
                return None
            connection_id = json.loads(stream)["info"]["connection_id"]
            conn = await _done(self._client.hget(conns_key(session_id), connection_id))
        except (RedisError, OSError) as exc:
            raise NodeRequestFailed(f"the cluster's Redis: {exc!r}") from exc
        return None if conn is None else str(json.loads(conn).get("node") or "") or None

    async def request(self, node: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        timeout = REQUEST_TIMEOUT if timeout is None else timeout
        request_id = secrets.token_hex(12)
        envelope = {
            "from": self.name,
            "reply": request_id,
            "deadline": time.time() + timeout,
            "body": body,
        }
        self.requests_sent += 1
        deadline = time.monotonic() + timeout
        popped = None
        try:
            if not await self._client.exists(node_key(node)):
                self.requests_failed += 1
                raise NodeRequestFailed(f"node {node} is gone (not in the registry)", code="node_gone")
            await self._client.xadd(
                inbox_key(node),
                {"request": json.dumps(envelope)},
                maxlen=INBOX_MAXLEN,
                approximate=True,
            )
            # Waited for a second at a time: a node that dies meanwhile (its registry record
            # expires, within the node timeout) fails the request then, not at the deadline.
            while popped is None and time.monotonic() < deadline:
                wait = max(1, min(REPLY_POLL, round(deadline - time.monotonic())))
                popped = await _done(self._client.blpop([_reply_key(request_id)], timeout=wait))
                if popped is None and not await self._client.exists(node_key(node)):
                    self.requests_failed += 1
                    raise NodeRequestFailed(f"node {node} is gone (it died while asked)", code="node_gone")
        except (RedisError, OSError) as exc:
            self.requests_failed += 1
            raise NodeRequestFailed(f"the cluster's Redis: {exc!r}") from exc
        if popped is None:
            self.requests_failed += 1
            raise NodeRequestFailed(f"node {node} did not answer within {timeout:g} s", code="timeout")
        reply = json.loads(popped[1])
        if "error" in reply:
            self.requests_failed += 1
            raise NodeRequestFailed(f"node {node}: {reply['error']}", code=str(reply.get("code", "error")))
        result: dict[str, Any] = reply["result"]
        return result

    async def _watch(self) -> None:
        """Every heartbeat: a node this one pipes media to whose registry record expired is
        gone; the sending ends toward it close."""
        while True:
            await asyncio.sleep(self.node.heartbeat)
            for name in sorted(self.watched()):
                try:
                    alive = await self._client.exists(node_key(name))
                except (RedisError, OSError) as exc:
                    logger.warning("node pipes: cannot tell whether node %s lives: %r", name, exc)
                    break
                if not alive:
                    logger.warning("node %s is gone: closing the pipes toward it", name)
                    self.gone(name)
            self.watch_rounds += 1

    async def _read(self, last: str) -> None:
        delay = 0.05
        while True:
            try:
                replies = await self._reader.xread(
                    {inbox_key(self.name): last}, block=READ_BLOCK_MS, count=100
                )
                delay = 0.05
            except (RedisError, OSError) as exc:
                logger.warning("node inbox read failed, reading on: %r", exc)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            for _key, entries in replies or []:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        envelope = json.loads(fields["request"])
                    except (KeyError, ValueError):
                        logger.warning("node inbox: a malformed request dropped")
                        continue
                    task = asyncio.get_running_loop().create_task(self._serve(envelope))
                    self._handling.add(task)
                    task.add_done_callback(self._handling.discard)

    async def _serve(self, envelope: dict[str, Any]) -> None:
        if float(envelope.get("deadline", 0)) < time.time():
            return  # the asker gave up
        origin = str(envelope.get("from", ""))
        body = envelope.get("body") or {}
        self.requests_served += 1
        try:
            reply: dict[str, Any] = {"result": await self.handler(origin, body)}
        except (ClientError, MediaStateError, KeyError, ValueError, TypeError) as exc:
            code = getattr(exc, "code", None) or type(exc).__name__
            reply = {"error": str(exc) or type(exc).__name__, "code": str(code)}
            logger.info("node request %s from %s refused: %s", body.get("op"), origin, exc)
        except Exception as exc:
            logger.exception("node request %s from %s failed", body.get("op"), origin)
            reply = {"error": "internal error", "code": type(exc).__name__}
        key = _reply_key(str(envelope["reply"]))
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.rpush(key, json.dumps(reply))
                pipe.expire(key, int(REQUEST_TIMEOUT) + 5)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("node request reply to %s lost: %r", origin, exc)
