"""Where a :class:`~salon.client.Publisher`'s media comes from.

Video sources (:class:`VideoSource`):

* :class:`CustomVideoSource`: the application pushes frames (numpy RGB or I420, or
  ``av.VideoFrame``); the SDK paces and timestamps them and **drops** frames rather than
  blocking when the application is faster than the encoder.
* :class:`TestPatternSource`: frames numbered 1, 2, 3... with the number drawn in the pixels
  (:func:`read_test_pattern_index` reads it back after encode, forwarding and decode).
* :class:`MediaFileVideoSource`: a media file decoded with PyAV, paced at its own rate.
* :class:`CameraSource`: a V4L2 camera (``/dev/video0``); :class:`~salon.client.errors.DeviceNotFound`
  where there is none.

Audio sources (:class:`AudioSource`): :class:`CustomAudioSource` (int16 PCM the application
pushes), :class:`ToneSource` (a sine) and :class:`MediaFileAudioSource`.

A source is independent of any connection: when a publisher is re-published (after a
reconnection) a new aiortc track is made from the same source. A source serves at most one
publisher at a time. Sources produce frames only while a track pulls them.

Failures: :meth:`Session.publish <salon.client.Session.publish>` starts (opens and probes)
the sources first, so a file without the stream asked for, or a device that cannot be
opened, raises :class:`~salon.client.errors.SourceError` (``DeviceNotFound`` for devices)
from ``publish``. A source failing later (a read error, the end of a file played with
``loop=False``) stops that track and is reported as an :class:`~salon.client.events.Error`
event on the session.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from salon.client.errors import DeviceNotFound, InvalidStateError, SourceError
from salon.client.frames import VideoFrame

__all__ = [
    "AudioSource",
    "CameraSource",
    "CustomAudioSource",
    "CustomVideoSource",
    "MediaFileAudioSource",
    "MediaFileVideoSource",
    "TestPatternSource",
    "ToneSource",
    "VideoSource",
    "read_test_pattern_index",
]

logger = logging.getLogger(__name__)

#: Samples per second of the audio handed to aiortc's Opus encoder.
AUDIO_RATE = 48000
#: Audio frame length (aiortc packetises 20 ms).
AUDIO_PTIME = 0.020
#: Frames per second while video is toggled off (black frames keep the stream alive cheaply).
MUTED_FRAME_RATE = 5.0


class VideoSource(abc.ABC):
    """Base class of video sources: something a publisher's video track pulls frames from."""

    def __init__(self, *, width: int | None, height: int | None, frame_rate: float) -> None:
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, not {frame_rate}")
        self.width = width
        self.height = height
        self.frame_rate = frame_rate
        self._in_use = False

    def _acquire(self) -> None:
        if self._in_use:
            raise InvalidStateError(f"{self!r} already feeds a publisher")
        self._in_use = True

    def _release(self) -> None:
        self._in_use = False

    async def _start(self) -> None:  # noqa: B027 - optional hook
        """Make sure the source can produce frames (open and probe files and devices), before
        anything is published. :raises SourceError: it cannot."""

    @abc.abstractmethod
    async def _next_frame(self) -> av.VideoFrame:
        """The next frame to encode, paced by the source (pts is set by the track)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the source's resources (files, devices). Idempotent."""


class AudioSource(abc.ABC):
    """Base class of audio sources: something a publisher's audio track pulls 20 ms frames from."""

    def __init__(self) -> None:
        self._in_use = False

    def _acquire(self) -> None:
        if self._in_use:
            raise InvalidStateError(f"{self!r} already feeds a publisher")
        self._in_use = True

    def _release(self) -> None:
        self._in_use = False

    async def _start(self) -> None:  # noqa: B027 - optional hook
        """Make sure the source can produce audio, before anything is published.

        :raises SourceError: it cannot.
        """

    @abc.abstractmethod
    async def _next_samples(self) -> tuple[npt.NDArray[np.int16], int]:
        """The next 20 ms as ``(int16 samples of shape (n, channels), sample_rate)``, paced in
        real time by the source."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the source's resources. Idempotent."""


class _Pacer:
    """Real-time pacing: ``wait()`` returns at ``start + n / rate`` for n = 0, 1, 2...; when
    more than ``max_late`` periods late (a stalled loop), it skips ahead instead of bursting."""

    def __init__(self, rate: float, max_late: int = 3) -> None:
        self.period = 1.0 / rate
        self.max_late = max_late
        self._next: float | None = None

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next is None:
            self._next = now
        delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > self.max_late * self.period:
            self._next = now
        self._next += self.period


# -- video -----------------------------------------------------------------------------


