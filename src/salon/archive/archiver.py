"""The archiver process: one per archive, writing its streams' files from their RTP.

Started by :class:`~salon.archive.recorder.ArchiverProcess` as ``python -m
salon.archive.archiver --fd N --dir DIR --t0 T`` (a fresh interpreter, never a fork), separate
from the media workers: an archiver that crashes or is killed loses its own recording, never a
call. ``N`` is its end of a Unix socket pair to the main process, carrying the length-prefixed
JSON frames of :mod:`salon.media.channel` with the messages below; ``T`` is the archive's start
on ``CLOCK_MONOTONIC`` (shared by all processes), so every offset is on one timeline.

It binds one UDP socket on 127.0.0.1 (port chosen by the kernel, reported in
:class:`ArchiverReady`) where the media workers' recorders (:mod:`salon.media.recording`)
send the streams' RTP, each stream with its own 16-byte token; a datagram with an unknown token
is dropped. Feedback (NACK, key-frame request) goes back to the address the stream's datagrams
come from.

main → archiver: :class:`AddStream` (a stream joins: its token, tracks, start offset),
:class:`RemoveStream` (its file is finished), :class:`StopArchive` (finish every file, write the
ZIP, report :class:`ArchiverFinished`, exit). The archiver also exits when its channel ends
(the main process died), finishing its files first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from salon.archive.individual import ManifestFile, StreamRecording, TrackInfo, write_archive_zip
from salon.media.channel import FrameDecoder, encode_frame
from salon.media.recording import TOKEN_SIZE, TRACK_AUDIO, TRACK_VIDEO
from salon.observability.logs import configure_worker as configure_worker_logging

__all__ = [
    "AddStream",
    "ArchiverFailed",
    "ArchiverFinished",
    "ArchiverReady",
    "RemoveStream",
    "SetLayout",
    "SetStreamClasses",
    "StopArchive",
    "TrackSpec",
    "main",
]

logger = logging.getLogger(__name__)

#: Receive buffer of the sink socket (the kernel caps it at net.core.rmem_max).
RECEIVE_BUFFER = 4 << 20
#: How often held packets are re-examined (NACK retries, holes given up, key-frame requests).
POLL_INTERVAL = 0.02


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrackSpec(_Message):
    kind: Literal["audio", "video"]
    codec: str
    clock_rate: int
    channels: int | None = None


#: What a stream ID or file stem may be: it names a file in the archive's directory.
_FILE_SAFE = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"


class AddStream(_Message):
    type: Literal["add_stream"] = "add_stream"
    stream_id: str = Field(pattern=_FILE_SAFE)
    stem: str | None = Field(default=None, pattern=_FILE_SAFE)
    """The file's name without extension (default: the stream ID)."""
    token: str = Field(pattern="^[0-9a-f]{32}$")
    tracks: list[TrackSpec]
    connection_data: str = ""
    start_ms: int = 0
    layout_classes: list[str] = []
    """The stream's ``layoutClassList`` (composed mode)."""
    video_type: str | None = None
    """``camera`` or ``screen`` (composed mode)."""


class RemoveStream(_Message):
    type: Literal["remove_stream"] = "remove_stream"
    stream_id: str
    stop_ms: int | None = None


class SetLayout(_Message):
    """A composed archive's new layout (``type``, ``stylesheet``, ``screenshareType`` as the
    REST API takes them); an individual archive ignores it."""

    type: Literal["set_layout"] = "set_layout"
    layout: dict[str, Any]


class SetStreamClasses(_Message):
    """A stream's ``layoutClassList`` changed (a composed archive's layout follows it)."""

    type: Literal["set_stream_classes"] = "set_stream_classes"
    stream_id: str
    layout_classes: list[str]


class StopArchive(_Message):
    type: Literal["stop"] = "stop"
    archive_id: str
    name: str | None = None
    session_id: str
    created_at: int
    stop_ms: int | None = None


class ArchiverReady(_Message):
    type: Literal["ready"] = "ready"
    pid: int
    host: str
    port: int


class FileEntry(_Message):
    stream_id: str
    connection_data: str
    filename: str
    size: int
    start_offset_ms: int
    stop_offset_ms: int


class ArchiverFinished(_Message):
    type: Literal["finished"] = "finished"
    zip_path: str | None
    files: list[FileEntry]
    errors: list[str] = []
    """What went wrong with some stream's file (a full disk, a muxer error): the file holds
    what was written before."""
    stats: dict[str, Any] = {}


