"""The session's objects as the SDK sees them: :class:`Connection` and :class:`Stream`.

Both are immutable snapshots; a property change produces a new :class:`Stream` (carried by
:class:`~salon.client.events.StreamPropertyChanged`), and :meth:`Session.streams
<salon.client.Session.streams>` always holds the latest one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from salon.protocol import ConnectionInfo, StreamInfo, VideoType

__all__ = ["Connection", "Stream", "VideoType"]


@dataclass(frozen=True, slots=True)
class Connection:
    """A client connected to the session (this one included)."""

    connection_id: str
    """Server-assigned; changes when the SDK reconnects."""
    created_at: int
    """Milliseconds since the epoch."""
    data: str
    """The connection data of the token it connected with."""

    @classmethod
    def _from_wire(cls, info: ConnectionInfo) -> Connection:
        return cls(info.connection_id, info.created_at, info.data)


@dataclass(frozen=True, slots=True)
class Stream:
    """A published stream (audio and/or video) of the session."""

    stream_id: str
    connection_id: str
    """The publishing connection."""
    name: str
    has_audio: bool
    """Whether the publisher currently sends audio (``publish_audio``; false after a force mute)."""
    has_video: bool
    """Whether the publisher currently sends video (``publish_video``)."""
    video_type: VideoType | None
    """Camera, screen or custom; None while the stream has no video."""
    width: int | None
    height: int | None
    frame_rate: float | None
    created_at: int
    """Milliseconds since the epoch."""

    @classmethod
    def _from_wire(cls, info: StreamInfo) -> Stream:
        return cls(
            stream_id=info.stream_id,
            connection_id=info.connection_id,
            name=info.name,
            has_audio=info.has_audio,
            has_video=info.has_video,
            video_type=info.video_type,
            width=info.width,
            height=info.height,
            frame_rate=info.frame_rate,
            created_at=info.created_at,
        )

    def _with_property(self, name: str, value: object) -> Stream:
        if name == "dimensions" and isinstance(value, list) and len(value) == 2:
            return dataclasses.replace(self, width=value[0] or None, height=value[1] or None)
        if name == "video_type":
            return dataclasses.replace(self, video_type=VideoType(value) if isinstance(value, str) else None)
        if name == "has_audio" and isinstance(value, bool):
            return dataclasses.replace(self, has_audio=value)
        if name == "has_video" and isinstance(value, bool):
            return dataclasses.replace(self, has_video=value)
        if name == "name" and isinstance(value, str):
            return dataclasses.replace(self, name=value)
        return self
