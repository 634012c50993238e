"""A node of a cluster on Redis: registry heartbeat, the session bus, presence, reaping.

Keys (prefix ``salon:``):

- ``node:{name}``: the node's :class:`~salon.cluster.core.NodeRecord`, written every third of
  its node timeout (``salon serve --node-timeout``, default :data:`NODE_TTL` seconds; a
  :data:`HEARTBEAT` by default) with that timeout as its TTL: a node that dies (``kill -9``)
  vanishes from the registry within that TTL. ``nodes``: the set of names ever registered and
  not yet reaped. ``drain:{name}``: set by ``salon node drain``.
- ``node:{name}:sessions``: the sessions a node has clients in.
- ``s:{session}``: the session's Redis Stream, one entry per batch of changes
  (:mod:`salon.cluster.core`); ``s:{session}:conns`` and ``s:{session}:streams``: the presence
  hashes, written in the same transaction as the entry.

A node that finds its own record gone when it heartbeats was taken for dead (too busy, or cut
off from Redis, to heartbeat for a whole node timeout): another node may already have reported
its connections destroyed as ``networkDisconnected``. It re-registers at once and calls
:attr:`ClusterNode.on_taken_for_dead`, which
(:meth:`~salon.signalling.service.SignallingService.taken_for_dead`) destroys its connections
the same way and closes its clients' sockets with 1001, so that they reconnect (here or
elsewhere) as new connections: every node agrees they are gone.

Reading is ``XREAD`` from the last entry ID seen of every session followed, so a node cut off
from Redis for a while reads on from where it stopped when Redis is back: nothing lost, nothing
reordered. Publishing goes through one queue drained in order by one task that retries until
Redis takes each batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from salon.cluster.core import NodeRecord, Presence, Snapshot, encode_batch, reap_actions, reaped_infos
from salon.protocol import ConnectionInfo, StreamInfo

__all__ = [
    "HEARTBEAT",
    "NODE_TIMEOUT_RANGE",
    "NODE_TTL",
    "ClusterNode",
    "announce_project_change",
    "list_nodes",
    "set_draining",
]

logger = logging.getLogger(__name__)

PREFIX = "salon:"
#: Seconds between two heartbeats of a node (and two checks for dead nodes) by default: a
#: third of its node timeout.
HEARTBEAT = 1.0
#: Seconds a node's record lives without a heartbeat by default (``--node-timeout``): a dead
#: node is noticed within the node timeout plus a heartbeat.
NODE_TTL = 3.0
#: The bounds of ``--node-timeout``.
NODE_TIMEOUT_RANGE = (1.0, 300.0)
#: Entries kept in a session's stream (approximately); a session's keys expire a day after
#: its last change.
STREAM_MAXLEN = 10_000
SESSION_KEY_TTL = 86_400
#: Batches written to Redis at most in one transaction by the publisher.
PUBLISH_BATCH = 100
#: Milliseconds one XREAD waits for new entries.
READ_BLOCK_MS = 100

T = TypeVar("T")

EntryHandler = Callable[[str, str, dict[str, str]], Awaitable[None]]


def entry_order(entry_id: str) -> tuple[int, int]:
    """A stream entry ID (``MILLISECONDS-SEQUENCE``) as something that sorts."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def node_key(name: str) -> str:
    return f"{PREFIX}node:{name}"


def node_sessions_key(name: str) -> str:
    return f"{PREFIX}node:{name}:sessions"


def drain_key(name: str) -> str:
    return f"{PREFIX}drain:{name}"


NODES_KEY = PREFIX + "nodes"
#: The pub/sub channel of project changes (an API key per message).
PROJECTS_CHANNEL = PREFIX + "projects"


def stream_key(session_id: str) -> str:
    return f"{PREFIX}s:{session_id}"


def conns_key(session_id: str) -> str:
    return f"{PREFIX}s:{session_id}:conns"


def streams_key(session_id: str) -> str:
    return f"{PREFIX}s:{session_id}:streams"


def connect(url: str) -> aioredis.Redis:
    # A socket timeout: a silent network must fail the command (the loops then retry and read on
    # from the last entry) rather than hang it; an XREAD blocks for READ_BLOCK_MS only.
    client: aioredis.Redis = aioredis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0
    )
    return client


async def _done(result: Awaitable[T] | T) -> T:
    """redis-py types some commands as sync-or-async: await the asyncio client's."""
    if inspect.isawaitable(result):
        return await result
    return result


