"""Session events: one frozen dataclass per event, all subclasses of :class:`Event`.

Receive them with typed callbacks, ``session.on(StreamReceived, handler)`` (mypy checks
that ``handler`` takes a :class:`StreamReceived`), or as an async iterator::

    async for event in session.events():
        match event:
            case StreamReceived(stream=stream):
                await session.subscribe(Subscriber(stream))
            case Disconnected(reason=reason):
                print("gone:", reason)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from salon.client.errors import ClientError
from salon.client.models import Connection, Stream
from salon.protocol import DisconnectReason, StreamProperty, StreamReason, VideoReason

if TYPE_CHECKING:
    from salon.client.publisher import Publisher
    from salon.client.subscriber import Subscriber

__all__ = [
    "ActiveSpeakerChanged",
    "ArchiveStarted",
    "ArchiveStopped",
    "AudioLevels",
    "Connected",
    "ConnectionCreated",
    "ConnectionDropped",
    "DisconnectReason",
    "Disconnected",
    "Error",
    "Event",
    "MuteAllChanged",
    "MuteForced",
    "Reconnected",
    "Reconnecting",
    "SessionEndReason",
    "SignalReceived",
    "StreamDropped",
    "StreamPropertyChanged",
    "StreamPublished",
    "StreamReason",
    "StreamReceived",
    "VideoDisabled",
    "VideoEnabled",
    "VideoReason",
]


class SessionEndReason(enum.StrEnum):
    """Why this session's connection ended for good (:class:`Disconnected`)."""

    CLIENT_DISCONNECTED = "clientDisconnected"
    """You called :meth:`Session.disconnect <salon.client.Session.disconnect>`."""
    FORCE_DISCONNECTED = "forceDisconnected"
    """A moderator or the REST API forced this connection out."""
    NETWORK_DISCONNECTED = "networkDisconnected"
    """The link broke and reconnection failed or was disabled."""
    TOKEN_REFUSED = "tokenRefused"
    """While reconnecting, the server refused the token (e.g. it expired)."""
    SERVER_CLOSED = "serverClosed"
    """The server closed the link for a reason reconnecting cannot fix (e.g. session gone)."""


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every session event."""


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """The session is connected (emitted once, by :meth:`Session.connect`)."""

    connection: Connection
    """This client's own connection."""
    role: str
    """``"subscriber"``, ``"publisher"``, ``"publisheronly"`` or ``"moderator"``."""


@dataclass(frozen=True, slots=True)
class Disconnected(Event):
    """The session ended for good; no event follows."""

    reason: SessionEndReason
    detail: str = ""
    """Human-readable details (e.g. the server's close reason)."""


@dataclass(frozen=True, slots=True)
class Reconnecting(Event):
    """The signalling link broke; the SDK is reconnecting. It first tries to resume its
    connection (the server keeps it for a grace period): media keeps flowing meanwhile if the
    network lets it. If the server refuses the resume, media is stopped and the SDK connects
    afresh."""

    detail: str
    """What broke, e.g. ``"connection lost (close code 1006)"``."""


@dataclass(frozen=True, slots=True)
class Reconnected(Event):
    """The SDK reconnected: it resumed its connection (``resumed``: the same connection ID
    and stream IDs, the others saw nothing) or, refused that, connected as a new connection;
    then it set up its publishers' and subscribers' media again."""

    connection: Connection
    """The connection: the same as before when ``resumed``, else a new one (a new ``connection_id``)."""
    attempts: int
    """Connection attempts it took."""
    resumed: bool = False
    """Whether the server resumed the connection (same connection and stream IDs)."""


@dataclass(frozen=True, slots=True)
class ConnectionCreated(Event):
    """Another client is in the session (on connect, for each one already there)."""

    connection: Connection


@dataclass(frozen=True, slots=True)
class ConnectionDropped(Event):
    """Another client left the session."""

    connection: Connection
    reason: DisconnectReason | str
    """Why: a :class:`DisconnectReason`, or the raw string of a reason this SDK does not know
    (one added by a newer server, docs/protocol.md §14)."""