class ArchiverFailed(_Message):
    type: Literal["failed"] = "failed"
    reason: str


ToArchiver = Annotated[
    AddStream | RemoveStream | SetLayout | SetStreamClasses | StopArchive, Field(discriminator="type")
]
FromArchiver = Annotated[ArchiverReady | ArchiverFinished | ArchiverFailed, Field(discriminator="type")]
to_archiver: TypeAdapter[AddStream | RemoveStream | SetLayout | SetStreamClasses | StopArchive] = TypeAdapter(
    ToArchiver
)
from_archiver: TypeAdapter[ArchiverReady | ArchiverFinished | ArchiverFailed] = TypeAdapter(FromArchiver)


def encode(message: _Message) -> bytes:
    return encode_frame(message.model_dump_json().encode())


class _Sink(asyncio.DatagramProtocol):
    def __init__(self, archiver: Archiver) -> None:
        self.archiver = archiver

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.archiver.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("sink socket error: %s", exc)


class _Entry:
    __slots__ = ("addr", "recording", "removed")

    def __init__(self, recording: StreamRecording) -> None:
        self.recording = recording
        self.addr: Any = None
        self.removed = False


class Archiver:
    """The archiver's state: its sink socket, its streams (by token), its output directory."""

    def __init__(self, directory: pathlib.Path, t0: float, writer: asyncio.StreamWriter) -> None:
        self.directory = directory
        self.t0 = t0
        self.writer = writer
        self.by_token: dict[bytes, _Entry] = {}
        self.by_stream: dict[str, _Entry] = {}
        self.finished: list[StreamRecording] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.unknown = 0
        self._timer: asyncio.TimerHandle | None = None

    def now(self) -> float:
        """Seconds since the archive started."""
        return time.monotonic() - self.t0

    async def open(self) -> tuple[str, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(("127.0.0.1", 0))
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Sink(self), sock=sock)
        self.transport = transport
        self._timer = loop.call_later(POLL_INTERVAL, self._poll)
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    def send(self, message: _Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    # -- media -------------------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: Any) -> None:
        entry = self.by_token.get(data[:TOKEN_SIZE])
        if entry is None or len(data) < TOKEN_SIZE + 13:
            self.unknown += 1
            return
        entry.addr = addr
        track = data[TOKEN_SIZE]
        kind = "audio" if track == TRACK_AUDIO else "video" if track == TRACK_VIDEO else None
        if kind is not None:
            try:
                entry.recording.push(kind, data[TOKEN_SIZE + 1 :], self.now())
            except Exception:  # a bug: lose this packet, not the archive
                logger.exception("%r: a packet could not be recorded", entry.recording)

    def _feedback(self, token: bytes) -> Any:
        def feedback(kind: str, seqs: list[int] | None) -> None:
            entry = self.by_token.get(token)
            if entry is None or entry.addr is None or self.transport is None:
                return
            if seqs is None:
                message = token + b"K"
            else:
                track = TRACK_AUDIO if kind == "audio" else TRACK_VIDEO
                message = token + b"N" + bytes([track]) + b"".join(s.to_bytes(2, "big") for s in seqs[:512])
            self.transport.sendto(message, entry.addr)

        return feedback

    def _poll(self) -> None:
        now = self.now()
        for entry in list(self.by_token.values()):
            try:
                entry.recording.poll(now)
            except Exception:  # a bug: keep the timer (and the other streams) going
                logger.exception("%r: poll failed", entry.recording)
        self._timer = asyncio.get_running_loop().call_later(POLL_INTERVAL, self._poll)

    # -- control -----------------------------------------------------------------------------

    def handle(self, message: AddStream | RemoveStream | SetLayout | SetStreamClasses | StopArchive) -> bool:
        """Act on a message; False once the archive is stopped (the process exits)."""
        match message:
            case AddStream():
                if message.stream_id in self.by_stream:
                    logger.warning("stream %s is recorded already", message.stream_id)
                    return True
                token = bytes.fromhex(message.token)
                recording = StreamRecording(
                    message.stream_id,
                    [TrackInfo(t.kind, t.codec, t.clock_rate, t.channels) for t in message.tracks],
                    self.directory,
                    feedback=self._feedback(token),
                    start_ms=message.start_ms,
                    connection_data=message.connection_data,
                    stem=message.stem,
                )
                entry = _Entry(recording)
                self.by_token[token] = self.by_stream[message.stream_id] = entry
                logger.info("%r joins the archive at %d ms", recording, message.start_ms)
            case RemoveStream():
                self._finish_stream(message.stream_id, message.stop_ms)
            case SetLayout() | SetStreamClasses():
                pass  # individual files have no layout
            case StopArchive():
                for stream_id in list(self.by_stream):
                    self._finish_stream(stream_id, message.stop_ms)
                self._finish(message)
                return False
        return True

    def _finish_stream(self, stream_id: str, stop_ms: int | None) -> None:
        entry = self.by_stream.pop(stream_id, None)
        if entry is None:
            return
        for token, other in list(self.by_token.items()):
            if other is entry:
                del self.by_token[token]
        entry.recording.close(self.now(), stop_ms)
        self.finished.append(entry.recording)
        logger.info("%r finished: %s", entry.recording, entry.recording.dump())

    def _finish(self, message: StopArchive) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()
        files = [
            (
                r.path,
                ManifestFile(
                    r.stream_id,
                    r.connection_data,
                    r.path.name,
                    r.path.stat().st_size,
                    r.start_ms,
                    r.stop_ms if r.stop_ms is not None else r.start_ms,
                ),
            )
            for r in self.finished
            if r.written
        ]
        zip_path = self.directory / f"{message.archive_id}.zip"
        try:
            write_archive_zip(
                zip_path,
                archive_id=message.archive_id,
                name=message.name,
                session_id=message.session_id,
                created_at=message.created_at,
                files=files,
            )
        except OSError as exc:
            self.send(ArchiverFailed(reason=f"writing the archive failed: {exc}"))
            return
        self.send(
            ArchiverFinished(
                zip_path=str(zip_path),
                files=[
                    FileEntry(
                        stream_id=m.stream_id,
                        connection_data=m.connection_data,
                        filename=m.filename,
                        size=m.size,
                        start_offset_ms=m.start_offset_ms,
                        stop_offset_ms=m.stop_offset_ms,
                    )
                    for _, m in files
                ],
                errors=[f"stream {r.stream_id}: {r.error}" for r in self.finished if r.error],
                stats={r.stream_id: r.dump() for r in self.finished}
                | {"unknown_datagrams": self.unknown, "cpu_time": round(time.process_time(), 3)},
            )
        )

    def close_all(self) -> None:
        """The channel ended without a stop: finish the files so they stay playable."""
        now = self.now()
        for entry in list(self.by_stream.values()):
            entry.recording.close(now)
        self.by_stream.clear()
        self.by_token.clear()


async def serve(fd: int, directory: pathlib.Path, t0: float, composed: str | None = None) -> None:
    """``composed``: the JSON options of a composed archive (:mod:`salon.archive.composed`);
    None for an individual one."""
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    archiver: Archiver
    if composed is not None:
        from salon.archive.composed import ComposedArchiver, ComposedOptions

        archiver = ComposedArchiver(directory, t0, writer, ComposedOptions.model_validate_json(composed))
    else:
        archiver = Archiver(directory, t0, writer)
    host, port = await archiver.open()
    archiver.send(ArchiverReady(pid=os.getpid(), host=host, port=port))
    decoder = FrameDecoder()
    running = True
    try:
        while running:
            data = await reader.read(65536)
            if not data:
                logger.warning("archiver: the main process closed the channel; finishing the files")
                archiver.close_all()
                break
            for frame in decoder.feed(data):
                if not archiver.handle(to_archiver.validate_json(frame)):
                    running = False
                    break
        await writer.drain()
    finally:
        writer.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m salon.archive.archiver", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="this archiver's end of the channel socket")
    parser.add_argument("--dir", type=pathlib.Path, required=True, help="where the files are written")
    parser.add_argument("--t0", type=float, required=True, help="the archive's start (CLOCK_MONOTONIC)")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--composed", metavar="JSON", help="record a composed archive with these options (one MP4)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_worker_logging("archiver", args.log_level)  # the main process's format (text or JSON)
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.fd, args.dir, args.t0, args.composed))
    return 0


if __name__ == "__main__":
    # Run as salon.archive.archiver, not as __main__: the message classes must be the ones
    # salon.archive.composed imports (a second copy of this module would have its own).
    from salon.archive import archiver

    sys.exit(archiver.main())
