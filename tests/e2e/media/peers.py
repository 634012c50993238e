"""Synthetic aiortc peers for the media-plane end-to-end tests.

* :class:`FrameIndexTrack`: 640x480 video whose frames carry their index as a 4x4 grid of
  black/white blocks (16 bits), so a subscriber can read the index back after VP8/H.264
  encode → SFU forwarding → decode, and check order and content.
* :class:`ToneTrack`: a 440 Hz sine at 48 kHz, 20 ms frames.
* :class:`Publisher` / :class:`Subscriber`: ``RTCPeerConnection`` wrappers that offer
  sendonly / recvonly m-lines to an in-process :class:`~salon.media.router.Router`, and (for
  subscribers) decode what they receive into :class:`ReceivedMedia`.

All peers gather on 127.0.0.1 only (:func:`salon.media.loopback.host_addresses`, applied by the
``loopback_only`` fixture) and use no STUN server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from av import AudioFrame, VideoFrame

from salon.client._media import route_rtp_by_mid
from salon.media.router import Router
from salon.media.transport import WebRtcTransport

WIDTH, HEIGHT = 640, 480
GRID = 4  # 4x4 blocks = 16 bits of frame index
SAMPLE_RATE = 48000
TONE_HZ = 440.0


_NOISE = np.random.default_rng(7).integers(0, 60, size=(HEIGHT, WIDTH * 2, 3), dtype=np.uint8)


def draw_index(index: int) -> np.ndarray:
    """A 640x480 BGR frame whose 16 blocks encode ``index`` (bit i = block i, light = 1).

    Moving noise (±30 around dark 40 / light 200) keeps the encoder busy, so the stream has a
    realistic packet rate (several packets per frame) for the loss tests.
    """
    image = np.full((HEIGHT, WIDTH, 3), 10, dtype=np.uint8)
    bh, bw = HEIGHT // GRID, WIDTH // GRID
    for bit in range(GRID * GRID):
        if index >> bit & 1:
            row, col = divmod(bit, GRID)
            image[row * bh : (row + 1) * bh, col * bw : (col + 1) * bw] = 170
    shift = (index * 37) % WIDTH
    image += _NOISE[:, shift : shift + WIDTH]
    return image


def read_index(image: np.ndarray) -> int:
    """Read back the index drawn by :func:`draw_index` (block centres, luma threshold)."""
    gray = image.mean(axis=2) if image.ndim == 3 else image
    bh, bw = gray.shape[0] // GRID, gray.shape[1] // GRID
    value = 0
    for bit in range(GRID * GRID):
        row, col = divmod(bit, GRID)
        top, left = row * bh + bh // 4, col * bw + bw // 4
        centre = gray[top : top + bh // 2, left : left + bw // 2]
        if centre.mean() > 128:
            value |= 1 << bit
    return value


class FrameIndexTrack(VideoStreamTrack):
    """30 fps 640x480 frames numbered ``first``, ``first + 1``... (0 is avoided: all black)."""

    def __init__(self, first: int = 1) -> None:
        super().__init__()
        self.index = first - 1
        self._cache: dict[int, np.ndarray] = {}

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        self.index += 1
        frame = VideoFrame.from_ndarray(draw_index(self.index), format="bgr24")
        frame.pts = pts
        frame.time_base = time_base
        return frame


class ToneTrack(MediaStreamTrack):
    """A continuous sine (440 Hz unless told), 48 kHz mono s16, 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float = TONE_HZ) -> None:
        super().__init__()
        self.frequency = frequency
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = SAMPLE_RATE // 50
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + (self._samples + n) / SAMPLE_RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(n) + self._samples) / SAMPLE_RATE
        pcm = (np.sin(2 * np.pi * self.frequency * t) * 8000).astype(np.int16)
        frame = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._samples += n
        return frame


