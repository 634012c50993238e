"""Individual-mode recording: each stream's RTP into its own file, without re-encoding.

One :class:`StreamRecording` per recorded stream, in the archiver process. Per track
(:class:`TrackRecording`) the packets go through:

1. a reorder buffer keyed by extended sequence number, which holds a hole open while the
   packet may still come: the archiver NACKs it to the media worker
   (:class:`~salon.media.nack.NackGenerator`, re-asked every 40 ms), which answers from its
   retransmission buffer or asks the publisher. A hole still open after ``max_delay`` is given
   up (the packets after it are released);
2. :class:`~salon.archive.depacketize.FrameAssembler` (RTP payloads → coded frames);
3. for video, a key-frame gate: nothing is written until a complete key frame, and after a
   frame that lost a packet nothing more until the next key frame, which the archiver asks for
   (``K`` feedback) every 0.5 s meanwhile;
4. a timestamp mapping: the 32-bit RTP timestamp is unwrapped and turned into milliseconds
   since the archive started, anchored at the arrival time of the track's first packet (so the
   audio and video of one stream line up, and a stream added later starts later). Pauses and
   mutes (the publisher sends nothing, or only silence / black) need nothing: the RTP clock
   keeps running, and so do the timestamps. A timestamp that disagrees with the arrival time
   by more than :data:`REANCHOR_AFTER` seconds (an encoder restart) re-anchors the mapping.

Files: VP8 and/or Opus in WebM (``<streamId>.webm``), H.264 (+ Opus) in Matroska
(``<streamId>.mkv``), muxed with PyAV. The container is opened once the tracks' first frames
tell what to write (a video key frame gives the dimensions and H.264's parameter sets), or
after :data:`OPEN_TIMEOUT` seconds whatever came; audio waits for it in memory. Clusters of at
most :data:`CLUSTER_MS` are written and flushed as they close, so an archiver killed mid-way
leaves a file that plays up to then.
"""

from __future__ import annotations

import collections
import fractions
import json
import logging
import pathlib
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av

from salon.archive.depacketize import (
    DepacketizeError,
    Frame,
    FrameAssembler,
    h264_dimensions,
    parse_rtp,
    vp8_dimensions,
)
from salon.media.nack import NackGenerator

__all__ = [
    "CLUSTER_MS",
    "OPEN_TIMEOUT",
    "REANCHOR_AFTER",
    "ManifestFile",
    "StreamRecording",
    "TrackInfo",
    "TrackRecording",
    "TrackStats",
    "write_archive_zip",
]

logger = logging.getLogger(__name__)

#: Longest cluster written (ms): what an archiver killed mid-recording can lose at most.
CLUSTER_MS = 200
#: Longest a track's packets wait for the other track's in the muxer (µs): a muted or stalled
#: track must not hold the other one's packets in memory.
INTERLEAVE_US = 300_000
#: Seconds the container waits for the tracks' first frames before opening with what it has.
OPEN_TIMEOUT = 4.0
#: A timestamp that disagrees with arrival time by more than this (s) re-anchors the mapping.
REANCHOR_AFTER = 5.0
#: How fast a timeline anchored on a late first frame catches up: this fraction of the media
#: time that passes (frames spaced up to 20 % closer until it has).
CATCH_UP = 0.2
#: How fast a timeline falls behind a publisher whose RTP clock runs slow: this fraction of the
#: media time that passes (frames spaced up to twice as far apart until it has).
STRETCH = 1.0
#: Seconds of frames whose lowest offset (arrival minus RTP time) anchors the timeline.
ANCHOR_WINDOW = 1.0
#: While waiting for a key frame, ask again this often (s).
KEY_FRAME_RETRY = 0.5
#: How long a hole in the sequence is held open for a retransmission (s), by kind.
MAX_DELAY = {"audio": 0.3, "video": 1.0}
#: How long a track's first packets are held before the first is released (s): the recording
#: starts at the lowest sequence number that came in that time, not at the first to arrive.
START_HOLD = 0.1
#: Packets a reorder buffer holds at most (beyond: the oldest hole is given up).
MAX_BUFFERED = 2048
#: Audio frames kept while the container waits to open.
MAX_EARLY_AUDIO = 500
_MS = fractions.Fraction(1, 1000)
#: OpusHead (RFC 7845 §5.1): version 1, 2 channels, no pre-skip, 48 kHz, 0 dB, mapping 0.
_OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 0, 48000, 0, 0)


@dataclass(frozen=True, slots=True)
class TrackInfo:
    kind: str
    """``audio`` or ``video``."""
    codec: str
    """``opus``, ``vp8`` or ``h264``."""
    clock_rate: int
    channels: int | None = None


