"""Publisher: one stream this client sends, over its own aiortc peer connection.

Lifecycle: construct → :meth:`Session.publish <salon.client.Session.publish>` (a sendonly
offer in ``publish``, the server's answer applied; others see the stream once media flows)
→ :meth:`publish_audio` / :meth:`publish_video` toggles → :meth:`Session.unpublish
<salon.client.Session.unpublish>`. If the signalling link drops, the session sets its media
up again after resuming its connection: a new peer connection for the same stream ID (the old
one is closed once the new one is answered); if the server refused the resume, a new stream ID.
The same happens at once when the server's media worker fails (``media_reset``, a new stream
ID).

Resource handling: the publisher owns its peer connection (closed on unpublish, on
disconnect, and while reconnecting); the sources are the application's and stay open
(call their ``close()`` when done).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiortc import RTCIceServer, RTCPeerConnection, RTCSessionDescription

from salon.client._media import (
    SourceAudioTrack,
    SourceVideoTrack,
    complete_rejected_mlines,
    new_peer_connection,
    restrict_ice_addresses,
)
from salon.client.errors import ClientError, InvalidStateError, MediaError
from salon.client.events import Error
from salon.client.models import Stream, VideoType
from salon.client.sources import AudioSource, TestPatternSource, ToneSource, VideoSource
from salon.client.stats import PublisherStats, _Rates, collect, transport_bitrate
from salon.protocol import PublishRequest, UpdateStreamRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from salon.client.session import Session

__all__ = ["Publisher"]

logger = logging.getLogger(__name__)


class Publisher:
    """A stream to publish.

    :param name: the stream's name, as others see it.
    :param audio: whether the stream has an audio track at all (toggle it later with
        :meth:`publish_audio`; without a track it cannot be turned on).
    :param video: whether the stream has a video track at all.
    :param video_source: where video comes from; default a 640x480 30 fps
        :class:`~salon.client.sources.TestPatternSource`.
    :param audio_source: where audio comes from; default a 440 Hz
        :class:`~salon.client.sources.ToneSource`.
    :param video_type: camera, screen or custom, as others see it.
    """

    def __init__(
        self,
        name: str = "",
        *,
        audio: bool = True,
        video: bool = True,
        video_source: VideoSource | None = None,
        audio_source: AudioSource | None = None,
        video_type: VideoType = VideoType.CAMERA,
    ) -> None:
        if not audio and not video:
            raise ValueError("a publisher needs audio, video or both")
        self.name = name
        self.video_type = video_type
        self.video_source: VideoSource | None = (video_source or TestPatternSource()) if video else None
        self.audio_source: AudioSource | None = (audio_source or ToneSource()) if audio else None
        self._audio_on = audio
        self._video_on = video
        self._session: Session | None = None
        self._stream: Stream | None = None
        self._pc: RTCPeerConnection | None = None
        self._video_track: SourceVideoTrack | None = None
        self._audio_track: SourceAudioTrack | None = None
        #: The peer connection being replaced while re-publishing (its tracks stopped: a
        #: source feeds one track at a time), closed once the new one is answered, so the
        #: server never sees the stream's transport closed by its client meanwhile.
        self._previous: RTCPeerConnection | None = None
        self._rates = _Rates()

    def __repr__(self) -> str:
        stream = self._stream.stream_id[:8] if self._stream else "unpublished"
        return f"Publisher({self.name!r}, {stream})"

    # -- public state ------------------------------------------------------------------

    @property
    def stream(self) -> Stream | None:
        """The published stream (None before publishing and while re-publishing)."""
        return self._stream

    @property
    def stream_id(self) -> str | None:
        return self._stream.stream_id if self._stream else None

    @property
    def session(self) -> Session | None:
        """The session it is published in, if any."""
        return self._session

    @property
    def publishing_audio(self) -> bool:
        return self._audio_on

    @property
    def publishing_video(self) -> bool:
        return self._video_on

    async def publish_audio(self, enabled: bool) -> None:
        """Send audio (True) or silence (False); others see ``has_audio`` change.

        :raises InvalidStateError: the publisher was made with ``audio=False``.
        """
        if self.audio_source is None:
            raise InvalidStateError(f"{self!r} has no audio track (made with audio=False)")
        self._audio_on = enabled
        if self._audio_track is not None:
            self._audio_track.enabled = enabled
        await self._update(
            UpdateStreamRequest(request_id=0, stream_id="", has_audio=enabled), "publish_audio"
        )

    async def publish_video(self, enabled: bool) -> None:
        """Send video (True) or black frames at a low rate (False); others see ``has_video``
        change.

        :raises InvalidStateError: the publisher was made with ``video=False``.
        """
        if self.video_source is None:
            raise InvalidStateError(f"{self!r} has no video track (made with video=False)")
        self._video_on = enabled
        if self._video_track is not None:
            self._video_track.enabled = enabled
        await self._update(
            UpdateStreamRequest(request_id=0, stream_id="", has_video=enabled), "publish_video"
        )

    async def _update(self, request: UpdateStreamRequest, what: str) -> None:
        session, stream = self._session, self._stream
        if session is None or stream is None:
            return  # applied when (re-)published
        await session._request(
            request.model_copy(update={"stream_id": stream.stream_id}),
            action=f"{what} on stream {stream.stream_id}",
        )

    async def get_stats(self) -> PublisherStats:
        """Sent packets, bitrate, loss and round-trip time reported by the server, frame rate
        and resolution, per kind.

        :raises InvalidStateError: not published.
        """
        if self._pc is None:
            raise InvalidStateError(f"{self!r} is not published")
        track = self._video_track
        report = await self._pc.getStats()
        stats = collect(
            report,
            self._rates,
            outbound=True,
            frames=track.frames_sent if track else 0,
            size=track.size if track else None,
        )
        return PublisherStats(
            audio=stats.get("audio"),
            video=stats.get("video"),
            bitrate=transport_bitrate(report, self._rates, outbound=True),
        )

    # -- driven by Session ---------------------------------------------------------------

    def _publish_request(self, sdp: str) -> PublishRequest:
        source = self.video_source
        return PublishRequest(
            request_id=0,
            name=self.name,
            has_audio=self.audio_source is not None and self._audio_on,
            has_video=source is not None and self._video_on,
            video_type=self.video_type if source is not None else None,
            width=source.width if source else None,
            height=source.height if source else None,
            frame_rate=source.frame_rate if source else None,
            sdp=sdp,
        )

    async def _offer(
        self,
        ice_servers: Sequence[RTCIceServer],
        ice_addresses: Sequence[str] | None,
        *,
        keep_previous: bool = False,
    ) -> str:
        """A new peer connection with fresh tracks on the sources; returns its sendonly offer.
        ``keep_previous``: the current peer connection stays open (its tracks stop) until the
        new one is answered (re-publishing the same stream after a resume)."""
        if keep_previous and self._pc is not None and self._previous is None:
            self._previous, self._pc = self._pc, None
            video, audio = self._video_track, self._audio_track
            self._video_track = self._audio_track = None
            await self._close_pc(None, video, audio)
        else:
            await self._close_media()
        # Open and probe the sources first: one that cannot start fails publish() itself.
        if self.audio_source is not None:
            await self.audio_source._start()
        if self.video_source is not None:
            await self.video_source._start()
        pc = new_peer_connection(ice_servers)
        self._pc = pc
        owner = repr(self)
        try:
            if self.audio_source is not None:
                self.audio_source._acquire()
                self._audio_track = SourceAudioTrack(self.audio_source, owner, self._source_failed("audio"))
                self._audio_track.enabled = self._audio_on
                pc.addTransceiver(self._audio_track, direction="sendonly")
            if self.video_source is not None:
                self.video_source._acquire()
                self._video_track = SourceVideoTrack(self.video_source, owner, self._source_failed("video"))
                self._video_track.enabled = self._video_on
                pc.addTransceiver(self._video_track, direction="sendonly")
            if ice_addresses is not None:
                restrict_ice_addresses(pc, ice_addresses)
            await pc.setLocalDescription(await pc.createOffer())
        except Exception as exc:
            await self._close_media()
            if isinstance(exc, InvalidStateError):
                raise
            raise MediaError(f"{self!r}: cannot create an offer: {exc}") from exc
        return str(pc.localDescription.sdp)

    def _source_failed(self, kind: str) -> Callable[[ClientError], None]:
        """Report a source failing while published as an :class:`Error` event."""

        def report(error: ClientError) -> None:
            if self._session is not None:
                self._session._emit(Error(error, f"{self!r}: the {kind} source stopped"))

        return report

    async def _answer(self, sdp: str | None, stream: Stream) -> None:
        if self._pc is None:
            raise InvalidStateError(f"{self!r} was closed while publishing")
        if sdp is None:
            raise MediaError(f"{self!r}: the server sent no SDP answer (a server without media?)")
        try:
            answer = RTCSessionDescription(sdp=complete_rejected_mlines(sdp), type="answer")
            await self._pc.setRemoteDescription(answer)
        except Exception as exc:
            raise MediaError(f"{self!r}: the server's answer cannot be applied: {exc}") from exc
        self._stream = stream
        logger.info("%r: published", self)
        await self._close_previous()

    def _mute_forced(self) -> None:
        self._audio_on = False
        if self._audio_track is not None:
            self._audio_track.enabled = False
        if self._stream is not None:
            self._stream = _replace(self._stream, has_audio=False)

    async def _close_media(self) -> None:
        """Close the peer connection (the tracks stop; the sources stay open)."""
        pc, self._pc = self._pc, None
        video, audio = self._video_track, self._audio_track
        self._video_track = self._audio_track = None
        self._stream = None
        await self._close_previous()
        await self._close_pc(pc, video, audio)

    async def _close_previous(self) -> None:
        previous, self._previous = self._previous, None
        if previous is not None:
            await previous.close()

    async def _close_pc(
        self, pc: RTCPeerConnection | None, video: SourceVideoTrack | None, audio: SourceAudioTrack | None
    ) -> None:
        for track, source in ((video, self.video_source), (audio, self.audio_source)):
            if track is not None:
                track.stop()
            if source is not None and track is not None:
                source._release()
        if pc is not None:
            await pc.close()

    async def _detach(self) -> None:
        """No longer published (unpublished, dropped, or the session ended)."""
        await self._close_media()
        self._session = None


def _replace(stream: Stream, **changes: object) -> Stream:
    import dataclasses

    return dataclasses.replace(stream, **changes)  # type: ignore[arg-type]