def _prefer(transceiver: Any, kind: str, mime: str) -> None:
    caps = RTCRtpSender.getCapabilities(kind)
    wanted = [c for c in caps.codecs if c.mimeType.lower() == mime.lower()]
    wanted += [c for c in caps.codecs if c.mimeType.lower() == f"{kind}/rtx"]
    transceiver.setCodecPreferences(wanted)


def new_peer_connection() -> RTCPeerConnection:
    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))


class _Peer:
    """An aiortc peer connection that offers (the SFU answers), with its reader tasks."""

    def __init__(self) -> None:
        self.pc = new_peer_connection()
        self._tasks: list[asyncio.Task[None]] = []

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def _read(self, track: MediaStreamTrack, media: ReceivedMedia) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(read_track(track, media)))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)


class Publisher(_Peer):
    """An aiortc client publishing a :class:`FrameIndexTrack` and/or a :class:`ToneTrack`."""

    def __init__(
        self,
        *,
        audio: bool = True,
        video: bool = True,
        video_codec: str | None = None,
        first_frame: int = 1,
        tone_hz: float = TONE_HZ,
    ) -> None:
        super().__init__()
        self.video = FrameIndexTrack(first_frame) if video else None
        self.audio = ToneTrack(tone_hz) if audio else None
        if self.audio is not None:
            self.pc.addTransceiver(self.audio, direction="sendonly")
        if self.video is not None:
            transceiver = self.pc.addTransceiver(self.video, direction="sendonly")
            if video_codec:
                _prefer(transceiver, "video", video_codec)


@dataclass
class ReceivedMedia:
    """What one subscriber decoded."""

    indices: list[int] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    first_video_at: float | None = None
    audio_frames: int = 0
    audio_chunks: list[np.ndarray] = field(default_factory=list)
    audio_rate: int = SAMPLE_RATE


class Subscriber(_Peer):
    """An aiortc client receiving one stream and decoding it into :class:`ReceivedMedia`."""

    def __init__(self, *, audio: bool = True, video: bool = True, video_codec: str | None = None) -> None:
        super().__init__()
        self.media = ReceivedMedia()
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        if video:
            transceiver = self.pc.addTransceiver("video", direction="recvonly")
            if video_codec:
                _prefer(transceiver, "video", video_codec)
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._read(track, self.media)


async def read_track(track: MediaStreamTrack, media: ReceivedMedia) -> None:
    """Decode ``track`` into ``media`` until it ends: frame indices and sizes, or audio."""
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            if track.kind == "video":
                image = frame.to_ndarray(format="bgr24")
                if media.first_video_at is None:
                    media.first_video_at = time.monotonic()
                media.sizes.add((frame.width, frame.height))
                media.indices.append(read_index(image))
            else:
                media.audio_frames += 1
                media.audio_rate = frame.sample_rate
                samples = frame.to_ndarray()
                channels = len(frame.layout.channels)
                mono = samples.reshape(-1, channels)[:, 0] if samples.shape[0] == 1 else samples[0]
                media.audio_chunks.append(mono.astype(np.float64))


class SharedSubscriber(_Peer):
    """One aiortc peer connection receiving several streams, one subscription at a time: each
    :meth:`add` adds a recvonly audio + video pair of m-lines and renegotiates (the SFU's
    answer must cover every m-line), and each pair decodes into its own :class:`ReceivedMedia`."""

    def __init__(self) -> None:
        super().__init__()
        self._by_mid: dict[str, ReceivedMedia] = {}
        self._pending = ReceivedMedia()
        self.pc.on("track", self._on_track)

    def add(self) -> ReceivedMedia:
        media = ReceivedMedia()
        for kind in ("audio", "video"):
            self.pc.addTransceiver(kind, direction="recvonly")
        # As the client SDK does: the SFU forwards the new m-lines' media before aiortc has set
        # up their receivers; left to aiortc, it would go to the earlier stream's receivers.
        route_rtp_by_mid(self.pc)
        self._pending = media
        return media

    def stop(self, media: ReceivedMedia) -> None:
        """The client side of an unsubscribe: that pair of m-lines goes inactive."""
        for transceiver in self.pc.getTransceivers():
            if self._by_mid.get(transceiver.mid) is media:
                transceiver.direction = "inactive"

    async def offer(self) -> str:
        sdp = await super().offer()
        for transceiver in self.pc.getTransceivers():
            if transceiver.mid is not None and transceiver.mid not in self._by_mid:
                self._by_mid[transceiver.mid] = self._pending
        return sdp

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        self._read(track, self._by_mid[transceiver.mid])