@dataclass(slots=True)
class TrackStats:
    packets: int = 0
    duplicates: int = 0
    late: int = 0
    """Packets that came after their place in the sequence was passed: after their hole was
    given up, or a second copy (a NACK answered twice) after the first was written."""
    lost: int = 0
    """Packets given up (never arrived in time, NACKs included)."""
    malformed: int = 0
    nacked: int = 0
    frames: int = 0
    """Frames written."""
    frames_dropped: int = 0
    """Frames not written: incomplete, or while waiting for a key frame."""
    key_frame_requests: int = 0
    reanchors: int = 0


Feedback = Callable[[str, list[int] | None], None]
"""Called with (kind, sequence numbers to NACK) or (kind, None): ask for a key frame."""


class TrackRecording:
    """One track of a stream: reorder, depacketise, gate on key frames, map timestamps.

    :meth:`push` takes a datagram's RTP packet and its arrival time (seconds since the archive
    started); :meth:`poll` gives up old holes and re-asks for a key frame; both return the
    frames ready to write as (pts in ms, frame).
    """

    def __init__(self, info: TrackInfo, feedback: Feedback) -> None:
        self.info = info
        self.kind = info.kind
        self.video = info.kind == "video"
        self.stats = TrackStats()
        self._feedback = feedback
        self._assembler = FrameAssembler(info.codec)
        self._nack = NackGenerator(max_age=MAX_DELAY[info.kind])
        self._max_delay = MAX_DELAY[info.kind]
        self._buffer: dict[int, tuple[Any, float]] = {}
        self._next: int | None = None  # extended sequence number expected next
        self._highest = -1
        self._lost_pending = 0
        self._released = False
        self._first_at: float | None = None
        self._arrivals: dict[int, float] = {}
        self._waiting_key = self.video
        self._key_asked_at = -1.0
        # Timestamp mapping.
        self._ts_ext: int | None = None
        self._anchor_ts = 0
        self._anchor_ms = 0.0
        self._window: collections.deque[tuple[float, float]] = collections.deque()
        self._last_pts = -1
        self.first_ms: int | None = None
        self.last_ms: int | None = None
        self.parameter_sets: tuple[bytes, ...] = ()
        self.dimensions: tuple[int, int] | None = None

    # -- packets -----------------------------------------------------------------------------

    def push(self, data: bytes, now: float) -> list[tuple[int, Frame]]:
        try:
            packet = parse_rtp(data)
        except DepacketizeError:
            self.stats.malformed += 1
            return []
        self.stats.packets += 1
        ext = self._extend(packet.sequence_number)
        if self._next is None or (ext < self._next and not self._released):
            self._next = ext  # the first packets may come out of order: start at the lowest
        if self._first_at is None:
            self._first_at = now
        if ext < self._next:
            self.stats.late += 1
            return []
        if ext in self._buffer:
            self.stats.duplicates += 1
            return []
        self._buffer[ext] = (packet, now)
        missing = self._nack.on_packet(packet.sequence_number, now)
        if missing:
            self.stats.nacked += len(missing)
            self._feedback(self.kind, missing)
        if not self._released and now - self._first_at < START_HOLD:
            return []  # the first packets are held a moment, to start at the lowest
        out = self._release(now)
        if len(self._buffer) > MAX_BUFFERED:
            out += self._skip_hole(now)
        return out

    def poll(self, now: float) -> list[tuple[int, Frame]]:
        """Re-NACK, give up holes older than the track's delay, re-ask for a key frame."""
        out: list[tuple[int, Frame]] = []
        if not self._released and self._first_at is not None and now - self._first_at >= START_HOLD:
            out += self._release(now)
        result = self._nack.poll(now)
        if result.seqs:
            self.stats.nacked += len(result.seqs)
            self._feedback(self.kind, list(result.seqs))
        while self._buffer and self._next is not None and self._next not in self._buffer:
            oldest = min(self._buffer)
            if now - self._buffer[oldest][1] < self._max_delay:
                break
            out += self._skip_hole(now)
        if self.video and self._waiting_key and self._next is not None:
            if now - self._key_asked_at >= KEY_FRAME_RETRY:
                self._ask_key_frame(now)
        return out

    def flush(self, now: float) -> list[tuple[int, Frame]]:
        """Everything still held (the recording ends): holes given up, last frame closed."""
        out: list[tuple[int, Frame]] = []
        while self._buffer:
            out += self._skip_hole(now)
        return out + self._frames(self._assembler.flush(), now)

    def _extend(self, seq: int) -> int:
        if self._highest < 0:
            self._highest = seq
            return seq
        delta = (seq - self._highest) & 0xFFFF
        if delta >= 0x8000:
            delta -= 0x10000
        ext = self._highest + delta
        if ext > self._highest:
            self._highest = ext
        return ext

    def _release(self, now: float) -> list[tuple[int, Frame]]:
        out: list[tuple[int, Frame]] = []
        buffer = self._buffer
        assert self._next is not None
        while self._next in buffer:
            packet, arrival = buffer.pop(self._next)
            self._released = True
            # A frame's time is when its earliest packet arrived (not a late retransmission).
            known = self._arrivals.get(packet.timestamp)
            if known is None or arrival < known:
                self._arrivals[packet.timestamp] = arrival
            lost, self._lost_pending = self._lost_pending, 0
            out += self._frames(self._assembler.push(packet, lost), now)
            self._next += 1
        return out

    def _skip_hole(self, now: float) -> list[tuple[int, Frame]]:
        assert self._next is not None
        oldest = min(self._buffer)
        gap = oldest - self._next
        self.stats.lost += gap
        self._lost_pending += gap
        self._next = oldest
        return self._release(now)

    # -- frames ------------------------------------------------------------------------------

    def _frames(self, frames: list[Frame], now: float) -> list[tuple[int, Frame]]:
        out: list[tuple[int, Frame]] = []
        for frame in frames:
            self.stats.malformed = self._assembler.malformed
            if not frame.complete:
                self.stats.frames_dropped += 1
                if self.video and not self._waiting_key:
                    self._waiting_key = True
                    self._ask_key_frame(now)
                continue
            if self._waiting_key:
                if not frame.key_frame:
                    self.stats.frames_dropped += 1
                    continue
                self._waiting_key = False
            if frame.parameter_sets:
                self.parameter_sets = frame.parameter_sets
            if self.video and frame.key_frame:
                self.dimensions = self._dimensions(frame) or self.dimensions
            out.append((self._pts(frame.timestamp, self._arrivals.get(frame.timestamp, now)), frame))
        for frame in frames:
            self._arrivals.pop(frame.timestamp, None)
        if len(self._arrivals) > 64:  # frames that never completed
            self._arrivals.clear()
        return out

    def _dimensions(self, frame: Frame) -> tuple[int, int] | None:
        if self.info.codec == "vp8":
            return vp8_dimensions(frame.data)
        for unit in frame.parameter_sets:
            if unit[0] & 0x1F == 7:
                try:
                    return h264_dimensions(unit)
                except DepacketizeError:
                    return None
        return None

    def _ask_key_frame(self, now: float) -> None:
        self._key_asked_at = now
        self.stats.key_frame_requests += 1
        self._feedback(self.kind, None)

    def _pts(self, timestamp: int, now: float) -> int:
        """Milliseconds since the archive started of a frame with RTP ``timestamp`` whose first
        packet arrived at ``now`` (s): the RTP clock, anchored to real time.

        Each frame tells where the RTP timeline sits in archive time: its arrival minus its
        RTP time (its offset). A frame can only be late, so the lowest offset of the last
        :data:`ANCHOR_WINDOW` seconds is the estimate, and the anchor moves towards it
        gradually: down by at most :data:`CATCH_UP` of the media time that passes (a first
        frame delayed by an encoder's start-up backlog: frames come a little closer together),
        up by at most :data:`STRETCH` of it (a publisher whose RTP clock runs slow, as a
        starved software encoder's does: frames spread out), never out of order. So the file
        keeps real time, and the stream's audio and video, each anchored the same way, line
        up. A jump of more than :data:`REANCHOR_AFTER` seconds (an encoder restart) starts a
        new timeline at once.
        """
        rate = self.info.clock_rate
        now_ms = now * 1000.0
        window = self._window
        if self._ts_ext is None:
            self._ts_ext = self._anchor_ts = timestamp
            self._anchor_ms = now_ms
            media_ms = 0.0
            window.append((now_ms, now_ms))
        else:
            delta = (timestamp - self._ts_ext) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            previous_ms = (self._ts_ext - self._anchor_ts) * 1000.0 / rate
            self._ts_ext += delta
            media_ms = (self._ts_ext - self._anchor_ts) * 1000.0 / rate
            offset_ms = now_ms - media_ms
            if abs(offset_ms - self._anchor_ms) > REANCHOR_AFTER * 1000.0:
                self.stats.reanchors += 1
                self._anchor_ts = self._ts_ext
                self._anchor_ms = now_ms
                media_ms = 0.0
                window.clear()
                window.append((now_ms, now_ms))
            else:
                # Sliding-window minimum: offsets ascending, oldest first.
                while window and window[-1][1] >= offset_ms:
                    window.pop()
                window.append((now_ms, offset_ms))
                while window[0][0] < now_ms - ANCHOR_WINDOW * 1000.0:
                    window.popleft()
                target = window[0][1]
                elapsed = max(0.0, media_ms - previous_ms)
                if target < self._anchor_ms:
                    self._anchor_ms = max(target, self._anchor_ms - CATCH_UP * elapsed)
                elif target > self._anchor_ms:
                    self._anchor_ms = min(target, self._anchor_ms + STRETCH * elapsed)
        pts = round(self._anchor_ms + media_ms)
        pts = max(pts, self._last_pts)
        self._last_pts = pts
        if self.first_ms is None:
            self.first_ms = pts
        self.last_ms = pts
        return pts

    def dump(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"codec": self.info.codec, **asdict(self.stats)}