def _to_av_frame(frame: npt.NDArray[np.uint8] | av.VideoFrame) -> av.VideoFrame:
    if isinstance(frame, av.VideoFrame):
        return frame
    if frame.ndim == 3 and frame.shape[2] == 3:
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    if frame.ndim == 2 and frame.shape[0] % 3 == 0:
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="yuv420p")
    raise ValueError(
        f"a video frame must be RGB (height, width, 3) or I420 (height * 3 / 2, width) uint8, "
        f"not an array of shape {frame.shape}"
    )


class CustomVideoSource(VideoSource):
    """Frames the application pushes with :meth:`push` (a "custom capturer").

    The SDK keeps only the **latest** frame not yet taken by the encoder: pushing faster than
    ``frame_rate`` (or faster than the encoder keeps up) replaces it, and the replaced frame
    is counted in :attr:`dropped`. :meth:`push` never blocks. Frames are timestamped when the
    encoder takes them. The SDK keeps a reference to the pushed array until then: push a
    new array rather than drawing into the last one.

    :param frame_rate: the most frames per second sent (the pacing ceiling).
    """

    def __init__(
        self, *, width: int | None = None, height: int | None = None, frame_rate: float = 30.0
    ) -> None:
        super().__init__(width=width, height=height, frame_rate=frame_rate)
        self._latest: npt.NDArray[np.uint8] | av.VideoFrame | None = None
        self._ready = asyncio.Event()
        self._pacer = _Pacer(frame_rate)
        self.pushed = 0
        """Frames pushed so far."""
        self.dropped = 0
        """Frames replaced by a newer one before the encoder took them."""

    def push(self, frame: npt.NDArray[np.uint8] | av.VideoFrame) -> None:
        """Offer a frame: RGB ``(height, width, 3)`` or I420 ``(height * 3 // 2, width)``
        uint8 arrays, or an ``av.VideoFrame``. Returns at once."""
        if not isinstance(frame, av.VideoFrame):
            rgb = frame.ndim == 3 and frame.shape[2] == 3
            if frame.dtype != np.uint8 or not (rgb or (frame.ndim == 2 and frame.shape[0] % 3 == 0)):
                raise ValueError(
                    "a video frame must be RGB (height, width, 3) or I420 (height * 3 / 2, width) "
                    f"uint8, not a {frame.dtype} array of shape {frame.shape}"
                )
        if self._latest is not None:
            self.dropped += 1
        self._latest = frame
        self.pushed += 1
        self._ready.set()

    async def _next_frame(self) -> av.VideoFrame:
        await self._pacer.wait()
        while self._latest is None:
            self._ready.clear()
            await self._ready.wait()
        frame, self._latest = self._latest, None
        return _to_av_frame(frame)


#: Blocks per side of the test pattern's grid: 4 x 4 = 16 bits of frame index.
_GRID = 4