@dataclass(frozen=True, slots=True)
class StreamReceived(Event):
    """Another client's stream is available (on connect, for each one already there)."""

    stream: Stream


@dataclass(frozen=True, slots=True)
class StreamDropped(Event):
    """A stream ended; its subscribers (and, for an own stream, its publisher) are closed."""

    stream: Stream
    reason: StreamReason | str
    """Why: a :class:`StreamReason`, or the raw string of a reason this SDK does not know (one
    added by a newer server, docs/protocol.md §14): the stream has ended all the same."""
    publisher: Publisher | None = None
    """The local publisher, when the stream was one of this client's."""


@dataclass(frozen=True, slots=True)
class StreamPublished(Event):
    """One of this client's publishers has a stream (also after a re-publish on reconnection
    or after the server's media worker failed)."""

    publisher: Publisher
    stream: Stream


@dataclass(frozen=True, slots=True)
class StreamPropertyChanged(Event):
    """A property of another client's stream changed (``publish_audio``, force mute, ...)."""

    stream: Stream
    """The stream with the new value."""
    property: StreamProperty
    """``"has_audio"``, ``"has_video"``, ``"name"``, ``"video_type"`` or ``"dimensions"``."""
    old_value: bool | str | list[int] | None
    new_value: bool | str | list[int] | None


@dataclass(frozen=True, slots=True)
class SignalReceived(Event):
    """A signal from a client of the session (or from the server's REST API)."""

    type: str
    data: str
    from_connection_id: str | None
    """None when the REST API sent it."""


@dataclass(frozen=True, slots=True)
class MuteForced(Event):
    """A moderator muted one of this client's publishers; the SDK stopped its audio."""

    publisher: Publisher


@dataclass(frozen=True, slots=True)
class MuteAllChanged(Event):
    """A moderator (or the REST API) switched the session's mute-all on or off; every client
    of the session gets it (OpenTok.js's Session ``muteForced`` with ``active``). While it is on,
    every stream but ``excluded_stream_ids`` is muted, and so are streams published later;
    switching it off unmutes nothing."""

    active: bool
    excluded_stream_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Error(Event):
    """Something failed in the background (no call to raise from), e.g. a re-publish."""

    error: ClientError
    context: str
    """What the SDK was doing."""


@dataclass(frozen=True, slots=True)
class AudioLevels(Event):
    """Server-measured audio levels of the session's streams that changed since the previous
    event (a stream not listed keeps its level); at most 4 per second."""

    levels: dict[str, float]
    """Stream ID → smoothed level, 0 (silence) to 1."""


@dataclass(frozen=True, slots=True)
class ActiveSpeakerChanged(Event):
    """The session's active speaker (the dominant voice, as the server hears it) changed."""

    stream_id: str | None
    """The loudest stream, or None when nobody speaks."""


@dataclass(frozen=True, slots=True)
class ArchiveStarted(Event):
    """The session is being archived (recorded): an archive started, or one was being recorded
    when this client connected."""

    archive_id: str
    name: str | None
    """The archive's name, if it was given one."""


@dataclass(frozen=True, slots=True)
class ArchiveStopped(Event):
    """An archive of the session stopped recording."""

    archive_id: str
    name: str | None


@dataclass(frozen=True, slots=True)
class VideoDisabled(Event):
    """The server stopped sending one of your subscribers its video on its own (audio goes
    on): with reason ``quality``, your link cannot carry even the stream's lowest video layer
    (OpenTok's audio fallback). :class:`VideoEnabled` follows when it comes back."""

    subscriber: Subscriber
    reason: VideoReason | str
    """A :class:`~salon.protocol.VideoReason` (a newer server may send one this SDK does not
    know, as a plain string)."""


@dataclass(frozen=True, slots=True)
class VideoEnabled(Event):
    """The server sends one of your subscribers its video again after a
    :class:`VideoDisabled` with the same ``reason`` (also when the SDK subscribed again, e.g.
    after a reconnection: a new subscription starts with its video)."""

    subscriber: Subscriber
    reason: VideoReason | str
