"""The composed archive: streams decoded, laid out, mixed and encoded as H.264 + AAC in fMP4.

A :class:`Composer` is fed, per stream, decoded video frames (``av.VideoFrame`` or RGB
``numpy`` arrays) and decoded audio (``av.AudioFrame``), each with its presentation time in
seconds on the archive's clock (0 = the archive's start; every stream on the same clock). Or it
is fed what the RTP depacketisers produce, encoded frames (VP8 / H.264 / Opus bytes with their
time), through :meth:`Composer.push_encoded_video` / :meth:`Composer.push_encoded_audio`, which
decode them with PyAV (:class:`VideoDecoder`, :class:`AudioDecoder`).

:meth:`Composer.advance` ``(t)`` says "everything up to ``t`` has been pushed": the composer
then writes every output video frame and audio block up to ``t``. Output timestamps come from
that one clock, so audio and video stay in sync whatever the input rates:

* **Video** is written at a constant frame rate (25 fps by default). Tick ``n`` is at
  ``n / fps`` seconds; it shows, for every stream in the layout, its latest frame whose time is
  at most half a tick after the tick (the nearest tick, so a frame is never more than half a
  tick early or late), scaled into its tile by swscale (:meth:`av.VideoFrame.reformat`,
  ``contain``: letterboxed, ``cover``: cropped to fill) and copied into a reused ``yuv420p``
  canvas on a black background. A stream with no frame yet leaves its tile black. When nothing
  changed since the previous tick (no new frame, same layout), the previous picture is encoded
  again without being composed. The layout is recomputed (:func:`~salon.archive.layout.compute_layout`)
  whenever a stream joins or leaves, its classes change or the layout changes; joins and
  leaves can be scheduled at a time (``at=``) so they land on the right tick.
* **Audio** is resampled to 48 kHz stereo per stream (a stream's frames are placed at their
  time, consecutive frames within 40 ms of each other joined without a gap), summed, clipped
  to [-1, 1] and encoded as AAC in blocks of 1024 samples whose timestamps are sample counts.
* **The file** is fragmented MP4 (``movflags=frag_keyframe+empty_moov+default_base_moof``)
  with a key frame every second: a composer killed mid-way leaves a file that plays up to its
  last complete fragment.

The H.264 encoder is libx264 (``veryfast`` by default) at a bitrate suited to the resolution;
all scaling is swscale's, the composition numpy slice copies: no per-pixel Python.
"""

from __future__ import annotations

import contextlib
import fractions
import logging
import math
import pathlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import av
import numpy as np

from salon.archive.layout import FIT_COVER, LayoutSpec, LayoutStream, Tile, compute_layout

__all__ = [
    "AUDIO_RATE",
    "AudioDecoder",
    "AudioMixer",
    "Composer",
    "VideoDecoder",
    "default_video_bitrate",
    "is_keyframe",
]

log = logging.getLogger(__name__)

AUDIO_RATE = 48000
AAC_FRAME = 1024
_SNAP_SAMPLES = int(AUDIO_RATE * 0.040)
_MAX_QUEUED_FRAMES = 250
_MAX_AUDIO_AHEAD = AUDIO_RATE * 10
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"


def default_video_bitrate(width: int, height: int, fps: float) -> int:
    """A bitrate for composed talking heads: ~0.07 bit per pixel at 25 fps (1.6 Mbit/s at 720p)."""
    return int(max(300_000, min(8_000_000, width * height * fps * 0.07)))


# -- decoding front end ------------------------------------------------------------------------


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether an encoded frame is a key frame: VP8's frame tag, VP9's uncompressed header
    (profiles 0-2), an IDR slice among H.264's Annex B NAL units."""
    if not data:
        return False
    if codec == "vp8":
        return not data[0] & 0x01
    if codec == "vp9":
        first = data[0]
        profile = ((first >> 5) & 1) | ((first >> 4) & 1) << 1
        if (first >> 6) != 0b10 or profile == 3:
            return False
        return not (first >> 3) & 1 and not (first >> 2) & 1
    if codec == "h264":
        index = 0
        while True:
            index = data.find(b"\x00\x00\x01", index)
            if index < 0 or index + 3 >= len(data):
                return False
            if data[index + 3] & 0x1F == 5:
                return True
            index += 3
    return False


