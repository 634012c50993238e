"""The signalling service's side of a cluster: publish every change, apply every batch.

:class:`ClusterBridge` is what :class:`~salon.signalling.service.SignallingService` calls when
it runs as a node (``service.cluster``): a session's changes are published on its Redis Stream
(:meth:`publish`), and the node applies every batch of the sessions its clients are in, its own
included, in stream order (:meth:`_on_entry`): so every client of a session, whichever node it
is on, sees the same events in the same order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from salon.cluster.core import (
    Delivered,
    apply_to_mirror,
    decode_batch,
    encode_batch,
    load_snapshot,
    split_local,
)
from salon.cluster.node import ClusterNode
from salon.signalling.session import Action, Session

if TYPE_CHECKING:
    from salon.signalling.service import SignallingService

__all__ = ["ClusterBridge"]

logger = logging.getLogger(__name__)


class ClusterBridge:
    """One node's link between its signalling service and the cluster's Redis."""

    def __init__(self, node: ClusterNode, service: SignallingService) -> None:
        self.node = node
        self.service = service
        self._delivered: dict[str, Delivered] = {}
        #: The sessions followed (the service registers each in ``service.sessions`` too).
        self._mirrors: dict[str, Session] = {}
        self._opening: dict[str, asyncio.Task[Session]] = {}

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def draining(self) -> bool:
        return self.node.draining

    async def start(self) -> None:
        self.node.on_taken_for_dead = self.service.taken_for_dead
        await self.node.start(self._on_entry)

    async def stop(self) -> None:
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
        snapshot = await self.node.follow(session_id)
        session = Session(session_id, api_key)
        self._delivered[session_id] = load_snapshot(session, snapshot, self.node.name)
        self._mirrors[session_id] = session
        return session

    def unfollow(self, session_id: str) -> None:
        self._delivered.pop(session_id, None)
        self._mirrors.pop(session_id, None)
        self.node.unfollow(session_id)

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
