"""The public API is what ``__all__`` says: pin it, so a change to it is a decision."""

from __future__ import annotations

import salon
import salon.archive
import salon.callbacks
import salon.protocol
import salon.protocol.codes
import salon.protocol.messages
import salon.server
import salon.signalling
import salon.store


def test_salon_exports() -> None:
    assert sorted(salon.__all__) == sorted(
        [
            "AuthenticationError",
            "ConflictError",
            "InvalidRequestError",
            "NotFoundError",
            "PayloadTooLargeError",
            "PermissionDeniedError",
            "Role",
            "SalonError",
            "ServerError",
            "SessionId",
            "TokenClaims",
            "TokenError",
            "__version__",
            "decode_session_id",
            "encode_session_id",
            "generate_token",
            "verify_token",
        ]
    )


def test_every_exported_name_exists() -> None:
    for module in (salon, salon.server, salon.signalling, salon.protocol, salon.store):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_server_and_signalling_exports() -> None:
    assert salon.server.__all__ == ["ServerConfig", "create_app"]
    assert salon.signalling.__all__ == ["Session", "SignallingConfig", "SignallingService"]
    assert salon.store.__all__ == [
        "ArchiveRecord",
        "CallbackEvent",
        "CallbackOutcome",
        "NewCallback",
        "Project",
        "SessionRecord",
        "Store",
        "database_url_for",
    ]
    assert salon.callbacks.__all__ == [
        "SESSION_EVENTS",
        "CallbackConfig",
        "CallbackService",
        "SessionMonitor",
        "backoff",
        "callback_reason",
        "sign",
    ]


def test_archive_exports() -> None:
    assert salon.archive.__all__ == [
        "ArchiveConfig",
        "ArchiveService",
        "ArchiveStatus",
        "ArchiveStorage",
        "ArchiveStream",
        "Layout",
        "LocalStorage",
        "OutputMode",
        "RecordedStream",
        "Recorder",
        "RecorderFactory",
        "Recording",
        "RecordingFailed",
        "RecordingResult",
        "S3Storage",
        "StartOptions",
        "StorageError",
        "StreamMode",
        "archive_json",
        "storage_from_url",
    ]
    for name in salon.archive.__all__:
        assert hasattr(salon.archive, name), name


def test_protocol_exports() -> None:
    assert salon.protocol.__all__ == [
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
        "StreamReason",
        "SubscribeRequest",
        "SubscribedMessage",
        "UnpublishRequest",
        "UnsubscribeRequest",
        "UpdateStreamRequest",
        "VideoDisabledEvent",
        "VideoEnabledEvent",
        "VideoReason",
        "VideoType",
        "client_message_adapter",
        "server_message_adapter",
    ]
    assert salon.protocol.codes.__all__ == [
        "CloseCode",
        "DisconnectReason",
        "ErrorCode",
        "StreamReason",
        "VideoReason",
    ]
    assert sorted(salon.protocol.__all__) == sorted(
        salon.protocol.codes.__all__ + salon.protocol.messages.__all__
    )
