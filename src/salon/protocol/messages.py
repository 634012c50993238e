"""The signalling messages: one typed message union for each direction.

Every message is a JSON object with a ``type`` discriminator. Client requests carry a
``request_id`` (chosen by the client, echoed in the reply); each request gets exactly one
reply: its result message (``connected``, ``published``, ``subscribed`` or ``ack``) or an
``error`` with a stable ``code``. Events carry no ``request_id``.

Client-to-server models are strict (an unknown field is an ``invalid_message`` error);
server-to-client models ignore unknown fields, so an older client survives a newer server
that adds fields (see ``docs/protocol.md``, "Versioning", for the rule). See
``docs/protocol.md`` for the prose version of this module.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from salon.protocol.codes import DisconnectReason, ErrorCode, StreamReason, VideoReason

__all__ = [
    "PROTOCOL_VERSION",
    "AckMessage",
    "ActiveSpeakerEvent",
    "ArchiveStartedEvent",
    "ArchiveStoppedEvent",
    "AudioLevelEvent",
    "ClientMessage",
    "ConnectRequest",
    "ConnectedMessage",
    "ConnectionCreatedEvent",
    "ConnectionDestroyedEvent",
    "ConnectionInfo",
    "ErrorMessage",
    "ForceDisconnectRequest",
    "ForceMuteRequest",
    "ForceUnpublishRequest",
    "IceCandidateRequest",
    "IceServer",
    "MediaResetEvent",
    "MuteAllChangedEvent",
    "MuteForcedEvent",
    "PingMessage",
    "PongMessage",
    "PreferredResolution",
    "PublishRequest",
    "PublishedMessage",
    "RedirectMessage",
    "ResumeInfo",
    "ServerMessage",
    "SessionDisconnectedEvent",
    "SetSubscriptionPreferencesRequest",
    "SetSubscriptionRequest",
    "SignalEvent",
    "SignalRequest",
    "StreamAudioLevel",
    "StreamCreatedEvent",
    "StreamDestroyedEvent",
    "StreamInfo",
    "StreamProperty",
    "StreamPropertyChangedEvent",
    "SubscribeRequest",
    "SubscribedMessage",
    "UnpublishRequest",
    "UnsubscribeRequest",
    "UpdateStreamRequest",
    "VideoDisabledEvent",
    "VideoEnabledEvent",
    "VideoType",
    "client_message_adapter",
    "server_message_adapter",
]

PROTOCOL_VERSION = 1
MAX_SIGNAL_TYPE_LENGTH = 128
MAX_SIGNAL_DATA_LENGTH = 8192
MAX_STREAM_NAME_LENGTH = 1000
#: Bounds of a subscription's preferred resolution (each side) and frame rate.
MAX_PREFERRED_DIMENSION = 16384
MAX_PREFERRED_FRAME_RATE = 240

RequestId = Annotated[int | str, Field(description="Chosen by the client, echoed in the reply.")]

# The codes and reasons of server messages: a newer server may send a value this version does
# not know (docs/protocol.md §14), which a client must accept. A known value parses to its
# enum member (the union is tried left to right), an unknown one stays a plain string. The
# server itself only sends known values.
AnyErrorCode = Annotated[
    ErrorCode | str,
    Field(
        union_mode="left_to_right",
        description="An `ErrorCode`; a newer server may send one this client does not know.",
    ),
]
AnyDisconnectReason = Annotated[
    DisconnectReason | str,
    Field(
        union_mode="left_to_right",
        description="A `DisconnectReason`; a newer server may send one this client does not know.",
    ),
]
AnyVideoReason = Annotated[
    VideoReason | str,
    Field(
        union_mode="left_to_right",
        description="A `VideoReason`; a newer server may send one this client does not know.",
    ),
]
AnyStreamReason = Annotated[
    StreamReason | str,
    Field(
        union_mode="left_to_right",
        description="A `StreamReason`; a newer server may send one this client does not know.",
    ),
]


class _ClientModel(BaseModel):
    """A client-to-server model: the server refuses a field it does not know."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _ServerModel(BaseModel):
    """A server-to-client model: a client ignores a field it does not know (one added by a
    newer server), so a new field is not a breaking change."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class VideoType(enum.StrEnum):
    CAMERA = "camera"
    SCREEN = "screen"
    CUSTOM = "custom"


class ConnectionInfo(_ServerModel):
    connection_id: str
    created_at: int = Field(description="Milliseconds since the epoch.")
    data: str = Field(description="The connection data of the token.")


class StreamInfo(_ServerModel):
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


# --- client -> server -------------------------------------------------------------


class ResumeInfo(_ClientModel):
    """Which connection a ``connect`` resumes, and the proof that it is the client's."""

    connection_id: str = Field(max_length=255)
    secret: str = Field(
        max_length=255, description="The ``resume_secret`` of the latest ``connected`` of that connection."
    )


