"""The seam between signalling and the media plane.

Signalling owns the session's state (connections, streams, subscriptions); the media plane
owns the packets. Signalling tells the media plane what happened through :class:`MediaPlane`,
and the media plane reports back through :class:`MediaEvents` (a stream whose media stopped;
a session whose worker died, taking every transport with it; audio levels and the active
speaker).

:class:`SignallingOnly` is the media plane of a server without media: every notification
succeeds at once, nothing is forwarded, and a negotiation (an SDP offer, an ICE candidate) is
refused with ``media_unavailable``. The SFU (:class:`salon.media.plane.SfuMediaPlane`)
implements the same protocol.

Negotiation happens only for requests that carry media (an ``sdp``); a stream published
without one is signalling-only, as on a server without media, and is announced at once.
"""

from __future__ import annotations

from typing import Protocol

from salon.errors import InvalidRequestError
from salon.protocol import StreamReason
from salon.signalling.session import Stream, Subscription

__all__ = ["MediaEvents", "MediaPlane", "SignallingOnly"]


class MediaEvents(Protocol):
    """What the media plane reports to signalling."""

    async def stream_ended(self, session_id: str, stream_id: str, reason: StreamReason) -> None:
        """The stream's media stopped for good; signalling destroys the stream with ``reason``."""

    async def stream_flowing(self, session_id: str, stream_id: str) -> None:
        """The stream's publish transport connected: signalling announces the stream."""

    async def media_reset(
        self, session_id: str, stream_ids: list[str], connection_ids: list[str] | None = None
    ) -> None:
        """Every media transport of the session is gone (its media worker died), or, with
        ``connection_ids``, every transport of these connections (one of the workers of a
        session spread over several died): signalling sends ``media_reset`` to each of them
        (with its own streams among ``stream_ids``), then destroys the streams with
        ``mediaStopped``. Clients publish again and subscribe from new peer connections."""

    async def audio_levels(self, session_id: str, levels: dict[str, float]) -> None:
        """The audio levels (stream ID -> 0..1) of the session's streams that changed, at most
        a few times a second. Signalling sends them to every connection as ``audio_levels``,
        at most 4 messages a second (levels reported faster are coalesced, the latest of each
        stream winning) and only for announced streams. A level outside 0..1 raises
        :class:`ValueError`."""

    async def active_speaker(self, session_id: str, stream_id: str | None) -> None:
        """The session's active speaker is now ``stream_id`` (None: nobody). Signalling sends
        ``active_speaker`` to every connection when it changed, if the stream is announced."""

    async def video_quality_changed(self, session_id: str, subscription_id: str, disabled: bool) -> None:
        """The media plane stopped forwarding a subscription's video because the subscriber's
        link cannot carry the stream's lowest layer (``disabled`` True), or forwards it again
        (False). Signalling sends the subscriber ``video_disabled`` / ``video_enabled`` with
        reason ``quality``, once per change."""


class MediaPlane(Protocol):
    """What signalling asks of the media plane. Every method is idempotent."""

    async def stream_published(self, session_id: str, stream: Stream) -> None:
        """A signalling-only stream (no SDP offer) was published."""

    async def publish(self, session_id: str, stream: Stream, offer: str, *, replace: bool = False) -> str:
        """Set up the media of a pending stream from the client's sendonly offer; returns the
        SDP answer. Once media flows, call :meth:`MediaEvents.stream_flowing`. Raises a
        :class:`~salon.errors.SalonError` (and keeps nothing) if the offer cannot be served.

        ``replace``: the stream exists (its client resumed its connection and sets its media
        up again): the new publish transport replaces the old one (closed, without a
        ``stream_ended``), and the consumers of the old producers move to the new producers
        of their kind, asking for a key frame: its subscribers get its media again on their
        own transports, with nothing to renegotiate."""

    async def subscribe(
        self, session_id: str, subscription: Subscription, offer: str, *, audio: bool, video: bool
    ) -> str:
        """Set up a subscription's media from the client's recvonly offer; returns the SDP
        answer. ``audio`` / ``video`` False start that kind paused."""

    async def add_candidate(
        self,
        session_id: str,
        candidate: str | None,
        *,
        stream_id: str | None = None,
        subscription_id: str | None = None,
    ) -> None:
        """A trickled ICE candidate (None: no more) for a stream's or a subscription's transport."""

    async def set_subscription(
        self, session_id: str, subscription: Subscription, *, audio: bool | None, video: bool | None
    ) -> None:
        """Forward a subscription's audio / video or not (None: leave that kind as it is)."""

    async def set_subscription_preferences(self, session_id: str, subscription: Subscription) -> None:
        """The subscription's preferred resolution / frame rate changed (read them from
        ``subscription``; None: no preference). :meth:`subscribe` reads them too."""

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


def _no_media() -> InvalidRequestError:
    return InvalidRequestError("this server has no media plane", code="media_unavailable")


class SignallingOnly:
    """No media: streams and subscriptions exist in signalling only."""

    async def stream_published(self, session_id: str, stream: Stream) -> None:
        return None

    async def publish(self, session_id: str, stream: Stream, offer: str, *, replace: bool = False) -> str:
        raise _no_media()

    async def subscribe(
        self, session_id: str, subscription: Subscription, offer: str, *, audio: bool, video: bool
    ) -> str:
        raise _no_media()

    async def add_candidate(
        self,
        session_id: str,
        candidate: str | None,
        *,
        stream_id: str | None = None,
        subscription_id: str | None = None,
    ) -> None:
        raise _no_media()

    async def set_subscription(
        self, session_id: str, subscription: Subscription, *, audio: bool | None, video: bool | None
    ) -> None:
        return None  # a signalling-only subscription forwards nothing either way

    async def set_subscription_preferences(self, session_id: str, subscription: Subscription) -> None:
        return None  # nothing is forwarded: the preferences are kept in signalling only

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