class VideoDecoder:
    """Encoded video (``vp8``, ``vp9`` or ``h264`` in Annex B) → decoded frames with their time.

    Until the first key frame, and after a frame that did not decode or a loss reported with
    :meth:`lost`, frames are dropped (counted in ``skipped``) until the next key frame, so that
    no picture built on missing references reaches the archive; :attr:`needs_keyframe` says
    when a key frame should be requested from the publisher (a PLI)."""

    _TIME_BASE = fractions.Fraction(1, 90000)

    def __init__(self, codec: str = "vp8") -> None:
        if codec not in ("vp8", "vp9", "h264"):
            raise ValueError(f"unsupported video codec {codec!r}")
        self.codec = codec
        self._context: Any = av.CodecContext.create(codec, "r")
        self.errors = 0
        self.skipped = 0
        self.needs_keyframe = True

    def lost(self) -> None:
        """Frames were lost before the next one (a gap the depacketiser saw)."""
        self.needs_keyframe = True

    def decode(self, data: bytes, pts: float, *, keyframe: bool | None = None) -> list[tuple[Any, float]]:
        """Decode one frame (``keyframe``: whether it is one, when the caller knows)."""
        key = is_keyframe(self.codec, data) if keyframe is None else keyframe
        if self.needs_keyframe and not key:
            self.skipped += 1
            return []
        packet = av.Packet(data)
        packet.pts = round(pts * 90000)
        packet.time_base = self._TIME_BASE
        try:
            frames = self._context.decode(packet)
        except (av.error.FFmpegError, ValueError) as exc:
            self.errors += 1
            self.needs_keyframe = True
            log.debug("video decode error (%s): %s", self.codec, exc)
            return []
        if key:
            self.needs_keyframe = False
        out: list[tuple[Any, float]] = []
        for frame in frames:
            time = pts if frame.pts is None else frame.pts / 90000
            out.append((frame, time))
        return out


class AudioDecoder:
    """Encoded audio (``opus``) → decoded frames with their time."""

    def __init__(self, codec: str = "opus") -> None:
        if codec != "opus":
            raise ValueError(f"unsupported audio codec {codec!r}")
        self.codec = codec
        self._context: Any = av.CodecContext.create(codec, "r")
        self.errors = 0

    def decode(self, data: bytes, pts: float) -> list[tuple[Any, float]]:
        try:
            frames = self._context.decode(av.Packet(data))
        except (av.error.FFmpegError, ValueError) as exc:
            self.errors += 1
            log.debug("audio decode error (%s): %s", self.codec, exc)
            return []
        out: list[tuple[Any, float]] = []
        time = pts
        for frame in frames:
            out.append((frame, time))
            time += frame.samples / (frame.sample_rate or AUDIO_RATE)
        return out


# -- audio -------------------------------------------------------------------------------------


class _AudioInput:
    def __init__(self, channels: int) -> None:
        # Mono is resampled as mono and copied to both channels (FFmpeg's upmix would lower
        # it by 3 dB); anything else is downmixed or kept as stereo.
        layout = "mono" if channels == 1 else "stereo"
        self.resampler: Any = av.AudioResampler(format="fltp", layout=layout, rate=AUDIO_RATE)
        self.chunks: deque[tuple[int, np.ndarray[Any, np.dtype[np.float32]]]] = deque()
        self.next_sample: int | None = None


