"""Small media files written with PyAV for the tests: video frames with their index drawn in
the pixels (the test pattern's 4x4 grid, :func:`read_test_pattern_index` reads it back) and
a sine tone."""

from __future__ import annotations

import fractions
import pathlib

import av
import numpy as np

from salon.client import TestPatternSource

#: Container → (video codec, audio codec).
CODECS = {"webm": ("libvpx", "libopus"), "mp4": ("libx264", "aac")}


def write_media_file(
    path: pathlib.Path,
    *,
    seconds: float = 3.0,
    fps: int = 30,
    size: tuple[int, int] = (320, 240),
    video: bool = True,
    tone: float | None = 660.0,
) -> pathlib.Path:
    """Write ``path`` (``.webm``: VP8 + Opus, ``.mp4``: H.264 + AAC): frame *n* (from 1) shows
    the number *n*; the audio, when ``tone`` is given, is a sine at ``tone`` Hz, 48 kHz mono."""
    video_codec, audio_codec = CODECS[path.suffix.lstrip(".")]
    pattern = TestPatternSource(width=size[0], height=size[1])
    with av.open(str(path), mode="w") as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream(video_codec, rate=fps)
            vstream.width, vstream.height = size
            vstream.pix_fmt = "yuv420p"
            vstream.bit_rate = 1_500_000
        if tone is not None:
            astream = container.add_stream(audio_codec, rate=48000)
            astream.layout = "mono"
        if vstream is not None:
            for index in range(1, int(seconds * fps) + 1):
                frame = av.VideoFrame.from_ndarray(pattern._draw(index), format="yuv420p")
                frame.pts = index - 1
                frame.time_base = fractions.Fraction(1, fps)
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            chunk = astream.codec_context.frame_size or 1024
            total = int(seconds * 48000)
            for start in range(0, total, chunk):
                t = (np.arange(chunk) + start) / 48000
                pcm = (np.sin(2 * np.pi * tone * t) * 0.3 * 32767).astype(np.int16)  # type: ignore[operator]
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = 48000
                frame.pts = start
                frame.time_base = fractions.Fraction(1, 48000)
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path
