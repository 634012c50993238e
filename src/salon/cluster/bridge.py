"""The signalling service's side of a cluster: publish every change, apply every batch.

:class:`ClusterBridge` is what :class:`~salon.signalling.service.SignallingService` calls when
it runs as a node (``service.cluster``): a session's changes are published on its Redis Stream
(:meth:`publish`), and the node applies every batch of the sessions its clients are in, its own
included, in stream order (:meth:`_on_entry`): so every client of a session, whichever node it
is on, sees the same events in the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from salon.cluster.core import (
    Delivered,
    apply_to_mirror,
    decode_batch,
    encode_batch,
    load_snapshot,
    split_local,
)
from salon.cluster.node import PREFIX, SESSION_KEY_TTL, ClusterNode
from salon.cluster.placement import (
    Candidate,
    Placement,
    host_session,
    mark_created,
    unhost_session,
    wait_created,
)
from salon.errors import SalonError
from salon.ids import decode_session_id
from salon.protocol import ActiveSpeakerEvent
from salon.signalling.session import Action, Deliver, Session

if TYPE_CHECKING:
    from salon.signalling.service import SignallingService

__all__ = ["ClusterBridge"]

logger = logging.getLogger(__name__)

#: Seconds a node that is not a session's first waits for the first to store the session's
#: ``sessionCreated`` before its own client's connection goes on (then it goes on anyway).
CREATED_WAIT = 2.0


def speaker_key(session_id: str) -> str:
    """The session's active speaker as last announced ("" for none), for the nodes that
    start following the session later."""
    return f"{PREFIX}s:{session_id}:speaker"


class ClusterBridge:
    """One node's link between its signalling service and the cluster's Redis."""

    def __init__(self, node: ClusterNode, service: SignallingService, *, placement_margin: int = 0) -> None:
        self.node = node
        self.service = service
        #: Where new clients go (``--placement-margin``; 0: they stay where they connect).
        self.placement = Placement(node, placement_margin)
        self._delivered: dict[str, Delivered] = {}
        #: The sessions followed (the service registers each in ``service.sessions`` too).
        self._mirrors: dict[str, Session] = {}
        self._opening: dict[str, asyncio.Task[Session]] = {}
        #: This node leaving the hosts of a session (:mod:`salon.cluster.placement`): a new
        #: client of the session here waits for it before joining them again.
        self._leaving: dict[str, asyncio.Task[None]] = {}
        #: Called with the session ID and API key when a session's first connection anywhere
        #: connected here, and when its last connection anywhere left here (or on a dead node
        #: this node reaped): ``sessionCreated`` and ``sessionDestroyed``, once per cluster.
        self.on_session_created: Callable[[str, str], None] | None = None
        self.on_session_destroyed: Callable[[str, str], None] | None = None
        #: Returns once the callbacks this node emitted so far are in the outbox (the
        #: callback service's ``stored``): orders a session's callbacks across nodes.
        self.callbacks_stored: Callable[[], Awaitable[None]] | None = None
        node.on_reaped_session = self._reaped_session
        self._chores: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def draining(self) -> bool:
        return self.node.draining

    async def start(self) -> None:
        self.node.on_taken_for_dead = self.service.taken_for_dead
        await self.node.start(self._on_entry)
        await self.placement.start()

    async def place(self, session_id: str) -> Candidate | None:
        """The node a new client of the session should connect to instead of this one (by
        load, :mod:`salon.cluster.placement`), or None: here."""
        return await self.placement.choose(session_id)

    async def stop(self) -> None:
        await self.placement.stop()
        if self._leaving:  # the sessions this node's last clients left as it stopped
            await asyncio.wait(list(self._leaving.values()), timeout=3.0)
        chores = list(self._chores)
        for task in chores:
            task.cancel()
        await asyncio.gather(*chores, return_exceptions=True)
        await self.node.stop()

    def publish(self, session: Session, actions: list[Action]) -> list[Action]:
        """Publish a session's change; returns the actions to carry out here at once (the last
        messages and the close of this node's connections that the change closes)."""
        now, bus = split_local(actions, self.service.links.__contains__)
        if bus:
            # Only the changes already made to this node's own copy of the session carry its
            # name (a client that joins here skips those: its ``connected`` had them).
            followed = self._mirrors.get(session.session_id) is session
            origin = self.node.name if followed else f"rest@{self.node.name}"
            fields, presence = encode_batch(origin, session, bus)
            self.node.publish(session.session_id, fields, presence)
        return now

    async def follow(self, session_id: str, api_key: str) -> Session:
        """This node's copy of a session it now has a client in (made once, however many
        clients connect at the same time)."""
        session = self.service.sessions.get(session_id) or self._mirrors.get(session_id)
        if session is not None:
            return session
        task = self._opening.get(session_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._open(session_id, api_key))
            self._opening[session_id] = task
            task.add_done_callback(lambda _t: self._opening.pop(session_id, None))
        return await asyncio.shield(task)

    async def _open(self, session_id: str, api_key: str) -> Session:
        leaving = self._leaving.get(session_id)
        if leaving is not None:
            await asyncio.shield(leaving)
        snapshot = await self.node.follow(session_id)
        try:
            first = await host_session(self.node.client, session_id, self.node.name)
        except (RedisError, OSError) as exc:
            logger.warning("cluster: could not join the hosts of a session: %r", exc)
            first = False
        if first:
            if self.on_session_created is not None:
                self.on_session_created(session_id, api_key)
            self._chore(self._mark_created(session_id))
        else:
            # The session's callbacks in order across nodes: this node's connectionCreated
            # goes to the outbox after the first node's sessionCreated.
            try:
                if not await wait_created(self.node.client, session_id, CREATED_WAIT):
                    logger.info("cluster: no sessionCreated stored for a session in %.0f s", CREATED_WAIT)
            except (RedisError, OSError) as exc:
                logger.warning("cluster: could not learn whether a session was created: %r", exc)
        session = Session(session_id, api_key)
        self._delivered[session_id] = load_snapshot(session, snapshot, self.node.name)
        self._mirrors[session_id] = session
        try:
            # Read after the snapshot; announce_speaker writes it before the bus entry: so what
            # this misses, the bus brings.
            speaker = await self.node.client.get(speaker_key(session_id))
        except (RedisError, OSError) as exc:
            logger.warning("cluster: the session's active speaker unknown until it changes: %r", exc)
            speaker = None
        if speaker:
            self.service.adopt_speaker(session_id, str(speaker))
        return session

    def unfollow(self, session_id: str) -> None:
        self._delivered.pop(session_id, None)
        mirror = self._mirrors.pop(session_id, None)
        self.node.unfollow(session_id)
        if mirror is not None:
            task = asyncio.get_running_loop().create_task(self._unhost(session_id, mirror.api_key))
            self._leaving[session_id] = task
            task.add_done_callback(
                lambda t: self._leaving.pop(session_id) if self._leaving.get(session_id) is t else None
            )

    async def _mark_created(self, session_id: str) -> None:
        if self.callbacks_stored is not None:
            await self.callbacks_stored()
        try:
            await mark_created(self.node.client, session_id)
        except (RedisError, OSError) as exc:
            logger.warning("cluster: could not mark a session created: %r", exc)

    def _chore(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _unhost(self, session_id: str, api_key: str) -> None:
        # What this node observed of the session (its connectionDestroyed callbacks) is in the
        # outbox before another node can find itself the last and store sessionDestroyed.
        if self.callbacks_stored is not None:
            await self.callbacks_stored()
        try:
            last = await unhost_session(self.node.client, session_id, self.node.name)
        except (RedisError, OSError) as exc:
            # The node's record then outlives nothing: when it stops, it is reaped as dead and
            # the session's end is decided then.
            logger.warning("cluster: could not leave the hosts of a session: %r", exc)
            return
        if last and self.on_session_destroyed is not None:
            self.on_session_destroyed(session_id, api_key)

    async def _reaped_session(self, session_id: str, dead: str) -> None:
        """A dead node's connections of a session were reported gone: it no longer hosts it."""
        with contextlib.suppress(SalonError):
            api_key = decode_session_id(session_id).api_key
            if await unhost_session(self.node.client, session_id, dead) and self.on_session_destroyed:
                self.on_session_destroyed(session_id, api_key)

    def speaker_node(self, session: Session) -> str:
        """The node that announces the session's active speaker: the first by name of the
        nodes with a connection in it. Every node works it out the same from its copy of the
        session (the same at the same point of the bus); when that node leaves the session or
        dies, the next one takes over."""
        return min((c.node or self.node.name for c in session.connections.values()), default=self.node.name)

    def announce_speaker(self, session: Session, stream_id: str | None) -> None:
        """Announce the session's active speaker to every node (as the speaker node)."""
        self._chore(self._announce_speaker(session, stream_id))

    async def _announce_speaker(self, session: Session, stream_id: str | None) -> None:
        try:
            await self.node.client.set(speaker_key(session.session_id), stream_id or "", ex=SESSION_KEY_TTL)
        except (RedisError, OSError) as exc:
            logger.warning("cluster: the active speaker not stored for later nodes: %r", exc)
        self.publish(session, [Deliver(ActiveSpeakerEvent(stream_id=stream_id))])

    async def view(self, session_id: str, api_key: str) -> Session | None:
        """A throwaway copy of a session this node has no client in (for the REST API):
        None if no node has a client in it."""
        session = Session(session_id, api_key)
        load_snapshot(session, await self.node.view(session_id), self.node.name)
        return None if session.empty else session

    async def _on_entry(self, session_id: str, entry_id: str, fields: dict[str, str]) -> None:
        session = self._mirrors.get(session_id)
        delivered = self._delivered.get(session_id)
        if session is None or delivered is None:
            return
        batch = decode_batch(fields)
        gone_here = apply_to_mirror(session, batch, self.node.name)
        await self.service.apply_cluster_batch(session, batch, delivered, gone_here)
