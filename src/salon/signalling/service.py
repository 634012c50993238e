"""The signalling service: the asyncio adapter between WebSockets and :class:`Session`.

Each WebSocket becomes a :class:`ClientLink` with a bounded outbox drained by one writer
task, so a slow client never blocks the others: a message fanned out to a whole session is
serialised once and queued to each link without awaiting. A link whose outbox overflows is
closed (:attr:`CloseCode.SLOW_CONSUMER`).

Liveness: the service pings every connection every ``heartbeat_interval`` seconds; any
message from a client counts as proof of life, and a connection silent for
``heartbeat_timeout`` seconds is destroyed with reason ``networkDisconnected``. The check runs
once per interval, so with the defaults (2 s, 6 s) a client that vanishes is noticed 6 to
8 s after its last message.

Resuming: a connection whose link broke (the socket ended without a close frame from the
client, or its heartbeat timed out) is suspended rather than destroyed, for
``reconnect_grace`` seconds (30 by default): the others see nothing, and a client that comes
back with its resume secret takes it over again, same connection ID, streams and
subscriptions (:class:`~salon.signalling.session.Session`, docs/protocol.md §2.7). When the
grace period ends (checked every heartbeat interval) it is destroyed as
``networkDisconnected``. A suspended connection keeps counting toward ``max_per_address``
(the address of its last link), so dropping links cannot pile up state; a shutdown destroys
the suspended connections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from salon.errors import ClientError, NotFoundError, SalonError, TokenError
from salon.ids import new_connection_id
from salon.media.audio_level import HeldLevelElection
from salon.observability.logs import CONNECTION_ID, SESSION_ID
from salon.protocol import (
    AckMessage,
    ActiveSpeakerEvent,
    AudioLevelEvent,
    ClientMessage,
    CloseCode,
    ConnectedMessage,
    ConnectionCreatedEvent,
    ConnectionDestroyedEvent,
    ConnectRequest,
    DisconnectReason,
    ErrorCode,
    ErrorMessage,
    ForceDisconnectRequest,
    ForceMuteRequest,
    ForceUnpublishRequest,
    IceCandidateRequest,
    PingMessage,
    PongMessage,
    PublishedMessage,
    PublishRequest,
    RedirectMessage,
    ServerMessage,
    SetSubscriptionPreferencesRequest,
    SetSubscriptionRequest,
    SignalRequest,
    StreamAudioLevel,
    StreamDestroyedEvent,
    StreamReason,
    SubscribedMessage,
    SubscribeRequest,
    UnpublishRequest,
    UnsubscribeRequest,
    UpdateStreamRequest,
    client_message_adapter,
)
from salon.protocol.messages import CLIENT_MESSAGE_TYPES
from salon.signalling.ice import IceSettings
from salon.signalling.levels import LevelThrottle, check_levels
from salon.signalling.media import MediaPlane, SignallingOnly
from salon.signalling.observer import SessionObserver
from salon.signalling.ratelimit import TokenBucket, Verdict
from salon.signalling.session import Action, Close, Deliver, ResumeRefusedError, Session, Subscription
from salon.store.registry import Registry
from salon.tokens import TokenClaims, token_api_key, verify_token

if TYPE_CHECKING:
    from salon.cluster.bridge import ClusterBridge
    from salon.cluster.core import Batch, Delivered

__all__ = ["ClientLink", "SignallingConfig", "SignallingService", "SignallingStats"]

logger = logging.getLogger(__name__)

#: Largest message handled as a request; larger ones get a ``message_too_large`` error.
MAX_MESSAGE_SIZE = 64 * 1024

#: The ASGI scope extension through which the server (salon's own uvicorn protocol,
#: :mod:`salon.server.run`) lets a link abort its TCP connection: ``{"abort": callable}``,
#: a no-op once the connection is gone; and ``"close_received"``: a callable telling whether
#: the client sent a close frame (False: the socket broke); ``"send_texts"``: a coroutine
#: function writing several text messages at once (one write to the socket); ``"write_now"``:
#: a function writing one text message at once if the socket takes it without waiting.
ABORT_EXTENSION = "salon.abort"
#: Messages a link's writer takes from its outbox at most before it lets the event loop run
#: other tasks: with hundreds of links each holding a backlog, draining them all in one loop
#: iteration would starve timers (the cluster heartbeat) for seconds.
WRITE_BATCH = 32


@dataclass(frozen=True, slots=True)
class SignallingConfig:
    """Signalling timings (seconds) and limits.

    A silent connection is destroyed between ``heartbeat_timeout`` and ``heartbeat_timeout +
    heartbeat_interval`` after its last message (8 s at most with the defaults).

    :param outbox_size: messages queued for one connection before it is closed as a slow
        consumer (4010).
    :param close_grace: seconds a socket the server closed has to finish closing (its queued
        messages and the close frame written, the client's close received) before its TCP
        connection is aborted: a client that never reads cannot hold it open.
    :param rate_limit: messages per second one socket may send on average (0: no limit);
        over it a request is refused with ``rate_limited`` (:mod:`salon.signalling.ratelimit`).
    :param rate_burst: messages one socket may send at once before the rate limit applies; a
        socket that sends this many more while refused is closed with 4029.
    :param max_per_address: WebSockets open at once from one client IP address (0: no
        limit); over it the upgrade is refused with HTTP 429. A suspended connection (waiting
        for its client to resume it) counts as one of its address's.
    :param reconnect_grace: seconds a connection whose link broke is kept for its client to
        resume it, then destroyed as ``networkDisconnected`` (0: no resume, destroyed at once).
    """

    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 6.0
    connect_timeout: float = 10.0
    outbox_size: int = 1024
    close_grace: float = 2.0
    rate_limit: float = 50.0
    rate_burst: int = 200
    max_per_address: int = 200
    reconnect_grace: float = 30.0


@dataclass(slots=True)
class SignallingStats:
    """What signalling counted since the server started (:mod:`salon.observability.metrics`):
    valid client messages by type, server messages queued by type, error replies by code."""

    # defaultdict, not Counter: a Counter's `c[k] += 1` costs four times as much (410 ns
    # against 110 ns), once per message queued to each link.
    received: collections.defaultdict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    sent: collections.defaultdict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    errors: collections.defaultdict[str, int] = field(default_factory=lambda: collections.defaultdict(int))


@dataclass(slots=True)
class _Voices:
    """A session's audio-level state: the throttle of its ``audio_levels`` events, the timer
    that sends a waiting batch, and the active speaker last announced."""

    throttle: LevelThrottle = field(default_factory=LevelThrottle)
    timer: asyncio.TimerHandle | None = None
    active_speaker: str | None = None
    #: In a cluster: the speaker election over the levels on the session's bus, its timer, and
    #: the speaker this node last announced (as the session's speaker node) not yet read back.
    election: HeldLevelElection | None = None
    election_timer: asyncio.TimerHandle | None = None
    announcing: str | None = None
    announcing_pending: bool = False

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.election_timer is not None:
            self.election_timer.cancel()
            self.election_timer = None


def _now_ms() -> int:
    return int(time.time() * 1000)


_TOKEN_CLOSE = {
    "token_expired": CloseCode.TOKEN_EXPIRED,
    "wrong_session": CloseCode.WRONG_SESSION,
}


#: The close reason of a client of a node taken for dead (code 1001: reconnect).
TAKEN_FOR_DEAD = "this node was taken for dead: reconnect"


class ClientLink:
    """One client's WebSocket: a bounded outbox and the task that writes it.

    Whenever the server closes the link (for any reason) it arms a timer: a socket still open
    ``close_grace`` seconds later is aborted. The close frame is queued behind everything
    already written, so without the timer a client that never reads its socket (its TCP
    window full, the writer blocked) would never be closed nor destroyed.
    """

    def __init__(
        self,
        websocket: WebSocket,
        outbox_size: int,
        close_grace: float = 2.0,
        stats: SignallingStats | None = None,
    ) -> None:
        self.websocket = websocket
        self.stats = stats if stats is not None else SignallingStats()
        self.connection_id: str | None = None
        self.session: Session | None = None
        self._outbox: asyncio.Queue[str | Close] = asyncio.Queue(outbox_size)
        self._writer: asyncio.Task[None] | None = None
        self.closed = False
        self.close_grace = close_grace
        self._grace_timer: asyncio.TimerHandle | None = None
        extension = websocket.scope.get("extensions", {}).get(ABORT_EXTENSION) or {}
        self._abort: Callable[[], None] | None = extension.get("abort")
        self._close_received: Callable[[], bool] | None = extension.get("close_received")
        self._send_texts: Callable[[list[str]], Awaitable[None]] | None = extension.get("send_texts")
        self._write_now: Callable[[str], bool] | None = extension.get("write_now")
        #: The writer holds messages taken from the outbox and not yet written.
        self._writing = False
        #: The request rate limit; None when switched off.
        self.bucket: TokenBucket | None = None
        #: Whether the socket ended without a close frame from the client (None: not ended).
        self.broken: bool | None = None
        #: The client's IP address while it is counted toward ``max_per_address``.
        self.address: str | None = None
        #: In a cluster: joined, and this node's own changes published before the join are still
        #: coming back from the bus; its ``connected`` had them already, so they are skipped.
        self.catching_up = False
        #: Whether a request of this link is being carried out: its messages (pongs included)
        #: wait in the socket meanwhile, so the heartbeat does not time it out (a request that
        #: waits on another node, e.g. a pipe from a node that just died, has its own bound).
        self.handling = False

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write(), name="salon-link-writer")

    @property
    def writer(self) -> asyncio.Task[None] | None:
        """The task writing the outbox (done once the close frame is written)."""
        return self._writer

    def send_text(self, text: str, kind: str = "other") -> None:
        """Queue a message (of type ``kind``) without waiting; close the link if the client
        cannot keep up."""
        if self.closed:
            return
        self.stats.sent[kind] += 1
        # Nothing queued nor being written: straight to the socket if it takes it now (no
        # task switch per message: a broadcast to hundreds of links is one pass).
        write_now = self._write_now
        if write_now is not None and not self._writing and self._outbox.empty() and write_now(text):
            return
        try:
            self._outbox.put_nowait(text)
        except asyncio.QueueFull:
            logger.warning("ClientLink(%s) outbox full, closing", self.connection_id)
            self.closed = True
            # What is still queued is dropped, so the client never sees a gap: it gets every
            # message up to where its outbox overflowed, then the close.
            while not self._outbox.empty():
                self._outbox.get_nowait()
            self._writer_close(Close(self.connection_id or "", CloseCode.SLOW_CONSUMER, "slow consumer"))

    def send(self, message: ServerMessage) -> None:
        if isinstance(message, ErrorMessage) and not self.closed:
            self.stats.errors[str(message.code)] += 1
        self.send_text(message.model_dump_json(), message.type)

    def close(self, code: CloseCode, reason: str) -> None:
        """Close after the messages already queued have been written. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._writer_close(Close(self.connection_id or "", code, reason))

    def _writer_close(self, close: Close) -> None:
        # Make room if needed: the close must get through.
        while self._outbox.full():
            self._outbox.get_nowait()
        self._outbox.put_nowait(close)
        if self._grace_timer is None:
            loop = asyncio.get_running_loop()
            self._grace_timer = loop.call_later(self.close_grace, self._grace_expired)

    def _grace_expired(self) -> None:
        """The close did not finish in time: abort the TCP connection (a no-op if it is gone),
        which wakes the reader (the connection is then destroyed) and the blocked writer."""
        writer_blocked = self._writer is not None and not self._writer.done()
        if self._abort is not None:
            if writer_blocked:
                logger.warning(
                    "ClientLink(%s) not closed in %ss, aborting", self.connection_id, self.close_grace
                )
            self._abort()
        elif writer_blocked:
            assert self._writer is not None
            self._writer.cancel()  # without the abort hook: at least free the queued messages
        while not self._outbox.empty():
            self._outbox.get_nowait()

    async def _write(self) -> None:
        ws = self.websocket
        outbox = self._outbox
        send_texts = self._send_texts
        try:
            while True:
                item = await outbox.get()
                if isinstance(item, Close):
                    if ws.application_state == WebSocketState.CONNECTED:
                        await ws.close(int(item.code), item.reason)
                    return
                if send_texts is None:
                    await ws.send_text(item)
                    continue
                # What else is queued goes in the same write (up to WRITE_BATCH messages), a
                # close after it; then the other tasks get their turn before the next batch.
                texts = [item]
                close: Close | None = None
                while len(texts) < WRITE_BATCH and not outbox.empty():
                    more = outbox.get_nowait()
                    if isinstance(more, Close):
                        close = more
                        break
                    texts.append(more)
                self._writing = True
                try:
                    await send_texts(texts)
                finally:
                    self._writing = False
                if close is not None:
                    if ws.application_state == WebSocketState.CONNECTED:
                        await ws.close(int(close.code), close.reason)
                    return
                if not outbox.empty():
                    await asyncio.sleep(0)
        except (WebSocketDisconnect, ConnectionError, RuntimeError) as exc:
            # The peer went away while we wrote; the reader notices and cleans up.
            logger.debug("ClientLink(%s) write failed: %r", self.connection_id, exc)

    async def aclose(self) -> None:
        """Stop the writer task (after the reader has ended)."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


class SignallingService:
    """Owns the live sessions and every client link; the REST API calls into it too."""

    def __init__(
        self,
        registry: Registry,
        config: SignallingConfig | None = None,
        media: MediaPlane | None = None,
        *,
        ice: IceSettings | None = None,
        observer: SessionObserver | None = None,
    ) -> None:
        self.registry = registry
        #: Told of sessions starting and ending and of every event delivered (callbacks).
        self.observer = observer
        self.config = config or SignallingConfig()
        self.sessions: dict[str, Session] = {}
        self.links: dict[str, ClientLink] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.media: MediaPlane = media if media is not None else SignallingOnly()
        #: The STUN/TURN servers handed to each connection in ``connected``.
        self.ice = ice or IceSettings()
        self._voices: dict[str, _Voices] = {}
        #: WebSockets open (and connections suspended) per client IP address (for
        #: ``max_per_address``).
        self._per_address: dict[str, int] = {}
        #: The address each suspended connection counts toward.
        self._suspended_addresses: dict[str, str] = {}
        #: Every open link, connected or not (``links`` has the connected ones by ID).
        self._open_links: set[ClientLink] = set()
        #: Sessions whose mute-all state is on (session ID -> excluded stream IDs). It outlives
        #: the live :class:`Session` (until switched off or the server stops), as in OpenTok.
        self._mute_all: dict[str, frozenset[str]] = {}
        #: Called after every WebSocket ends: a closed link's objects are garbage in reference
        #: cycles. ``salon serve`` asks for a prompt garbage collection here
        #: (:func:`salon.server.run.run_server`).
        self.on_link_closed: Callable[[], None] | None = None
        #: Messages and errors counted (metrics).
        self.stats = SignallingStats()
        #: Set when this server is a node of a cluster (``salon serve --redis-url``): every
        #: change is published on the session's bus and applied from it (:mod:`salon.cluster`).
        self.cluster: ClusterBridge | None = None
        #: In a cluster: told of the events of the batches other nodes published (``observer``
        #: hears those of this node's own changes): the archive service, whose archives
        #: follow streams wherever they are published. Callbacks stay with the origin node.
        self.elsewhere: Callable[[str, str, ServerMessage], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._heartbeat(), name="salon-heartbeat")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for voices in self._voices.values():
            voices.cancel()
        for link in list(self.links.values()):
            link.close(CloseCode.GOING_AWAY, "server shutting down")
        await self._end_suspended(None)

    async def _end_suspended(self, now: float | None) -> None:
        """Destroy the suspended connections whose grace period is over (all of them when
        ``now`` is None: the server stops) as ``networkDisconnected``."""
        for session in list(self.sessions.values()):
            gone = (
                session.suspended() if now is None else session.grace_over(now, self.config.reconnect_grace)
            )
            for connection_id in gone:
                logger.info("%r: connection %s not resumed in time", session, connection_id)
                try:
                    await self.leave(session, connection_id, DisconnectReason.NETWORK_DISCONNECTED)
                except Exception:
                    logger.exception("%r: ending connection %s failed", session, connection_id)

    async def going_away(self, timeout: float) -> None:
        """Close every WebSocket with 1001 (going away), connected or not, after the messages
        already queued; wait up to ``timeout`` seconds for the close frames to be written.
        (Closes that do not finish are aborted after ``close_grace``, as always.) Called when
        the server shuts down, before the HTTP layer closes the sockets itself."""
        links = list(self._open_links)
        for link in links:
            link.close(CloseCode.GOING_AWAY, "server shutting down")
        writers = [w for link in links if (w := link.writer) is not None and not w.done()]
        if writers:
            await asyncio.wait(writers, timeout=timeout)

    async def _heartbeat(self) -> None:
        interval = self.config.heartbeat_interval
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - last > 2 * interval + 1.0:
                # This server's loop stalled (or the process was stopped): its clients' messages
                # were not read meanwhile, their silence is its own. Time from now.
                logger.warning("the event loop stalled for %.1fs: connection timeouts restart", now - last)
                for link in self.links.values():
                    if link.session is not None and link.connection_id is not None:
                        link.session.touch(link.connection_id, now)
            last = now
            ping = PingMessage(timestamp=time.time()).model_dump_json()
            for session in list(self.sessions.values()):
                for connection_id in session.expired(now, self.config.heartbeat_timeout):
                    busy = self.links.get(connection_id)
                    if busy is not None and busy.handling:
                        continue  # its messages wait behind a request being carried out
                    # One failure (e.g. in the media plane) must not stop the pings and
                    # timeouts of every other connection: log it and go on.
                    try:
                        await self._timed_out(session, connection_id)
                    except Exception:
                        logger.exception("%r: timing out connection %s failed", session, connection_id)
            for link in list(self.links.values()):
                link.send_text(ping, "ping")
            await self._end_suspended(now)

    async def _timed_out(self, session: Session, connection_id: str) -> None:
        logger.info("%r: connection %s timed out", session, connection_id)
        link = self.links.get(connection_id)
        if link is not None:
            link.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
        if link is not None and self._suspend(session, connection_id, link):
            return
        await self.leave(session, connection_id, DisconnectReason.NETWORK_DISCONNECTED)

    def _suspend(self, session: Session, connection_id: str, link: ClientLink) -> bool:
        """Keep the connection of a broken link for a resume, if the grace period allows;
        the link is detached from it (its end no longer concerns the connection)."""
        if self.config.reconnect_grace <= 0 or not session.suspend(connection_id, time.monotonic()):
            return False
        logger.info(
            "%r: connection %s lost its link; kept %gs for a resume",
            session,
            connection_id,
            self.config.reconnect_grace,
        )
        if self.links.get(connection_id) is link:
            del self.links[connection_id]
        link.session = None
        if link.address is not None:
            # The connection keeps counting toward its address until resumed or destroyed.
            self._suspended_addresses[connection_id] = link.address
            link.address = None
        return True

    def _release_address(self, address: str | None) -> None:
        if address is None or address not in self._per_address:
            return
        left = self._per_address[address] - 1
        if left > 0:
            self._per_address[address] = left
        else:
            del self._per_address[address]

    # -- actions -----------------------------------------------------------------------

    async def carry_out(self, session: Session, actions: list[Action]) -> None:
        """Carry out a :class:`Session`'s actions, in order, and tell the media plane which
        streams were destroyed. In a cluster they are published on the session's bus instead,
        and carried out by every node as it reads them (:meth:`apply_cluster_batch`)."""
        if self.cluster is None:
            await self._carry_out_here(session, actions)
            return
        if self.observer is not None:
            for action in actions:
                if isinstance(action, Deliver):
                    self.observer.delivered(session.session_id, session.api_key, action.message)
        await self._carry_out_here(session, self.cluster.publish(session, actions), observe=False)

    async def apply_cluster_batch(
        self, session: Session, batch: Batch, delivered: Delivered, gone_here: list[str]
    ) -> None:
        """A batch of changes read from the session's bus (the mirror already updated):
        deliver it to this node's clients, close what it closes, clean up this node's
        connections it destroyed (``gone_here``), tell the media plane of ended streams."""
        own = self.cluster is not None and batch.origin == self.cluster.name
        if self.elsewhere is not None and self.cluster is not None:
            if batch.origin not in (self.cluster.name, f"rest@{self.cluster.name}"):
                for action, _ in batch.actions:
                    if isinstance(action, Deliver) and action.to is None:
                        self.elsewhere(session.session_id, session.api_key, action.message)
        for action, text in batch.actions:
            if isinstance(action, Close):
                link = self.links.get(action.connection_id)
                if link is not None:
                    link.close(action.code, action.reason)
                continue
            if isinstance(action.message, AudioLevelEvent | ActiveSpeakerEvent):
                self._heard_on_bus(session, action.message)
                continue
            if not delivered.admit(action):
                continue
            text = text or action.message.model_dump_json()
            if action.to is None:
                targets: list[str] = [c for c, conn in session.connections.items() if conn.node is None]
            else:
                targets = list(action.to)
            for connection_id in targets:
                if connection_id == action.exclude:
                    continue
                link = self.links.get(connection_id)
                if link is None:
                    session.hold(connection_id, action.message)
                elif not (own and link.catching_up):
                    link.send_text(text)
        if own:
            for action, _ in batch.actions:
                if isinstance(action, Deliver) and isinstance(action.message, ConnectionCreatedEvent):
                    link = self.links.get(action.message.connection.connection_id)
                    if link is not None:
                        link.catching_up = False  # its own join: from here on it sees everything
        reasons = {
            action.message.connection_id: action.message.reason
            for action, _ in batch.actions
            if isinstance(action, Deliver) and isinstance(action.message, ConnectionDestroyedEvent)
        }
        for connection_id in gone_here:
            link = self.links.pop(connection_id, None)
            if link is not None:
                link.session = None
                if reasons.get(connection_id) == DisconnectReason.NETWORK_DISCONNECTED:
                    # Another node took this one for dead and reported it gone: the client is
                    # to reconnect (as a new connection), not to give up as forced out.
                    link.close(CloseCode.GOING_AWAY, TAKEN_FOR_DEAD)
                else:
                    link.close(CloseCode.FORCE_DISCONNECTED, "force disconnected")
            self._release_address(self._suspended_addresses.pop(connection_id, None))
            await self._connection_gone(session, connection_id)
        for action, _ in batch.actions:
            if isinstance(action, Deliver) and isinstance(action.message, StreamDestroyedEvent):
                await self.media.stream_unpublished(session.session_id, action.message.stream_id)

    async def taken_for_dead(self) -> None:
        """This cluster node found its registry record expired: too busy (or cut off from
        Redis) to heartbeat for a whole ``--node-timeout``, it may have been reaped, its
        connections reported destroyed as ``networkDisconnected`` to every other node. To agree
        with that, each connection here is destroyed so (nothing new for the others if the
        reaper did it already) and its client's socket closed with 1001: the SDKs reconnect,
        here or to another node, their resume refused, as new connections."""
        for session in list(self.sessions.values()):
            for connection_id in [c for c, conn in session.connections.items() if conn.node is None]:
                link = self.links.pop(connection_id, None)
                if link is not None:
                    link.session = None  # its end must not report clientDisconnected
                    link.close(CloseCode.GOING_AWAY, TAKEN_FOR_DEAD)
                try:
                    await self.leave(session, connection_id, DisconnectReason.NETWORK_DISCONNECTED)
                except Exception:
                    logger.exception("%r: ending connection %s failed", session, connection_id)

    async def _carry_out_here(self, session: Session, actions: list[Action], *, observe: bool = True) -> None:
        for action in actions:
            if isinstance(action, Deliver):
                if observe and self.observer is not None:
                    self.observer.delivered(session.session_id, session.api_key, action.message)
                text = action.message.model_dump_json()
                targets = session.connections.keys() if action.to is None else action.to
                for connection_id in targets:
                    if connection_id != action.exclude:
                        link = self.links.get(connection_id)
                        if link is not None:
                            link.send_text(text, action.message.type)
                        else:
                            session.hold(connection_id, action.message)
            else:
                link = self.links.get(action.connection_id)
                if link is not None:
                    link.close(action.code, action.reason)
        for action in actions:
            if isinstance(action, Deliver) and isinstance(action.message, StreamDestroyedEvent):
                await self.media.stream_unpublished(session.session_id, action.message.stream_id)

    async def leave(self, session: Session, connection_id: str, reason: DisconnectReason) -> None:
        """Remove a connection from its session (idempotent) and tell the others."""
        if connection_id not in session.connections:
            return
        self._release_address(self._suspended_addresses.pop(connection_id, None))
        await self.carry_out(session, session.leave(connection_id, reason))
        await self._connection_gone(session, connection_id)

    async def _connection_gone(self, session: Session, connection_id: str) -> None:
        await self.media.connection_left(session.session_id, connection_id)
        if session.local_empty and self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
            if self.cluster is not None:
                self.cluster.unfollow(session.session_id)
            if self.observer is not None:
                self.observer.session_ended(session.session_id, session.api_key)
            voices = self._voices.pop(session.session_id, None)
            if voices is not None:
                voices.cancel()
            await self.media.session_ended(session.session_id)

    async def stream_ended(self, session_id: str, stream_id: str, reason: StreamReason) -> None:
        """The media plane lost a stream (:class:`~salon.signalling.media.MediaEvents`)."""
        session = self.sessions.get(session_id)
        if session is not None:
            await self.carry_out(session, session.end_stream(stream_id, reason))

    async def media_reset(
        self, session_id: str, stream_ids: list[str], connection_ids: list[str] | None = None
    ) -> None:
        """The media plane lost every transport of the session (its worker died), or those of
        ``connection_ids`` only: each of these connections gets ``media_reset``, then the
        streams end as ``mediaStopped`` (:class:`~salon.signalling.media.MediaEvents`)."""
        session = self.sessions.get(session_id)
        if session is not None:
            await self.carry_out(session, session.media_reset(stream_ids, connection_ids))

    async def stream_flowing(self, session_id: str, stream_id: str) -> None:
        """A pending stream's media flows: announce it (:class:`~salon.signalling.media.MediaEvents`)."""
        session = self.sessions.get(session_id)
        if session is not None:
            await self.carry_out(session, session.announce_stream(stream_id))

    async def audio_levels(self, session_id: str, levels: dict[str, float]) -> None:
        """The media plane measured audio levels (stream ID -> 0..1): send them to every
        connection of the session as ``audio_levels``, at most
        :data:`~salon.signalling.levels.AUDIO_LEVELS_PER_SECOND` times a second (later
        levels wait and the latest of each stream wins). Streams not announced are left out.
        (:class:`~salon.signalling.media.MediaEvents`)"""
        levels = check_levels(levels)
        session = self.sessions.get(session_id)
        if session is None:
            return
        levels = {sid: level for sid, level in levels.items() if self._announced(session, sid)}
        if not levels:
            return
        if self.cluster is not None:
            # Through the session's bus: every node's clients hear them, and every node's
            # election weighs them (apply_cluster_batch -> _heard_on_bus).
            reported = [StreamAudioLevel(stream_id=sid, level=round(lv, 3)) for sid, lv in levels.items()]
            self.cluster.publish(session, [Deliver(AudioLevelEvent(levels=reported))])
            return
        self._offer_levels(session, levels)

    def _voices_of(self, session_id: str) -> _Voices:
        voices = self._voices.get(session_id)
        if voices is None:
            voices = self._voices[session_id] = _Voices()
        return voices

    def _offer_levels(self, session: Session, levels: dict[str, float]) -> None:
        voices = self._voices_of(session.session_id)
        loop = asyncio.get_running_loop()
        self._send_levels(session, voices.throttle.offer(levels, loop.time()))
        self._schedule_levels(session.session_id, voices)

    def _schedule_levels(self, session_id: str, voices: _Voices) -> None:
        deadline = voices.throttle.deadline()
        if deadline is None or voices.timer is not None:
            return
        voices.timer = asyncio.get_running_loop().call_at(deadline, self._flush_levels, session_id)

    def _flush_levels(self, session_id: str) -> None:
        voices = self._voices.get(session_id)
        session = self.sessions.get(session_id)
        if voices is None or session is None:
            return
        voices.timer = None
        self._send_levels(session, voices.throttle.poll(asyncio.get_running_loop().time()))
        self._schedule_levels(session_id, voices)  # woken a little early, or more arrived

    def _send_levels(self, session: Session, batch: dict[str, float] | None) -> None:
        if not batch:
            return
        levels = [
            StreamAudioLevel(stream_id=sid, level=round(level, 3))
            for sid, level in batch.items()
            if self._announced(session, sid)
        ]
        if levels:
            self._broadcast(session, AudioLevelEvent(levels=levels))

    async def active_speaker(self, session_id: str, stream_id: str | None) -> None:
        """The media plane picked the session's active speaker (None: nobody): send
        ``active_speaker`` to every connection of the session when it changed. A stream not
        announced is ignored. (:class:`~salon.signalling.media.MediaEvents`)

        In a cluster this node's routers see only the streams published here: the session's
        speaker is elected from the levels on its bus instead (:meth:`_poll_election`)."""
        if self.cluster is not None:
            return
        session = self.sessions.get(session_id)
        if session is None or (stream_id is not None and not self._announced(session, stream_id)):
            return
        voices = self._voices.get(session_id)
        if voices is None:
            voices = self._voices[session_id] = _Voices()
        if voices.active_speaker == stream_id:
            return
        voices.active_speaker = stream_id
        self._broadcast(session, ActiveSpeakerEvent(stream_id=stream_id))

    # -- audio levels and the active speaker in a cluster ------------------------------

    def _heard_on_bus(self, session: Session, message: AudioLevelEvent | ActiveSpeakerEvent) -> None:
        """Audio levels, or the speaker the session's speaker node announced, read from the
        session's bus: levels go to this node's clients through the same throttle as a
        single server's (at most 4 a second) and into this node's election; the speaker goes
        to them when it changed."""
        voices = self._voices_of(session.session_id)
        if isinstance(message, AudioLevelEvent):
            levels = {e.stream_id: e.level for e in message.levels if self._announced(session, e.stream_id)}
            if not levels:
                return
            self._offer_levels(session, levels)
            if voices.election is None:
                voices.election = HeldLevelElection()
            voices.election.report(levels, asyncio.get_running_loop().time())
            self._schedule_election(session.session_id, voices)
            return
        stream_id = message.stream_id
        if voices.election is not None:
            voices.election.adopt(stream_id)
        if voices.announcing_pending and voices.announcing == stream_id:
            voices.announcing_pending = False
        if voices.active_speaker == stream_id:
            return
        if stream_id is not None and not self._announced(session, stream_id):
            return
        voices.active_speaker = stream_id
        self._broadcast(session, message)

    def adopt_speaker(self, session_id: str, stream_id: str | None) -> None:
        """The session's speaker as the cluster knew it when this node started following the
        session (its clients that join get it after ``connected``)."""
        voices = self._voices_of(session_id)
        voices.active_speaker = stream_id
        if voices.election is not None:
            voices.election.adopt(stream_id)

    def _schedule_election(self, session_id: str, voices: _Voices) -> None:
        deadline = None if voices.election is None else voices.election.next_deadline()
        if deadline is None or voices.election_timer is not None:
            return
        voices.election_timer = asyncio.get_running_loop().call_at(deadline, self._poll_election, session_id)

    def _poll_election(self, session_id: str) -> None:
        """Every node runs the session's election on the same levels (those on its bus); the
        session's speaker node (:meth:`~salon.cluster.bridge.ClusterBridge.speaker_node`)
        announces its outcome on the bus, so every client sees the same speaker."""
        voices = self._voices.get(session_id)
        session = self.sessions.get(session_id)
        if voices is None or session is None or voices.election is None or self.cluster is None:
            return
        voices.election_timer = None
        now = asyncio.get_running_loop().time()
        voices.election.poll(now, lambda sid: self._announced(session, sid))
        self._schedule_election(session_id, voices)
        chosen = voices.election.active_speaker
        if chosen == voices.active_speaker or (voices.announcing_pending and chosen == voices.announcing):
            return
        if self.cluster.speaker_node(session) != self.cluster.name:
            return
        voices.announcing, voices.announcing_pending = chosen, True
        self.cluster.announce_speaker(session, chosen)

    async def video_quality_changed(self, session_id: str, subscription_id: str, disabled: bool) -> None:
        """The media plane stopped or resumed a subscription's video for quality: tell its
        subscriber (:class:`~salon.signalling.media.MediaEvents`)."""
        session = self.sessions.get(session_id)
        if session is not None:
            await self.carry_out(session, session.video_quality_changed(subscription_id, disabled))

    @staticmethod
    def _announced(session: Session, stream_id: str) -> bool:
        stream = session.streams.get(stream_id)
        return stream is not None and stream.announced

    def _broadcast(self, session: Session, message: ServerMessage) -> None:
        text = message.model_dump_json()
        for connection_id in session.connections:
            link = self.links.get(connection_id)
            if link is not None:
                link.send_text(text, message.type)

    def live_session(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    async def session_view(self, session_id: str, api_key: str) -> Session | None:
        """The live session for the REST API: this server's, or in a cluster, when this node
        has no client in it, a copy made from the cluster's presence (None: nobody is in it)."""
        session = self.sessions.get(session_id)
        if session is None and self.cluster is not None:
            session = await self.cluster.view(session_id, api_key)
        return session

    # -- WebSocket endpoint ------------------------------------------------------------

    async def serve(self, websocket: WebSocket) -> None:
        """Serve one client for the life of its WebSocket."""
        address = websocket.client.host if websocket.client is not None else None
        limit = self.config.max_per_address
        if address is not None and limit > 0:
            if self._per_address.get(address, 0) >= limit:
                logger.warning("refused a WebSocket from %s: %d open from that address", address, limit)
                await _refuse_upgrade(
                    websocket,
                    429,
                    "too_many_connections",
                    f"at most {limit} signalling connections from one address",
                )
                return
            self._per_address[address] = self._per_address.get(address, 0) + 1
        else:
            address = None
        link = ClientLink(websocket, self.config.outbox_size, self.config.close_grace, self.stats)
        link.address = address
        try:
            await self._serve_accepted(link)
        finally:
            # None if a suspended connection took the count over.
            self._release_address(link.address)

    async def _serve_accepted(self, link: ClientLink) -> None:
        await link.websocket.accept()
        if self.config.rate_limit > 0:
            link.bucket = TokenBucket(
                self.config.rate_limit, max(1, self.config.rate_burst), asyncio.get_running_loop().time()
            )
        link.start()
        self._open_links.add(link)
        try:
            await self._serve(link)
        finally:
            self._open_links.discard(link)
            session, connection_id = link.session, link.connection_id
            if session is not None and connection_id is not None:
                # A socket that ended without the client's close frame (and that the server
                # did not close) broke: the connection waits for a resume.
                broken = link.broken is not False and not link.closed
                if not (broken and self._suspend(session, connection_id, link)):
                    await self.leave(session, connection_id, DisconnectReason.CLIENT_DISCONNECTED)
                    if self.links.get(connection_id) is link:
                        del self.links[connection_id]
            link.close(CloseCode.NORMAL, "")
            # Let the writer flush the close, then make sure it is gone.
            writer = link.writer
            if writer is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(writer), 1.0)
            await link.aclose()
            if self.on_link_closed is not None:
                self.on_link_closed()

    async def _receive(self, link: ClientLink, deadline: float | None) -> ClientMessage | None:
        """The next valid message; None when the socket closed. Bad messages get an error.

        :param deadline: a ``loop.time()`` by which a valid message must have arrived.
        :raises TimeoutError: past the deadline.
        """
        loop = asyncio.get_running_loop()
        while True:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            raw = await asyncio.wait_for(link.websocket.receive(), timeout)
            if raw["type"] == "websocket.disconnect":
                if link._close_received is not None:
                    link.broken = not link._close_received()
                else:
                    link.broken = raw.get("code", 1006) == 1006
                return None
            text = raw.get("text")
            if text is None:
                data = raw.get("bytes") or b""
                text = data.decode("utf-8", "replace")
            if link.session is not None and link.connection_id is not None:
                link.session.touch(link.connection_id, time.monotonic())
            verdict = Verdict.ALLOW if link.bucket is None else link.bucket.take(loop.time())
            if verdict is Verdict.CLOSE:
                logger.warning("ClientLink(%s) kept going over its rate limit, closing", link.connection_id)
                link.close(CloseCode.RATE_LIMITED, "too many requests")
                return None
            if len(text) > MAX_MESSAGE_SIZE:
                link.send(
                    ErrorMessage(code=ErrorCode.MESSAGE_TOO_LARGE, message="messages are at most 64 KiB")
                )
                continue
            try:
                message = client_message_adapter.validate_json(text)
            except ValidationError as exc:
                link.send(_schema_error(text, exc))
                continue
            if verdict is Verdict.ALLOW:
                link.stats.received[message.type] += 1
                return message
            if not isinstance(message, PongMessage):  # a pong still proves liveness
                link.send(
                    ErrorMessage(
                        request_id=message.request_id,
                        code=ErrorCode.RATE_LIMITED,
                        message=f"over {self.config.rate_limit:g} requests a second: slow down",
                    )
                )

    async def _serve(self, link: ClientLink) -> None:
        deadline = asyncio.get_running_loop().time() + self.config.connect_timeout
        try:
            first = await self._receive(link, deadline)
        except TimeoutError:
            link.close(CloseCode.CONNECT_TIMEOUT, "no connect request")
            return
        if first is None:
            return
        if not isinstance(first, ConnectRequest):
            link.send(
                ErrorMessage(
                    request_id=getattr(first, "request_id", None),
                    code=ErrorCode.NOT_CONNECTED,
                    message="the first message must be a connect request",
                )
            )
            link.close(CloseCode.PROTOCOL_ERROR, "expected connect")
            return
        SESSION_ID.set(first.session_id[:200])  # this link's task logs with its IDs
        if not await self._connect(link, first):
            return
        while True:
            message = await self._receive(link, None)
            if message is None or link.session is None:
                return  # closed, or force-disconnected while this message was buffered
            if link.closed:
                continue  # closing (e.g. a slow consumer): carry nothing out, wait for the end
            link.handling = True
            try:
                await self._handle(link, message)
            finally:
                link.handling = False
                if link.session is not None and link.connection_id is not None:
                    link.session.touch(link.connection_id, time.monotonic())
            # Messages already buffered would otherwise be handled back to back, starving
            # this link's writer: a fast, well-behaved client could be closed as slow.
            await asyncio.sleep(0)

    async def _connect(self, link: ClientLink, request: ConnectRequest) -> bool:
        try:
            claims = await self._verify(request)
        except TokenError as exc:
            logger.info("refused a connection to a session: %s", exc.message)
            link.send(
                ErrorMessage(request_id=request.request_id, code=ErrorCode.INVALID_TOKEN, message=exc.message)
            )
            link.close(_TOKEN_CLOSE.get(exc.code, CloseCode.INVALID_TOKEN), exc.message[:120])
            return False
        except NotFoundError as exc:
            link.send(
                ErrorMessage(request_id=request.request_id, code=ErrorCode.NOT_FOUND, message=exc.message)
            )
            link.close(CloseCode.SESSION_NOT_FOUND, exc.message[:120])
            return False
        except SalonError as exc:
            logger.error("connect failed: %s", exc.message)
            link.send(
                ErrorMessage(
                    request_id=request.request_id,
                    code=ErrorCode.INTERNAL_ERROR,
                    message="server error, try again",
                )
            )
            link.close(CloseCode.INTERNAL_ERROR, "server error")
            return False
        if request.resume is not None:
            return await self._resume(link, request)
        if self.cluster is not None and self.cluster.draining:
            message = "this node is draining: connect to another node of the cluster"
            link.send(ErrorMessage(request_id=request.request_id, code=ErrorCode.CONFLICT, message=message))
            link.close(CloseCode.GOING_AWAY, "node draining")
            return False
        if request.accept_redirect and self.cluster is not None:
            # Placement by load: a loaded node sends a new client to another node (one that
            # already hosts the session if it can); the client connects there instead.
            target = await self.cluster.place(request.session_id)
            if target is not None:
                logger.info("sent a new client to node %s (placement by load)", target.name)
                link.send(RedirectMessage(request_id=request.request_id, url=target.url, node=target.name))
                link.close(CloseCode.REDIRECTED, "connect to another node")
                return False
        session = self.sessions.get(request.session_id)
        mirror: Session | None = None
        if session is None:
            if self.cluster is not None:
                # This node's first client in the session: follow its bus (a copy of the
                # session with the other nodes' connections and streams).
                mirror = await self.cluster.follow(request.session_id, claims.api_key)
                session = self.sessions.get(request.session_id)  # another connect may have won
            if session is None:
                session = mirror if mirror is not None else Session(request.session_id, claims.api_key)
                self.sessions[request.session_id] = session
                excluded = self._mute_all.get(session.session_id)
                if excluded is not None:  # switched on while the session had no connection
                    session.mute_all_active, session.mute_all_excluded = True, excluded
                if self.observer is not None:
                    self.observer.session_started(session.session_id, session.api_key)
        connection_id = new_connection_id()
        conn, actions = session.join(
            connection_id,
            role=claims.role,
            data=claims.connection_data,
            created_at=_now_ms(),
            now=time.monotonic(),
            layout_class_list=claims.initial_layout_class_list,
            resumable=self.config.reconnect_grace > 0,
            token=request.token,
        )
        link.session, link.connection_id = session, connection_id
        CONNECTION_ID.set(connection_id)  # this link's task logs with it from now on
        self.links[connection_id] = link
        link.catching_up = self.cluster is not None
        self._send_connected(link, session, request, resumed=False)
        await self.carry_out(session, actions)
        logger.info("%r: connection %s joined as %s", session, connection_id, conn.role.value)
        return True

    def _send_connected(
        self, link: ClientLink, session: Session, request: ConnectRequest, *, resumed: bool
    ) -> None:
        """``connected`` (the session as it is), then the active speaker if there is one."""
        assert link.connection_id is not None
        conn = session.connection(link.connection_id)
        link.send(
            ConnectedMessage(
                request_id=request.request_id,
                session_id=session.session_id,
                connection=conn.info(),
                role=conn.role.value,
                connections=[
                    c.info() for c in session.connections.values() if c.connection_id != conn.connection_id
                ],
                streams=[s.info() for s in session.announced_streams()],
                heartbeat_interval=self.config.heartbeat_interval,
                heartbeat_timeout=self.config.heartbeat_timeout,
                ice_servers=self.ice.for_connection(conn.connection_id, now=time.time()),
                resume_secret=conn.resume_secret,
                reconnect_grace=self.config.reconnect_grace if conn.resume_secret is not None else 0,
                resumed=resumed,
            )
        )
        voices = self._voices.get(session.session_id)
        if voices is not None and voices.active_speaker is not None:
            if self._announced(session, voices.active_speaker):
                link.send(ActiveSpeakerEvent(stream_id=voices.active_speaker))

    async def _resume(self, link: ClientLink, request: ConnectRequest) -> bool:
        """Take a suspended connection over (its token was verified): ``connected`` with
        ``resumed`` and a new secret, then the signals held for it. Nobody else is told. A
        connection still linked (its old link not yet noticed dead) is taken from that link,
        which is closed with 4012. Refused: ``resume_refused``, then close 4011."""
        assert request.resume is not None
        session = self.sessions.get(request.session_id)
        try:
            if session is None:
                raise ResumeRefusedError("no connection to resume with this secret and token")
            conn = session.resume(
                request.resume.connection_id, request.resume.secret, request.token, time.monotonic()
            )
        except ResumeRefusedError as exc:
            logger.info("refused to resume a connection: %s", exc.message)
            link.send(
                ErrorMessage(
                    request_id=request.request_id, code=ErrorCode.RESUME_REFUSED, message=exc.message
                )
            )
            link.close(CloseCode.RESUME_REFUSED, "resume refused")
            return False
        connection_id = conn.connection_id
        old = self.links.pop(connection_id, None)
        if old is not None:
            old.session = None  # its end must not touch the connection any more
            old.close(CloseCode.REPLACED, "resumed on another link")
        self._release_address(self._suspended_addresses.pop(connection_id, None))
        link.session, link.connection_id = session, connection_id
        CONNECTION_ID.set(connection_id)  # this link's task logs with it from now on
        self.links[connection_id] = link
        self._send_connected(link, session, request, resumed=True)
        for signal in session.take_held(connection_id):
            link.send(signal)
        logger.info("%r: connection %s resumed", session, connection_id)
        return True

    async def _verify(self, request: ConnectRequest) -> TokenClaims:
        api_key = token_api_key(request.token)
        project = None if api_key is None else await self.registry.project(api_key)
        # An application has no usable secret: its tokens are RS256, checked with its public key.
        # During a secret rotation's grace period the old secret is accepted too.
        secrets = () if project is None or project.is_application else project.valid_secrets()
        public_key = None if project is None else project.public_key
        claims = verify_token(
            request.token,
            lambda key: secrets if key == api_key else None,
            public_key_for=lambda key: public_key if key == api_key else None,
            session_id=request.session_id,
        )
        record = await self.registry.session(request.session_id)
        if record is None:
            raise NotFoundError("the session does not exist")
        if record.api_key != claims.api_key:
            raise TokenError("the session belongs to another project", code="wrong_session")
        return claims

    async def _handle(self, link: ClientLink, message: ClientMessage) -> None:
        session, connection_id = link.session, link.connection_id
        if session is None or connection_id is None or isinstance(message, PongMessage):
            return
        try:
            reply = await self._dispatch(session, connection_id, message)
        except SalonError as exc:
            if not isinstance(exc, ClientError):
                logger.exception("%r: request %s failed", session, message.type)
            link.send(ErrorMessage(request_id=message.request_id, code=_error_code(exc), message=exc.message))
            return
        if reply is not None:
            link.send(reply)

    async def _dispatch(self, session: Session, cid: str, message: ClientMessage) -> ServerMessage | None:
        match message:
            case ConnectRequest():
                return ErrorMessage(
                    request_id=message.request_id,
                    code=ErrorCode.ALREADY_CONNECTED,
                    message="this socket is connected already",
                )
            case PublishRequest() if message.stream_id is not None and message.sdp is not None:
                await self._republish_media(session, cid, message, message.stream_id, message.sdp)
                return None
            case PublishRequest() if message.sdp is not None:
                await self._publish_media(session, cid, message, message.sdp)
                return None
            case PublishRequest():
                stream, actions = session.publish(cid, message, created_at=_now_ms())
                await self.media.stream_published(session.session_id, stream)
                await self._reply_then_apply(
                    session,
                    cid,
                    PublishedMessage(request_id=message.request_id, stream=stream.info()),
                    actions,
                )
                return None
            case UnpublishRequest():
                actions = session.unpublish(cid, message.stream_id)
            case UpdateStreamRequest():
                actions = session.update_stream(cid, message)
            case SubscribeRequest() if message.sdp is not None:
                return await self._subscribe_media(session, cid, message, message.sdp)
            case SubscribeRequest():
                sub = _subscribe(session, cid, message)
                await self.media.subscribed(session.session_id, sub)
                return SubscribedMessage(
                    request_id=message.request_id,
                    subscription_id=sub.subscription_id,
                    stream_id=sub.stream_id,
                )
            case UnsubscribeRequest():
                await self.media.unsubscribed(
                    session.session_id, session.unsubscribe(cid, message.subscription_id)
                )
                actions = []
            case SetSubscriptionRequest():
                sub = session.own_subscription(cid, message.subscription_id)
                await self.media.set_subscription(
                    session.session_id, sub, audio=message.audio, video=message.video
                )
                actions = []
            case SetSubscriptionPreferencesRequest():
                resolution = message.preferred_resolution
                sub = session.set_preferences(
                    cid,
                    message.subscription_id,
                    preferred_resolution=None
                    if resolution is None
                    else (resolution.width, resolution.height),
                    preferred_frame_rate=message.preferred_frame_rate,
                )
                await self.media.set_subscription_preferences(session.session_id, sub)
                actions = []
            case IceCandidateRequest():
                if message.stream_id is not None:
                    session.own_stream(cid, message.stream_id)
                else:
                    assert message.subscription_id is not None  # the schema wants exactly one
                    session.own_subscription(cid, message.subscription_id)
                await self.media.add_candidate(
                    session.session_id,
                    message.candidate,
                    stream_id=message.stream_id,
                    subscription_id=message.subscription_id,
                )
                actions = []
            case SignalRequest():
                actions = session.signal(cid, message.signal_type, message.data, message.to)
            case ForceDisconnectRequest():
                actions = session.force_disconnect(message.connection_id, by=cid)
                await self._reply_then_apply(session, cid, AckMessage(request_id=message.request_id), actions)
                await self._after_force_disconnect(session, message.connection_id)
                return None
            case ForceUnpublishRequest():
                actions = session.force_unpublish(message.stream_id, by=cid)
            case ForceMuteRequest():
                actions = session.force_mute(
                    message.stream_id, excluded=message.excluded_stream_ids, by=cid, active=message.active
                )
                if message.stream_id is None:
                    self._remember_mute_all(session)
            case PongMessage():
                return None
        await self._reply_then_apply(session, cid, AckMessage(request_id=message.request_id), actions)
        return None

    async def _publish_media(self, session: Session, cid: str, message: PublishRequest, offer: str) -> None:
        """Publish a stream with media: pending until the media plane reports it flowing."""
        stream, actions = session.publish(cid, message, created_at=_now_ms(), announce=False)
        try:
            answer = await self.media.publish(session.session_id, stream, offer)
        except BaseException:
            session.withdraw(stream.stream_id)
            raise
        if session.streams.get(stream.stream_id) is not stream:
            # The publisher left (or was disconnected) while the media plane negotiated.
            await self.media.stream_unpublished(session.session_id, stream.stream_id)
            return
        reply = PublishedMessage(request_id=message.request_id, stream=stream.info(), answer=answer)
        await self._reply_then_apply(session, cid, reply, actions)

    async def _republish_media(
        self, session: Session, cid: str, message: PublishRequest, stream_id: str, offer: str
    ) -> None:
        """Set the media of an existing stream up again (after a resume): a new publish
        transport replaces the old one, the subscribers' consumers move to its producers."""
        stream = session.republish(cid, stream_id)
        answer = await self.media.publish(session.session_id, stream, offer, replace=True)
        if session.streams.get(stream.stream_id) is not stream:
            await self.media.stream_unpublished(session.session_id, stream.stream_id)
            raise NotFoundError(f"no stream {stream_id} in this session")
        reply = PublishedMessage(request_id=message.request_id, stream=stream.info(), answer=answer)
        await self._reply_then_apply(session, cid, reply, [])

    async def _subscribe_media(
        self, session: Session, cid: str, message: SubscribeRequest, offer: str
    ) -> SubscribedMessage:
        sub = _subscribe(session, cid, message)
        try:
            answer = await self.media.subscribe(
                session.session_id, sub, offer, audio=message.audio, video=message.video
            )
        except BaseException:
            session.subscriptions.pop(sub.subscription_id, None)
            raise
        if session.subscriptions.get(sub.subscription_id) is not sub:
            # The stream went away while the media plane negotiated.
            await self.media.unsubscribed(session.session_id, sub)
            raise NotFoundError(f"no stream {message.stream_id} in this session")
        return SubscribedMessage(
            request_id=message.request_id,
            subscription_id=sub.subscription_id,
            stream_id=sub.stream_id,
            answer=answer,
        )

    async def _reply_then_apply(
        self, session: Session, cid: str, reply: ServerMessage, actions: list[Action]
    ) -> None:
        link = self.links.get(cid)
        if link is not None:
            link.send(reply)
        await self.carry_out(session, actions)

    async def _after_force_disconnect(self, session: Session, connection_id: str) -> None:
        link = self.links.pop(connection_id, None)
        if link is not None:
            link.session = None  # its reader must not report clientDisconnected
        # A suspended connection forced out no longer counts toward its address.
        self._release_address(self._suspended_addresses.pop(connection_id, None))
        await self._connection_gone(session, connection_id)

    # -- REST API entry points ---------------------------------------------------------

    async def mute_all(
        self, session_id: str, excluded: list[str], *, active: bool, api_key: str = ""
    ) -> None:
        """Switch a session's mute-all state on (muting every stream but ``excluded``, and every
        stream published later) or off. The session need not be live: the state applies when
        it is."""
        session = self.sessions.get(session_id)
        if session is None and self.cluster is not None:
            session = await self.cluster.view(session_id, api_key)
        if session is None:
            if active:
                self._mute_all[session_id] = frozenset(excluded)
            else:
                self._mute_all.pop(session_id, None)
            return
        await self.carry_out(session, session.force_mute(None, excluded=excluded, active=active))
        self._remember_mute_all(session)

    def _remember_mute_all(self, session: Session) -> None:
        if session.mute_all_active:
            self._mute_all[session.session_id] = session.mute_all_excluded
        else:
            self._mute_all.pop(session.session_id, None)

    async def force_disconnect(self, session_id: str, connection_id: str, api_key: str = "") -> None:
        session = await self.session_view(session_id, api_key)
        if session is None:
            raise NotFoundError(f"no connection {connection_id} in this session")
        await self.carry_out(session, session.force_disconnect(connection_id))
        await self._after_force_disconnect(session, connection_id)


async def _refuse_upgrade(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse a WebSocket before accepting it: an HTTP ``status`` with a JSON body where the
    server supports it (uvicorn does), else the close before accept (HTTP 403)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse({"code": code, "message": message}, status_code=status)
        )
    else:
        await websocket.close(int(CloseCode.GOING_AWAY), message)


def _subscribe(session: Session, cid: str, message: SubscribeRequest) -> Subscription:
    """A new subscription with the preferences of the ``subscribe``."""
    resolution = message.preferred_resolution
    return session.subscribe(
        cid,
        message.stream_id,
        preferred_resolution=None if resolution is None else (resolution.width, resolution.height),
        preferred_frame_rate=message.preferred_frame_rate,
    )


def _error_code(exc: SalonError) -> ErrorCode:
    if exc.code == "media_resource_exhausted":
        return ErrorCode.MEDIA_UNAVAILABLE
    try:
        return ErrorCode(exc.code)
    except ValueError:
        pass
    if isinstance(exc, ClientError):
        return {403: ErrorCode.PERMISSION_DENIED, 404: ErrorCode.NOT_FOUND, 409: ErrorCode.CONFLICT}.get(
            exc.status, ErrorCode.INVALID_REQUEST
        )
    return ErrorCode.INTERNAL_ERROR


def _schema_error(text: str, exc: ValidationError) -> ErrorMessage:
    """Turn a validation failure into an error reply, keeping the request ID if there is one.

    Pydantic's parser refuses what is not JSON, and JSON nested deeper than it allows
    (``json_invalid``): the reply is then ``invalid_message`` at once, without parsing the
    text again (``json.loads`` would raise :class:`RecursionError` on ``[[[[…``).
    """
    code = ErrorCode.INVALID_MESSAGE
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    first = errors[0] if errors else None
    if first is None or first["type"] == "json_invalid":
        reason = "" if first is None else f" ({str(first['msg'])[:120]})"
        return ErrorMessage(code=code, message=f"the message is not valid JSON{reason}")
    request_id: int | str | None = None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raw = None
    if isinstance(raw, dict):
        rid = raw.get("request_id")
        if isinstance(rid, int | str) and not isinstance(rid, bool):
            request_id = rid
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in CLIENT_MESSAGE_TYPES:
            return ErrorMessage(
                request_id=request_id,
                code=ErrorCode.UNKNOWN_TYPE,
                message=f"unknown message type {_preview(kind)}",
            )
    where = ".".join(str(p) for p in first["loc"][1:])[:200] or "message"
    return ErrorMessage(request_id=request_id, code=code, message=f"{where}: {str(first['msg'])[:200]}")


def _preview(value: object) -> str:
    """A short, safe rendering of a client-supplied value for an error message."""
    if isinstance(value, str):
        return repr(value[:64])
    if isinstance(value, bool | float | None):
        return repr(value)
    if isinstance(value, int):
        return "(an integer)" if value.bit_length() > 64 else repr(value)
    return f"(a JSON {type(value).__name__})"