async def snapshot(client: aioredis.Redis, session_id: str) -> Snapshot:
    """The presence hashes and the stream's last ID, read in one transaction."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(conns_key(session_id))
        pipe.hgetall(streams_key(session_id))
        pipe.xrevrange(stream_key(session_id), count=1)
        conns, streams, last = await pipe.execute()
    return Snapshot(dict(conns), dict(streams), last[0][0] if last else "0-0")


class ClusterNode:
    """This server as a node: heartbeat, the bus (publish in order, read what is followed),
    and the reaping of dead nodes. ``load`` is called at every heartbeat (the figure of
    :mod:`salon.cluster.load`); ``measure`` is awaited once a heartbeat too, apart from it (it
    samples what the figure needs that takes I/O: the media workers' CPU time; at most a
    heartbeat's time, its failures logged); ``timeout`` is the node timeout (the registry
    record's TTL; heartbeats every third of it)."""

    def __init__(
        self,
        url: str,
        name: str,
        address: str,
        *,
        load: Callable[[], int] = lambda: 0,
        measure: Callable[[], Awaitable[None]] | None = None,
        timeout: float = NODE_TTL,
    ) -> None:
        low, high = NODE_TIMEOUT_RANGE
        if not low <= timeout <= high:
            raise ValueError(f"the node timeout must be {low:g} to {high:g} seconds, not {timeout:g}")
        self.timeout = timeout
        self.heartbeat = timeout / 3
        #: How many times this node found its registry record gone (taken for dead).
        self.taken_for_dead = 0
        self.url = url
        self.name = name
        self.address = address
        self.load = load
        self.measure = measure
        self.incarnation = secrets.token_hex(8)
        #: Where clients reach this node (``--node-url``), published with every heartbeat.
        self.client_url = ""
        self.draining = False
        self.client = connect(url)
        self._reader_client = connect(url)
        self._followed: dict[str, str] = {}  # session ID -> last entry ID read
        self._outbox: asyncio.Queue[tuple[str, dict[str, str], Presence]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._handler: EntryHandler | None = None
        self._wake = asyncio.Event()
        self._chores: set[asyncio.Task[None]] = set()
        #: Called when this node reported a dead node's connections (and their streams) gone,
        #: with the session ID, those connections and those streams (for their callbacks).
        self.on_reaped: Callable[[str, list[ConnectionInfo], list[StreamInfo]], None] | None = None
        #: Called with an API key when a project changed elsewhere (deleted, secret rotated).
        self.on_project_changed: Callable[[str], None] | None = None
        #: Awaited with the session ID and the dead node's name for each session of a node
        #: this node reaped, after its connections were reported gone.
        self.on_reaped_session: Callable[[str, str], Awaitable[None]] | None = None
        #: Awaited when this node found its own registry record gone at a heartbeat (it has
        #: re-registered): the others may have reported its connections destroyed.
        self.on_taken_for_dead: Callable[[], Awaitable[None]] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, handler: EntryHandler) -> None:
        """Register (fails if Redis cannot be reached) and start the loops."""
        self._handler = handler
        if not await self.client.exists(node_key(self.name)):
            # A previous run of this node died: its connections are reported gone first.
            await self._reap(self.name)
        await self._beat()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat(), name="salon-cluster-heartbeat"),
            loop.create_task(self._publisher(), name="salon-cluster-publisher"),
            loop.create_task(self._reader(), name="salon-cluster-reader"),
            loop.create_task(self._project_changes(), name="salon-cluster-projects"),
        ]
        if self.measure is not None:
            self._tasks.append(loop.create_task(self._measurer(self.measure), name="salon-cluster-load"))
        logger.info("cluster node %s (%s) registered", self.name, self.address)

    async def stop(self, flush_timeout: float = 3.0) -> None:
        """Publish what is queued (for a while), leave the registry (the others then report
        what is left of this node's connections gone), close the Redis clients."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), flush_timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(node_key(self.name))
        await self.client.aclose()
        await self._reader_client.aclose()

    # -- registry ----------------------------------------------------------------------

    async def _beat(self) -> bool:
        """Write this node's record; returns whether it was there (False: expired, or never
        written)."""
        draining = await self.client.exists(drain_key(self.name))
        self.draining = bool(draining)
        record = NodeRecord(
            self.name, self.address, self.load(), self.draining, self.incarnation, self.client_url
        )
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(node_key(self.name), record.dumps(), px=int(self.timeout * 1000), get=True)
            pipe.sadd(NODES_KEY, self.name)
            if self._followed:
                # Again each time: a node taken for dead while cut off from Redis (its sessions
                # reaped) is found again if it dies later.
                pipe.sadd(node_sessions_key(self.name), *self._followed)
            previous, *_ = await pipe.execute()
        return previous is not None

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                if not await self._beat():
                    await self._was_taken_for_dead()
                await self._find_dead()
            except (RedisError, OSError) as exc:
                logger.warning("cluster heartbeat failed: %r", exc)

    async def _measurer(self, measure: Callable[[], Awaitable[None]]) -> None:
        """Samples what the load figure needs, once a heartbeat, apart from the heartbeat (a
        slow sample never delays it)."""
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                async with asyncio.timeout(self.heartbeat):
                    await measure()
            except Exception:  # the load is published from the last samples meanwhile
                logger.warning("cluster: measuring this node's load failed", exc_info=True)

    async def _was_taken_for_dead(self) -> None:
        self.taken_for_dead += 1
        logger.warning(
            "cluster node %s found its registry record expired (no heartbeat for %gs: too busy, or "
            "cut off from Redis): re-registered; its connections end as networkDisconnected and "
            "its clients are told to reconnect",
            self.name,
            self.timeout,
        )
        if self.on_taken_for_dead is not None:
            try:
                await self.on_taken_for_dead()
            except Exception:  # the heartbeat must go on
                logger.exception("cluster: ending the connections of a node taken for dead failed")

    async def _find_dead(self) -> None:
        for name in await _done(self.client.smembers(NODES_KEY)):
            if name == self.name or await self.client.exists(node_key(name)):
                continue
            # One survivor reports a dead node's connections gone (the lock expires in case
            # that survivor dies too).
            if await self.client.set(f"{PREFIX}reaping:{name}", self.name, nx=True, ex=30):
                logger.warning("cluster node %s is gone: ending its connections", name)
                await self._reap(name)
                await self.client.delete(f"{PREFIX}reaping:{name}")

    async def _reap(self, dead: str) -> None:
        for session_id in await _done(self.client.smembers(node_sessions_key(dead))):
            snap = await snapshot(self.client, session_id)
            actions = reap_actions(dead, snap)
            if actions:
                fields, presence = encode_batch(f"reaper@{self.name}", None, actions)
                self.publish(session_id, fields, presence)
                if self.on_reaped is not None:
                    try:
                        self.on_reaped(session_id, *reaped_infos(dead, snap))
                    except Exception:  # the callbacks must not stop the reaping
                        logger.exception("cluster: the callbacks of a dead node's connections failed")
            if self.on_reaped_session is not None:
                await self.on_reaped_session(session_id, dead)
        await self.client.delete(node_sessions_key(dead))
        if dead != self.name:
            await _done(self.client.srem(NODES_KEY, dead))

    # -- the bus -------------------------------------------------------------------------

    def publish(self, session_id: str, fields: dict[str, str], presence: Presence) -> None:
        """Queue a batch for the session's stream (published in order, retried until Redis
        takes it)."""
        self._outbox.put_nowait((session_id, fields, presence))

    async def _publisher(self) -> None:
        delay = 0.05
        while True:
            # Everything queued meanwhile (up to PUBLISH_BATCH batches) goes in one transaction:
            # one round trip to Redis each was the bus's limit (a join storm queued joins
            # faster than they were written, and a signal waited behind them for seconds).
            items = [await self._outbox.get()]
            while len(items) < PUBLISH_BATCH and not self._outbox.empty():
                items.append(self._outbox.get_nowait())
            while True:
                try:
                    await self._write(items)
                    delay = 0.05
                    for _ in items:
                        self._outbox.task_done()
                    break
                except (RedisError, OSError) as exc:
                    logger.warning("cluster publish failed, retrying: %r", exc)
                    await asyncio.sleep(delay)
                    delay = min(1.0, delay * 2)

    async def _write(self, items: list[tuple[str, dict[str, str], Presence]]) -> None:
        """Batches in order, in one transaction (all written or none)."""
        async with self.client.pipeline(transaction=True) as pipe:
            for session_id, fields, presence in items:
                pipe.xadd(stream_key(session_id), fields, maxlen=STREAM_MAXLEN, approximate=True)  # type: ignore[arg-type]
                if presence.connections:
                    pipe.hset(conns_key(session_id), mapping=presence.connections)
                if presence.gone_connections:
                    pipe.hdel(conns_key(session_id), *presence.gone_connections)
                if presence.streams:
                    pipe.hset(streams_key(session_id), mapping=presence.streams)
                if presence.gone_streams:
                    pipe.hdel(streams_key(session_id), *presence.gone_streams)
            for session_id in dict.fromkeys(item[0] for item in items):
                for key in (stream_key(session_id), conns_key(session_id), streams_key(session_id)):
                    pipe.expire(key, SESSION_KEY_TTL)
            await pipe.execute()

    async def follow(self, session_id: str) -> Snapshot:
        """Start reading a session's stream (this node has a client in it now): its presence
        as of the returned snapshot, then every entry after."""
        await _done(self.client.sadd(node_sessions_key(self.name), session_id))
        snap = await snapshot(self.client, session_id)
        self._followed[session_id] = snap.last_id
        self._wake.set()
        return snap

    def unfollow(self, session_id: str) -> None:
        self._followed.pop(session_id, None)
        task = asyncio.get_running_loop().create_task(self._forget_session(session_id))
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _forget_session(self, session_id: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await _done(self.client.srem(node_sessions_key(self.name), session_id))

    async def view(self, session_id: str) -> Snapshot:
        return await snapshot(self.client, session_id)

    async def _reader(self) -> None:
        delay = 0.05
        while True:
            if not self._followed:
                self._wake.clear()
                await self._wake.wait()
                continue
            streams: dict[Any, Any] = {stream_key(sid): last for sid, last in self._followed.items()}
            try:
                replies = await self._reader_client.xread(streams, block=READ_BLOCK_MS, count=200)
                delay = 0.05
            except (RedisError, OSError) as exc:
                logger.warning("cluster read failed, reading on from the last entry: %r", exc)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                continue
            for key, entries in replies or []:
                session_id = key[len(PREFIX) + 2 :]
                for entry_id, fields in entries:
                    last = self._followed.get(session_id)
                    if last is None:
                        break  # unfollowed meanwhile
                    if entry_order(entry_id) <= entry_order(last):
                        continue  # followed again meanwhile, from a later snapshot
                    self._followed[session_id] = entry_id
                    assert self._handler is not None
                    try:
                        await self._handler(session_id, entry_id, fields)
                    except Exception:
                        logger.exception("cluster: applying entry %s of a session failed", entry_id)
                    # Let the links write what the entry queued (and the heartbeat run) before
                    # the next: a reply of 200 joins, each fanned out to every local client at
                    # once, kept the event loop from its timers for seconds.
                    await asyncio.sleep(0)

    async def _project_changes(self) -> None:
        delay = 0.05
        while True:
            client = connect(self.url)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(PROJECTS_CHANNEL)
                delay = 0.05
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and self.on_project_changed is not None:
                        api_key = str(message["data"])
                        logger.info("project %s changed elsewhere: its cached copy dropped", api_key)
                        self.on_project_changed(api_key)
            except (RedisError, OSError) as exc:
                logger.warning("cluster: project changes channel lost, resubscribing: %r", exc)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()


async def announce_project_change(url: str, api_key: str) -> None:
    """Tell every node that a project changed (they drop their cached copy)."""
    client = connect(url)
    try:
        await client.publish(PROJECTS_CHANNEL, api_key)
    finally:
        await client.aclose()


async def list_nodes(url: str) -> list[tuple[str, NodeRecord | None]]:
    """Every registered node: its name and record (None: its heartbeat expired)."""
    client = connect(url)
    try:
        out: list[tuple[str, NodeRecord | None]] = []
        for name in sorted(await _done(client.smembers(NODES_KEY))):
            text = await client.get(node_key(name))
            out.append((name, None if text is None else NodeRecord.loads(text)))
        return out
    finally:
        await client.aclose()


async def set_draining(url: str, name: str, draining: bool) -> bool:
    """Mark a node draining (or not); returns whether the node is registered."""
    client = connect(url)
    try:
        if draining:
            await client.set(drain_key(name), "1")
        else:
            await client.delete(drain_key(name))
        return bool(await _done(client.sismember(NODES_KEY, name)))
    finally:
        await client.aclose()
