"""Subscriber: one stream this client receives, on its session's receiving peer connection.

Every subscriber decodes its own stream: its video frames and **its own audio**, never a
mix of the session, so an application can analyse or record each participant separately.
Frames go to the callbacks given at construction and to any number of async iterators
(:meth:`Subscriber.video_frames`, :meth:`Subscriber.audio_frames`), each a bounded queue that
drops its oldest frames when its consumer falls behind.

Resource handling: all the subscribers of a session receive on one peer connection (one ICE +
DTLS transport to the server, :class:`~salon.client._subscribe_peer.SubscribePeer`); a
subscriber owns its transceivers there and one reader task per track. They end when it is
unsubscribed, when its stream ends, or when the session disconnects; the iterators then stop.
While the session reconnects the peer connection is replaced and the iterators carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiortc import RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from salon.client._emitter import LatestQueue
from salon.client._subscribe_peer import SubscribePeer
from salon.client.errors import InvalidStateError, MediaError
from salon.client.events import VideoEnabled
from salon.client.frames import AudioFrame, VideoFrame
from salon.client.models import Stream
from salon.client.stats import (
    RtpStats,
    SubscriberStats,
    _Rates,
    collect,
    ice_round_trip_time,
)
from salon.protocol import (
    PreferredResolution,
    SetSubscriptionPreferencesRequest,
    SetSubscriptionRequest,
)
from salon.protocol.messages import MAX_PREFERRED_DIMENSION, MAX_PREFERRED_FRAME_RATE

if TYPE_CHECKING:
    from salon.client.session import Session

__all__ = ["Subscriber"]

logger = logging.getLogger(__name__)


class Subscriber:
    """A subscription to one stream of the session.

    :param stream: the stream (from :class:`~salon.client.events.StreamReceived`).
    :param on_video_frame: called with each decoded :class:`~salon.client.frames.VideoFrame`.
    :param on_audio_frame: called with each decoded :class:`~salon.client.frames.AudioFrame`.
    :param audio: receive audio from the start (toggle with :meth:`subscribe_to_audio`).
    :param video: receive video from the start (toggle with :meth:`subscribe_to_video`).
    :param preferred_resolution: the largest video wanted, ``(width, height)`` (change it
        with :meth:`set_preferred_resolution`); None: no preference.
    :param preferred_frame_rate: the highest frame rate wanted (change it with
        :meth:`set_preferred_frame_rate`); None: no preference.

    Callbacks run on the event loop, in the reader task: keep them short (or hand off to a
    queue/thread); an exception in one is logged and the frames keep coming.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        on_video_frame: Callable[[VideoFrame], object] | None = None,
        on_audio_frame: Callable[[AudioFrame], object] | None = None,
        audio: bool = True,
        video: bool = True,
        preferred_resolution: tuple[int, int] | None = None,
        preferred_frame_rate: float | None = None,
    ) -> None:
        self._preferred_resolution = _check_resolution(preferred_resolution)
        self._preferred_frame_rate = _check_frame_rate(preferred_frame_rate)
        self.stream = stream
        self.on_video_frame = on_video_frame
        self.on_audio_frame = on_audio_frame
        self._want_audio = audio
        self._want_video = video
        self._session: Session | None = None
        self._subscription_id: str | None = None
        self._peer: SubscribePeer | None = None
        self._transceivers: list[RTCRtpTransceiver] = []
        self._readers: set[asyncio.Task[None]] = set()
        self._video_queues: list[LatestQueue[VideoFrame]] = []
        self._audio_queues: list[LatestQueue[AudioFrame]] = []
        self._rates = _Rates()
        self._kinds: set[str] = set()
        self._closed = asyncio.Event()
        self.video_frames_received = 0
        """Video frames decoded so far (all peer connections)."""
        self.audio_frames_received = 0
        """Audio frames decoded so far."""
        self.size: tuple[int, int] | None = None
        """The size of the last video frame."""
        self.video_disabled_reason: str | None = None
        """Why the server stopped sending this subscriber's video on its own (``"quality"``:
        the link cannot carry it, see :class:`~salon.client.events.VideoDisabled`); None while
        it sends it."""

    def __repr__(self) -> str:
        return f"Subscriber({self.stream.stream_id[:8]})"

    @property
    def subscription_id(self) -> str | None:
        """The server's subscription ID (changes when re-subscribed after a reconnection)."""
        return self._subscription_id

    @property
    def session(self) -> Session | None:
        return self._session

    @property
    def subscribed_to_audio(self) -> bool:
        return self._want_audio

    @property
    def subscribed_to_video(self) -> bool:
        return self._want_video

    @property
    def preferred_resolution(self) -> tuple[int, int] | None:
        return self._preferred_resolution

    @property
    def preferred_frame_rate(self) -> float | None:
        return self._preferred_frame_rate

    # -- frames ------------------------------------------------------------------------

    def video_frames(self, maxsize: int = 4) -> LatestQueue[VideoFrame]:
        """An async iterator over this stream's decoded video frames, from now on. Keeps the
        ``maxsize`` latest frames; ends when the subscriber does."""
        return _register(self._video_queues, maxsize, closed=self._closed.is_set())

    def audio_frames(self, maxsize: int = 50) -> LatestQueue[AudioFrame]:
        """An async iterator over this stream's decoded audio frames (20 ms each, 50 = 1 s
        of buffering), from now on; ends when the subscriber does."""
        return _register(self._audio_queues, maxsize, closed=self._closed.is_set())

    async def wait_closed(self) -> None:
        """Return once the subscriber has ended (unsubscribed, stream gone, disconnected)."""
        await self._closed.wait()

    # -- toggles and stats -------------------------------------------------------------

    async def subscribe_to_audio(self, enabled: bool) -> None:
        """Receive this stream's audio or not (the server stops forwarding it)."""
        self._want_audio = enabled
        await self._set(audio=enabled)

    async def subscribe_to_video(self, enabled: bool) -> None:
        """Receive this stream's video or not (the server stops forwarding it)."""
        self._want_video = enabled
        await self._set(video=enabled)

    async def set_preferred_resolution(self, resolution: tuple[int, int] | None) -> None:
        """Ask for video no larger than ``(width, height)`` (each 1 to 16384), or (None) for
        no limit: the server forwards the stream's layer that fits (OpenTok.js's
        ``setPreferredResolution``). Kept across reconnections.

        :raises ValueError: not a pair of integers in range (nothing is sent).
        :raises RequestRefused: the server refused it.
        """
        self._preferred_resolution = _check_resolution(resolution)
        await self._send_preferences()

    async def set_preferred_frame_rate(self, frame_rate: float | None) -> None:
        """Ask for video at no more than ``frame_rate`` frames per second (greater than 0, at
        most 240), or (None) at any rate (OpenTok.js's ``setPreferredFrameRate``). Kept across
        reconnections.

        :raises ValueError: not a number in range (nothing is sent).
        :raises RequestRefused: the server refused it.
        """
        self._preferred_frame_rate = _check_frame_rate(frame_rate)
        await self._send_preferences()

    def _wire_resolution(self) -> PreferredResolution | None:
        resolution = self._preferred_resolution
        return None if resolution is None else PreferredResolution(width=resolution[0], height=resolution[1])

    async def _send_preferences(self) -> None:
        session, subscription_id = self._session, self._subscription_id
        if session is None or subscription_id is None:
            return  # sent with the subscribe
        await session._request(
            SetSubscriptionPreferencesRequest(
                request_id=0,
                subscription_id=subscription_id,
                preferred_resolution=self._wire_resolution(),
                preferred_frame_rate=self._preferred_frame_rate,
            ),
            action=f"set the preferences of subscription {subscription_id}",
        )

    async def _set(self, **kinds: bool) -> None:
        session, subscription_id = self._session, self._subscription_id
        if session is None or subscription_id is None:
            return  # applied when (re-)subscribed
        await session._request(
            SetSubscriptionRequest(request_id=0, subscription_id=subscription_id, **kinds),
            action=f"set subscription {subscription_id} ({kinds})",
        )

    async def get_stats(self) -> SubscriberStats:
        """Received packets, bytes, bitrate, loss, jitter, decoded frame rate and resolution per
        kind, and the round-trip time to the server (one STUN round trip on the media path,
        timed now: see :mod:`salon.client.stats`; this call takes that long).

        :raises InvalidStateError: not subscribed.
        """
        peer, transceivers = self._peer, list(self._transceivers)
        if peer is None:
            raise InvalidStateError(f"{self!r} is not subscribed")
        rtt = await ice_round_trip_time(peer.pc)
        report: dict[str, Any] = {}
        received: dict[str, int] = {}
        for transceiver in transceivers:
            receiver = transceiver.receiver
            report.update(await receiver.getStats())
            received[transceiver.kind] = peer.received_bytes.get(id(receiver), 0)
        stats = collect(
            report,
            self._rates,
            outbound=False,
            frames=self.video_frames_received,
            size=self.size,
        )
        kinds = {kind: self._with_bytes(value, received.get(kind), rtt) for kind, value in stats.items()}
        return SubscriberStats(
            audio=kinds.get("audio"),
            video=kinds.get("video"),
            bitrate=sum(s.bitrate or 0.0 for s in kinds.values()),
        )

    def _with_bytes(self, stats: RtpStats, received: int | None, rtt: float | None) -> RtpStats:
        if received is None:
            return dataclasses.replace(stats, round_trip_time=rtt)
        bitrate = self._rates.rate(f"{stats.kind}-received", received) * 8
        return dataclasses.replace(stats, bytes=received, bitrate=bitrate, round_trip_time=rtt)

    # -- driven by Session ---------------------------------------------------------------

    async def _offer(self, peer: SubscribePeer) -> str:
        """Add this subscriber's transceivers to the session's receiving peer connection."""
        await self._close_media()
        self._peer = peer
        # Only the kinds the stream has now: the server would reject the others, which aiortc
        # cannot apply (see _media.complete_rejected_mlines); a kind switched on later makes
        # the session subscribe again (Session._on_message).
        self._kinds = {
            kind for kind, has in (("audio", self.stream.has_audio), ("video", self.stream.has_video)) if has
        }
        sdp, self._transceivers = await peer.offer(self, self._kinds)
        return sdp

    async def _answer(self, subscription_id: str, sdp: str | None) -> None:
        peer = self._peer
        if peer is None:
            raise InvalidStateError(f"{self!r} was closed while subscribing")
        if sdp is None:
            raise MediaError(f"{self!r}: the server sent no SDP answer (a server without media?)")
        self._subscription_id = subscription_id
        reason, self.video_disabled_reason = self.video_disabled_reason, None
        if reason is not None and self._session is not None:
            # A new subscription (after a reconnection) starts with its video: say so.
            self._session._emit(VideoEnabled(self, reason))
        await peer.answer(self, sdp)
        logger.info("%r: subscribed (%s)", self, subscription_id)

    def _on_track(self, track: MediaStreamTrack, transceiver: RTCRtpTransceiver) -> None:
        """Called by the :class:`SubscribePeer` for the tracks of this subscriber's m-lines."""
        reader = self._read_video(track) if track.kind == "video" else self._read_audio(track)
        task = asyncio.get_running_loop().create_task(reader, name=f"{self!r}-{track.kind}")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read_video(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                decoded = await track.recv()
                self._deliver_video(decoded)

    def _deliver_video(self, decoded: Any) -> None:
        """The SDK's whole per-frame path for video (measured by ``salon bench client``)."""
        time_base = decoded.time_base
        frame = VideoFrame(
            decoded.width,
            decoded.height,
            float(decoded.pts * time_base) if decoded.pts is not None and time_base else 0.0,
            decoded,
        )
        self.video_frames_received += 1
        self.size = (frame.width, frame.height)
        if self.on_video_frame is not None:
            try:
                self.on_video_frame(frame)
            except Exception:
                logger.exception("%r: on_video_frame failed", self)
        for queue in self._video_queues:
            queue.put(frame)

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                decoded: Any = await track.recv()
                time_base = decoded.time_base
                frame = AudioFrame(
                    decoded.sample_rate,
                    len(decoded.layout.channels),
                    float(decoded.pts * time_base) if decoded.pts is not None and time_base else 0.0,
                    decoded,
                )
                self.audio_frames_received += 1
                if self.on_audio_frame is not None:
                    try:
                        self.on_audio_frame(frame)
                    except Exception:
                        logger.exception("%r: on_audio_frame failed", self)
                for queue in self._audio_queues:
                    queue.put(frame)

    async def _close_media(self) -> None:
        peer, self._peer = self._peer, None
        transceivers, self._transceivers = self._transceivers, []
        self._subscription_id = None
        readers = list(self._readers)
        for task in readers:
            task.cancel()
        if peer is not None and transceivers:
            await peer.release(transceivers)
        if readers:
            await asyncio.wait(readers)

    async def _detach(self) -> None:
        """Ended for good: close the media and end the iterators."""
        await self._close_media()
        self._session = None
        self._closed.set()
        for video in self._video_queues:
            video.end()
        for audio in self._audio_queues:
            audio.end()
        self._video_queues.clear()
        self._audio_queues.clear()


def _check_resolution(resolution: tuple[int, int] | None) -> tuple[int, int] | None:
    if resolution is None:
        return None
    try:
        width, height = resolution
    except (TypeError, ValueError):
        raise ValueError(f"a preferred resolution is (width, height), not {resolution!r}") from None
    for side in (width, height):
        if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_PREFERRED_DIMENSION:
            raise ValueError(
                f"a preferred width and height are integers from 1 to {MAX_PREFERRED_DIMENSION}, "
                f"not {resolution!r}"
            )
    return width, height


def _check_frame_rate(frame_rate: float | None) -> float | None:
    if frame_rate is None:
        return None
    if (
        isinstance(frame_rate, bool)
        or not isinstance(frame_rate, int | float)
        or not 0 < frame_rate <= MAX_PREFERRED_FRAME_RATE
    ):
        raise ValueError(
            f"a preferred frame rate is greater than 0 and at most {MAX_PREFERRED_FRAME_RATE}, "
            f"not {frame_rate!r}"
        )
    return float(frame_rate)


T = TypeVar("T")


def _register(queues: list[LatestQueue[T]], maxsize: int, *, closed: bool) -> LatestQueue[T]:
    def forget(queue: LatestQueue[T]) -> None:
        if queue in queues:
            queues.remove(queue)

    queue: LatestQueue[T] = LatestQueue(maxsize, on_close=forget)
    if closed:
        queue.end()
    else:
        queues.append(queue)
    return queue