class ConnectRequest(_ClientModel):
    type: Literal["connect"] = "connect"
    request_id: RequestId
    session_id: str = Field(max_length=255)
    token: str = Field(max_length=8192)
    protocol_version: int = PROTOCOL_VERSION
    client: str = Field("", max_length=200, description="Free-form client name and version.")
    resume: ResumeInfo | None = Field(
        None,
        description="Resume this connection (same connection ID, streams and subscriptions) "
        "after its link dropped, within the server's grace period; with the same token. "
        "Refused with ``resume_refused`` (close 4011) when it cannot be resumed.",
    )
    accept_redirect: bool = Field(
        False,
        description="The client follows a ``redirect``: a node of a cluster may send it to "
        "another node (placement by load) instead of connecting it. Never for a resume.",
    )


class PublishRequest(_ClientModel):
    type: Literal["publish"] = "publish"
    request_id: RequestId
    name: str = Field("", max_length=MAX_STREAM_NAME_LENGTH)
    has_audio: bool = True
    has_video: bool = True
    video_type: VideoType | None = VideoType.CAMERA
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)
    frame_rate: float | None = Field(None, gt=0, le=240)
    sdp: str | None = Field(
        None,
        description="The client's sendonly SDP offer; absent for a signalling-only stream. With an "
        "offer the stream is announced to the others once its media flows.",
    )
    stream_id: str | None = Field(
        None,
        max_length=255,
        description="Re-establish the media of this existing stream of the connection (after a "
        "resume) from the new offer in ``sdp``: the stream keeps its ID and its subscribers, "
        "nobody is told. The stream's other fields are ignored (use ``update_stream``).",
    )

    @model_validator(mode="after")
    def _republish_needs_offer(self) -> PublishRequest:
        if self.stream_id is not None and self.sdp is None:
            raise ValueError("re-publishing a stream (stream_id) needs an sdp offer")
        return self


class UnpublishRequest(_ClientModel):
    type: Literal["unpublish"] = "unpublish"
    request_id: RequestId
    stream_id: str


class UpdateStreamRequest(_ClientModel):
    """Change properties of one of the connection's own streams; others see
    ``stream_property_changed`` for each property that really changed."""

    type: Literal["update_stream"] = "update_stream"
    request_id: RequestId
    stream_id: str
    has_audio: bool | None = None
    has_video: bool | None = None
    name: str | None = Field(None, max_length=MAX_STREAM_NAME_LENGTH)
    video_type: VideoType | None = None
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)


# Preferences are checked strictly (no "320" for 320, no 320.0, no true for 1): they are new
# fields, so no client depends on the lax parsing of the older ones.
PreferredDimension = Annotated[int, Field(strict=True, ge=1, le=MAX_PREFERRED_DIMENSION)]
PreferredFrameRate = Annotated[
    float,
    Field(
        strict=True,
        gt=0,
        le=MAX_PREFERRED_FRAME_RATE,
        description="Frames per second, greater than 0 and at most 240.",
    ),
]


class PreferredResolution(_ClientModel):
    """The largest video a subscriber wants for a subscription (OpenTok.js's
    ``setPreferredResolution``): the server forwards the stream's layer closest to it, never
    a larger one when a smaller one exists."""

    width: PreferredDimension
    height: PreferredDimension


class SubscribeRequest(_ClientModel):
    type: Literal["subscribe"] = "subscribe"
    request_id: RequestId
    stream_id: str
    audio: bool = True
    video: bool = True
    sdp: str | None = Field(None, description="The client's recvonly SDP offer; absent without media.")
    preferred_resolution: PreferredResolution | None = Field(
        None, description="The largest video wanted (None: no preference)."
    )
    preferred_frame_rate: PreferredFrameRate | None = Field(
        None, description="The highest frame rate wanted (None: no preference)."
    )


