"""aiortc glue: peer connections gathering on chosen addresses, and the tracks that pull
frames from :mod:`salon.client.sources`.

Loopback ICE: aioice gathers host candidates on every interface address *except* 127.0.0.1.
:func:`restrict_ice_addresses` makes **one** peer connection's ICE agents gather on exactly
the given addresses (e.g. ``["127.0.0.1"]``), by shadowing ``get_component_candidates`` on
each of its ``aioice.Connection`` instances (the same per-instance technique as
:func:`salon.media.loopback.bind_host_candidates`). Nothing global changes: other peer
connections and other code in the process are unaffected, and the override goes away with
the connection. It relies on aiortc 1.16 / aioice 0.13 internals (``RTCIceGatherer._connection``
and ``Connection.get_component_candidates(component, addresses, timeout)``).

Holes in received video: aiortc's jitter buffer hands out frames in sequence-number order and
waits for a missing packet until it is 512 packets behind (aiortc 1.16), i.e. 10-20 s of a
low simulcast layer. A packet that is never retransmitted (the SFU switched layers past it,
or its retransmission was lost too) froze the video that long. :func:`bound_video_holes`
gives one receiver a buffer that waits :data:`MAX_HOLE_WAIT` at most: then it drops the hole
and what is around it, on to the next packet known to start a frame (after one with the RTP
marker bit), and asks for a key frame (a PLI),
as a browser's frame buffer does. It relies on aiortc 1.16's ``JitterBuffer`` (its
``_origin``, ``_packets``, ``_capacity`` and ``smart_remove``) and on the receiver's
name-mangled ``__jitter_buffer``.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from salon.client.errors import ClientError, MediaError
from salon.client.sources import MUTED_FRAME_RATE, AudioSource, VideoSource

__all__ = [
    "SourceAudioTrack",
    "SourceVideoTrack",
    "bound_video_holes",
    "complete_rejected_mlines",
    "new_peer_connection",
    "restrict_ice_addresses",
    "route_rtp_by_mid",
    "wait_connected",
]

logger = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


def new_peer_connection(ice_servers: Sequence[RTCIceServer]) -> RTCPeerConnection:
    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=list(ice_servers)))


def restrict_ice_addresses(pc: RTCPeerConnection, addresses: Sequence[str]) -> None:
    """Make ``pc`` gather host candidates on exactly ``addresses``; call after adding its
    transceivers and before ``setLocalDescription``."""
    chosen = list(addresses)
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        if getattr(connection, "_salon_addresses", None) is not None:
            continue
        original = connection.get_component_candidates

        async def get_component_candidates(
            component: int, addresses: list[str] | None = None, timeout: int = 5, _original: Any = original
        ) -> Any:
            # ``addresses`` is what aioice found on the interfaces: replaced on purpose.
            return await _original(component=component, addresses=chosen, timeout=timeout)

        connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
        setattr(connection, "_salon_addresses", chosen)  # noqa: B010


def route_rtp_by_mid(pc: RTCPeerConnection) -> None:
    """Route ``pc``'s incoming RTP of an SSRC not seen before by its MID header extension.

    aiortc 1.16's ``RtpRouter.route_rtp`` ignores the MID: a packet of an unknown SSRC goes to
    the one receiver of its payload type, whose SSRC it then keeps. On a receiving peer
    connection renegotiated for each new stream (one BUNDLE transport), the server forwards a
    new subscription's media as soon as it answers, before aiortc has set up that m-line's
    receiver: its first packets (Opus, or VP8 once its key frame comes) went to the receiver
    of an earlier stream of the same kind, which then decoded the other stream's audio or
    pictures. Now such a packet goes to the receiver of its MID (BUNDLE demultiplexing,
    RFC 8843 §9.2), and is dropped while that m-line has none yet. Packets without a MID, and
    SSRCs already known, are routed as before. Call after adding transceivers (their transports
    exist); a router already done is left alone.
    """
    for transceiver in pc.getTransceivers():
        router = transceiver.receiver.transport._rtp_router
        if getattr(router, "_salon_mid_routing", False):
            continue
        original = router.route_rtp

        def route_rtp(packet: Any, _router: Any = router, _original: Any = original) -> Any:
            if packet.ssrc not in _router.ssrc_table and packet.extensions.mid is not None:
                receiver = _router.mid_table.get(packet.extensions.mid)
                if receiver is None or receiver not in _router.payload_type_table.get(
                    packet.payload_type, ()
                ):
                    return None  # that m-line's receiver is not set up (yet): never another's
                _router.ssrc_table[packet.ssrc] = receiver
                return receiver
            return _original(packet)

        router.route_rtp = route_rtp  # type: ignore[method-assign]
        setattr(router, "_salon_mid_routing", True)  # noqa: B010


#: Longest a video receiver waits for a missing packet before it gives the frame up (seconds):
#: NACK and retransmission repair a loss within a round trip or two.
MAX_HOLE_WAIT = 0.5


class _HoleBoundedJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, but a missing packet with packets after it (a hole) is
    waited for at most :data:`MAX_HOLE_WAIT` (see the module docstring)."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity, is_video=True)
        self._clock = clock
        #: Since when the buffer has had a hole (None: it has none).
        self._hole_since: float | None = None
        #: Holes given up (the frames around them dropped).
        self.holes_skipped = 0

    def _first_hole(self, newest: int) -> int | None:
        """Offset from the origin of the first missing packet before ``newest`` (None: none)."""
        origin = self._origin
        if origin is None:
            return None
        span = (newest - origin) & 0xFFFF
        if span >= self._capacity:
            return None
        capacity, packets = self._capacity, self._packets
        return next((i for i in range(span) if packets[(origin + i) % capacity] is None), None)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        if frame is not None:
            self._hole_since = None
            return pli, frame
        hole = self._first_hole(packet.sequence_number)
        if hole is None:
            self._hole_since = None
            return pli, frame
        now = self._clock()
        if self._hole_since is None:
            self._hole_since = now
        if now - self._hole_since < MAX_HOLE_WAIT:
            return pli, frame
        # Give the hole up: drop what is before it (a frame it may end) and on to the first
        # packet known to start a frame (its predecessor is here and ends one: the RTP marker).
        # The frames after may reference what was lost: ask for a key frame.
        self._hole_since = None
        self.holes_skipped += 1
        capacity, origin, packets = self._capacity, self._origin, self._packets
        assert origin is not None
        start = None
        for i in range(hole + 1, capacity):
            previous = packets[(origin + i - 1) % capacity]
            if previous is not None and previous.marker and packets[(origin + i) % capacity] is not None:
                start = i
                break
        if start is None:  # no frame start after the hole yet: drop all that is stored
            self.remove(max(i for i in range(capacity) if packets[(origin + i) % capacity] is not None) + 1)
            return True, None
        self.remove(start)
        return True, self._remove_frame(packet.sequence_number)


def bound_video_holes(receiver: RTCRtpReceiver) -> None:
    """Give a video ``receiver`` a jitter buffer that waits :data:`MAX_HOLE_WAIT` at most for
    a missing packet (its state so far carried over)."""
    attribute = "_RTCRtpReceiver__jitter_buffer"
    old = getattr(receiver, attribute, None)
    if not isinstance(old, JitterBuffer) or isinstance(old, _HoleBoundedJitterBuffer):
        return
    new = _HoleBoundedJitterBuffer(old.capacity)
    new._origin = old._origin
    new._packets = old._packets
    setattr(receiver, attribute, new)


def complete_rejected_mlines(sdp: str) -> str:
    """Give the answer's rejected m-lines (port 0) the DTLS attributes of an accepted one.

    The server rejects an offered m-line it has nothing for (e.g. video of an audio-only
    stream) with port 0 and no ``a=setup``/``a=fingerprint``/``a=rtcp-mux``, which aiortc 1.16 cannot apply
    (its answer validation reads the DTLS role of every m-line). The attributes are
    harmless there: a rejected m-line carries no media.
    """
    head, *sections = sdp.split("\r\nm=")
    dtls = next(
        (
            [
                line
                for line in section.split("\r\n")
                if line.startswith(("a=setup:", "a=fingerprint:", "a=rtcp-mux"))
            ]
            for section in sections
            if "a=setup:" in section
        ),
        [],
    )
    if not dtls or all("a=setup:" in section for section in sections):
        return sdp
    patched = []
    for section in sections:
        if "a=setup:" not in section:
            lines = section.rstrip("\r\n").split("\r\n")
            section = "\r\n".join([*lines, *dtls]) + "\r\n"
        patched.append(section)
    return "\r\nm=".join([head, *patched])


class SourceVideoTrack(MediaStreamTrack):
    """An aiortc video track pulling from a :class:`VideoSource`; one per peer connection.

    It timestamps frames on a 90 kHz clock from the time they are taken, sends black frames
    (at a low rate) while :attr:`enabled` is False, and counts what it sent.
    """

    kind = "video"

    def __init__(
        self, source: VideoSource, owner: str, on_error: Callable[[ClientError], None] | None = None
    ) -> None:
        super().__init__()
        self.source = source
        self._on_error = on_error
        self.enabled = True
        self.frames_sent = 0
        self.size: tuple[int, int] | None = None
        self._owner = owner
        self._start: float | None = None
        self._black: av.VideoFrame | None = None
        self._last_black = 0.0
        self.error: ClientError | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.enabled:
            try:
                frame = await self.source._next_frame()
            except ClientError as exc:
                logger.error("%s: video source failed: %s", self._owner, exc)
                self.error = exc
                self.stop()
                if self._on_error is not None:
                    self._on_error(exc)
                raise MediaStreamError from exc
        else:
            frame = await self._black_frame()
        now = time.monotonic()
        if self._start is None:
            self._start = now
        frame.pts = int((now - self._start) * 90000)
        frame.time_base = VIDEO_TIME_BASE
        self.frames_sent += 1
        self.size = (frame.width, frame.height)
        return frame

    async def _black_frame(self) -> av.VideoFrame:
        delay = self._last_black + 1 / MUTED_FRAME_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._last_black = time.monotonic()
        width, height = self.size or (self.source.width or 320, self.source.height or 240)
        if self._black is None or (self._black.width, self._black.height) != (width, height):
            i420 = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
            i420[:height] = 16
            self._black = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        return self._black


class SourceAudioTrack(MediaStreamTrack):
    """An aiortc audio track pulling 20 ms frames from an :class:`AudioSource`; silence while
    :attr:`enabled` is False (the source keeps being drained, so it stays real-time)."""

    kind = "audio"

    def __init__(
        self, source: AudioSource, owner: str, on_error: Callable[[ClientError], None] | None = None
    ) -> None:
        super().__init__()
        self.source = source
        self._on_error = on_error
        self.enabled = True
        self._owner = owner
        self._pts = 0
        self.error: ClientError | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            samples, rate = await self.source._next_samples()
        except ClientError as exc:
            logger.error("%s: audio source failed: %s", self._owner, exc)
            self.error = exc
            self.stop()
            if self._on_error is not None:
                self._on_error(exc)
            raise MediaStreamError from exc
        if not self.enabled:
            samples = np.zeros_like(samples)
        channels = samples.shape[1]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.reshape(1, -1)),
            format="s16",
            layout="mono" if channels == 1 else "stereo",
        )
        frame.sample_rate = rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, rate)
        self._pts += samples.shape[0]
        return frame


async def wait_connected(pc: RTCPeerConnection, timeout: float, what: str) -> None:
    """Wait for ``pc.connectionState == "connected"``.

    :raises MediaError: it failed, closed, or took longer than ``timeout``.
    """
    done = asyncio.Event()

    def changed() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    pc.on("connectionstatechange", changed)
    changed()
    try:
        async with asyncio.timeout(timeout):
            await done.wait()
    except TimeoutError:
        raise MediaError(f"{what}: media not connected after {timeout:g} s") from None
    finally:
        pc.remove_listener("connectionstatechange", changed)
    if pc.connectionState != "connected":
        raise MediaError(f"{what}: media connection {pc.connectionState}")
