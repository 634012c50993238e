"""Decoded media as a subscriber delivers it: :class:`VideoFrame` and :class:`AudioFrame`.

Both wrap the decoder's PyAV frame without copying; numpy views and conversions are made
on demand, so a subscriber that only counts frames pays almost nothing per frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt

__all__ = ["AudioFrame", "VideoFrame"]


@dataclass(frozen=True, slots=True, eq=False)
class VideoFrame:
    """One decoded video frame of one subscriber."""

    width: int
    """Width in pixels."""
    height: int
    """Height in pixels."""
    timestamp: float
    """Presentation time in seconds, from the stream's RTP clock (starts near 0 per stream)."""
    _frame: av.VideoFrame = field(repr=False)

    @property
    def planes(self) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """The I420 planes (Y, U, V) as read-only numpy views of the decoder's buffers (no copy).

        Y is ``(height, width)``; U and V are ``((height + 1) // 2, (width + 1) // 2)``.
        """
        frame = self._frame
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        sizes = ((self.width, self.height), ((self.width + 1) // 2, (self.height + 1) // 2))
        views = []
        for i, plane in enumerate(frame.planes[:3]):
            width, height = sizes[min(i, 1)]
            flat = np.frombuffer(memoryview(plane), dtype=np.uint8)
            view = flat.reshape(-1, plane.line_size)[:height, :width]
            view.flags.writeable = False  # the decoder's buffer, shared by every reader
            views.append(view)
        return views[0], views[1], views[2]

    def to_i420(self) -> npt.NDArray[np.uint8]:
        """A contiguous I420 copy, shape ``(height * 3 // 2, width)`` (even sizes)."""
        return np.asarray(self._frame.to_ndarray(format="yuv420p"), dtype=np.uint8)

    def to_rgb(self) -> npt.NDArray[np.uint8]:
        """An RGB copy, shape ``(height, width, 3)``."""
        return np.asarray(self._frame.to_ndarray(format="rgb24"), dtype=np.uint8)

    def to_av(self) -> av.VideoFrame:
        """The underlying PyAV frame (e.g. to encode it into a file)."""
        return self._frame


@dataclass(frozen=True, slots=True, eq=False)
class AudioFrame:
    """One decoded audio frame (typically 20 ms) of one subscriber: its publisher's audio
    only, never a mix."""

    sample_rate: int
    """Samples per second per channel (48000 for Opus)."""
    channels: int
    """1 (mono) or 2 (stereo, interleaved in :attr:`samples`)."""
    timestamp: float
    """Presentation time in seconds, from the stream's RTP clock."""
    _frame: Any = field(repr=False)
    _samples: list[npt.NDArray[np.int16]] = field(default_factory=list, repr=False)

    @property
    def samples(self) -> npt.NDArray[np.int16]:
        """int16 samples, shape ``(samples_per_channel, channels)``."""
        if not self._samples:
            raw = np.asarray(self._frame.to_ndarray())
            self._samples.append(raw.reshape(-1, self.channels).astype(np.int16, copy=False))
        return self._samples[0]

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return int(self._frame.samples) / self.sample_rate

    @property
    def level(self) -> float:
        """RMS level in dBFS (0 = full scale, -inf for digital silence), over all channels."""
        pcm = self.samples.astype(np.float64)
        rms = math.sqrt(float(np.mean(pcm * pcm))) if pcm.size else 0.0
        return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf

    def to_av(self) -> av.AudioFrame:
        """The underlying PyAV frame."""
        frame: av.AudioFrame = self._frame
        return frame
