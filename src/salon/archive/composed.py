"""Composed recording: the archiver fed with the streams' RTP, writing one MP4 through the composer.

Both sides of a composed archive:

* **In the archiver process** (``python -m salon.archive.archiver --composed JSON``),
  :class:`ComposedArchiver` takes the streams' RTP as the individual archiver does (the same
  sink, tokens, NACKs and key-frame requests), and each track goes through the same
  :class:`~salon.archive.individual.TrackRecording` (reorder + NACK, depacketise, key-frame
  gate, RTP timestamps mapped to the archive's clock). Instead of being muxed into a file per
  stream, the frames are handed to a :class:`~salon.archive.composer.Composer`, which decodes,
  lays out, mixes and encodes them into ``archive.mp4`` (H.264 + AAC, fragmented). Every poll
  (20 ms) the composer is advanced to :data:`LAG` seconds before now: what is older than that
  has arrived (a hole in the sequence is repaired or given up within 0.3 s for audio). A
  stream's join and leave, and a new layout (``SetLayout``), are scheduled at their time on the
  archive's clock, so the layout changes on the right frame. When the composer's decoder waits
  for a key frame (a frame that did not decode) the archiver asks the media worker for one, as
  it does after a loss. The archive's clock starts at its ``createdAt``.
* **In the main process**, :class:`ComposedRecording` is an
  :class:`~salon.archive.recorder.IndividualRecording` whose archiver composes: the same media
  recorders, process and failure handling; its result is the MP4. An archiver that dies leaves
  ``archive.mp4`` playable up to its last complete fragment (one per second), which is the
  result, with the failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import socket
import struct
import time
from typing import Any

import av
from pydantic import BaseModel, ConfigDict

from salon.archive.archiver import (
    AddStream,
    Archiver,
    ArchiverFailed,
    ArchiverFinished,
    RemoveStream,
    SetLayout,
    SetStreamClasses,
    StopArchive,
)
from salon.archive.composer import Composer
from salon.archive.depacketize import Frame
from salon.archive.individual import Feedback, TrackInfo, TrackRecording
from salon.archive.layout import LayoutSpec, parse_layout
from salon.archive.recorder import IndividualRecording, RecordingError, RecordingResult

__all__ = [
    "LAG",
    "MP4_NAME",
    "ComposedArchiver",
    "ComposedOptions",
    "ComposedRecording",
    "layout_spec",
    "playable_duration",
]

logger = logging.getLogger(__name__)

#: Seconds the composed output stays behind real time: frames older than that are in.
LAG = 0.5
#: The composed archive's file in the archive's working directory.
MP4_NAME = "archive.mp4"
#: Most output (s) written per poll: a composer behind real time catches up in steps, reading
#: the sink socket in between, so that its receive buffer never overflows meanwhile.
MAX_STEP = 0.1
#: While the composer waits for a key frame of a stream, ask again this often (s).
KEY_FRAME_RETRY = 0.5


class ComposedOptions(BaseModel):
    """What the archiver composes: the archive's resolution, layout and tracks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = 640
    height: int = 480
    fps: int = 25
    has_audio: bool = True
    has_video: bool = True
    layout: dict[str, Any] = {"type": "bestFit"}
    """As the REST API takes it: ``type``, ``stylesheet``, ``screenshareType``."""
    preset: str = "veryfast"
    threads: int = 2


def layout_spec(layout: dict[str, Any]) -> LayoutSpec:
    """A REST-style layout object as the composer's :class:`LayoutSpec` (``ValueError`` if bad)."""
    return parse_layout(layout.get("type"), layout.get("stylesheet"), layout.get("screenshareType"))