class TestPatternSource(VideoSource):
    """Frames numbered 1, 2, 3... (wrapping at 65535) with the number drawn as a 4x4 grid of
    dark/light blocks, generated in I420 at ``frame_rate``. See :func:`read_test_pattern_index`."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, width: int = 640, height: int = 480, frame_rate: float = 30.0) -> None:
        if width % (2 * _GRID) or height % (2 * _GRID):
            raise ValueError(f"test pattern size must be a multiple of {2 * _GRID}, not {width}x{height}")
        super().__init__(width=width, height=height, frame_rate=frame_rate)
        self.index = 0
        """The number of the last frame produced."""
        self._pacer = _Pacer(frame_rate)
        self._buffer = np.full((height * 3 // 2, width), 128, dtype=np.uint8)

    async def _next_frame(self) -> av.VideoFrame:
        await self._pacer.wait()
        self.index = self.index % 0xFFFF + 1
        return av.VideoFrame.from_ndarray(self._draw(self.index), format="yuv420p")

    def _draw(self, index: int) -> npt.NDArray[np.uint8]:
        assert self.width is not None and self.height is not None
        luma = self._buffer[: self.height]
        luma.fill(24)
        bh, bw = self.height // _GRID, self.width // _GRID
        for bit in range(_GRID * _GRID):
            if index >> bit & 1:
                row, col = divmod(bit, _GRID)
                luma[row * bh : (row + 1) * bh, col * bw : (col + 1) * bw] = 232
        return self._buffer


def read_test_pattern_index(frame: VideoFrame | npt.NDArray[np.uint8]) -> int:
    """Read back the frame number drawn by :class:`TestPatternSource` from a decoded frame (or
    its luma plane / an RGB array): the mean of each block's centre, thresholded."""
    if isinstance(frame, VideoFrame):
        gray: npt.NDArray[Any] = frame.planes[0]
    elif frame.ndim == 3:
        gray = frame.mean(axis=2)
    else:
        gray = frame
    bh, bw = gray.shape[0] // _GRID, gray.shape[1] // _GRID
    value = 0
    for bit in range(_GRID * _GRID):
        row, col = divmod(bit, _GRID)
        top, left = row * bh + bh // 4, col * bw + bw // 4
        if gray[top : top + bh // 2, left : left + bw // 2].mean() > 128:
            value |= 1 << bit
    return value


class _ContainerReader:
    """Decodes one stream of a PyAV container in a worker thread, one frame per call."""

    def __init__(
        self,
        url: str,
        kind: str,
        *,
        loop: bool,
        format: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.url, self.kind, self.loop = url, kind, loop
        self._format, self._options = format, options or {}
        self._container: Any = None
        self._frames: Iterator[Any] | None = None

    def start(self) -> None:
        """Open the container unless it is open (blocking; call in a thread).

        :raises SourceError: it cannot be opened or has no stream of the kind.
        """
        if self._frames is None:
            self._open()

    def _open(self) -> None:
        try:
            self._container = av.open(self.url, format=self._format, options=self._options)
        except (OSError, av.FFmpegError) as exc:
            raise SourceError(f"cannot open {self.url!r}: {exc}") from exc
        streams = self._container.streams.video if self.kind == "video" else self._container.streams.audio
        if not streams:
            self._container.close()
            self._container = None
            raise SourceError(f"{self.url!r} has no {self.kind} stream")
        stream = streams[0]
        stream.thread_type = "AUTO"
        self._frames = iter(self._container.decode(stream))

    def read(self) -> Any:
        """The next decoded frame (blocking; call in a thread)."""
        for _ in range(2):
            if self._frames is None:
                self._open()
            assert self._frames is not None
            try:
                return next(self._frames)
            except StopIteration:
                self.close()
                if not self.loop:
                    break
            except (OSError, av.FFmpegError) as exc:
                self.close()
                raise SourceError(f"{self.url!r}: cannot decode {self.kind}: {exc}") from exc
        raise SourceError(f"{self.url!r}: end of {self.kind}")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._frames = None


class MediaFileVideoSource(VideoSource):
    """The first video stream of a media file (anything FFmpeg reads), decoded in a worker
    thread and paced at ``frame_rate`` (default: the file's own rate, else 30). Its
    ``width`` and ``height`` are the file's.

    :raises SourceError: no such file, not readable, or no video stream.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, loop: bool = True, frame_rate: float | None = None
    ) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise SourceError(f"no media file {self.path!r}")
        try:
            with av.open(self.path) as probe:
                if not probe.streams.video:
                    raise SourceError(f"{self.path!r} has no video stream")
                video = probe.streams.video[0]
                rate = frame_rate if frame_rate is not None else float(video.average_rate or 30)
                width, height = video.codec_context.width or None, video.codec_context.height or None
        except (OSError, av.FFmpegError) as exc:
            raise SourceError(f"cannot open {self.path!r}: {exc}") from exc
        super().__init__(width=width, height=height, frame_rate=rate)
        self._reader = _ContainerReader(self.path, "video", loop=loop)
        self._pacer = _Pacer(rate)

    async def _start(self) -> None:
        await asyncio.to_thread(self._reader.start)

    async def _next_frame(self) -> av.VideoFrame:
        frame = await asyncio.to_thread(self._reader.read)
        await self._pacer.wait()
        return frame  # type: ignore[no-any-return]

    def close(self) -> None:
        self._reader.close()


class CameraSource(VideoSource):
    """A V4L2 camera, e.g. ``/dev/video0``, opened with PyAV (``format="v4l2"``).

    :raises DeviceNotFound: when the device node does not exist (no camera on this machine);
        from :meth:`Session.publish <salon.client.Session.publish>` when it exists but cannot
        be opened as a V4L2 camera at this size and rate (not a camera, busy, no permission).
    """

    def __init__(
        self, device: str = "/dev/video0", *, width: int = 640, height: int = 480, frame_rate: float = 30.0
    ) -> None:
        if not os.path.exists(device):
            raise DeviceNotFound(
                f"no V4L2 camera at {device} (is a camera plugged in and its driver loaded?)"
            )
        super().__init__(width=width, height=height, frame_rate=frame_rate)
        self.device = device
        self._reader = _ContainerReader(
            device,
            "video",
            loop=False,
            format="v4l2",
            options={"video_size": f"{width}x{height}", "framerate": f"{frame_rate:g}"},
        )

    async def _start(self) -> None:
        try:
            await asyncio.to_thread(self._reader.start)
        except SourceError as exc:
            raise DeviceNotFound(f"camera {self.device} cannot be opened: {exc}") from exc

    async def _next_frame(self) -> av.VideoFrame:
        try:
            return await asyncio.to_thread(self._reader.read)
        except SourceError as exc:
            raise DeviceNotFound(f"camera {self.device}: {exc}") from exc

    def close(self) -> None:
        self._reader.close()


# -- audio -----------------------------------------------------------------------------


class ToneSource(AudioSource):
    """A continuous sine at ``frequency`` Hz, 48 kHz mono, paced in real time."""

    def __init__(self, frequency: float = 440.0, *, amplitude: float = 0.25) -> None:
        super().__init__()
        if not 0 < frequency < AUDIO_RATE / 2:
            raise ValueError(f"frequency must be within 0-{AUDIO_RATE // 2} Hz, not {frequency}")
        self.frequency = frequency
        self.amplitude = amplitude
        self._samples = 0
        self._pacer = _Pacer(1 / AUDIO_PTIME)

    async def _next_samples(self) -> tuple[npt.NDArray[np.int16], int]:
        await self._pacer.wait()
        n = int(AUDIO_RATE * AUDIO_PTIME)
        t = (np.arange(n) + self._samples) / AUDIO_RATE
        self._samples += n
        pcm = (np.sin(2 * np.pi * self.frequency * t) * self.amplitude * 32767).astype(np.int16)
        return pcm.reshape(-1, 1), AUDIO_RATE


class CustomAudioSource(AudioSource):
    """int16 PCM the application pushes with :meth:`push`, sent in real-time 20 ms frames.

    Up to ``max_buffer`` seconds are kept; pushing more drops the oldest samples (counted in
    :attr:`dropped_samples`). When the buffer runs dry, silence is sent.
    """

    def __init__(self, *, sample_rate: int = AUDIO_RATE, channels: int = 1, max_buffer: float = 1.0) -> None:
        super().__init__()
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, not {channels}")
        self.sample_rate = sample_rate
        self.channels = channels
        self._chunks: collections.deque[npt.NDArray[np.int16]] = collections.deque()
        self._buffered = 0
        self._max = int(max_buffer * sample_rate)
        self._pacer = _Pacer(1 / AUDIO_PTIME)
        self.dropped_samples = 0
        """Samples dropped because the buffer was full."""

    def push(self, samples: npt.NDArray[np.int16]) -> None:
        """Queue samples: shape ``(n,)`` (mono) or ``(n, channels)``, dtype int16."""
        if samples.dtype != np.int16:
            raise ValueError(f"audio samples are int16, not {samples.dtype}")
        pcm = samples.reshape(-1, self.channels)
        if len(pcm) > self._max:  # longer than the whole buffer: only its newest part fits
            self.dropped_samples += len(pcm) - self._max
            pcm = pcm[len(pcm) - self._max :]
        self._chunks.append(pcm)
        self._buffered += len(pcm)
        excess = self._buffered - self._max
        while excess > 0:  # drop the oldest samples, cutting into the oldest chunk if need be
            oldest = self._chunks[0]
            if len(oldest) <= excess:
                self._chunks.popleft()
                cut = len(oldest)
            else:
                self._chunks[0] = oldest[excess:]
                cut = excess
            self._buffered -= cut
            self.dropped_samples += cut
            excess -= cut

    async def _next_samples(self) -> tuple[npt.NDArray[np.int16], int]:
        await self._pacer.wait()
        n = int(self.sample_rate * AUDIO_PTIME)
        out = np.zeros((n, self.channels), dtype=np.int16)
        filled = 0
        while filled < n and self._chunks:
            chunk = self._chunks[0]
            take = min(n - filled, len(chunk))
            out[filled : filled + take] = chunk[:take]
            filled += take
            if take == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[take:]
            self._buffered -= take
        return out, self.sample_rate


class MediaFileAudioSource(AudioSource):
    """The first audio stream of a media file, resampled to 48 kHz mono, paced in real time.

    :raises SourceError: no such file; from :meth:`Session.publish
        <salon.client.Session.publish>` when the file cannot be read or has no audio.
    """

    def __init__(self, path: str | os.PathLike[str], *, loop: bool = True) -> None:
        super().__init__()
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise SourceError(f"no media file {self.path!r}")
        self._reader = _ContainerReader(self.path, "audio", loop=loop)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self._pending = np.zeros((0, 1), dtype=np.int16)
        self._pacer = _Pacer(1 / AUDIO_PTIME)

    def _fill(self, n: int) -> npt.NDArray[np.int16]:
        parts = [self._pending]
        have = len(self._pending)
        while have < n:
            for frame in self._resampler.resample(self._reader.read()):
                pcm = frame.to_ndarray().reshape(-1, 1).astype(np.int16)
                parts.append(pcm)
                have += len(pcm)
        samples = np.concatenate(parts)
        self._pending = samples[n:]
        return samples[:n]

    async def _start(self) -> None:
        await asyncio.to_thread(self._reader.start)

    async def _next_samples(self) -> tuple[npt.NDArray[np.int16], int]:
        samples = await asyncio.to_thread(self._fill, int(AUDIO_RATE * AUDIO_PTIME))
        await self._pacer.wait()
        return samples, AUDIO_RATE

    def close(self) -> None:
        self._reader.close()