def dominant_frequency(chunks: list[np.ndarray], rate: int) -> tuple[float, float]:
    """(peak frequency in Hz, share of spectral energy within ±20 Hz of it)."""
    signal = np.concatenate(chunks)
    signal = signal - signal.mean()
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)))) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    peak = float(freqs[int(np.argmax(spectrum))])
    band = spectrum[(freqs > peak - 20) & (freqs < peak + 20)].sum()
    return peak, float(band / spectrum.sum())


class LossyReceive:
    """Drop a share of the SRTP (RTP, not RTCP) datagrams an SFU transport receives, *before*
    SRTP unprotect (docs: media-plane.md §3, fix 2), by wrapping the transport's
    ``srtp_received`` on the instance: the media receive seam, which the transport's socket
    callbacks look up per datagram (see :meth:`WebRtcTransport._guard`)."""

    def __init__(self, transport: WebRtcTransport, rate: float, seed: int = 1) -> None:
        self.rate = rate
        self.dropped = 0
        #: Dropped packets per SSRC (the RTP header is not encrypted by SRTP).
        self.dropped_by_ssrc: collections.Counter[int] = collections.Counter()
        self._random = random.Random(seed)
        received = transport.srtp_received

        def lossy(data: bytes) -> None:
            if not 192 <= data[1] <= 223 and self._random.random() < self.rate:
                self.dropped += 1
                self.dropped_by_ssrc[int.from_bytes(data[8:12], "big")] += 1
                return
            received(data)

        transport.srtp_received = lossy  # type: ignore[method-assign]


class LossySend:
    """Drop a share of the RTP packets an SFU transport sends (before protect), replacing the
    instance's ``send_rtp``."""

    def __init__(self, transport: WebRtcTransport, rate: float, seed: int = 2) -> None:
        self.rate = rate
        self.dropped = 0
        #: Dropped packets per SSRC (retransmissions on an RTX SSRC counted apart).
        self.dropped_by_ssrc: collections.Counter[int] = collections.Counter()
        self._random = random.Random(seed)
        send = transport.send_rtp

        def lossy(packet: bytes) -> None:
            if self._random.random() < self.rate:
                self.dropped += 1
                self.dropped_by_ssrc[int.from_bytes(packet[8:12], "big")] += 1
                return
            send(packet)

        transport.send_rtp = lossy  # type: ignore[method-assign]


async def publish(router: Router, publisher: Publisher, **kwargs: Any) -> Any:
    result = await router.publish(await publisher.offer(), **kwargs)
    await publisher.answer(result.answer_sdp)
    return result


async def subscribe(router: Router, stream_id: str, subscriber: Subscriber, **kwargs: Any) -> Any:
    result = await router.subscribe(stream_id, await subscriber.offer(), **kwargs)
    await subscriber.answer(result.answer_sdp)
    return result


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms; fail saying ``what`` did not happen in time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_settled(count: Any, quiet: float, timeout: float, what: str) -> int:
    """Wait until ``count()`` has not changed for ``quiet`` seconds (frames already on their way
    drained); fail saying ``what`` kept changing if it has not settled within ``timeout``."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still changing after {timeout} s (now {last})")
        await asyncio.sleep(0.02)
        if (now := count()) != last:
            last, since = now, time.monotonic()
    return int(last)


def process_udp_sockets() -> set[int]:
    """Inodes of this process's open UDP sockets (via /proc, no psutil)."""
    inodes: set[int] = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    udp: set[int] = set()
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                inode = int(line.split()[9])
                if inode in inodes:
                    udp.add(inode)
    return udp