class UnsubscribeRequest(_ClientModel):
    type: Literal["unsubscribe"] = "unsubscribe"
    request_id: RequestId
    subscription_id: str


class SetSubscriptionRequest(_ClientModel):
    """Receive a subscription's audio and/or video or not (None leaves that kind as it is)."""

    type: Literal["set_subscription"] = "set_subscription"
    request_id: RequestId
    subscription_id: str
    audio: bool | None = None
    video: bool | None = None


class SetSubscriptionPreferencesRequest(_ClientModel):
    """Set a subscription's preferred resolution and frame rate. Both are replaced: None (or
    absent) means no preference."""

    type: Literal["set_subscription_preferences"] = "set_subscription_preferences"
    request_id: RequestId
    subscription_id: str
    preferred_resolution: PreferredResolution | None = None
    preferred_frame_rate: PreferredFrameRate | None = None


class IceCandidateRequest(_ClientModel):
    """A trickled ICE candidate for the transport of one of the connection's own streams
    (``stream_id``) or subscriptions (``subscription_id``): exactly one of the two."""

    type: Literal["ice_candidate"] = "ice_candidate"
    request_id: RequestId
    stream_id: str | None = None
    subscription_id: str | None = None
    candidate: str | None = Field(
        description="An SDP ``candidate:`` attribute value; None ends the candidates."
    )

    @model_validator(mode="after")
    def _one_target(self) -> IceCandidateRequest:
        if (self.stream_id is None) == (self.subscription_id is None):
            raise ValueError("exactly one of stream_id and subscription_id is needed")
        return self


class SignalRequest(_ClientModel):
    """Send a signal to every connection of the session (``to`` absent), or to one."""

    type: Literal["signal"] = "signal"
    request_id: RequestId
    signal_type: str = Field("", description="At most 128 characters.")
    data: str = Field("", description="At most 8192 characters.")
    to: str | None = Field(None, description="A connection ID; absent for the whole session.")


class ForceDisconnectRequest(_ClientModel):
    type: Literal["force_disconnect"] = "force_disconnect"
    request_id: RequestId
    connection_id: str


class ForceUnpublishRequest(_ClientModel):
    type: Literal["force_unpublish"] = "force_unpublish"
    request_id: RequestId
    stream_id: str


class ForceMuteRequest(_ClientModel):
    """Mute one stream (``stream_id``) or every stream but ``excluded_stream_ids`` ("mute
    all", which also mutes the streams published later until it is switched off with
    ``active`` false)."""

    type: Literal["force_mute"] = "force_mute"
    request_id: RequestId
    stream_id: str | None = None
    excluded_stream_ids: list[str] = Field(default_factory=list)
    active: bool = Field(
        True,
        description="Mute all only: false switches the session's mute-all state off (nothing is "
        "muted or unmuted).",
    )

    @model_validator(mode="after")
    def _active_is_for_mute_all(self) -> ForceMuteRequest:
        if not self.active and self.stream_id is not None:
            raise ValueError("active false switches mute all off: it takes no stream_id")
        return self


class PongMessage(_ClientModel):
    """The reply to a server ``ping``. Any message from the client also proves liveness."""

    type: Literal["pong"] = "pong"
    timestamp: float | None = None


ClientMessage = Annotated[
    ConnectRequest
    | PublishRequest
    | UnpublishRequest
    | UpdateStreamRequest
    | SubscribeRequest
    | UnsubscribeRequest
    | SetSubscriptionRequest
    | SetSubscriptionPreferencesRequest
    | IceCandidateRequest
    | SignalRequest
    | ForceDisconnectRequest
    | ForceUnpublishRequest
    | ForceMuteRequest
    | PongMessage,
    Field(discriminator="type"),
]

CLIENT_MESSAGE_TYPES = frozenset(
    m.model_fields["type"].default
    for m in (
        ConnectRequest,
        PublishRequest,
        UnpublishRequest,
        UpdateStreamRequest,
        SubscribeRequest,
        UnsubscribeRequest,
        SetSubscriptionRequest,
        SetSubscriptionPreferencesRequest,
        IceCandidateRequest,
        SignalRequest,
        ForceDisconnectRequest,
        ForceUnpublishRequest,
        ForceMuteRequest,
        PongMessage,
    )
)

# --- server -> client -------------------------------------------------------------


