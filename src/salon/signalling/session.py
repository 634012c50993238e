"""The signalling state of one session, sans-I/O.

:class:`Session` holds the session's connections, streams and subscriptions. Every change
goes through one of its methods, which validates the request, updates the state and returns
the :data:`Action` list the I/O adapter must carry out, in order: messages to deliver and
sockets to close. It never touches a socket or a clock; the caller passes ``now`` in.

Errors are raised as :class:`~salon.errors.ClientError` subclasses *before* any state
changes, so a refused request changes nothing.

Resuming (docs/protocol.md, "Resuming a connection"): a connection whose link dropped without
a clean close is *suspended* (:meth:`Session.suspend`) rather than destroyed: it keeps its ID,
its streams and its subscriptions, the others are told nothing, and signals addressed to it
are held (at most :data:`MAX_HELD_SIGNALS`, the oldest dropped first). A client that comes
back with the connection's resume secret and the same token within the grace period takes it
over again (:meth:`Session.resume`); once the grace period is over (:meth:`Session.grace_over`)
the connection is destroyed as ``networkDisconnected``. A suspended connection still counts
as a connection of the session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from salon.errors import (
    ClientError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from salon.ids import new_stream_id
from salon.protocol import (
    CloseCode,
    ConnectionCreatedEvent,
    ConnectionDestroyedEvent,
    ConnectionInfo,
    DisconnectReason,
    MediaResetEvent,
    MuteAllChangedEvent,
    MuteForcedEvent,
    PublishRequest,
    ServerMessage,
    SessionDisconnectedEvent,
    SignalEvent,
    StreamCreatedEvent,
    StreamDestroyedEvent,
    StreamInfo,
    StreamProperty,
    StreamPropertyChangedEvent,
    StreamReason,
    UpdateStreamRequest,
    VideoDisabledEvent,
    VideoEnabledEvent,
    VideoReason,
    VideoType,
)
from salon.protocol.messages import (
    MAX_PREFERRED_DIMENSION,
    MAX_PREFERRED_FRAME_RATE,
    MAX_SIGNAL_DATA_LENGTH,
    MAX_SIGNAL_TYPE_LENGTH,
)
from salon.tokens import Role

PropertyValue = bool | str | list[int] | None

__all__ = [
    "MAX_HELD_SIGNALS",
    "Action",
    "Close",
    "Connection",
    "Deliver",
    "ResumeRefusedError",
    "Session",
    "Stream",
    "Subscription",
    "check_preferences",
    "new_resume_secret",
    "token_digest",
]

#: Signals held for a suspended connection, delivered when it resumes (the oldest are dropped
#: beyond this).
MAX_HELD_SIGNALS = 100

#: The prefix of every resume secret: :mod:`salon.redact` recognises the shape and never logs it.
RESUME_SECRET_PREFIX = "rs1-"


def new_resume_secret() -> str:
    """A random, unguessable resume secret (192 bits)."""
    return RESUME_SECRET_PREFIX + secrets.token_urlsafe(24)


def token_digest(token: str) -> bytes:
    """What a connection remembers of its token: a resume must come with the same token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class ResumeRefusedError(ClientError):
    """A resume named no suspended connection of this token and secret (or its grace ended)."""

    status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message, code="resume_refused")


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``message`` to the connections in ``to`` (all of the session's when None),
    except ``exclude``."""

    message: ServerMessage
    to: tuple[str, ...] | None = None
    exclude: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection's socket with this WebSocket close code."""

    connection_id: str
    code: CloseCode
    reason: str


Action = Deliver | Close


@dataclass(slots=True)
class Connection:
    connection_id: str
    role: Role
    data: str
    created_at: int
    last_seen: float
    #: The token's initial layout class list: the classes of the streams this connection publishes.
    layout_class_list: tuple[str, ...] = ()
    #: The secret a client shows to resume this connection (None: not resumable).
    resume_secret: str | None = None
    #: The SHA-256 of the connection's token (a resume must bring the same one).
    token_digest: bytes = b""
    #: When its link dropped (``now`` of :meth:`Session.suspend`); None while it has a link.
    suspended_at: float | None = None
    #: Signals for it that came while it was suspended, in order.
    held: deque[SignalEvent] = field(default_factory=lambda: deque(maxlen=MAX_HELD_SIGNALS))
    #: In a cluster, the node whose client this is (a mirror of another node's connection,
    #: :mod:`salon.cluster`); None for this server's own connections.
    node: str | None = None
    #: :meth:`info`, made once: a join's ``connected`` lists every other connection, and
    #: validating a new model for each made a session's joins quadratic in pydantic work.
    _info: ConnectionInfo | None = field(default=None, repr=False, compare=False)

    @property
    def suspended(self) -> bool:
        return self.suspended_at is not None

    def info(self) -> ConnectionInfo:
        info = self._info
        if info is None:
            info = ConnectionInfo(
                connection_id=self.connection_id, created_at=self.created_at, data=self.data
            )
            self._info = info
        return info


@dataclass(slots=True)
class Stream:
    stream_id: str
    connection_id: str
    created_at: int
    name: str
    has_audio: bool
    has_video: bool
    video_type: VideoType | None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    layout_class_list: list[str] = field(default_factory=list)
    #: Whether the others know of the stream. A stream with media is *pending* (known to its
    #: publisher only) until its media flows; a signalling-only stream is announced at once.
    announced: bool = True

    def info(self) -> StreamInfo:
        return StreamInfo(
            stream_id=self.stream_id,
            connection_id=self.connection_id,
            created_at=self.created_at,
            name=self.name,
            has_audio=self.has_audio,
            has_video=self.has_video,
            video_type=self.video_type if self.has_video else None,
            width=self.width,
            height=self.height,
            frame_rate=self.frame_rate,
        )


@dataclass(slots=True, eq=False)
class Subscription:
    subscription_id: str
    connection_id: str
    stream_id: str
    #: The largest video the subscriber wants, (width, height); None: no preference.
    preferred_resolution: tuple[int, int] | None = None
    #: The highest frame rate the subscriber wants; None: no preference.
    preferred_frame_rate: float | None = None
    #: Whether the media plane stopped its video for quality (``video_disabled`` was sent).
    video_disabled_for_quality: bool = False


def check_preferences(resolution: tuple[int, int] | None, frame_rate: float | None) -> None:
    """Refuse preferences out of bounds (the wire schema refuses them first; this guards the
    other callers). Raises :class:`~salon.errors.InvalidRequestError` (``invalid_request``)."""
    if resolution is not None:
        if len(resolution) != 2:
            raise InvalidRequestError("a preferred resolution is (width, height)")
        for side in resolution:
            if (
                isinstance(side, bool)
                or not isinstance(side, int)
                or not 1 <= side <= MAX_PREFERRED_DIMENSION
            ):
                raise InvalidRequestError(
                    f"a preferred width or height is an integer from 1 to {MAX_PREFERRED_DIMENSION}"
                )
    if frame_rate is not None:
        if (
            isinstance(frame_rate, bool)
            or not isinstance(frame_rate, int | float)
            or not 0 < frame_rate <= MAX_PREFERRED_FRAME_RATE
        ):
            raise InvalidRequestError(
                f"a preferred frame rate is a number greater than 0 and at most {MAX_PREFERRED_FRAME_RATE}"
            )


def _check_signal(signal_type: str, data: str) -> None:
    if len(signal_type) > MAX_SIGNAL_TYPE_LENGTH:
        raise PayloadTooLargeError("a signal type is at most 128 characters", code="signal_too_large")
    if len(data) > MAX_SIGNAL_DATA_LENGTH:
        raise PayloadTooLargeError("signal data is at most 8192 characters", code="signal_too_large")


class Session:
    """One session's connections, streams and subscriptions."""

    def __init__(self, session_id: str, api_key: str) -> None:
        self.session_id = session_id
        self.api_key = api_key
        self.connections: dict[str, Connection] = {}
        self.streams: dict[str, Stream] = {}
        self.subscriptions: dict[str, Subscription] = {}
        #: Set by "mute all": new streams start muted unless excluded.
        self.mute_all_active = False
        self.mute_all_excluded: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return f"Session({self.session_id[:16]}…, {len(self.connections)} connections)"

    @property
    def empty(self) -> bool:
        return not self.connections

    @property
    def local_empty(self) -> bool:
        """No connection of this server's own (others' mirrored connections aside)."""
        return all(c.node is not None for c in self.connections.values())

    # -- lookups -----------------------------------------------------------------------

    def connection(self, connection_id: str) -> Connection:
        try:
            return self.connections[connection_id]
        except KeyError:
            raise NotFoundError(f"no connection {connection_id} in this session") from None

    def stream(self, stream_id: str) -> Stream:
        try:
            return self.streams[stream_id]
        except KeyError:
            raise NotFoundError(f"no stream {stream_id} in this session") from None

    def announced_stream(self, stream_id: str) -> Stream:
        """A stream the others know of; a pending stream is not found."""
        stream = self.streams.get(stream_id)
        if stream is None or not stream.announced:
            raise NotFoundError(f"no stream {stream_id} in this session")
        return stream

    def announced_streams(self) -> list[Stream]:
        """The streams the others know of (``connected`` snapshots, the REST API)."""
        return [s for s in self.streams.values() if s.announced]

    def own_stream(self, connection_id: str, stream_id: str) -> Stream:
        """One of the connection's own streams, announced or pending."""
        self.connection(connection_id)
        return self._own_stream(connection_id, stream_id)

    def own_subscription(self, connection_id: str, subscription_id: str) -> Subscription:
        sub = self.subscriptions.get(subscription_id)
        if sub is None or sub.connection_id != connection_id:
            raise NotFoundError(f"no subscription {subscription_id} of this connection")
        return sub

    def _moderator(self, connection_id: str) -> Connection:
        conn = self.connection(connection_id)
        if not conn.role.can_moderate:
            raise PermissionDeniedError(f"a {conn.role.value} cannot moderate; a moderator token is needed")
        return conn

    def _own_stream(self, connection_id: str, stream_id: str) -> Stream:
        stream = self.stream(stream_id)
        if stream.connection_id != connection_id:
            raise PermissionDeniedError("the stream belongs to another connection")
        return stream

    # -- connections -------------------------------------------------------------------

    def join(
        self,
        connection_id: str,
        *,
        role: Role,
        data: str,
        created_at: int,
        now: float,
        layout_class_list: tuple[str, ...] = (),
        resumable: bool = False,
        token: str = "",
    ) -> tuple[Connection, list[Action]]:
        """Add a connection; returns it and the events for the others. A ``resumable``
        connection gets a resume secret and remembers the digest of its ``token``."""
        if connection_id in self.connections:
            raise InvalidRequestError("the connection exists already", code="already_connected")
        conn = Connection(
            connection_id,
            role,
            data,
            created_at,
            last_seen=now,
            layout_class_list=layout_class_list,
            resume_secret=new_resume_secret() if resumable else None,
            token_digest=token_digest(token),
        )
        self.connections[connection_id] = conn
        return conn, [Deliver(ConnectionCreatedEvent(connection=conn.info()), exclude=connection_id)]

    def leave(self, connection_id: str, reason: DisconnectReason) -> list[Action]:
        """Remove a connection, its streams and its subscriptions. Idempotent."""
        if connection_id not in self.connections:
            return []
        stream_reason = StreamReason(reason.value)
        actions: list[Action] = []
        for stream in [s for s in self.streams.values() if s.connection_id == connection_id]:
            actions += self._remove_stream(stream, stream_reason, exclude=connection_id)
        for sub in [s for s in self.subscriptions.values() if s.connection_id == connection_id]:
            del self.subscriptions[sub.subscription_id]
        del self.connections[connection_id]
        actions.append(Deliver(ConnectionDestroyedEvent(connection_id=connection_id, reason=reason)))
        return actions

    def touch(self, connection_id: str, now: float) -> None:
        conn = self.connections.get(connection_id)
        if conn is not None:
            conn.last_seen = now

    def expired(self, now: float, timeout: float) -> list[str]:
        """The connections with a link silent for longer than ``timeout``."""
        return [
            c.connection_id
            for c in self.connections.values()
            if c.node is None and not c.suspended and now - c.last_seen > timeout
        ]

    # -- suspending and resuming -----------------------------------------------------------

    def suspend(self, connection_id: str, now: float) -> bool:
        """The connection's link dropped: keep it (streams, subscriptions) for a resume.
        Nobody is told. Returns False (and does nothing) if it is not resumable or gone."""
        conn = self.connections.get(connection_id)
        if conn is None or conn.resume_secret is None:
            return False
        if conn.suspended_at is None:
            conn.suspended_at = now
        return True

    def resume(self, connection_id: str, secret: str, token: str, now: float) -> Connection:
        """Take a connection over again (suspended, or still linked when the server has not
        noticed its old link die) with its secret and the same token. Gives it a new secret
        and returns it; its held signals are then taken with :meth:`take_held`.

        :raises ResumeRefusedError: no such connection, another token, a wrong secret, or a
            connection that is not resumable.
        """
        conn = self.connections.get(connection_id)
        refused = ResumeRefusedError("no connection to resume with this secret and token")
        if conn is None or conn.resume_secret is None:
            raise refused
        secret_ok = hmac.compare_digest(conn.resume_secret.encode(), secret.encode("utf-8", "replace"))
        token_ok = hmac.compare_digest(conn.token_digest, token_digest(token))
        if not (secret_ok and token_ok):
            raise refused
        conn.suspended_at = None
        conn.last_seen = now
        conn.resume_secret = new_resume_secret()
        return conn

    def take_held(self, connection_id: str) -> list[SignalEvent]:
        """The signals held for a connection while it was suspended (and forget them)."""
        conn = self.connections.get(connection_id)
        if conn is None:
            return []
        held = list(conn.held)
        conn.held.clear()
        return held

    def hold(self, connection_id: str, message: ServerMessage) -> bool:
        """Keep a message for a suspended connection: signals are held (bounded), anything
        else is dropped (the ``connected`` of its resume describes the session as it is then).
        Returns whether it was held."""
        conn = self.connections.get(connection_id)
        if conn is None or not conn.suspended or not isinstance(message, SignalEvent):
            return False
        conn.held.append(message)
        return True

    def suspended(self) -> list[str]:
        """The suspended connections."""
        return [c.connection_id for c in self.connections.values() if c.suspended]

    def grace_over(self, now: float, grace: float) -> list[str]:
        """The suspended connections whose grace period (``grace`` seconds) is over."""
        return [
            c.connection_id
            for c in self.connections.values()
            if c.suspended_at is not None and now - c.suspended_at >= grace
        ]

    def force_disconnect(self, connection_id: str, *, by: str | None = None) -> list[Action]:
        """Disconnect ``connection_id``; ``by`` is the moderator, None for the REST API."""
        if by is not None:
            self._moderator(by)
        self.connection(connection_id)
        reason = DisconnectReason.FORCE_DISCONNECTED
        actions: list[Action] = [
            Deliver(SessionDisconnectedEvent(reason=reason), to=(connection_id,)),
            Close(connection_id, CloseCode.FORCE_DISCONNECTED, "force disconnected"),
        ]
        return actions + self.leave(connection_id, reason)

    # -- streams -----------------------------------------------------------------------

    def publish(
        self, connection_id: str, request: PublishRequest, *, created_at: int, announce: bool = True
    ) -> tuple[Stream, list[Action]]:
        """Add a stream. With ``announce`` False it stays pending (the others are not told)
        until :meth:`announce_stream`."""
        conn = self.connection(connection_id)
        if not conn.role.can_publish:
            raise PermissionDeniedError("a subscriber token cannot publish")
        if not (request.has_audio or request.has_video):
            raise InvalidRequestError("a stream needs audio, video or both")
        stream_id = new_stream_id()
        muted = self.mute_all_active and stream_id not in self.mute_all_excluded
        stream = Stream(
            stream_id=stream_id,
            connection_id=connection_id,
            created_at=created_at,
            name=request.name,
            has_audio=request.has_audio and not muted,
            has_video=request.has_video,
            video_type=request.video_type,
            width=request.width,
            height=request.height,
            frame_rate=request.frame_rate,
            announced=announce,
            layout_class_list=list(conn.layout_class_list),
        )
        self.streams[stream_id] = stream
        actions: list[Action] = []
        if announce:
            actions.append(Deliver(StreamCreatedEvent(stream=stream.info()), exclude=connection_id))
        if muted and request.has_audio:
            actions.append(Deliver(MuteForcedEvent(stream_id=stream_id), to=(connection_id,)))
        return stream, actions

    def announce_stream(self, stream_id: str) -> list[Action]:
        """Tell the others of a pending stream (its media flows). Idempotent."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.announced:
            return []
        stream.announced = True
        return [Deliver(StreamCreatedEvent(stream=stream.info()), exclude=stream.connection_id)]

    def withdraw(self, stream_id: str) -> None:
        """Forget a pending stream whose media could not be set up: nobody else knew of it,
        so nobody is told. Idempotent; announced streams are left alone."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.announced:
            del self.streams[stream_id]

    def republish(self, connection_id: str, stream_id: str) -> Stream:
        """One of the connection's own streams whose media it sets up again (after a resume):
        it keeps its ID, its subscribers and its properties; nobody is told."""
        self.connection(connection_id)
        return self._own_stream(connection_id, stream_id)

    def unpublish(self, connection_id: str, stream_id: str) -> list[Action]:
        stream = self._own_stream(connection_id, stream_id)
        return self._remove_stream(stream, StreamReason.UNPUBLISHED)

    def force_unpublish(self, stream_id: str, *, by: str | None = None) -> list[Action]:
        if by is not None:
            self._moderator(by)
        return self._remove_stream(self.stream(stream_id), StreamReason.FORCE_UNPUBLISHED)

    def end_stream(self, stream_id: str, reason: StreamReason) -> list[Action]:
        """The media plane lost the stream (e.g. its worker died). Idempotent."""
        stream = self.streams.get(stream_id)
        return [] if stream is None else self._remove_stream(stream, reason)

    def media_reset(
        self, stream_ids: Iterable[str], connection_ids: Iterable[str] | None = None
    ) -> list[Action]:
        """The media plane lost every transport of the session (its worker died), or, with
        ``connection_ids``, those of these connections only (one worker of a session spread
        over several died): tell each of them (``media_reset``, with its own streams among
        ``stream_ids``), then destroy those streams with ``mediaStopped``. Streams already
        gone and unknown connections are skipped."""
        streams = [self.streams[sid] for sid in dict.fromkeys(stream_ids) if sid in self.streams]
        actions: list[Action] = []
        told = self.connections if connection_ids is None else set(connection_ids)
        for connection_id in [c for c in self.connections if c in told]:
            own = [s.stream_id for s in streams if s.connection_id == connection_id]
            actions.append(Deliver(MediaResetEvent(stream_ids=own), to=(connection_id,)))
        for stream in streams:
            actions += self._remove_stream(stream, StreamReason.MEDIA_STOPPED)
        return actions

    def _remove_stream(
        self, stream: Stream, reason: StreamReason, *, exclude: str | None = None
    ) -> list[Action]:
        del self.streams[stream.stream_id]
        for sub in [s for s in self.subscriptions.values() if s.stream_id == stream.stream_id]:
            del self.subscriptions[sub.subscription_id]
        event = StreamDestroyedEvent(
            stream_id=stream.stream_id, connection_id=stream.connection_id, reason=reason
        )
        # A pending stream was known to its publisher only.
        to = None if stream.announced else (stream.connection_id,)
        return [Deliver(event, to=to, exclude=exclude)]

    def update_stream(self, connection_id: str, request: UpdateStreamRequest) -> list[Action]:
        stream = self._own_stream(connection_id, request.stream_id)
        changes: list[StreamPropertyChangedEvent] = []

        def change(prop: StreamProperty, old: PropertyValue, new: PropertyValue) -> None:
            if old != new:
                changes.append(
                    StreamPropertyChangedEvent(
                        stream_id=stream.stream_id,
                        property=prop,
                        old_value=old,
                        new_value=new,
                    )
                )

        if request.has_audio is not None:
            change("has_audio", stream.has_audio, request.has_audio)
            stream.has_audio = request.has_audio
        if request.has_video is not None:
            change("has_video", stream.has_video, request.has_video)
            stream.has_video = request.has_video
        if request.name is not None:
            change("name", stream.name, request.name)
            stream.name = request.name
        if request.video_type is not None:
            change("video_type", stream.video_type, request.video_type)
            stream.video_type = request.video_type
        if request.width is not None or request.height is not None:
            old = [stream.width or 0, stream.height or 0]
            stream.width = request.width or stream.width
            stream.height = request.height or stream.height
            change("dimensions", old, [stream.width or 0, stream.height or 0])
        if not stream.announced:
            return []  # the others learn the current properties when it is announced
        return [Deliver(event, exclude=connection_id) for event in changes]

    def force_mute(
        self,
        stream_id: str | None,
        *,
        excluded: Iterable[str] = (),
        by: str | None = None,
        active: bool = True,
    ) -> list[Action]:
        """Mute one stream's audio, or (``stream_id`` None) every stream's but ``excluded``.

        Muting all also mutes streams published later, until called with ``active=False``.
        """
        if by is not None:
            self._moderator(by)
        actions: list[Action] = []
        if stream_id is not None:
            targets = [self.stream(stream_id)]
        else:
            self.mute_all_active = active
            self.mute_all_excluded = frozenset(excluded)
            excluded_ids = sorted(self.mute_all_excluded)
            actions.append(Deliver(MuteAllChangedEvent(active=active, excluded_stream_ids=excluded_ids)))
            if not active:
                return actions
            targets = [s for s in self.streams.values() if s.stream_id not in self.mute_all_excluded]
        for stream in targets:
            actions.append(Deliver(MuteForcedEvent(stream_id=stream.stream_id), to=(stream.connection_id,)))
            if stream.has_audio:
                stream.has_audio = False
                if not stream.announced:
                    continue
                event = StreamPropertyChangedEvent(
                    stream_id=stream.stream_id, property="has_audio", old_value=True, new_value=False
                )
                actions.append(Deliver(event, exclude=stream.connection_id))
        return actions

    def set_layout_class_lists(self, items: dict[str, list[str]]) -> list[Stream]:
        """Set the layout classes of streams (REST). All are checked before any is set."""
        streams = [self.announced_stream(stream_id) for stream_id in items]
        for stream in streams:
            stream.layout_class_list = list(items[stream.stream_id])
        return streams

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(
        self,
        connection_id: str,
        stream_id: str,
        *,
        preferred_resolution: tuple[int, int] | None = None,
        preferred_frame_rate: float | None = None,
    ) -> Subscription:
        conn = self.connection(connection_id)
        if not conn.role.can_subscribe:
            raise PermissionDeniedError("a publisheronly token cannot subscribe")
        stream = self.announced_stream(stream_id)
        if stream.connection_id == connection_id:
            raise InvalidRequestError("a connection cannot subscribe to its own stream")
        check_preferences(preferred_resolution, preferred_frame_rate)
        sub = Subscription(
            str(uuid.uuid4()),
            connection_id,
            stream_id,
            preferred_resolution=preferred_resolution,
            preferred_frame_rate=None if preferred_frame_rate is None else float(preferred_frame_rate),
        )
        self.subscriptions[sub.subscription_id] = sub
        return sub

    def set_preferences(
        self,
        connection_id: str,
        subscription_id: str,
        *,
        preferred_resolution: tuple[int, int] | None,
        preferred_frame_rate: float | None,
    ) -> Subscription:
        """Replace the preferred resolution and frame rate of one of the connection's
        subscriptions (None: no preference). Checked before anything changes."""
        sub = self.own_subscription(connection_id, subscription_id)
        check_preferences(preferred_resolution, preferred_frame_rate)
        sub.preferred_resolution = preferred_resolution
        sub.preferred_frame_rate = None if preferred_frame_rate is None else float(preferred_frame_rate)
        return sub

    def video_quality_changed(self, subscription_id: str, disabled: bool) -> list[Action]:
        """The media plane stopped (``disabled``) or resumed a subscription's video for
        quality: tell its subscriber (``video_disabled`` / ``video_enabled``, reason
        ``quality``), once per change. An unknown (ended) subscription is ignored."""
        sub = self.subscriptions.get(subscription_id)
        if sub is None or sub.video_disabled_for_quality == disabled:
            return []
        sub.video_disabled_for_quality = disabled
        event: ServerMessage
        if disabled:
            event = VideoDisabledEvent(
                subscription_id=sub.subscription_id, stream_id=sub.stream_id, reason=VideoReason.QUALITY
            )
        else:
            event = VideoEnabledEvent(
                subscription_id=sub.subscription_id, stream_id=sub.stream_id, reason=VideoReason.QUALITY
            )
        return [Deliver(event, to=(sub.connection_id,))]

    def unsubscribe(self, connection_id: str, subscription_id: str) -> Subscription:
        sub = self.own_subscription(connection_id, subscription_id)
        del self.subscriptions[subscription_id]
        return sub

    # -- signals -----------------------------------------------------------------------

    def signal(
        self, from_connection_id: str | None, signal_type: str, data: str, to: str | None
    ) -> list[Action]:
        """A signal from a connection, or from the server (``from_connection_id`` None)."""
        _check_signal(signal_type, data)
        if from_connection_id is not None:
            self.connection(from_connection_id)
        if to is not None:
            self.connection(to)
        event = SignalEvent(signal_type=signal_type, data=data, from_connection_id=from_connection_id)
        return [Deliver(event, to=None if to is None else (to,))]
