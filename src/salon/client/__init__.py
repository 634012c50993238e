"""salon's Python client SDK: join sessions, publish and subscribe, per-participant media.

Quick start::

    import asyncio
    from salon.client import Publisher, Session, StreamReceived, Subscriber

    async def main() -> None:
        async with Session(SESSION_ID, TOKEN, "http://127.0.0.1:8080") as session:
            async def on_stream(event: StreamReceived) -> None:
                await session.subscribe(Subscriber(event.stream, on_video_frame=print))
            session.on(StreamReceived, on_stream)
            await session.publish(Publisher("bot"))
            await session.wait_disconnected()

    asyncio.run(main())

Unlike OpenTok's Linux SDK there is no process-wide state: any number of sessions,
publishers and subscribers share one process and one event loop, and every subscriber
delivers its own stream's audio (never a mix).

Modules: :mod:`.session` (``Session``), :mod:`.publisher`, :mod:`.subscriber`,
:mod:`.sources` (what publishers send), :mod:`.frames` (what subscribers receive),
:mod:`.events`, :mod:`.errors`, :mod:`.stats`, :mod:`.models`.
"""

import logging

from salon.client.errors import (
    ClientError,
    Conflict,
    ConnectionFailed,
    ConnectionLost,
    DeviceNotFound,
    InvalidRequest,
    InvalidStateError,
    InvalidToken,
    MediaError,
    MediaRejected,
    MediaUnavailable,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestRefused,
    ServerError,
    SessionNotFound,
    SourceError,
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
    DisconnectReason,
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
    StreamReason,
    StreamReceived,
    VideoDisabled,
    VideoEnabled,
    VideoReason,
)
from salon.client.frames import AudioFrame, VideoFrame
from salon.client.models import Connection, Stream, VideoType
from salon.client.publisher import Publisher
from salon.client.session import Session, SessionState
from salon.client.sources import (
    AudioSource,
    CameraSource,
    CustomAudioSource,
    CustomVideoSource,
    MediaFileAudioSource,
    MediaFileVideoSource,
    TestPatternSource,
    ToneSource,
    VideoSource,
    read_test_pattern_index,
)
from salon.client.stats import PublisherStats, RtpStats, SubscriberStats
from salon.client.subscriber import Subscriber

__all__ = [
    "ActiveSpeakerChanged",
    "ArchiveStarted",
    "ArchiveStopped",
    "AudioFrame",
    "AudioLevels",
    "AudioSource",
    "CameraSource",
    "ClientError",
    "Conflict",
    "Connected",
    "Connection",
    "ConnectionCreated",
    "ConnectionDropped",
    "ConnectionFailed",
    "ConnectionLost",
    "CustomAudioSource",
    "CustomVideoSource",
    "DeviceNotFound",
    "DisconnectReason",
    "Disconnected",
    "Error",
    "Event",
    "InvalidRequest",
    "InvalidStateError",
    "InvalidToken",
    "MediaError",
    "MediaFileAudioSource",
    "MediaFileVideoSource",
    "MediaRejected",
    "MediaUnavailable",
    "MuteAllChanged",
    "MuteForced",
    "NotFound",
    "PermissionDenied",
    "Publisher",
    "PublisherStats",
    "RateLimited",
    "Reconnected",
    "Reconnecting",
    "RequestRefused",
    "RtpStats",
    "ServerError",
    "Session",
    "SessionEndReason",
    "SessionNotFound",
    "SessionState",
    "SignalReceived",
    "SourceError",
    "Stream",
    "StreamDropped",
    "StreamPropertyChanged",
    "StreamPublished",
    "StreamReason",
    "StreamReceived",
    "Subscriber",
    "SubscriberStats",
    "TestPatternSource",
    "ToneSource",
    "VideoDisabled",
    "VideoEnabled",
    "VideoFrame",
    "VideoReason",
    "VideoSource",
    "VideoType",
    "read_test_pattern_index",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
