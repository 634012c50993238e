"""The signalling wire protocol: the typed messages of each direction and the stable codes.

A leaf package: it imports only the standard library and Pydantic, so a client
(:mod:`salon.client`, or a bot of your own) uses it without the server's dependencies.

- :mod:`salon.protocol.messages`: the client-to-server and server-to-client messages,
  ``ClientMessage`` and ``ServerMessage`` (discriminated on ``type``) and their adapters.
- :mod:`salon.protocol.codes`: ``ErrorCode``, ``CloseCode`` and the disconnect and
  stream-destroyed reasons.
- :mod:`salon.protocol.typescript`: generates ``src/salon/web/sdk/protocol.d.ts``, the
  browser SDK's types of the same messages (``python -m salon.protocol.typescript``).

``docs/protocol.md`` is the prose specification, and says how the protocol is versioned.
"""

from __future__ import annotations

from salon.protocol.codes import (
    CloseCode,
    DisconnectReason,
    ErrorCode,
    StreamReason,
)
from salon.protocol.messages import (
    PROTOCOL_VERSION,
    AckMessage,
    ActiveSpeakerEvent,
    ArchiveStartedEvent,
    ArchiveStoppedEvent,
    AudioLevelEvent,
    ClientMessage,
    ConnectedMessage,
    ConnectionCreatedEvent,
    ConnectionDestroyedEvent,
    ConnectionInfo,
    ConnectRequest,
    ErrorMessage,
    ForceDisconnectRequest,
    ForceMuteRequest,
    ForceUnpublishRequest,
    IceCandidateRequest,
    IceServer,
    MediaResetEvent,
    MuteForcedEvent,
    PingMessage,
    PongMessage,
    PublishedMessage,
    PublishRequest,
    ServerMessage,
    SessionDisconnectedEvent,
    SetSubscriptionRequest,
    SignalEvent,
    SignalRequest,
    StreamAudioLevel,
    StreamCreatedEvent,
    StreamDestroyedEvent,
    StreamInfo,
    StreamProperty,
    StreamPropertyChangedEvent,
    SubscribedMessage,
    SubscribeRequest,
    UnpublishRequest,
    UnsubscribeRequest,
    UpdateStreamRequest,
    VideoType,
    client_message_adapter,
    server_message_adapter,
)

__all__ = [
    "PROTOCOL_VERSION",
    "AckMessage",
    "ActiveSpeakerEvent",
    "ArchiveStartedEvent",
    "ArchiveStoppedEvent",
    "AudioLevelEvent",
    "ClientMessage",
    "CloseCode",
    "ConnectRequest",
    "ConnectedMessage",
    "ConnectionCreatedEvent",
    "ConnectionDestroyedEvent",
    "ConnectionInfo",
    "DisconnectReason",
    "ErrorCode",
    "ErrorMessage",
    "ForceDisconnectRequest",
    "ForceMuteRequest",
    "ForceUnpublishRequest",
    "IceCandidateRequest",
    "IceServer",
    "MediaResetEvent",
    "MuteForcedEvent",
    "PingMessage",
    "PongMessage",
    "PublishRequest",
    "PublishedMessage",
    "ServerMessage",
    "SessionDisconnectedEvent",
    "SetSubscriptionRequest",
    "SignalEvent",
    "SignalRequest",
    "StreamAudioLevel",
    "StreamCreatedEvent",
    "StreamDestroyedEvent",
    "StreamInfo",
    "StreamProperty",
    "StreamPropertyChangedEvent",
    "StreamReason",
    "SubscribeRequest",
    "SubscribedMessage",
    "UnpublishRequest",
    "UnsubscribeRequest",
    "UpdateStreamRequest",
    "VideoType",
    "client_message_adapter",
    "server_message_adapter",
]
