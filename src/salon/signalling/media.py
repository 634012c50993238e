"""The seam between signalling and the media plane.

Signalling owns the session's state (connections, streams, subscriptions); the media plane
owns the packets. Signalling tells the media plane what happened through :class:`MediaPlane`,
and the media plane reports back through :class:`MediaEvents` (a stream whose media stopped,
for instance because its worker died).

:class:`SignallingOnly` is the media plane of a server without media: every call succeeds at
once and nothing is forwarded. The SFU implements the same protocol.
"""

from __future__ import annotations

from typing import Protocol

from salon.signalling.schema import StreamReason
from salon.signalling.session import Stream, Subscription

__all__ = ["MediaEvents", "MediaPlane", "SignallingOnly"]


class MediaEvents(Protocol):
    """What the media plane reports to signalling."""

    async def stream_ended(self, session_id: str, stream_id: str, reason: StreamReason) -> None:
        """The stream's media stopped for good; signalling destroys the stream with ``reason``."""


class MediaPlane(Protocol):
    """What signalling asks of the media plane. Every method is idempotent."""

    async def stream_published(self, session_id: str, stream: Stream) -> None:
        """A stream was published."""

    async def stream_unpublished(self, session_id: str, stream_id: str) -> None:
        """A stream was destroyed for any reason: release its producers and their consumers."""

    async def subscribed(self, session_id: str, subscription: Subscription) -> None:
        """A connection subscribed to a stream."""

    async def unsubscribed(self, session_id: str, subscription: Subscription) -> None:
        """A subscription ended: release its consumers."""

    async def connection_left(self, session_id: str, connection_id: str) -> None:
        """A connection left: release its transports."""

    async def session_ended(self, session_id: str) -> None:
        """The last connection left: release the session's router."""


class SignallingOnly:
    """No media: streams and subscriptions exist in signalling only."""

    async def stream_published(self, session_id: str, stream: Stream) -> None:
        return None

    async def stream_unpublished(self, session_id: str, stream_id: str) -> None:
        return None

    async def subscribed(self, session_id: str, subscription: Subscription) -> None:
        return None

    async def unsubscribed(self, session_id: str, subscription: Subscription) -> None:
        return None

    async def connection_left(self, session_id: str, connection_id: str) -> None:
        return None

    async def session_ended(self, session_id: str) -> None:
        return None