class IceServer(_ServerModel):
    """One entry of ``RTCPeerConnection({iceServers})``: STUN/TURN URLs and, for TURN, the
    credentials to use with them."""

    urls: list[str] = Field(description="``stun:``, ``stuns:``, ``turn:`` or ``turns:`` URLs.")
    username: str | None = None
    credential: str | None = None


class ConnectedMessage(_ServerModel):
    """The reply to ``connect``: the new connection and the session as it is now."""

    type: Literal["connected"] = "connected"
    request_id: RequestId
    session_id: str
    connection: ConnectionInfo
    role: str
    connections: list[ConnectionInfo]
    streams: list[StreamInfo]
    heartbeat_interval: float = Field(description="Seconds between server pings.")
    heartbeat_timeout: float = Field(description="Silence after which the server drops the connection.")
    ice_servers: list[IceServer] = Field(
        default_factory=list,
        description="The STUN/TURN servers the client's peer connections should use; TURN "
        "credentials are minted for this connection and expire.",
    )
    resume_secret: str | None = Field(
        None,
        description="Send it back in ``connect.resume`` to resume this connection after its link "
        "dropped (a new one in each ``connected``); None when the server keeps no dropped "
        "connection (grace period 0). Keep it secret: never log it.",
    )
    reconnect_grace: float = Field(
        0, description="Seconds the server keeps a dropped connection for a resume (0: none)."
    )
    resumed: bool = Field(False, description="True when this ``connected`` resumed a connection.")


class PublishedMessage(_ServerModel):
    type: Literal["published"] = "published"
    request_id: RequestId
    stream: StreamInfo
    answer: str | None = Field(None, description="The server's SDP answer to the publish offer.")


class SubscribedMessage(_ServerModel):
    type: Literal["subscribed"] = "subscribed"
    request_id: RequestId
    subscription_id: str
    stream_id: str
    answer: str | None = Field(None, description="The server's SDP answer to the subscribe offer.")


class AckMessage(_ServerModel):
    """The reply to a request that returns nothing but success."""

    type: Literal["ack"] = "ack"
    request_id: RequestId


class ErrorMessage(_ServerModel):
    type: Literal["error"] = "error"
    request_id: RequestId | None = None
    code: AnyErrorCode
    message: str


class ConnectionCreatedEvent(_ServerModel):
    type: Literal["connection_created"] = "connection_created"
    connection: ConnectionInfo


class ConnectionDestroyedEvent(_ServerModel):
    type: Literal["connection_destroyed"] = "connection_destroyed"
    connection_id: str
    reason: AnyDisconnectReason


class StreamCreatedEvent(_ServerModel):
    type: Literal["stream_created"] = "stream_created"
    stream: StreamInfo


class StreamDestroyedEvent(_ServerModel):
    type: Literal["stream_destroyed"] = "stream_destroyed"
    stream_id: str
    connection_id: str
    reason: AnyStreamReason


StreamProperty = Literal["has_audio", "has_video", "name", "video_type", "dimensions"]


class StreamPropertyChangedEvent(_ServerModel):
    type: Literal["stream_property_changed"] = "stream_property_changed"
    stream_id: str
    property: StreamProperty
    old_value: bool | str | list[int] | None
    new_value: bool | str | list[int] | None


class SignalEvent(_ServerModel):
    type: Literal["signal"] = "signal"
    signal_type: str
    data: str
    from_connection_id: str | None = Field(description="None when the server (REST API) sent it.")


class MuteForcedEvent(_ServerModel):
    """Sent to a publisher whose stream a moderator (or the REST API) muted."""

    type: Literal["mute_forced"] = "mute_forced"
    stream_id: str


class MuteAllChangedEvent(_ServerModel):
    """Sent to every connection of the session when a moderator (or the REST API) switches
    mute-all on (``active`` true: every stream but ``excluded_stream_ids`` is muted, and so are
    the streams published later) or off (``active`` false: nothing is unmuted, later streams are
    no longer muted). The owners of the muted streams also get ``mute_forced`` per stream."""

    type: Literal["mute_all_changed"] = "mute_all_changed"
    active: bool
    excluded_stream_ids: list[str] = Field(default_factory=list)


class SessionDisconnectedEvent(_ServerModel):
    """Sent to a connection just before the server closes it."""

    type: Literal["session_disconnected"] = "session_disconnected"
    reason: AnyDisconnectReason