class AudioMixer:
    """Per-stream audio placed on the sample clock, mixed block by block (48 kHz stereo)."""

    def __init__(self) -> None:
        self._inputs: dict[str, _AudioInput] = {}
        self.position = 0
        """The first sample not mixed yet."""

    def remove(self, stream_id: str) -> None:
        self._inputs.pop(stream_id, None)

    def push(self, stream_id: str, frame: Any, pts: float) -> None:
        """One decoded audio frame of a stream, starting at ``pts`` seconds."""
        state = self._inputs.get(stream_id)
        if state is None:
            state = self._inputs[stream_id] = _AudioInput(len(frame.layout.channels))
        frame.pts = None
        start = round(pts * AUDIO_RATE)
        for out in state.resampler.resample(frame):
            samples = out.to_ndarray().astype(np.float32, copy=False)
            if samples.shape[0] == 1:
                samples = np.repeat(samples, 2, axis=0)
            if state.next_sample is not None and abs(start - state.next_sample) <= _SNAP_SAMPLES:
                start = state.next_sample
            count = samples.shape[1]
            end = start + count
            state.next_sample = end
            if end <= self.position or start > self.position + _MAX_AUDIO_AHEAD:
                start = end
                continue
            state.chunks.append((start, samples))
            start = end

    def mix(self, count: int = AAC_FRAME) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The next ``count`` samples (2 x count, float32 in [-1, 1])."""
        block = np.zeros((2, count), np.float32)
        begin = self.position
        end = begin + count
        for state in self._inputs.values():
            chunks = state.chunks
            for start, samples in chunks:
                if start >= end:
                    continue
                stop = start + samples.shape[1]
                if stop <= begin:
                    continue
                lo, hi = max(start, begin), min(stop, end)
                block[:, lo - begin : hi - begin] += samples[:, lo - start : hi - start]
            while chunks and chunks[0][0] + chunks[0][1].shape[1] <= end:
                chunks.popleft()
        np.clip(block, -1.0, 1.0, out=block)
        self.position = end
        return block


# -- video -------------------------------------------------------------------------------------


@dataclass
class _VideoInput:
    layout_classes: tuple[str, ...]
    video_type: str
    queue: deque[tuple[float, Any]] = field(default_factory=deque)
    current: Any = None
    serial: int = 0
    """Bumped whenever ``current`` changes."""
    cache_key: tuple[Any, ...] | None = None
    cache: tuple[np.ndarray[Any, Any], ...] | None = None
    decoder: VideoDecoder | None = None
    video_codec: str = "vp8"


def _even(value: float) -> int:
    return int(value) // 2 * 2


def _planes(frame: Any) -> tuple[np.ndarray[Any, Any], ...]:
    """A yuv420p frame's Y, U, V planes as (height, width) views of its buffers."""
    out = []
    for index, plane in enumerate(frame.planes):
        height = frame.height if index == 0 else (frame.height + 1) // 2
        width = frame.width if index == 0 else (frame.width + 1) // 2
        buffer = np.frombuffer(plane, np.uint8)
        out.append(buffer.reshape(-1, plane.line_size)[:height, :width])
    return tuple(out)


# -- the composer ------------------------------------------------------------------------------