@dataclass(slots=True)
class _Output:
    container: Any
    streams: dict[str, Any] = field(default_factory=dict)


class StreamRecording:
    """One stream's file: its tracks and the container they are muxed into.

    :param directory: where the file goes (``<stream_id>.webm`` or ``.mkv``).
    :param start_ms: when the stream joined the archive (ms since the archive started).
    """

    def __init__(
        self,
        stream_id: str,
        tracks: list[TrackInfo],
        directory: pathlib.Path,
        *,
        feedback: Feedback,
        start_ms: int = 0,
        connection_data: str = "",
        stem: str | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.connection_data = connection_data
        self.start_ms = start_ms
        self.stop_ms: int | None = None
        self.tracks = {t.kind: TrackRecording(t, feedback) for t in tracks}
        codecs = {t.codec for t in tracks}
        self.format = "matroska" if "h264" in codecs else "webm"
        self.path = directory / f"{stem or stream_id}.{'mkv' if self.format == 'matroska' else 'webm'}"
        self._output: _Output | None = None
        self._early: list[tuple[str, int, Frame]] = []
        self._first_at: float | None = None
        self.closed = False
        self.error: str | None = None

    def __repr__(self) -> str:
        return f"StreamRecording({self.stream_id} → {self.path.name})"

    # -- input -------------------------------------------------------------------------------

    def push(self, kind: str, data: bytes, now: float) -> None:
        track = self.tracks.get(kind)
        if track is None or self.closed:
            return
        if self._first_at is None:
            self._first_at = now
        self._write(kind, track.push(data, now), now)

    def poll(self, now: float) -> None:
        if self.closed:
            return
        for kind, track in self.tracks.items():
            self._write(kind, track.poll(now), now)
        if self._output is None and self._first_at is not None and now - self._first_at >= OPEN_TIMEOUT:
            self._open(force=True)

    def close(self, now: float, stop_ms: int | None = None) -> None:
        """Write what is held and finish the file (cues, durations); idempotent."""
        if self.closed:
            return
        for kind, track in self.tracks.items():
            self._write(kind, track.flush(now), now)
        if self._output is None and self._early:
            self._open(force=True)
        self.closed = True
        self.stop_ms = stop_ms if stop_ms is not None else round(now * 1000)
        if self._output is not None:
            try:
                self._output.container.close()
            except (av.FFmpegError, OSError) as exc:
                self.error = f"finishing {self.path.name} failed: {exc}"
                logger.error("%r: %s", self, self.error)
            self._output = None

    @property
    def written(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    # -- output ------------------------------------------------------------------------------

    def _write(self, kind: str, frames: list[tuple[int, Frame]], now: float) -> None:
        if not frames:
            return
        if self._output is None:
            self._early.extend((kind, pts, f) for pts, f in frames)
            if len(self._early) > MAX_EARLY_AUDIO:
                del self._early[: len(self._early) - MAX_EARLY_AUDIO]
            if self._ready():
                self._open(force=False)
            return
        for pts, frame in frames:
            self._mux(kind, pts, frame)

    def _ready(self) -> bool:
        video = self.tracks.get("video")
        if video is not None:
            return any(k == "video" for k, _, _ in self._early)
        return bool(self._early)

    def _open(self, *, force: bool) -> None:
        if self.error is not None:
            return
        try:
            container = av.open(
                str(self.path),
                "w",
                format=self.format,
                options={
                    "cluster_time_limit": str(CLUSTER_MS),
                    "flush_packets": "1",
                    "max_interleave_delta": str(INTERLEAVE_US),
                },
            )
        except (av.FFmpegError, OSError) as exc:
            self._fail(f"cannot create {self.path.name}: {exc}")
            return
        output = _Output(container)
        try:
            video = self.tracks.get("video")
            if video is not None:
                stream: Any = container.add_stream(video.info.codec, rate=30)
                width, height = video.dimensions or (640, 480)
                stream.width, stream.height = width, height
                # H.264 goes in as Annex B: the Matroska muxer builds the avcC record from the
                # first key frame's SPS and PPS (WebRTC sends them with every IDR).
                stream.time_base = _MS
                output.streams["video"] = stream
            audio = self.tracks.get("audio")
            if audio is not None:
                stream = container.add_stream("opus", rate=48000)
                stream.codec_context.extradata = _OPUS_HEAD
                stream.time_base = _MS
                output.streams["audio"] = stream
        except (av.FFmpegError, ValueError, OSError) as exc:
            container.close()
            self._fail(f"cannot set up {self.path.name}: {exc}")
            return
        self._output = output
        early, self._early = self._early, []
        early.sort(key=lambda item: item[1])
        for kind, pts, frame in early:
            self._mux(kind, pts, frame)

    def _mux(self, kind: str, pts: int, frame: Frame) -> None:
        output = self._output
        if output is None:
            return
        stream = output.streams.get(kind)
        if stream is None:
            return
        packet = av.Packet(
            _annexb(frame.data) if kind == "video" and self.format == "matroska" else frame.data
        )
        packet.stream = stream
        packet.time_base = _MS
        packet.pts = packet.dts = max(0, pts - self.start_ms)  # the file starts when the stream joined
        if frame.key_frame:
            packet.is_keyframe = True
        try:
            output.container.mux(packet)
        except OSError as exc:  # a full disk, an I/O error (PyAV's OSError is an FFmpegError too)
            self._fail(f"writing {self.path.name} failed: {exc}")
            return
        except (av.FFmpegError, ValueError) as exc:
            logger.warning("%r: dropping a %s frame the muxer refused: %s", self, kind, exc)
            self.tracks[kind].stats.frames_dropped += 1
            return
        self.tracks[kind].stats.frames += 1

    def _fail(self, reason: str) -> None:
        logger.error("%r: %s", self, reason)
        self.error = reason
        if self._output is not None:
            try:
                self._output.container.close()
            except (av.FFmpegError, OSError):
                pass
            self._output = None
        self.closed = True

    def dump(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "file": self.path.name,
            "tracks": {k: t.dump() for k, t in self.tracks.items()},
            "error": self.error,
        }


def _annexb(avc: bytes) -> bytes:
    """AVC (4-byte length-prefixed) NAL units as an Annex B byte stream."""
    out: list[bytes] = []
    pos = 0
    while pos + 4 <= len(avc):
        size = struct.unpack_from("!I", avc, pos)[0]
        out.append(b"\x00\x00\x00\x01" + avc[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """One stream's file in an individual archive, as the manifest lists it."""

    stream_id: str
    connection_data: str
    filename: str
    size: int
    start_offset_ms: int
    stop_offset_ms: int

    def to_json(self) -> dict[str, Any]:
        return {
            "streamId": self.stream_id,
            "connectionData": self.connection_data,
            "filename": self.filename,
            "size": self.size,
            "startTimeOffset": self.start_offset_ms,
            "stopTimeOffset": self.stop_offset_ms,
        }


def write_archive_zip(
    path: pathlib.Path,
    *,
    archive_id: str,
    name: str | None,
    session_id: str,
    created_at: int,
    files: list[tuple[pathlib.Path, ManifestFile]],
) -> dict[str, Any]:
    """Write an individual archive as OpenTok delivers it: one ZIP holding each stream's file
    and ``<archive_id>.json``, the manifest (``id``, ``name``, ``sessionId``, ``createdAt`` in
    ms, ``files`` with ``streamId``, ``connectionData``, ``filename``, ``size`` in bytes and
    ``startTimeOffset`` / ``stopTimeOffset`` in ms since the archive started). Media files are
    stored, not compressed (they are compressed already). Returns the manifest."""
    manifest = {
        "id": archive_id,
        "name": name,
        "sessionId": session_id,
        "createdAt": created_at,
        "files": [entry.to_json() for _, entry in files],
    }
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for source, entry in files:
            archive.write(source, entry.filename)
        archive.writestr(f"{archive_id}.json", json.dumps(manifest, indent=2))
    partial.replace(path)
    return manifest