class StreamAudioLevel(_ServerModel):
    stream_id: str
    level: float = Field(ge=0, le=1, description="The stream's smoothed audio level, 0 (silence) to 1.")


class AudioLevelEvent(_ServerModel):
    """The audio levels of the session's streams that changed since the previous
    ``audio_levels`` (a stream not listed keeps its level). At most 4 per second."""

    type: Literal["audio_levels"] = "audio_levels"
    levels: list[StreamAudioLevel]


class ActiveSpeakerEvent(_ServerModel):
    """The session's active speaker changed: the stream of the dominant voice, or None."""

    type: Literal["active_speaker"] = "active_speaker"
    stream_id: str | None


class MediaResetEvent(_ServerModel):
    """The session's media worker failed: every media transport of the session is gone.

    Sent to every connection of the session, just before the ``stream_destroyed``
    (``mediaStopped``) of each of the session's streams with media. A client publishes its
    streams again (new stream IDs) and subscribes from a new receiving peer connection."""

    type: Literal["media_reset"] = "media_reset"
    stream_ids: list[str] = Field(
        description="This connection's own streams that end (announced or pending): publish them again."
    )


class ArchiveStartedEvent(_ServerModel):
    """The session is being archived (recorded): sent to every connection when an archive
    starts, and to a connection that joins while one is being recorded."""

    type: Literal["archive_started"] = "archive_started"
    archive_id: str
    name: str | None = Field(default=None, description="The archive's name, if it was given one.")


class ArchiveStoppedEvent(_ServerModel):
    """An archive of the session stopped recording (sent to every connection)."""

    type: Literal["archive_stopped"] = "archive_stopped"
    archive_id: str
    name: str | None = Field(default=None, description="The archive's name, if it was given one.")


class VideoDisabledEvent(_ServerModel):
    """Sent to a subscriber when the server stops forwarding a subscription's video on its
    own (``reason`` ``quality``: the subscriber's link cannot carry the stream's lowest video
    layer); audio goes on. ``video_enabled`` follows when the video comes back."""

    type: Literal["video_disabled"] = "video_disabled"
    subscription_id: str
    stream_id: str
    reason: AnyVideoReason


class VideoEnabledEvent(_ServerModel):
    """Sent to a subscriber when the server forwards a subscription's video again after a
    ``video_disabled`` with the same ``reason``."""

    type: Literal["video_enabled"] = "video_enabled"
    subscription_id: str
    stream_id: str
    reason: AnyVideoReason


class RedirectMessage(_ServerModel):
    """The reply to a ``connect`` with ``accept_redirect`` that this node of a cluster places
    elsewhere (it is loaded, and another node is less loaded or already hosts the session):
    connect to ``url`` instead, with ``accept_redirect`` false. The socket is closed with 4013.
    A client that cannot reach ``url`` connects here again without ``accept_redirect``."""

    type: Literal["redirect"] = "redirect"
    request_id: RequestId | None = None
    url: str = Field(description="The node to connect to: its base URL, as the client was given this one's.")
    node: str = Field(description="That node's name (for logs).")


class PingMessage(_ServerModel):
    type: Literal["ping"] = "ping"
    timestamp: float


ServerMessage = Annotated[
    ConnectedMessage
    | PublishedMessage
    | SubscribedMessage
    | AckMessage
    | ErrorMessage
    | ConnectionCreatedEvent
    | ConnectionDestroyedEvent
    | StreamCreatedEvent
    | StreamDestroyedEvent
    | StreamPropertyChangedEvent
    | SignalEvent
    | MuteForcedEvent
    | MuteAllChangedEvent
    | SessionDisconnectedEvent
    | AudioLevelEvent
    | ActiveSpeakerEvent
    | MediaResetEvent
    | ArchiveStartedEvent
    | ArchiveStoppedEvent
    | VideoDisabledEvent
    | VideoEnabledEvent
    | RedirectMessage
    | PingMessage,
    Field(discriminator="type"),
]

# ``cache_strings="keys"``: pydantic's JSON parser otherwise keeps every string value under 64
# characters (connection, stream and request IDs, tokens' pieces...) in a process-wide cache of
# 16,384 entries, which only grows with unique values (docs/benchmarks.md, soak).
_NO_VALUE_CACHE = ConfigDict(cache_strings="keys")
client_message_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage, config=_NO_VALUE_CACHE)
server_message_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage, config=_NO_VALUE_CACHE)
