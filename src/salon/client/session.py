"""Session: one connection to a salon (or OpenTok-compatible) session.

Theory of operation
-------------------

A :class:`Session` owns one :class:`~salon.client._link.SignallingLink` at a time, the
:class:`~salon.client.Publisher` and :class:`~salon.client.Subscriber` objects attached to
it, and at most one reconnection task. Its state machine::

    NEW ──connect()──▶ CONNECTING ──ok──▶ CONNECTED ──disconnect()──▶ DISCONNECTED
                           │ refused                │ link lost            ▲
                           ▼                        ▼                      │
                     DISCONNECTED            RECONNECTING ──ok──▶ CONNECTED│
                                                    └──gave up / refused───┘

Every transition goes through :meth:`Session._set_state`, which logs ``old -> new``.
DISCONNECTED is final: a session object connects once (make a new one to connect again).

Reconnection, as OpenTok does it (docs/protocol.md §2.7): the server keeps a connection
whose link broke for a grace period (30 s by default) and gave this client a resume secret
in ``connected``. On link loss the session emits :class:`Reconnecting` and tries to *resume*:
a ``connect`` with the same token and ``resume`` (the connection ID and the secret). Media is
left running meanwhile (it flows if only the signalling path broke). Resumed, the connection
keeps its ID and its streams their IDs; the others saw nothing. The session reconciles its
view with the ``connected`` snapshot (what it missed), sets its publishers' media up again
under the same stream IDs (a ``publish`` with ``stream_id``: a new peer connection, the old
one closed once the new one is answered; the server moves the subscribers over), subscribes
again on a new receiving peer connection, emits :class:`Reconnected` (``resumed``) and sends
the signals queued with ``retry_after_reconnect``. If the server refuses the resume
(``resume_refused``: the grace period ended, or a server that keeps nothing), it falls back
to a fresh ``connect`` with the same token (a new connection ID), then re-publishes every
publisher (new stream IDs) and re-subscribes every subscriber whose stream still exists,
media stopped meanwhile. Attempts back off exponentially (0.25 s doubling to 4 s) until
``reconnect_timeout``; a refused token, a missing session or a forced disconnection end the
session at once.

Several servers (the nodes of a cluster, docs/deployment.md): ``url`` may be a list. The
session connects to the first that answers, in order. On link loss it first tries the server
it was on (a resume needs it: a resume secret is only valid on the node that issued it); an
attempt that cannot reach a server (or one that refuses it, e.g. a draining node) moves on to
the next URL at once, round the list, and the back-off delay is waited only after a whole
round failed. Another node refuses the resume, so the reconnection there is a fresh connect.

A media worker failure on the server (``media_reset``, docs/protocol.md §6.19) keeps the
connection: every stream with media ends (``mediaStopped``: the subscribers are dropped as
usual), the publishers of this client publish again at once (new stream IDs,
:class:`StreamPublished`, no :class:`StreamDropped` for them), and the receiving peer
connection is closed, so the next subscription negotiates a new one. A ``subscribe`` refused
with ``transport_closed`` (an offer from a peer connection that died with the worker) is
negotiated once more on a new receiving peer connection.

Events are dispatched in the order the server sent them; see :mod:`salon.client.events`.
The ``connected`` snapshot comes first: the link holds the events that arrive right behind
``connected`` until the session has taken the snapshot in (:class:`Connected`, then a
:class:`ConnectionCreated` and :class:`StreamReceived` per connection and stream in it; on
reconnection, the reconciliation), so a stream that ends right after connecting is dropped,
never listed again from the snapshot.

Streams already in the session: a handler or iterator never misses them, whenever it is set
up. Set up before :meth:`Session.connect`, it sees them as ``connect()`` emits them; set up
later (the natural ``async with Session(...) as session: session.on(StreamReceived, ...)``),
it is first given, at once, a :class:`ConnectionCreated` for every connection and a
:class:`StreamReceived` for every stream the session holds at that moment, then the events
that follow. Either way each handler sees each stream exactly once, before its
:class:`StreamDropped`.

After a reconnection the server may still list this client's previous connection and its
stream (it has not yet noticed the old link died): those are never reported as another
client's, so auto-subscribing code does not subscribe to itself.
Many sessions, publishers and subscribers can live in one process and one event loop: there
is no global state (see :func:`~salon.client._media.restrict_ice_addresses` for loopback ICE).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiortc import RTCIceServer
from pydantic import BaseModel

from salon.client._emitter import Emitter, LatestQueue
from salon.client._link import LinkClosed, ResumeRefused, SignallingLink
from salon.client._subscribe_peer import SubscribePeer
from salon.client.errors import (
    ClientError,
    ConnectionFailed,
    ConnectionLost,
    InvalidStateError,
    InvalidToken,
    NotFound,
    RequestRefused,
    SessionNotFound,
)
from salon.client.events import (
    ActiveSpeakerChanged,
    ArchiveStarted,
    ArchiveStopped,
    AudioLevels,
    Connected,
    ConnectionCreated,
    ConnectionDropped,
    Disconnected,
    Error,
    Event,
    MuteAllChanged,
    MuteForced,
    Reconnected,
    Reconnecting,
    SessionEndReason,
    SignalReceived,
    StreamDropped,
    StreamPropertyChanged,
    StreamPublished,
    StreamReceived,
    VideoDisabled,
    VideoEnabled,
)
from salon.client.models import Connection, Stream
from salon.client.publisher import Publisher
from salon.client.subscriber import Subscriber
from salon.protocol import (
    ActiveSpeakerEvent,
    ArchiveStartedEvent,
    ArchiveStoppedEvent,
    AudioLevelEvent,
    CloseCode,
    ConnectedMessage,
    ConnectionCreatedEvent,
    ConnectionDestroyedEvent,
    DisconnectReason,
    ErrorCode,
    ForceDisconnectRequest,
    ForceMuteRequest,
    ForceUnpublishRequest,
    MediaResetEvent,
    MuteAllChangedEvent,
    MuteForcedEvent,
    PublishedMessage,
    ResumeInfo,
    ServerMessage,
    SessionDisconnectedEvent,
    SignalEvent,
    SignalRequest,
    StreamCreatedEvent,
    StreamDestroyedEvent,
    StreamPropertyChangedEvent,
    StreamReason,
    SubscribedMessage,
    SubscribeRequest,
    UnpublishRequest,
    UnsubscribeRequest,
    VideoDisabledEvent,
    VideoEnabledEvent,
)

__all__ = ["Session", "SessionState"]

logger = logging.getLogger(__name__)

EventT = TypeVar("EventT", bound=Event)

#: Close codes after which reconnecting cannot help.
_FINAL_CLOSE = {
    CloseCode.FORCE_DISCONNECTED: SessionEndReason.FORCE_DISCONNECTED,
    CloseCode.INVALID_TOKEN: SessionEndReason.TOKEN_REFUSED,
    CloseCode.TOKEN_EXPIRED: SessionEndReason.TOKEN_REFUSED,
    CloseCode.WRONG_SESSION: SessionEndReason.TOKEN_REFUSED,
    CloseCode.SESSION_NOT_FOUND: SessionEndReason.SERVER_CLOSED,
    CloseCode.PROTOCOL_ERROR: SessionEndReason.SERVER_CLOSED,
    CloseCode.REPLACED: SessionEndReason.SERVER_CLOSED,
}


class _PeerReplaced(InvalidStateError):
    """The receiving peer connection was closed while a subscription waited its turn on it."""


#: Signals queued with ``retry_after_reconnect`` while reconnecting, at most.
MAX_QUEUED_SIGNALS = 100


class SessionState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"


class Session:
    """A connection to one session of a salon server.

    :param session_id: the session to join.
    :param token: a client token for it (never logged).
    :param url: the server, e.g. ``"http://127.0.0.1:8080"`` (``ws://`` works too); an
        ``https://`` (or ``wss://``) server is reached over TLS. Or a list of servers (the
        nodes of a cluster): connect to the first that answers; when the link is lost and the
        server cannot be reached, move to the next (see the module's theory of operation).
    :param ice_addresses: gather ICE host candidates on exactly these local addresses, e.g.
        ``["127.0.0.1"]`` for a server on the same machine (aioice skips loopback otherwise).
        Scoped to this session's peer connections. None: every interface but loopback.
    :param ice_servers: STUN/TURN servers for the peer connections. None (the default): the
        ones the server hands out in ``connected`` (often none: the SFU has a reachable
        address), refreshed on each reconnection with freshly minted TURN credentials.
    :param reconnect: reconnect when the signalling link drops.
    :param reconnect_timeout: give up reconnecting after this many seconds.
    :param connect_timeout: seconds for the WebSocket and ``connect`` to complete.
    :param ssl_context: for an ``https://`` server, the TLS settings, e.g.
        ``ssl.create_default_context(cafile="salon-data/tls/cert.pem")`` to trust the
        certificate of ``salon serve --tls self-signed``. None: the system's trusted CAs.

    Use as an async context manager (``async with Session(...) as session:``), which connects
    and disconnects, or call :meth:`connect` / :meth:`disconnect`.

    Existing streams: :meth:`on` and :meth:`events` work before and after :meth:`connect`.
    A handler (or iterator) added while connected first receives a :class:`ConnectionCreated`
    per connection and a :class:`StreamReceived` per stream already in the session, so code
    that subscribes to every stream is correct wherever it registers::

        async with Session(session_id, token, url) as session:
            session.on(StreamReceived, subscribe_to_it)   # existing streams included

    :class:`Connected` is not replayed (see :attr:`connection`).
    """

    def __init__(
        self,
        session_id: str,
        token: str,
        url: str | Sequence[str],
        *,
        ice_addresses: Sequence[str] | None = None,
        ice_servers: Sequence[RTCIceServer] | None = None,
        reconnect: bool = True,
        reconnect_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("url: at least one server URL")
        for one in urls:
            if not isinstance(one, str):
                raise TypeError(f"url: a server URL is a str, not {one!r}")
            if ssl_context is not None and not one.startswith(("https://", "wss://")):
                raise ValueError(f"ssl_context is for an https:// or wss:// server, not {one!r}")
        self.session_id = session_id
        self._ssl_context = ssl_context
        #: The server URLs, in the order they are tried.
        self.urls: tuple[str, ...] = tuple(urls)
        self._url_index = 0
        self._token = token
        self._ice_addresses = list(ice_addresses) if ice_addresses is not None else None
        self._own_ice_servers = list(ice_servers) if ice_servers is not None else None
        self._ice_servers: list[RTCIceServer] = self._own_ice_servers or []
        self._reconnect = reconnect
        self._reconnect_timeout = reconnect_timeout
        self._connect_timeout = connect_timeout
        self._state = SessionState.NEW
        self._link: SignallingLink | None = None
        self._connection: Connection | None = None
        self._role = ""
        self._connections: dict[str, Connection] = {}
        self._streams: dict[str, Stream] = {}
        #: Streams found on reconnection and not yet announced (StreamReceived pending).
        self._pending_streams: dict[str, Stream] = {}
        #: This client's connection IDs before reconnections (their streams are its own).
        self._old_connection_ids: set[str] = set()
        self._publishers: list[Publisher] = []
        self._subscribers: list[Subscriber] = []
        self._subscribe_peer: SubscribePeer | None = None
        """The peer connection all subscribers receive on (created by the first subscribe)."""
        self._emitter: Emitter[Event] = Emitter(self)
        self._reconnector: asyncio.Task[None] | None = None
        #: The secret of the latest ``connected`` that lets this client resume its connection.
        self._resume_secret: str | None = None
        #: Signals waiting for the end of a reconnection (``retry_after_reconnect``).
        self._queued_signals: list[tuple[SignalRequest, str, asyncio.Future[None]]] = []
        self._end_reason: SessionEndReason | None = None
        self._disconnected = asyncio.Event()

    def __repr__(self) -> str:
        who = self._connection.connection_id[:8] if self._connection else "-"
        return f"Session({self.session_id[-8:]}, {who})"

    @property
    def url(self) -> str:
        """The server URL in use (or tried next): one of :attr:`urls`."""
        return self.urls[self._url_index]

    def _next_url(self) -> None:
        if len(self.urls) > 1:
            self._url_index = (self._url_index + 1) % len(self.urls)
            logger.info("%r: moving to the next server, %s", self, self.url)

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    def _set_state(self, state: SessionState) -> None:
        if state != self._state:
            logger.info("%r: %s -> %s", self, self._state.value, state.value)
            self._state = state

    @property
    def connection(self) -> Connection | None:
        """This client's connection: the same after a resumed reconnection, a new one after a
        reconnection the server refused to resume."""
        return self._connection

    @property
    def connection_id(self) -> str | None:
        return self._connection.connection_id if self._connection else None

    @property
    def role(self) -> str:
        """The role granted by the token (after connect)."""
        return self._role

    @property
    def connections(self) -> dict[str, Connection]:
        """The other connections of the session, by ID (a copy)."""
        return dict(self._connections)

    @property
    def streams(self) -> dict[str, Stream]:
        """The other connections' streams, by ID, latest properties (a copy)."""
        return dict(self._streams)

    @property
    def publishers(self) -> list[Publisher]:
        return list(self._publishers)

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subscribers)

    def _require_connected(self, what: str) -> SignallingLink:
        if self._state is not SessionState.CONNECTED or self._link is None:
            raise InvalidStateError(f"{what}: the session is {self._state.value}, not connected")
        return self._link

    # -- events ------------------------------------------------------------------------

    def on(self, event_type: type[EventT], handler: Callable[[EventT], object]) -> Callable[[], None]:
        """Call ``handler`` for every event of ``event_type`` (or a subclass; ``Event`` for
        all). ``handler`` may be a coroutine function: it then runs as a task. Returns a
        function that removes the handler.

        While the session is connected (or reconnecting), ``handler`` is first called at
        once, before this returns, for the session's current state: a
        :class:`ConnectionCreated` per connection and a :class:`StreamReceived` per stream
        already there (those of its types ``event_type`` matches).
        """
        remove = self._emitter.on(event_type, handler)  # type: ignore[arg-type]
        for event in self._current_state_events():
            if isinstance(event, event_type):
                self._emitter.deliver(handler, event)  # type: ignore[arg-type]
        return remove

    def events(self, maxsize: int = 1000) -> LatestQueue[Event]:
        """An async iterator over the session's events; it ends after :class:`Disconnected`.
        Keeps up to ``maxsize`` unread events (then drops the oldest).

        Made before :meth:`connect`, it starts with the connect-time events
        (:class:`Connected`, then the connections and streams already there). Made while
        connected, it starts with a :class:`ConnectionCreated` per connection and a
        :class:`StreamReceived` per stream already in the session, then what follows.
        """
        queue = self._emitter.iterator(maxsize)
        if self._state is SessionState.DISCONNECTED:
            queue.end()
        for event in self._current_state_events():
            queue.put(event)
        return queue

    def _current_state_events(self) -> list[Event]:
        """The events that describe the session as it is (given to late handlers)."""
        if self._state not in (SessionState.CONNECTED, SessionState.RECONNECTING):
            return []
        return [
            *(ConnectionCreated(c) for c in self._connections.values()),
            *(StreamReceived(s) for s in self._streams.values()),
        ]

    def _emit(self, event: Event) -> None:
        self._emitter.emit(event)

    # -- connect / disconnect ----------------------------------------------------------

    async def __aenter__(self) -> Session:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    async def connect(self) -> None:
        """Connect; then emit :class:`Connected`, a :class:`ConnectionCreated` per other
        connection and a :class:`StreamReceived` per stream already in the session.

        :raises InvalidToken: the server refused the token.
        :raises SessionNotFound: no such session.
        :raises ConnectionFailed: the server (none of the servers given) could not be reached.
        :raises InvalidStateError: already connected (or used before).
        """
        if self._state is not SessionState.NEW:
            raise InvalidStateError(f"connect: the session is {self._state.value} (a Session connects once)")
        self._set_state(SessionState.CONNECTING)
        try:
            connected = await self._open_first_link()
        except BaseException:
            self._set_state(SessionState.DISCONNECTED)
            self._disconnected.set()
            self._emitter.end()
            raise
        self._set_state(SessionState.CONNECTED)
        self._emit(Connected(connection=self._own(connected), role=connected.role))
        for info in connected.connections:
            connection = Connection._from_wire(info)
            self._connections[connection.connection_id] = connection
            self._emit(ConnectionCreated(connection))
        for stream_info in connected.streams:
            stream = Stream._from_wire(stream_info)
            self._streams[stream.stream_id] = stream
            self._emit(StreamReceived(stream))
        self._release_events()

    def _release_events(self) -> None:
        """Take the events that came right behind ``connected`` (held by the link until the
        snapshot was taken in), then the later ones as they come."""
        if self._link is not None:
            self._link.release()

    def _own(self, connected: ConnectedMessage) -> Connection:
        self._connection = Connection._from_wire(connected.connection)
        self._role = connected.role
        self._resume_secret = connected.resume_secret
        if self._own_ice_servers is None:
            self._ice_servers = [
                RTCIceServer(urls=list(server.urls), username=server.username, credential=server.credential)
                for server in connected.ice_servers
            ]
        return self._connection

    async def _open_first_link(self) -> ConnectedMessage:
        """Connect to the first of :attr:`urls` that answers (each tried once, in order)."""
        for tried in range(len(self.urls)):
            try:
                return await self._open_link()
            except ConnectionFailed:
                if tried == len(self.urls) - 1:
                    raise
                logger.info("%r: cannot connect to %s", self, self.url, exc_info=True)
                self._next_url()
        raise AssertionError("unreachable")

    async def _open_link(self, resume: ResumeInfo | None = None) -> ConnectedMessage:
        link = SignallingLink(
            self.url,
            on_message=self._on_message,
            on_closed=self._on_link_closed,
            on_unknown=self._on_unknown,
            name=self.session_id[-8:],
            ssl_context=self._ssl_context,
        )
        connected = await link.open(
            self.session_id, self._token, timeout=self._connect_timeout, resume=resume
        )
        self._link = link
        return connected

    async def disconnect(self) -> None:
        """Leave the session: unpublish, unsubscribe, close the link; emits
        :class:`Disconnected` (``CLIENT_DISCONNECTED``). Idempotent."""
        if self._state is SessionState.DISCONNECTED:
            return
        if self._reconnector is not None and self._reconnector is not asyncio.current_task():
            self._reconnector.cancel()
            await asyncio.wait([self._reconnector])
        await self._end(SessionEndReason.CLIENT_DISCONNECTED, "disconnect() called")

    async def wait_disconnected(self) -> SessionEndReason | None:
        """Wait until the session has ended; return why."""
        await self._disconnected.wait()
        return self._end_reason

    async def _end(self, reason: SessionEndReason, detail: str) -> None:
        if self._state is SessionState.DISCONNECTED:
            return
        self._set_state(SessionState.DISCONNECTED)
        self._end_reason = reason
        link, self._link = self._link, None
        publishers, subscribers = self._publishers, self._subscribers
        self._publishers, self._subscribers = [], []
        await asyncio.gather(*(p._detach() for p in publishers), *(s._detach() for s in subscribers))
        await self._close_subscribe_peer()
        if link is not None:
            await link.close()
        queued, self._queued_signals = self._queued_signals, []
        for _, action, future in queued:
            if not future.done():
                future.set_exception(InvalidStateError(f"{action}: the session ended before it was sent"))
        self._emit(Disconnected(reason, detail))
        self._disconnected.set()
        await self._emitter.aclose()

    # -- requests ----------------------------------------------------------------------

    async def _request(self, message: BaseModel, *, action: str) -> ServerMessage:
        link = self._require_connected(action)
        return await link.request(message, action=action)

    async def signal(
        self,
        type: str = "",
        data: str = "",
        to: Connection | str | None = None,
        *,
        retry_after_reconnect: bool = False,
    ) -> None:
        """Send a signal to every connection (this one included) or to one.

        ``retry_after_reconnect`` (OpenTok's ``retryAfterReconnect``): while the session is
        reconnecting (or if the link breaks before the server answered), the signal waits and
        is sent once reconnected; this call returns then. (A signal whose link broke in flight
        may then arrive twice.) At most 100 wait; the session ending fails them.

        :raises InvalidRequest: ``type`` over 128 or ``data`` over 8192 characters.
        :raises NotFound: ``to`` is not a connection of the session.
        :raises InvalidStateError: not connected (nor reconnecting with ``retry_after_reconnect``).
        """
        target = to.connection_id if isinstance(to, Connection) else to
        request = SignalRequest(request_id=0, signal_type=type, data=data, to=target)
        action = f"signal {type!r} to {target or 'the session'}"
        if retry_after_reconnect and self._state is SessionState.RECONNECTING:
            await self._queue_signal(request, action)
            return
        try:
            await self._request(request, action=action)
        except ConnectionLost:
            if not (retry_after_reconnect and self._state is SessionState.RECONNECTING):
                raise
            await self._queue_signal(request, action)

    async def _queue_signal(self, request: SignalRequest, action: str) -> None:
        if len(self._queued_signals) >= MAX_QUEUED_SIGNALS:
            raise InvalidStateError(
                f"{action}: {MAX_QUEUED_SIGNALS} signals are waiting for the reconnection already"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued_signals.append((request, action, future))
        await future

    async def _send_queued_signals(self) -> None:
        """Send the signals that waited for the reconnection, in order."""
        while self._queued_signals and self._state is SessionState.CONNECTED:
            request, action, future = self._queued_signals.pop(0)
            try:
                await self._request(request, action=action)
            except ClientError as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(None)

    async def force_disconnect(self, connection: Connection | str) -> None:
        """Moderators: force a connection out of the session.

        :raises PermissionDenied: this connection is not a moderator.
        :raises NotFound: no such connection.
        """
        cid = connection.connection_id if isinstance(connection, Connection) else connection
        await self._request(
            ForceDisconnectRequest(request_id=0, connection_id=cid), action=f"force_disconnect {cid}"
        )

    async def force_unpublish(self, stream: Stream | str) -> None:
        """Moderators: end any stream of the session.

        :raises PermissionDenied: not a moderator. :raises NotFound: no such stream.
        """
        sid = stream.stream_id if isinstance(stream, Stream) else stream
        await self._request(
            ForceUnpublishRequest(request_id=0, stream_id=sid), action=f"force_unpublish {sid}"
        )

    async def force_mute(
        self, stream: Stream | str | None = None, *, excluded: Sequence[Stream | str] = ()
    ) -> None:
        """Moderators: mute one stream's audio, or every stream but ``excluded`` (``stream``
        None), which also mutes streams published afterwards.

        :raises PermissionDenied: not a moderator. :raises NotFound: no such stream.
        """
        sid = stream.stream_id if isinstance(stream, Stream) else stream
        excluded_ids = [s.stream_id if isinstance(s, Stream) else s for s in excluded]
        await self._request(
            ForceMuteRequest(request_id=0, stream_id=sid, excluded_stream_ids=excluded_ids),
            action=f"force_mute {sid or 'all'}",
        )

    # -- publishing --------------------------------------------------------------------

    async def publish(self, publisher: Publisher) -> Stream:
        """Publish: negotiate its media with the server and return its stream. Others see
        the stream (:class:`StreamReceived`) once its media flows.

        :raises PermissionDenied: the token's role cannot publish.
        :raises SourceError: a source cannot start (a media file without the kind of track
            asked for; :class:`DeviceNotFound`: a camera that cannot be opened). Nothing was
            published. A source failing later is reported as an :class:`Error` event.
        :raises MediaError: local media could not be set up.
        :raises InvalidStateError: not connected, or the publisher is already published.
        """
        self._require_connected(f"publish {publisher!r}")
        if publisher.session is not None:
            raise InvalidStateError(f"{publisher!r} is already published in {publisher.session!r}")
        publisher._session = self
        self._publishers.append(publisher)
        try:
            return await self._negotiate_publisher(publisher)
        except BaseException:
            if publisher in self._publishers:
                self._publishers.remove(publisher)
            await publisher._detach()
            raise

    async def _negotiate_publisher(self, publisher: Publisher, *, stream_id: str | None = None) -> Stream:
        """Publish (a new stream), or with ``stream_id`` set the media of that existing
        stream up again after a resume (same stream ID, no :class:`StreamPublished`)."""
        offer = await publisher._offer(
            self._ice_servers, self._ice_addresses, keep_previous=stream_id is not None
        )
        request = publisher._publish_request(offer)
        if stream_id is not None:
            request = request.model_copy(update={"stream_id": stream_id})
        reply = await self._request(request, action=f"publish {publisher!r}")
        assert isinstance(reply, PublishedMessage), reply
        stream = Stream._from_wire(reply.stream)
        await publisher._answer(reply.answer, stream)
        if stream_id is None:
            self._emit(StreamPublished(publisher, stream))
        return stream

    async def unpublish(self, publisher: Publisher) -> None:
        """Stop publishing (the stream ends for everyone). Idempotent for a publisher of
        this session that is already unpublished."""
        if publisher not in self._publishers:
            return
        self._publishers.remove(publisher)
        stream_id = publisher.stream_id
        try:
            if stream_id is not None and self._state is SessionState.CONNECTED:
                await self._request(
                    UnpublishRequest(request_id=0, stream_id=stream_id), action=f"unpublish {stream_id}"
                )
        finally:
            await publisher._detach()

    # -- subscribing -------------------------------------------------------------------

    async def subscribe(self, subscriber: Subscriber) -> None:
        """Subscribe: negotiate its media with the server; frames start flowing shortly after.

        :raises NotFound: the stream has ended.
        :raises PermissionDenied: the token's role cannot subscribe.
        :raises InvalidStateError: not connected, or the subscriber is already subscribed.
        """
        self._require_connected(f"subscribe {subscriber!r}")
        if subscriber.session is not None:
            raise InvalidStateError(f"{subscriber!r} is already subscribed in {subscriber.session!r}")
        subscriber._session = self
        self._subscribers.append(subscriber)
        try:
            await self._negotiate_subscriber(subscriber)
        except BaseException:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)
            await subscriber._detach()
            raise

    async def _negotiate_subscriber(self, subscriber: Subscriber) -> None:
        """Subscribe on the session's receiving peer connection. If the server refuses the
        offer with ``transport_closed`` (the peer connection's transport died with a media
        worker, and this SDK had not yet heard ``media_reset``), the peer connection is
        replaced and the subscription negotiated once more on the new one. A peer connection
        closed while this subscription waited its turn on it (another subscription on it failed
        and closed it) is not an error: the subscription is negotiated on the next one."""
        for _attempt in range(3):
            peer = self._subscribe_peer
            if peer is None:
                peer = self._subscribe_peer = SubscribePeer(self._ice_servers, self._ice_addresses)
            try:
                await self._negotiate_on(peer, subscriber)
                return
            except _PeerReplaced:
                # Another subscription on it failed while this one waited its turn (e.g. one
                # to a stream whose node had just died, re-subscribed after a reconnection)
                # and, nothing flowing on it, closed it: negotiate on the current one instead.
                if self._state is not SessionState.CONNECTED or subscriber not in self._subscribers:
                    raise
                logger.info("%r: the receiving peer connection was replaced; subscribing on the next", self)
                continue
            except RequestRefused as exc:
                if exc.code is not ErrorCode.TRANSPORT_CLOSED:
                    raise
            logger.info("%r: the receiving peer connection's transport is gone; replacing it", self)
            others = [s for s in self._subscribers if s is not subscriber and s._peer is peer]
            if self._subscribe_peer is peer:
                await self._close_subscribe_peer()
            peer = self._subscribe_peer
            if peer is None:
                peer = self._subscribe_peer = SubscribePeer(self._ice_servers, self._ice_addresses)
            await self._negotiate_on(peer, subscriber)
            for other in others:  # they received nothing on the old one either
                self._spawn(self._resubscribe(other), f"re-subscribe {other!r}")
            return
        raise InvalidStateError(f"{self!r}: the receiving peer connection kept being replaced")

    async def _negotiate_on(self, peer: SubscribePeer, subscriber: Subscriber) -> None:
        """One offer/answer round on the receiving peer connection ``peer`` (one at a time:
        every subscriber's m-lines share it, docs/protocol.md §13.3)."""
        async with peer.lock:
            if peer.closed:  # replaced (a reconnection, a media reset) while this waited
                raise _PeerReplaced(f"{self!r}: the receiving peer connection was replaced meanwhile")
            offer = await subscriber._offer(peer)
            stream_id = subscriber.stream.stream_id
            request = SubscribeRequest(
                request_id=0,
                stream_id=stream_id,
                audio=subscriber.subscribed_to_audio,
                video=subscriber.subscribed_to_video,
                sdp=offer,
                preferred_resolution=subscriber._wire_resolution(),
                preferred_frame_rate=subscriber.preferred_frame_rate,
            )
            try:
                reply = await self._request(request, action=f"subscribe to stream {stream_id}")
            except BaseException:
                await subscriber._close_media()  # its new m-lines go inactive
                if self._subscribe_peer is peer and not any(
                    s._peer is peer for s in self._subscribers if s is not subscriber
                ):
                    # Nothing else received on it: it is left with an offer never answered,
                    # so the next subscription starts on a fresh peer connection.
                    await self._close_subscribe_peer()
                raise
            assert isinstance(reply, SubscribedMessage), reply
            await subscriber._answer(reply.subscription_id, reply.answer)

    async def _close_subscribe_peer(self) -> None:
        peer, self._subscribe_peer = self._subscribe_peer, None
        if peer is not None:
            await peer.close()

    async def _resubscribe(self, subscriber: Subscriber) -> None:
        """Subscribe again with the kinds the stream has now (a kind was switched on)."""
        old = subscriber.subscription_id
        if old is not None:
            await self._request(
                UnsubscribeRequest(request_id=0, subscription_id=old), action=f"unsubscribe {old}"
            )
        if subscriber in self._subscribers:
            await self._negotiate_subscriber(subscriber)

    async def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop receiving the stream; the subscriber's iterators end. Idempotent."""
        if subscriber not in self._subscribers:
            return
        self._subscribers.remove(subscriber)
        subscription_id = subscriber.subscription_id
        try:
            if subscription_id is not None and self._state is SessionState.CONNECTED:
                await self._request(
                    UnsubscribeRequest(request_id=0, subscription_id=subscription_id),
                    action=f"unsubscribe {subscription_id}",
                )
        finally:
            await subscriber._detach()

    # -- server messages ---------------------------------------------------------------

    def _on_message(self, message: ServerMessage) -> None:
        match message:
            case ConnectionCreatedEvent(connection=info):
                connection = Connection._from_wire(info)
                if self._is_foreign(connection.connection_id):
                    self._connections[connection.connection_id] = connection
                    self._emit(ConnectionCreated(connection))
            case ConnectionDestroyedEvent(connection_id=cid, reason=reason):
                gone = self._connections.pop(cid, None)
                if gone is not None:
                    self._emit(ConnectionDropped(gone, reason))
            case StreamCreatedEvent(stream=info):
                stream = Stream._from_wire(info)
                if self._is_foreign(stream.connection_id):
                    self._streams[stream.stream_id] = stream
                    self._emit(StreamReceived(stream))
            case StreamDestroyedEvent(stream_id=sid, reason=reason):
                self._stream_destroyed(sid, reason)
            case MediaResetEvent(stream_ids=stream_ids):
                self._media_reset(stream_ids)
            case StreamPropertyChangedEvent():
                pending = self._pending_streams.get(message.stream_id)
                if pending is not None:  # not announced yet: announced with the new value
                    new = pending._with_property(message.property, message.new_value)
                    self._pending_streams[new.stream_id] = new
                old = self._streams.get(message.stream_id)
                if old is not None:
                    new = old._with_property(message.property, message.new_value)
                    self._streams[new.stream_id] = new
                    for subscriber in self._subscribers:
                        if subscriber.stream.stream_id == new.stream_id:
                            subscriber.stream = new
                            kind = {"has_audio": "audio", "has_video": "video"}.get(message.property)
                            if message.new_value is True and kind and kind not in subscriber._kinds:
                                self._spawn(
                                    self._resubscribe(subscriber), f"re-subscribe {subscriber!r} for {kind}"
                                )
                    self._emit(
                        StreamPropertyChanged(new, message.property, message.old_value, message.new_value)
                    )
            case SignalEvent():
                self._emit(SignalReceived(message.signal_type, message.data, message.from_connection_id))
            case MuteForcedEvent(stream_id=sid):
                for publisher in self._publishers:
                    if publisher.stream_id == sid:
                        publisher._mute_forced()
                        self._emit(MuteForced(publisher))
            case MuteAllChangedEvent(active=active, excluded_stream_ids=excluded):
                self._emit(MuteAllChanged(active, tuple(excluded)))
            case AudioLevelEvent(levels=levels):
                self._emit(AudioLevels({entry.stream_id: entry.level for entry in levels}))
            case ActiveSpeakerEvent(stream_id=stream_id):
                self._emit(ActiveSpeakerChanged(stream_id))
            case ArchiveStartedEvent(archive_id=archive_id, name=name):
                self._emit(ArchiveStarted(archive_id, name))
            case ArchiveStoppedEvent(archive_id=archive_id, name=name):
                self._emit(ArchiveStopped(archive_id, name))
            case VideoDisabledEvent() | VideoEnabledEvent():
                self._video_changed(message)
            case SessionDisconnectedEvent(reason=reason):
                if reason == DisconnectReason.FORCE_DISCONNECTED:
                    self._end_reason = SessionEndReason.FORCE_DISCONNECTED
            case _:
                logger.debug("%r: ignored %s", self, message.type)

    def _video_changed(self, message: VideoDisabledEvent | VideoEnabledEvent) -> None:
        """The server stopped or resumed a subscriber's video on its own (e.g. quality)."""
        target = next((s for s in self._subscribers if s.subscription_id == message.subscription_id), None)
        if target is None:
            return  # unsubscribed meanwhile
        if isinstance(message, VideoDisabledEvent):
            target.video_disabled_reason = str(message.reason)
            self._emit(VideoDisabled(target, message.reason))
        else:
            target.video_disabled_reason = None
            self._emit(VideoEnabled(target, message.reason))

    def _on_unknown(self, raw: dict[str, Any]) -> None:
        """A message newer than this SDK's schema (a newer server): ignored."""
        logger.debug("%r: ignored a message of unknown type %r", self, raw.get("type"))

    def _is_foreign(self, connection_id: str) -> bool:
        """Whether ``connection_id`` is another client's (not this one's, now or before a
        reconnection)."""
        return connection_id != self.connection_id and connection_id not in self._old_connection_ids

    def _stream_destroyed(self, stream_id: str, reason: StreamReason | str) -> None:
        self._pending_streams.pop(stream_id, None)  # never announced: nothing to report
        stream = self._streams.pop(stream_id, None)
        publisher = next((p for p in self._publishers if p.stream_id == stream_id), None)
        if publisher is not None:
            stream = publisher.stream
            publisher._stream = None
            self._publishers.remove(publisher)
            self._spawn(publisher._detach(), "close a dropped publisher")
        for subscriber in [s for s in self._subscribers if s.stream.stream_id == stream_id]:
            self._subscribers.remove(subscriber)
            self._spawn(subscriber._detach(), "close a dropped subscriber")
        if stream is not None:
            self._emit(StreamDropped(stream, reason, publisher))

    def _media_reset(self, stream_ids: list[str]) -> None:
        """The server's media worker failed: every transport of this session's media is gone.
        The ``stream_destroyed`` (``mediaStopped``) that follow drop the subscribers as usual;
        the receiving peer connection is closed now (the next subscription makes a new one),
        and the publishers of ``stream_ids`` publish again at once (new streams, reported by
        :class:`StreamPublished` as after a reconnection), instead of being dropped."""
        logger.warning(
            "%r: the server's media worker failed; publishing %d streams again",
            self,
            len(stream_ids),
        )
        peer, self._subscribe_peer = self._subscribe_peer, None
        if peer is not None:
            self._spawn(peer.close(), "close the receiving peer connection")
        for publisher in [p for p in self._publishers if p.stream_id in stream_ids]:
            publisher._stream = None  # its stream_destroyed then finds no publisher to drop
            self._spawn(self._republish(publisher), f"re-publish {publisher!r}")

    async def _republish(self, publisher: Publisher) -> None:
        try:
            await self._negotiate_publisher(publisher)
        except ClientError:
            if self._state is not SessionState.CONNECTED or publisher not in self._publishers:
                return  # reconnecting (which publishes it again), disconnected, or unpublished
            self._publishers.remove(publisher)
            await publisher._detach()
            raise

    def _spawn(self, coro: Any, what: str) -> None:
        async def run() -> None:
            try:
                await coro
            except ClientError as exc:
                self._emit(Error(exc, what))

        self._emitter._spawn(run(), what)

    # -- link loss and reconnection ----------------------------------------------------

    def _on_link_closed(self, closed: LinkClosed) -> None:
        if self._state is not SessionState.CONNECTED:
            return
        final = self._end_reason or _FINAL_CLOSE.get(closed.code)  # type: ignore[call-overload]
        detail = f"close code {closed.code}" + (f": {closed.reason}" if closed.reason else "")
        if final is not None or not self._reconnect:
            reason = final or SessionEndReason.NETWORK_DISCONNECTED
            self._spawn(self._end(reason, detail), "end the session")
            return
        self._set_state(SessionState.RECONNECTING)
        self._reconnector = asyncio.get_running_loop().create_task(
            self._reconnect_loop(detail), name=f"{self!r}-reconnect"
        )

    async def _reconnect_loop(self, detail: str) -> None:
        try:
            await self._reconnect_steps(detail)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: end cleanly rather than hang in RECONNECTING
            logger.exception("%r: reconnecting failed", self)
            await self._end(SessionEndReason.NETWORK_DISCONNECTED, f"reconnecting failed: {exc!r}")

    async def _reconnect_steps(self, detail: str) -> None:
        self._emit(Reconnecting(f"connection lost ({detail})"))
        resume = None
        if self.connection_id is not None and self._resume_secret is not None:
            resume = ResumeInfo(connection_id=self.connection_id, secret=self._resume_secret)
        old_link, self._link = self._link, None
        if old_link is not None:
            await old_link.close()
        if resume is None:
            await self._stop_media()
        deadline = time.monotonic() + self._reconnect_timeout
        delay, attempts, failed_in_round = 0.25, 0, 0
        while True:
            attempts += 1
            try:
                connected = await self._open_link(resume)
                break
            except ResumeRefused as exc:
                logger.info("%r: the server cannot resume the connection (%s): connecting afresh", self, exc)
                resume = None
                await self._stop_media()
                continue
            except (InvalidToken, SessionNotFound) as exc:
                reason = (
                    SessionEndReason.TOKEN_REFUSED
                    if isinstance(exc, InvalidToken)
                    else SessionEndReason.SERVER_CLOSED
                )
                await self._end(reason, str(exc))
                return
            except ConnectionFailed as exc:
                logger.info("%r: reconnect attempt %d (%s) failed: %s", self, attempts, self.url, exc)
                self._next_url()
                failed_in_round += 1
                if failed_in_round < len(self.urls) and time.monotonic() < deadline:
                    continue  # the next server at once
                failed_in_round = 0
                if time.monotonic() + delay > deadline:
                    await self._end(SessionEndReason.NETWORK_DISCONNECTED, f"gave up reconnecting: {exc}")
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 4.0)
        self._set_state(SessionState.CONNECTED)
        if connected.resumed:
            await self._restore_resumed(connected, attempts)
        else:
            await self._restore(connected, attempts)
        await self._send_queued_signals()

    async def _stop_media(self) -> None:
        """Before a fresh connection: the server closes the old connection's transports, so
        the media stops here too (it is set up again on the new connection)."""
        if self.connection_id is not None:
            self._old_connection_ids.add(self.connection_id)
        await asyncio.gather(
            *(p._close_media() for p in self._publishers), *(s._close_media() for s in self._subscribers)
        )
        # The server closes the old connection's transports: subscribe again on a new one.
        await self._close_subscribe_peer()

    def _reconcile(self, connected: ConnectedMessage) -> tuple[list[Connection], dict[str, Stream]]:
        """Take in what changed while the link was down, from the ``connected`` snapshot: the
        connections and streams gone are dropped now; the new ones wait (returned, and in
        :attr:`_pending_streams`) to be announced after :class:`Reconnected`. Then the events
        that came behind ``connected``."""
        # The server may not have noticed yet that our previous link died: its connection and
        # stream are still listed, and are ours, not another client's.
        now = {
            c.connection_id: Connection._from_wire(c)
            for c in connected.connections
            if self._is_foreign(c.connection_id)
        }
        for cid in list(self._connections):
            if cid not in now:
                self._emit(
                    ConnectionDropped(self._connections.pop(cid), DisconnectReason.NETWORK_DISCONNECTED)
                )
        fresh_connections = [c for cid, c in now.items() if cid not in self._connections]
        self._connections = now
        streams = {
            s.stream_id: Stream._from_wire(s) for s in connected.streams if self._is_foreign(s.connection_id)
        }
        for sid in [sid for sid in self._streams if sid not in streams]:
            self._stream_destroyed(sid, StreamReason.NETWORK_DISCONNECTED)
        # Streams new to this client are announced (and listed in .streams) after the
        # re-publishing; until then they wait here, tracking drops and property changes.
        self._pending_streams = {sid: s for sid, s in streams.items() if sid not in self._streams}
        self._streams = {sid: s for sid, s in streams.items() if sid in self._streams}
        for subscriber in self._subscribers:
            subscriber.stream = streams.get(subscriber.stream.stream_id, subscriber.stream)
        self._release_events()
        return fresh_connections, streams

    def _announce_fresh(self, fresh_connections: list[Connection]) -> None:
        for new_connection in fresh_connections:
            self._emit(ConnectionCreated(new_connection))
        fresh_streams, self._pending_streams = self._pending_streams, {}
        for stream in fresh_streams.values():
            self._streams[stream.stream_id] = stream
            self._emit(StreamReceived(stream))

    async def _restore_resumed(self, connected: ConnectedMessage, attempts: int) -> None:
        """The server resumed the connection: same connection ID, same streams, the server
        kept the subscriptions. Reconcile, then set every publisher's media up again under
        its stream ID and subscribe again on a new receiving peer connection."""
        connection = self._own(connected)
        fresh_connections, _ = self._reconcile(connected)
        old_peer, self._subscribe_peer = self._subscribe_peer, None

        async def republish(publisher: Publisher) -> None:
            stream_id = publisher.stream_id
            try:
                try:
                    await self._negotiate_publisher(publisher, stream_id=stream_id)
                except NotFound:  # the stream ended meanwhile (or was never set up): a new one
                    await self._negotiate_publisher(publisher)
            except ClientError as exc:
                if publisher in self._publishers:
                    self._publishers.remove(publisher)
                await publisher._detach()
                self._emit(Error(exc, f"re-publish {publisher!r}"))

        async def resubscribe(subscriber: Subscriber) -> None:
            old = subscriber.subscription_id
            try:
                if old is not None:
                    with contextlib.suppress(NotFound):
                        await self._request(
                            UnsubscribeRequest(request_id=0, subscription_id=old), action=f"unsubscribe {old}"
                        )
                await self._negotiate_subscriber(subscriber)
            except ClientError as exc:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)
                await subscriber._detach()
                self._emit(Error(exc, f"re-subscribe {subscriber!r}"))

        await asyncio.gather(
            *(republish(p) for p in list(self._publishers)),
            *(resubscribe(s) for s in list(self._subscribers)),
        )
        if old_peer is not None:
            await old_peer.close()
        self._emit(Reconnected(connection, attempts, resumed=True))
        self._announce_fresh(fresh_connections)

    async def _restore(self, connected: ConnectedMessage, attempts: int) -> None:
        """Reconcile the session with the server's view, then re-publish and re-subscribe."""
        connection = self._own(connected)
        fresh_connections, streams = self._reconcile(connected)

        async def republish(publisher: Publisher) -> None:
            try:
                await self._negotiate_publisher(publisher)
            except ClientError as exc:
                if publisher in self._publishers:
                    self._publishers.remove(publisher)
                await publisher._detach()
                self._emit(Error(exc, f"re-publish {publisher!r}"))

        async def resubscribe(subscriber: Subscriber) -> None:
            subscriber.stream = streams.get(subscriber.stream.stream_id, subscriber.stream)
            try:
                await self._negotiate_subscriber(subscriber)
            except ClientError as exc:
                if subscriber in self._subscribers:  # not if its stream ended meanwhile
                    self._subscribers.remove(subscriber)
                await subscriber._detach()
                self._emit(Error(exc, f"re-subscribe {subscriber!r}"))

        await asyncio.gather(
            *(republish(p) for p in list(self._publishers)),
            *(resubscribe(s) for s in list(self._subscribers)),
        )
        self._emit(Reconnected(connection, attempts))
        self._announce_fresh(fresh_connections)
