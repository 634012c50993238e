"""Where a session lives in a cluster: which nodes host it (Redis), and where a new client of
it is best placed (by load).

*Hosts.* Every node with a connection of a session is a member of the session's hosts set
(``salon:s:<session>:nodes``). A node joins it when its first client of the session connects
and leaves it when its last one is gone (a dead node is taken out by the node that reaps it).
Each change is one Redis transaction that also reads the set's size, so exactly one node sees
the set go from empty to one member (the session is *created*: its first connection anywhere)
and exactly one sees it go back to empty (*destroyed*: its last connection anywhere left):
those nodes send the ``sessionCreated`` and ``sessionDestroyed`` callbacks, once per session
per cluster.

*Placement* (:func:`choose_node`, sans-I/O; :class:`Placement` keeps the view of the nodes'
loads): a new client that accepts a redirect goes to a node that already hosts its session and
is not overloaded (its load less than ``margin`` above the least-loaded node's), so no new pipe
is needed for it; otherwise it stays on the node it connected to unless that node is
overloaded, and then goes to the least-loaded node. Placement moves whole clients (signalling
and media), never a client's media alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from salon.cluster.core import NodeRecord
from salon.cluster.node import HEARTBEAT, NODES_KEY, PREFIX, SESSION_KEY_TTL, ClusterNode, _done, node_key

logger = logging.getLogger(__name__)

__all__ = [
    "Candidate",
    "Placement",
    "choose_node",
    "created_key",
    "host_session",
    "hosting_nodes",
    "hosts_key",
    "mark_created",
    "unhost_session",
    "wait_created",
]


def hosts_key(session_id: str) -> str:
    return f"{PREFIX}s:{session_id}:nodes"


def created_key(session_id: str) -> str:
    """Set by a session's first node once its ``sessionCreated`` is in the outbox."""
    return f"{PREFIX}s:{session_id}:created"


# SADD + SCARD + EXPIRE as one step; the first node also clears the created mark a previous
# life of the session left, the others keep it alive as long as the hosts set.
_HOST = """
local added = redis.call('SADD', KEYS[1], ARGV[1])
local count = redis.call('SCARD', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
if added == 1 and count == 1 then
    redis.call('DEL', KEYS[2])
else
    redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return {added, count}
"""


async def host_session(client: aioredis.Redis, session_id: str, node: str) -> bool:
    """``node`` has a connection of the session now; True if it is the session's first node
    (no other node had a connection of it)."""
    result = client.eval(_HOST, 2, hosts_key(session_id), created_key(session_id), node, str(SESSION_KEY_TTL))
    added, count = cast("list[int]", await _done(result))
    return bool(added) and int(count) == 1


async def mark_created(client: aioredis.Redis, session_id: str) -> None:
    """The session's first node stored its ``sessionCreated``: the other nodes may go on."""
    await client.set(created_key(session_id), "1", ex=SESSION_KEY_TTL)


async def wait_created(client: aioredis.Redis, session_id: str, timeout: float) -> bool:
    """Wait (polling) until the session's first node stored its ``sessionCreated``; False if
    it did not within ``timeout`` seconds (that node died or lost Redis: go on regardless)."""
    key = created_key(session_id)
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.005
    while not await _done(client.exists(key)):
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


async def unhost_session(client: aioredis.Redis, session_id: str, node: str) -> bool:
    """``node`` has no connection of the session any more; True if no node has one now."""
    key = hosts_key(session_id)
    async with client.pipeline(transaction=True) as pipe:
        pipe.srem(key, node)
        pipe.scard(key)
        removed, count = await pipe.execute()
    return bool(removed) and int(count) == 0


async def hosting_nodes(client: aioredis.Redis, session_id: str) -> set[str]:
    return set(await _done(client.smembers(hosts_key(session_id))))


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live node as placement sees it: its client URL ("" when it has none: it keeps its
    clients but is never sent others) and its load."""

    name: str
    url: str
    load: int


def choose_node(here: str, nodes: Mapping[str, Candidate], hosts: set[str], margin: int) -> Candidate | None:
    """The node a new client connecting to ``here`` should use instead, or None to stay.

    A node is *overloaded* when its load is ``margin`` or more above the least-loaded node's.
    A session already hosted goes to one of its hosts that is not overloaded (``here`` if it
    is one: no new pipe for it). Otherwise (a new session, or its hosts are overloaded) a node
    that is not overloaded keeps the client (no move for a small difference: ``margin`` is the
    hysteresis), and an overloaded one sends it to the least-loaded node.
    Ties go to the node's name, so every node chooses alike.
    """
    if margin <= 0 or here not in nodes:
        return None
    targets = [n for n in nodes.values() if n.url or n.name == here]
    least = min(n.load for n in nodes.values())

    def fits(node: Candidate) -> bool:
        return node.load < least + margin

    def best(among: list[Candidate]) -> Candidate:
        return min(among, key=lambda n: (n.load, n.name))

    hosting = [n for n in targets if n.name in hosts and fits(n)]
    if hosting:
        if any(n.name == here for n in hosting):
            return None
        chosen = best(hosting)
    elif fits(nodes[here]):
        return None
    else:
        chosen = best(targets)
    return None if chosen.name == here else chosen


class Placement:
    """One node's placement of new clients: a view of the live nodes' loads and URLs, read
    from their registry records at every heartbeat, and the choice for a connecting client.

    This node's load is its own, now; the others' are as of their last heartbeat and this
    node's last read (two seconds old at most): a burst of new clients within a second goes
    to the same node, the next ones elsewhere once its load has risen by ``margin``.
    """

    def __init__(self, node: ClusterNode, margin: int) -> None:
        self.node = node
        self.margin = margin
        self._view: dict[str, Candidate] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.margin > 0:
            await self._refresh()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="salon-placement")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._refresh()
            except (RedisError, OSError) as exc:
                logger.warning("placement: reading the nodes' loads failed: %r", exc)

    async def _refresh(self) -> None:
        client = self.node.client
        names = sorted(await _done(client.smembers(NODES_KEY)))
        texts = await client.mget([node_key(n) for n in names]) if names else []
        view: dict[str, Candidate] = {}
        for text in texts:
            if text is None:
                continue  # its heartbeat expired: dead, or just gone
            record = NodeRecord.loads(text)
            if not record.draining:
                view[record.name] = Candidate(record.name, record.url, record.load)
        self._view = view

    async def choose(self, session_id: str) -> Candidate | None:
        """Where a new client of ``session_id`` connecting here should go instead (None:
        here). Never fails: without Redis the client stays."""
        if self.margin <= 0 or not any(n.url for n in self._view.values() if n.name != self.node.name):
            return None
        nodes = dict(self._view)
        here = self.node.name
        nodes[here] = Candidate(here, self.node.client_url, self.node.load())
        try:
            hosts = await hosting_nodes(self.node.client, session_id)
        except (RedisError, OSError) as exc:
            logger.warning("placement: reading a session's nodes failed, keeping the client: %r", exc)
            return None
        return choose_node(here, nodes, hosts, self.margin)