class Composer:
    """One composed archive file. Not thread-safe: one caller at a time (the archiver's loop).

    ``output`` is a path or a writable binary file object."""

    def __init__(
        self,
        output: str | pathlib.Path | BinaryIO,
        *,
        resolution: tuple[int, int] = (640, 480),
        fps: int = 25,
        layout: LayoutSpec | None = None,
        has_audio: bool = True,
        has_video: bool = True,
        video_bitrate: int | None = None,
        audio_bitrate: int = 128_000,
        preset: str = "veryfast",
        threads: int = 2,
        keyframe_seconds: float = 1.0,
    ) -> None:
        width, height = resolution
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError("the resolution must be positive and even")
        if not has_audio and not has_video:
            raise ValueError("an archive needs audio or video")
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.width, self.height, self.fps = width, height, fps
        self.layout = layout or LayoutSpec()
        self.has_audio, self.has_video = has_audio, has_video
        target = str(output) if isinstance(output, pathlib.Path) else output
        # flush_packets: each fragment reaches the file as soon as it is complete (not when
        # the I/O buffer fills), so that a kill loses at most the fragment being built.
        self._container: Any = av.open(
            target, "w", format="mp4", options={"movflags": MOVFLAGS, "flush_packets": "1"}
        )
        self._video: Any = None
        self._audio: Any = None
        if has_video:
            stream = self._container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.bit_rate = video_bitrate or default_video_bitrate(width, height, fps)
            gop = max(1, round(fps * keyframe_seconds))
            stream.codec_context.gop_size = gop
            stream.codec_context.thread_count = threads
            stream.codec_context.time_base = fractions.Fraction(1, fps)
            stream.options = {
                "preset": preset,
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:rc-lookahead=10:bframes=0",
            }
            self._video = stream
        if has_audio:
            audio = self._container.add_stream("aac", rate=AUDIO_RATE)
            audio.layout = "stereo"
            audio.bit_rate = audio_bitrate
            audio.codec_context.time_base = fractions.Fraction(1, AUDIO_RATE)
            self._audio = audio
        self._time_base = fractions.Fraction(1, fps)
        self._audio_time_base = fractions.Fraction(1, AUDIO_RATE)
        self._streams: dict[str, _VideoInput] = {}
        self._audio_decoders: dict[str, AudioDecoder] = {}
        self._mixer = AudioMixer()
        self._events: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._event_serial = 0
        self._tiles: list[Tile] | None = None
        self._layout_serial = 0
        """Bumped whenever the tiles are recomputed."""
        self._pending: dict[str, _VideoInput] = {}
        """Streams whose join is scheduled, holding the frames that came before it."""
        # The canvas: one yuv420p buffer, planes as views.
        self._canvas = np.empty((height * 3 // 2, width), np.uint8)
        flat = self._canvas.reshape(-1)
        area = width * height
        self._y = flat[:area].reshape(height, width)
        self._u = flat[area : area * 5 // 4].reshape(height // 2, width // 2)
        self._v = flat[area * 5 // 4 :].reshape(height // 2, width // 2)
        self._last_frame: Any = None
        self._last_state: tuple[Any, ...] | None = None
        self.frames = 0
        """Video frames written."""
        self.composed = 0
        """Of which composed (the others repeated the previous picture)."""
        self._closed = False

    # -- streams and layout ----------------------------------------------------------------

    @property
    def stream_ids(self) -> list[str]:
        return list(self._streams)

    def add_stream(
        self,
        stream_id: str,
        layout_classes: Sequence[str] = (),
        video_type: str = "camera",
        *,
        video_codec: str = "vp8",
        at: float | None = None,
    ) -> None:
        """A stream joins the archive (at time ``at``, or now: the next tick written)."""
        if at is not None:
            self._schedule(at, "add", (stream_id, tuple(layout_classes), video_type, video_codec))
            return
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id!r} is already in the archive")
        state = _VideoInput(tuple(layout_classes), video_type, video_codec=video_codec)
        pending = self._pending.pop(stream_id, None)
        if pending is not None:
            state.queue, state.decoder = pending.queue, pending.decoder
        self._streams[stream_id] = state
        self._tiles = None

    def remove_stream(self, stream_id: str, *, at: float | None = None) -> None:
        """A stream leaves (at time ``at``, or now); its audio stops there too."""
        if at is not None:
            self._schedule(at, "remove", (stream_id,))
            return
        if self._streams.pop(stream_id, None) is not None:
            self._tiles = None
        self._mixer.remove(stream_id)
        self._audio_decoders.pop(stream_id, None)

    def set_layout_classes(
        self, stream_id: str, layout_classes: Sequence[str], *, at: float | None = None
    ) -> None:
        """A stream's layout classes changed (at time ``at``, or now)."""
        if at is not None:
            self._schedule(at, "classes", (stream_id, tuple(layout_classes)))
            return
        state = self._streams.get(stream_id)
        if state is not None:
            state.layout_classes = tuple(layout_classes)
            self._tiles = None

    def set_layout(self, layout: LayoutSpec, *, at: float | None = None) -> None:
        """A new layout (from time ``at``, or now: the next tick written)."""
        if at is not None:
            self._schedule(at, "layout", (layout,))
            return
        self.layout = layout
        self._tiles = None

    def tiles(self) -> list[Tile]:
        """The current layout's tiles (recomputed when something changed)."""
        if self._tiles is None:
            streams = [LayoutStream(sid, s.layout_classes, s.video_type) for sid, s in self._streams.items()]
            self._tiles = compute_layout(self.layout, None, (self.width, self.height), streams)
            self._layout_serial += 1
        return self._tiles

    def _schedule(self, at: float, kind: str, args: tuple[Any, ...]) -> None:
        self._event_serial += 1
        self._events.append((at, self._event_serial, kind, args))
        self._events.sort(key=lambda e: (e[0], e[1]))

    def _apply_events(self, until: float) -> None:
        while self._events and self._events[0][0] <= until:
            _, _, kind, args = self._events.pop(0)
            if kind == "add":
                stream_id, classes, video_type, codec = args
                if stream_id not in self._streams:
                    self.add_stream(stream_id, classes, video_type, video_codec=codec)
            elif kind == "layout":
                self.set_layout(args[0])
            elif kind == "classes":
                self.set_layout_classes(args[0], args[1])
            else:
                self.remove_stream(args[0])

    # -- input -----------------------------------------------------------------------------

    def push_video(self, stream_id: str, frame: Any, pts: float) -> None:
        """A decoded frame (``av.VideoFrame``, or an RGB ``(h, w, 3)`` uint8 array) at ``pts``."""
        state = self._streams.get(stream_id)
        if state is None:
            state = self._pending_state(stream_id)
            if state is None:
                return
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
        queue = state.queue
        if queue and pts < queue[-1][0]:
            # Out of order: keep the queue sorted.
            items = sorted([*queue, (pts, frame)], key=lambda item: item[0])
            queue.clear()
            queue.extend(items)
        else:
            queue.append((pts, frame))
        while len(queue) > _MAX_QUEUED_FRAMES:
            queue.popleft()

    def _pending_state(self, stream_id: str) -> _VideoInput | None:
        """Frames may arrive just before a scheduled join: keep them in a placeholder."""
        for _, _, kind, args in self._events:
            if kind == "add" and args[0] == stream_id:
                return self._pending.setdefault(stream_id, _VideoInput(args[1], args[2], video_codec=args[3]))
        return None

    def push_audio(self, stream_id: str, frame: Any, pts: float) -> None:
        """A decoded ``av.AudioFrame`` of a stream starting at ``pts`` seconds."""
        if self._audio is None:
            return
        if stream_id not in self._streams and not any(
            kind == "add" and args[0] == stream_id for _, _, kind, args in self._events
        ):
            return
        self._mixer.push(stream_id, frame, pts)

    def push_encoded_video(
        self, stream_id: str, data: bytes, pts: float, *, keyframe: bool | None = None, lost: bool = False
    ) -> None:
        """An encoded frame (the stream's ``video_codec``) at ``pts``: decoded, then pushed.
        ``lost``: frames were lost just before this one (then only a key frame decodes)."""
        state = self._streams.get(stream_id) or self._pending_state(stream_id)
        if state is None or self._video is None:
            return
        if state.decoder is None:
            state.decoder = VideoDecoder(state.video_codec)
        if lost:
            state.decoder.lost()
        for frame, time in state.decoder.decode(data, pts, keyframe=keyframe):
            self.push_video(stream_id, frame, time)

    def needs_keyframe(self, stream_id: str) -> bool:
        """Whether the stream's video waits for a key frame (ask the publisher for one)."""
        state = self._streams.get(stream_id) or self._pending.get(stream_id)
        if state is None or self._video is None:
            return False
        return state.decoder is None or state.decoder.needs_keyframe

    def push_encoded_audio(self, stream_id: str, data: bytes, pts: float) -> None:
        """An encoded Opus packet at ``pts``: decoded, then mixed."""
        if self._audio is None:
            return
        decoder = self._audio_decoders.get(stream_id)
        if decoder is None:
            decoder = self._audio_decoders[stream_id] = AudioDecoder("opus")
        for frame, time in decoder.decode(data, pts):
            self.push_audio(stream_id, frame, time)

    # -- output ----------------------------------------------------------------------------

    @property
    def duration(self) -> float:
        """Seconds written so far."""
        if self._video is not None:
            return self.frames / self.fps
        return self._mixer.position / AUDIO_RATE

    @property
    def audio_position(self) -> float:
        """Seconds of audio mixed so far: audio pushed for earlier than this is not heard."""
        return self._mixer.position / AUDIO_RATE

    def advance(self, until: float) -> None:
        """Everything up to ``until`` seconds has been pushed: write the output up to there."""
        if self._closed:
            raise RuntimeError("the composer is closed")
        half = 0.5 / self.fps
        while True:
            video_time = self.frames / self.fps if self._video is not None else math.inf
            audio_time = self._mixer.position / AUDIO_RATE if self._audio is not None else math.inf
            video_due = video_time + half <= until
            audio_due = audio_time + AAC_FRAME / AUDIO_RATE <= until
            if not video_due and not audio_due:
                break
            # Whichever is behind goes first, so the muxer interleaves them closely.
            if video_due and (not audio_due or video_time <= audio_time):
                self._apply_events(video_time)
                self._write_video(video_time)
            else:
                self._apply_events(audio_time)
                self._write_audio()

    def _write_audio(self) -> None:
        pts = self._mixer.position
        block = self._mixer.mix(AAC_FRAME)
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        frame.time_base = self._audio_time_base
        self._mux(self._audio.encode(frame))

    def _write_video(self, time: float) -> None:
        limit = time + 0.5 / self.fps
        for state in self._streams.values():
            queue = state.queue
            newest = None
            while queue and queue[0][0] <= limit:
                newest = queue.popleft()[1]
            if newest is not None:
                state.current = newest
                state.serial += 1
        tiles = self.tiles()
        key = (self._layout_serial, *(self._streams[t.stream_id].serial for t in tiles))
        if self._last_frame is None or key != self._last_state:
            self._compose(tiles)
            frame = av.VideoFrame.from_ndarray(self._canvas, format="yuv420p")
            self._last_frame = frame
            self._last_state = key
            self.composed += 1
        frame = self._last_frame
        frame.pts = self.frames
        frame.time_base = self._time_base
        self.frames += 1
        self._mux(self._video.encode(frame))

    def _compose(self, tiles: list[Tile]) -> None:
        self._y.fill(16)
        self._u.fill(128)
        self._v.fill(128)
        for tile in tiles:
            state = self._streams[tile.stream_id]
            if state.current is None:
                continue
            self._draw(state, tile)

    def _draw(self, state: _VideoInput, tile: Tile) -> None:
        frame = state.current
        tx, ty = _even(tile.x + 1), _even(tile.y + 1)
        tw, th = _even(tile.x + tile.w) - tx, _even(tile.y + tile.h) - ty
        if tw < 2 or th < 2 or frame.width < 2 or frame.height < 2:
            return
        cover = tile.fit == FIT_COVER
        scale = (max if cover else min)(tw / frame.width, th / frame.height)
        sw = max(2, _even(frame.width * scale + 1))
        sh = max(2, _even(frame.height * scale + 1))
        if not cover:
            sw, sh = min(sw, tw), min(sh, th)
        key = (state.serial, sw, sh)
        if state.cache_key != key or state.cache is None:
            scaled = frame.reformat(width=sw, height=sh, format="yuv420p", interpolation="BILINEAR")
            state.cache = _planes(scaled)
            state.cache_key = key
        y, u, v = state.cache
        if cover:
            # Crop the centre of the scaled picture to the tile.
            cx, cy = _even((sw - tw) / 2), _even((sh - th) / 2)
            dx, dy, w, h = tx, ty, tw, th
        else:
            cx = cy = 0
            dx, dy, w, h = tx + _even((tw - sw) / 2), ty + _even((th - sh) / 2), sw, sh
        self._y[dy : dy + h, dx : dx + w] = y[cy : cy + h, cx : cx + w]
        hx, hy, hw, hh, hcx, hcy = dx // 2, dy // 2, w // 2, h // 2, cx // 2, cy // 2
        self._u[hy : hy + hh, hx : hx + hw] = u[hcy : hcy + hh, hcx : hcx + hw]
        self._v[hy : hy + hh, hx : hx + hw] = v[hcy : hcy + hh, hcx : hcx + hw]

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self._container.mux(packet)

    def close(self, until: float | None = None) -> None:
        """Write the output up to ``until`` (if given), flush the encoders and close the file."""
        if self._closed:
            return
        try:
            if until is not None:
                self.advance(until)
            if self._video is not None:
                self._mux(self._video.encode(None))
            if self._audio is not None:
                self._mux(self._audio.encode(None))
        finally:
            self._closed = True
            with contextlib.suppress(Exception):
                self._container.close()

    def __enter__(self) -> Composer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