def _annexb(avc: bytes) -> bytes:
    """H.264 in AVC form (4-byte lengths, as the depacketiser gives it) → Annex B for the decoder."""
    out: list[bytes] = []
    pos = 0
    while pos + 4 <= len(avc):
        (size,) = struct.unpack_from("!I", avc, pos)
        out.append(b"\x00\x00\x00\x01" + avc[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return b"".join(out)


class _ComposedStream:
    """One stream of a composed archive: its tracks, whose frames go to the composer.

    Duck-types :class:`~salon.archive.individual.StreamRecording` for the archiver's
    datagram and poll paths (``push``, ``poll``, ``close``, ``dump``)."""

    def __init__(
        self,
        archiver: ComposedArchiver,
        stream_id: str,
        tracks: list[TrackInfo],
        feedback: Feedback,
        start_ms: int,
    ) -> None:
        self.archiver = archiver
        self.stream_id = stream_id
        self.start_ms = start_ms
        self.stop_ms: int | None = None
        self.feedback = feedback
        self.tracks = {t.kind: TrackRecording(t, feedback) for t in tracks}
        self.closed = False
        self.frames = {"audio": 0, "video": 0}
        self.delayed = 0
        self._key_asked_at = -1.0
        self.error: str | None = None
        self.delay = 0.0
        """Seconds this stream's media is placed later than its timestamps say (see _feed)."""

    def __repr__(self) -> str:
        return f"ComposedStream({self.stream_id})"

    def push(self, kind: str, data: bytes, now: float) -> None:
        track = self.tracks.get(kind)
        if track is not None and not self.closed:
            self._feed(kind, track.push(data, now))

    def poll(self, now: float) -> None:
        if self.closed:
            return
        for kind, track in self.tracks.items():
            self._feed(kind, track.poll(now))
        video = self.tracks.get("video")
        if (
            video is not None
            and self.archiver.composer.needs_keyframe(self.stream_id)
            and video.first_ms is not None  # before its first frame the track asks by itself
            and now - self._key_asked_at >= KEY_FRAME_RETRY
        ):
            self._key_asked_at = now
            self.feedback("video", None)

    def close(self, now: float, stop_ms: int | None = None) -> None:
        if self.closed:
            return
        for kind, track in self.tracks.items():
            self._feed(kind, track.flush(now))
        self.closed = True
        self.stop_ms = stop_ms if stop_ms is not None else round(now * 1000)

    def _feed(self, kind: str, frames: list[tuple[int, Frame]]) -> None:
        composer = self.archiver.composer
        for pts_ms, frame in frames:
            pts = pts_ms / 1000.0 + self.delay
            if kind == "audio" and composer.has_audio and pts < composer.audio_position:
                # Audio timestamped before what is mixed already (the publisher stalled, and
                # its RTP clock now runs behind real time by more than LAG) would be lost for
                # good: the stream's media is placed later from now on, audio and video alike,
                # so that it is heard (in sync with its video) rather than dropped.
                shift = composer.audio_position - pts + 0.02
                self.delay += shift
                pts += shift
                self.delayed += 1
            try:
                if kind == "video":
                    data = _annexb(frame.data) if self.tracks["video"].info.codec == "h264" else frame.data
                    composer.push_encoded_video(self.stream_id, data, pts, keyframe=frame.key_frame)
                else:
                    composer.push_encoded_audio(self.stream_id, frame.data, pts)
            except (av.FFmpegError, ValueError) as exc:
                logger.warning("%r: a %s frame could not be composed: %s", self, kind, exc)
                continue
            self.frames[kind] += 1

    @property
    def written(self) -> bool:
        return any(self.frames.values())

    def dump(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "frames": dict(self.frames),
            "delay": round(self.delay, 3),
            "delayed": self.delayed,
            "tracks": {k: t.dump() for k, t in self.tracks.items()},
        }


class ComposedArchiver(Archiver):
    """The archiver of a composed archive: every stream into one :class:`Composer`."""

    def __init__(
        self, directory: pathlib.Path, t0: float, writer: asyncio.StreamWriter, options: ComposedOptions
    ) -> None:
        super().__init__(directory, t0, writer)
        self.options = options
        self.path = directory / MP4_NAME
        self.composer = Composer(
            self.path,
            resolution=(options.width, options.height),
            fps=options.fps,
            layout=layout_spec(options.layout),
            has_audio=options.has_audio,
            has_video=options.has_video,
            preset=options.preset,
            threads=options.threads,
        )
        self.error: str | None = None
        self.failed = False

    def _poll(self) -> None:
        super()._poll()
        self._advance(self.now() - LAG)

    def _advance(self, until: float) -> None:
        if self.error is not None or until <= 0:
            return
        try:
            self.composer.advance(min(until, self.composer.duration + MAX_STEP))
        except (av.FFmpegError, OSError) as exc:
            # A full disk or a muxer error: what was written stays playable; the archive fails.
            self.error = f"writing the composed archive failed: {exc}"
            logger.error("%s", self.error)
            if not self.failed:
                self.failed = True
                self.send(ArchiverFailed(reason=self.error))

    def handle(self, message: AddStream | RemoveStream | SetLayout | SetStreamClasses | StopArchive) -> bool:
        match message:
            case AddStream():
                if message.stream_id in self.by_stream:
                    logger.warning("stream %s is composed already", message.stream_id)
                    return True
                token = bytes.fromhex(message.token)
                tracks = [TrackInfo(t.kind, t.codec, t.clock_rate, t.channels) for t in message.tracks]
                stream = _ComposedStream(
                    self, message.stream_id, tracks, self._feedback(token), message.start_ms
                )
                video = next((t for t in tracks if t.kind == "video"), None)
                self.composer.add_stream(
                    message.stream_id,
                    message.layout_classes,
                    message.video_type or "camera",
                    video_codec=video.codec if video is not None else "vp8",
                    at=message.start_ms / 1000.0,
                )
                entry: Any = _ComposedEntry(stream)
                self.by_token[token] = self.by_stream[message.stream_id] = entry
                logger.info("%r joins the composed archive at %d ms", stream, message.start_ms)
            case RemoveStream():
                entry = self.by_stream.get(message.stream_id)
                self._finish_stream(message.stream_id, message.stop_ms)
                if entry is not None:
                    stop = message.stop_ms if message.stop_ms is not None else round(self.now() * 1000)
                    self.composer.remove_stream(message.stream_id, at=stop / 1000.0)
            case SetLayout():
                try:
                    self.composer.set_layout(layout_spec(message.layout), at=self.now())
                except ValueError as exc:  # checked by the API already: keep the old one
                    logger.warning("layout refused: %s", exc)
            case SetStreamClasses():
                self.composer.set_layout_classes(message.stream_id, message.layout_classes, at=self.now())
            case StopArchive():
                self._drain()
                for stream_id in list(self.by_stream):
                    self._finish_stream(stream_id, message.stop_ms)
                self._finish_composed(message)
                return False
        return True

    def _drain(self) -> None:
        """Take the datagrams still waiting in the sink socket before finishing: a composer
        busy encoding can be behind the socket, and what was sent before the stop belongs
        in the archive."""
        if self.transport is None:
            return
        extra = self.transport.get_extra_info("socket")
        if extra is None:
            return
        sock = socket.fromfd(extra.fileno(), socket.AF_INET, socket.SOCK_DGRAM)  # a dup
        try:
            sock.setblocking(False)
            for _ in range(200_000):
                try:
                    data, addr = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    break
                self.on_datagram(data, addr)
        except OSError as exc:
            logger.debug("draining the sink socket: %s", exc)
        finally:
            sock.close()

    def _finish_composed(self, message: StopArchive) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()
        until = (message.stop_ms / 1000.0) if message.stop_ms is not None else self.now()
        try:
            if self.error is None:
                self.composer.close(until)
            else:
                self.composer.close()
        except (av.FFmpegError, OSError) as exc:
            self.error = self.error or f"finishing the composed archive failed: {exc}"
        if self.failed:
            return  # reported already
        stats: dict[str, Any] = {r.stream_id: r.dump() for r in self.finished}
        stats |= {
            "frames": self.composer.frames,
            "composed": self.composer.composed,
            "duration": self.composer.duration,
            "unknown_datagrams": self.unknown,
            "cpu_time": round(time.process_time(), 3),
        }
        if self.error is not None and not self.path.exists():
            self.send(ArchiverFailed(reason=self.error))
            return
        self.send(
            ArchiverFinished(
                zip_path=str(self.path),  # the deliverable: here the MP4
                files=[],
                errors=[self.error] if self.error else [],
                stats=stats,
            )
        )

    def close_all(self) -> None:
        """The channel ended without a stop: finish the MP4 up to now, so it stays playable."""
        now = self.now()
        for entry in list(self.by_stream.values()):
            entry.recording.close(now)
        self.by_stream.clear()
        self.by_token.clear()
        try:
            self.composer.close(now)
        except (av.FFmpegError, OSError) as exc:
            logger.error("finishing the composed archive failed: %s", exc)


class _ComposedEntry:
    """The archiver's per-stream entry (as :class:`~salon.archive.archiver._Entry`)."""

    __slots__ = ("addr", "recording", "removed")

    def __init__(self, recording: _ComposedStream) -> None:
        self.recording = recording
        self.addr: Any = None
        self.removed = False


def playable_duration(path: pathlib.Path) -> float:
    """Seconds of video (or audio) a composed MP4 holds; 0 when it does not open or is empty."""
    try:
        with av.open(str(path)) as container:
            last = 0.0
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                    last = max(last, end)
            return last
    except (av.FFmpegError, OSError, ValueError):
        return 0.0


class ComposedRecording(IndividualRecording):
    """One composed archive: an archiver composing every recorded stream into one MP4.

    :param options: resolution, layout, tracks of the output.
    """

    def __init__(self, *args: Any, options: ComposedOptions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = options

    def __repr__(self) -> str:
        return f"ComposedRecording({self.archive_id}, {len(self.streams)} streams)"

    def archiver_args(self) -> list[str]:
        return ["--composed", self.options.model_dump_json()]

    async def set_layout(self, layout: dict[str, Any]) -> None:
        """A new layout, from the next frame on (``ValueError`` if it is not one)."""
        layout_spec(layout)
        if self.archiver is None or self.ended.done():
            raise RecordingError(f"{self!r} is not recording")
        self.archiver.send(SetLayout(layout=json.loads(json.dumps(layout))))

    async def set_stream_classes(self, stream_id: str, classes: tuple[str, ...]) -> None:
        """A stream's layout classes changed: the layout follows from the next frame on."""
        if self.archiver is None or self.ended.done():
            raise RecordingError(f"{self!r} is not recording")
        self.archiver.send(SetStreamClasses(stream_id=stream_id, layout_classes=list(classes)))

    async def _salvage(self, why: str) -> None:
        """The archiver ended without finishing: the MP4 it left plays up to its last fragment."""
        logger.error("%r: %s; keeping the composed file it wrote", self, why)
        stop_ms = self._ms()
        async with self._lock:
            for entry in self.entries:
                if entry.stop_ms is None:
                    entry.stop_ms = stop_ms
                await self._stop_recorder(entry)
        path = self.directory / MP4_NAME
        duration = await asyncio.to_thread(playable_duration, path) if path.exists() else 0.0
        self._end(
            RecordingResult(
                self.archive_id,
                path if duration > 0 else None,
                [],
                path.stat().st_size if duration > 0 else 0,
                round(duration, 3),
                failure=why,
            )
        )
