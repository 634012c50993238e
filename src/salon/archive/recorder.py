"""Individual-mode recording backend (main process): archiver processes and media recorders.

Ownership tree (main process)::

    RecordingManager              (one per server: every running recording; close() stops them)
    └── IndividualRecording       (one per archive: start / add_stream / remove_stream / stop)
        ├── ArchiverProcess       (python -m salon.archive.archiver: the channel, the pid)
        └── media recorders       (one per stream, in the stream's media worker, through
                                   the media plane's start_recording / stop_recording)

An archive's streams flow as RTP from the media worker straight to its archiver on the
loopback (:mod:`salon.media.recording`); the main process only carries control messages.

**Failure.** An archiver that dies (crash, ``kill -9``, out of memory) takes only its own
recording: the calls go on (its recorders' datagrams are dropped, then the recorders are
stopped), and whatever it had written is still playable (:mod:`salon.archive.individual`
flushes clusters of at most 200 ms). The recording then ends by itself: the main process
packages the files left behind into the archive ZIP, and the result says what happened
(:attr:`RecordingResult.failure`); :attr:`IndividualRecording.ended` is resolved and the
``on_ended`` callback called, so the archive is finished, never silently lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from salon.archive.archiver import (
    AddStream,
    ArchiverFailed,
    ArchiverFinished,
    ArchiverReady,
    RemoveStream,
    SetLayout,
    SetStreamClasses,
    StopArchive,
    TrackSpec,
    encode,
    from_archiver,
)
from salon.archive.individual import ManifestFile, write_archive_zip
from salon.media.channel import ChannelError, FrameDecoder
from salon.media.channel import RecordingResult as RecorderStarted

__all__ = [
    "ArchiverProcess",
    "IndividualRecording",
    "RecordedFile",
    "RecordingError",
    "RecordingManager",
    "RecordingPlane",
    "RecordingResult",
    "StreamSource",
    "package_unfinished",
]

logger = logging.getLogger(__name__)

#: The main process's journal of a recording, in its directory (:func:`package_unfinished`).
JOURNAL = "recording.json"
#: Seconds an archiver has to start, and to finish its files once told to stop.
START_TIMEOUT = 15.0
STOP_TIMEOUT = 60.0


class RecordingError(Exception):
    """A recording could not be started or went wrong (the message says why)."""


class RecordingPlane(Protocol):
    """What a recording needs from the media plane (:class:`~salon.media.plane.SfuMediaPlane`)."""

    async def start_recording(
        self,
        session_id: str,
        stream_id: str,
        sink: tuple[str, int],
        token: bytes,
        *,
        audio: bool = True,
        video: bool = True,
    ) -> RecorderStarted: ...

    async def stop_recording(self, session_id: str, recorder_id: str) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True)
class StreamSource:
    """A stream to record."""

    stream_id: str
    connection_data: str = ""
    has_audio: bool = True
    has_video: bool = True
    layout_classes: tuple[str, ...] = ()
    """Its ``layoutClassList`` (a composed archive lays it out by them)."""
    video_type: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedFile:
    stream_id: str
    connection_data: str
    filename: str
    size: int
    start_offset_ms: int
    stop_offset_ms: int


@dataclass(slots=True)
class RecordingResult:
    """What a finished recording produced."""

    archive_id: str
    path: pathlib.Path | None
    """The archive ZIP (None when nothing could be written)."""
    files: list[RecordedFile]
    size: int
    """Bytes of the ZIP."""
    duration: float
    """Seconds from start to stop."""
    failure: str | None = None
    """Why the recording did not end as asked (the archiver died, a disk filled up); the files
    are what was written until then."""
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The process


def _spawn(
    directory: pathlib.Path, t0: float, log_level: str, args: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start ``python -m salon.archive.archiver`` with one end of a fresh socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "salon.archive.archiver",
                "--fd",
                str(theirs.fileno()),
                "--dir",
                str(directory),
                "--t0",
                repr(t0),
                "--log-level",
                log_level,
                *args,
            ],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


class ArchiverProcess:
    """An archiver process and its channel: send control messages, learn how it ended."""

    def __init__(self, process: subprocess.Popen[bytes], writer: asyncio.StreamWriter) -> None:
        self.process = process
        self.writer = writer
        self.ready: asyncio.Future[ArchiverReady] = asyncio.get_running_loop().create_future()
        self.finished: asyncio.Future[ArchiverFinished] = asyncio.get_running_loop().create_future()
        self.exited = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def __repr__(self) -> str:
        return f"ArchiverProcess(pid={self.pid})"

    @classmethod
    async def spawn(
        cls, directory: pathlib.Path, t0: float, *, log_level: str = "WARNING", args: Sequence[str] = ()
    ) -> ArchiverProcess:
        """``args``: more of the archiver's arguments (``--composed``)."""
        process, ours = _spawn(directory, t0, log_level, args)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        handle = cls(process, writer)
        handle._reader_task = asyncio.get_running_loop().create_task(
            handle._read(reader), name=f"salon-archiver-{process.pid}"
        )
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.shield(handle.ready)
        except BaseException:
            await handle.kill()
            raise
        return handle

    def send(self, message: AddStream | RemoveStream | SetLayout | SetStreamClasses | StopArchive) -> None:
        if self.writer.is_closing():
            raise RecordingError("the archiver is gone")
        self.writer.write(encode(message))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        why = "its channel closed"
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for frame in decoder.feed(data):
                    message = from_archiver.validate_json(frame)
                    match message:
                        case ArchiverReady():
                            if not self.ready.done():
                                self.ready.set_result(message)
                        case ArchiverFinished():
                            if not self.finished.done():
                                self.finished.set_result(message)
                        case ArchiverFailed():
                            why = message.reason
                            if not self.finished.done():
                                self.finished.set_exception(RecordingError(message.reason))
        except (ChannelError, ConnectionError, ValueError) as exc:
            why = f"its channel broke ({exc})"
        finally:
            code = await asyncio.get_running_loop().run_in_executor(None, self._wait)
            why = f"{why}; exit code {code}"
            error = RecordingError(f"the archiver (pid {self.pid}) ended: {why}")
            for future in (self.ready, self.finished):
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # retrieved: a crash is reported by whoever awaits
            self.writer.close()
            self.exited.set()

    def _wait(self) -> int:
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    async def kill(self) -> None:
        """SIGKILL the process and wait for it; idempotent."""
        if self.process.poll() is None:
            try:
                self.process.kill()  # SIGKILL; Popen does not signal a pid it has reaped
            except ProcessLookupError:
                pass
        self.writer.close()
        if self._reader_task is not None:
            await self.exited.wait()


# --------------------------------------------------------------------------------------------
# One archive


@dataclass(slots=True)
class _Recorded:
    source: StreamSource
    token: bytes
    recorder_id: str | None
    start_ms: int
    stem: str
    """The file's name without its extension: the stream ID, with ``-2``, ``-3``... for a
    stream recorded again after it was removed (manual stream mode)."""
    stop_ms: int | None = None
    tracks: list[TrackSpec] = field(default_factory=list)


class IndividualRecording:
    """One individual-mode archive: an archiver process and one media recorder per stream.

    :param plane: the media plane the streams are recorded from.
    :param directory: where the archiver writes (one file per stream, then the ZIP).
    :param on_ended: called once with the result when the recording ends, asked for or not.
    """

    def __init__(
        self,
        plane: RecordingPlane,
        *,
        archive_id: str,
        session_id: str,
        name: str | None = None,
        created_at: int | None = None,
        directory: pathlib.Path,
        on_ended: Callable[[IndividualRecording, RecordingResult], None] | None = None,
        log_level: str = "WARNING",
    ) -> None:
        self.plane = plane
        self.archive_id = archive_id
        self.session_id = session_id
        self.name = name
        self.created_at = created_at if created_at is not None else int(time.time() * 1000)
        self.directory = directory
        self.on_ended = on_ended
        self.log_level = log_level
        self.streams: dict[str, _Recorded] = {}
        """The latest recording of each stream, by stream ID."""
        self.entries: list[_Recorded] = []
        """Every stream recording, in order (a stream removed and added again has several)."""
        self.archiver: ArchiverProcess | None = None
        self.ended: asyncio.Future[RecordingResult] = asyncio.get_running_loop().create_future()
        self.t0 = 0.0
        self.started_at = 0
        """When the recording started (ms since the epoch)."""
        self._sink: tuple[str, int] = ("127.0.0.1", 0)
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"IndividualRecording({self.archive_id}, {len(self.streams)} streams)"

    def archiver_args(self) -> list[str]:
        """More arguments of the archiver process (a composed recording's options)."""
        return []

    def _ms(self) -> int:
        return round((time.monotonic() - self.t0) * 1000)

    async def start(self, streams: Iterable[StreamSource] = (), *, t0: float | None = None) -> None:
        """Start the archiver, then record ``streams``. Raises :class:`RecordingError`.
        ``t0``: the archive's start on ``time.monotonic()`` (default: now)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic() if t0 is None else t0
        self.started_at = int((time.time() - (time.monotonic() - self.t0)) * 1000)
        self._write_journal()
        try:
            self.archiver = await ArchiverProcess.spawn(
                self.directory, self.t0, log_level=self.log_level, args=self.archiver_args()
            )
        except (OSError, RecordingError, TimeoutError) as exc:
            raise RecordingError(f"the archiver could not start: {exc}") from exc
        ready = self.archiver.ready.result()
        self._sink = (ready.host, ready.port)
        self._watch = asyncio.get_running_loop().create_task(self._watch_archiver(), name=f"{self!r} watch")
        logger.info("%r: archiver pid %d listens on %s:%d", self, ready.pid, ready.host, ready.port)
        for source in streams:
            await self.add_stream(source)

    async def add_stream(self, source: StreamSource) -> None:
        """Record one more stream (from now on); a stream recorded already is left alone.
        Raises :class:`RecordingError` if the media plane has no media for it."""
        async with self._lock:
            if self._stopping or self.ended.done() or self.archiver is None:
                raise RecordingError(f"{self!r} is not recording")
            if source.stream_id in self.streams and self.streams[source.stream_id].stop_ms is None:
                return
            token = secrets.token_bytes(16)
            try:
                started = await self.plane.start_recording(
                    self.session_id,
                    source.stream_id,
                    self._sink,
                    token,
                    audio=source.has_audio,
                    video=source.has_video,
                )
            except Exception as exc:
                raise RecordingError(f"stream {source.stream_id} cannot be recorded: {exc}") from exc
            tracks = [
                TrackSpec(kind=t.kind, codec=t.codec, clock_rate=t.clock_rate, channels=t.channels)
                for t in started.tracks
            ]
            earlier = sum(1 for e in self.entries if e.source.stream_id == source.stream_id)
            stem = source.stream_id if not earlier else f"{source.stream_id}-{earlier + 1}"
            entry = _Recorded(source, token, started.recorder_id, self._ms(), stem, tracks=tracks)
            self.streams[source.stream_id] = entry
            self.entries.append(entry)
            self._write_journal()
            try:
                self.archiver.send(
                    AddStream(
                        stream_id=source.stream_id,
                        stem=stem,
                        token=token.hex(),
                        tracks=tracks,
                        connection_data=source.connection_data,
                        start_ms=entry.start_ms,
                        layout_classes=list(source.layout_classes),
                        video_type=source.video_type,
                    )
                )
            except RecordingError:
                pass  # the watcher ends the recording
            logger.info(
                "%r: records stream %s (%s)", self, source.stream_id, "+".join(t.kind for t in tracks)
            )

    async def remove_stream(self, stream_id: str) -> None:
        """Stop recording one stream (it left, or manual mode removed it); its file is finished."""
        async with self._lock:
            entry = self.streams.get(stream_id)
            if entry is None or entry.stop_ms is not None:
                return
            entry.stop_ms = self._ms()
            self._write_journal()
            await self._stop_recorder(entry)
            if self.archiver is not None and not self.ended.done():
                try:
                    self.archiver.send(RemoveStream(stream_id=stream_id, stop_ms=entry.stop_ms))
                except RecordingError:
                    pass

    async def _stop_recorder(self, entry: _Recorded) -> None:
        recorder_id, entry.recorder_id = entry.recorder_id, None
        if recorder_id is not None:
            try:
                stats = await self.plane.stop_recording(self.session_id, recorder_id)
            except Exception as exc:  # the worker died: the recorder went with it
                logger.debug("%r: stopping recorder %s: %s", self, recorder_id, exc)
            else:
                logger.info("%r: recorder of stream %s: %s", self, entry.source.stream_id, stats)

    async def stop(self) -> RecordingResult:
        """Stop recording, finish the files and the ZIP; returns the result (also when the
        archiver had died before: then with the files it left and a failure)."""
        async with self._lock:
            if not self._stopping and not self.ended.done():
                self._stopping = True
                stop_ms = self._ms()
                for entry in self.entries:
                    if entry.stop_ms is None:
                        entry.stop_ms = stop_ms
                self._write_journal()
                for entry in self.entries:
                    await self._stop_recorder(entry)
                if self.archiver is not None:
                    try:
                        self.archiver.send(
                            StopArchive(
                                archive_id=self.archive_id,
                                name=self.name,
                                session_id=self.session_id,
                                created_at=self.created_at,
                                stop_ms=stop_ms,
                            )
                        )
                    except RecordingError:
                        pass
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                return await asyncio.shield(self.ended)
        except TimeoutError:
            logger.error("%r: the archiver did not finish within %.0f s; killing it", self, STOP_TIMEOUT)
            await self.kill()
            return await asyncio.shield(self.ended)

    async def _watch_archiver(self) -> None:
        archiver = self.archiver
        assert archiver is not None
        try:
            finished = await archiver.finished
        except RecordingError as exc:
            await archiver.exited.wait()
            await self._salvage(str(exc))
            return
        await archiver.exited.wait()
        files = [
            RecordedFile(
                f.stream_id, f.connection_data, f.filename, f.size, f.start_offset_ms, f.stop_offset_ms
            )
            for f in finished.files
        ]
        path = pathlib.Path(finished.zip_path) if finished.zip_path else None
        self._end(
            RecordingResult(
                self.archive_id,
                path,
                files,
                path.stat().st_size if path is not None and path.exists() else 0,
                self._duration(),
                failure="; ".join(finished.errors) or None,
                stats=dict(finished.stats),
            )
        )

    def _duration(self) -> float:
        stops = [e.stop_ms for e in self.entries if e.stop_ms is not None]
        end_ms = max(stops) if stops and self._stopping else self._ms()
        return round(end_ms / 1000.0, 3)

    async def _salvage(self, why: str) -> None:
        """The archiver ended without finishing: stop the recorders, package what it wrote."""
        logger.error("%r: %s; packaging the files it wrote", self, why)
        stop_ms = self._ms()
        async with self._lock:
            for entry in self.entries:
                if entry.stop_ms is None:
                    entry.stop_ms = stop_ms
                await self._stop_recorder(entry)
            self._write_journal()
        try:
            result = await asyncio.to_thread(package_unfinished, self.directory)
        except (OSError, ValueError) as exc:
            result = RecordingResult(self.archive_id, None, [], 0, round(stop_ms / 1000.0, 3))
            why = f"{why}; packaging failed: {exc}"
        result.failure = why
        self._end(result)

    def _write_journal(self) -> None:
        """What the main process knows of the recording, next to its files
        (:data:`JOURNAL`): enough to package them without the archiver, even after a restart
        (:func:`package_unfinished`)."""
        journal = {
            "archive_id": self.archive_id,
            "name": self.name,
            "session_id": self.session_id,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "streams": [
                {
                    "stream_id": e.source.stream_id,
                    "stem": e.stem,
                    "connection_data": e.source.connection_data,
                    "start_ms": e.start_ms,
                    "stop_ms": e.stop_ms,
                }
                for e in self.entries
            ],
        }
        try:
            partial = self.directory / (JOURNAL + ".partial")
            partial.write_text(json.dumps(journal))
            partial.replace(self.directory / JOURNAL)
        except OSError as exc:  # a full disk: the archiver's files tell the rest
            logger.warning("%r: cannot write its journal: %s", self, exc)

    def _end(self, result: RecordingResult) -> None:
        if self.ended.done():
            return
        self.ended.set_result(result)
        logger.info(
            "%r: ended: %d files, %d bytes%s",
            self,
            len(result.files),
            result.size,
            f" ({result.failure})" if result.failure else "",
        )
        if self.on_ended is not None:
            try:
                self.on_ended(self, result)
            except Exception:
                logger.exception("%r: on_ended failed", self)

    async def kill(self) -> None:
        """Kill the archiver at once (shutdown); the watcher packages what it wrote."""
        if self.archiver is not None:
            await self.archiver.kill()
        if self._watch is not None:
            await asyncio.shield(self._watch)


def package_unfinished(directory: pathlib.Path) -> RecordingResult:
    """Package an individual recording whose archiver did not finish (it crashed, or the
    server stopped): the stream files it left, with the offsets from the main process's
    journal, into the archive ZIP with its manifest. A stream without a stop offset (the
    server went down) ends when its file was last written. Raises :class:`OSError` or
    :class:`ValueError` (no journal, or an unreadable one)."""
    journal = json.loads((directory / JOURNAL).read_text())
    archive_id = str(journal["archive_id"])
    started_at = int(journal.get("started_at") or 0)
    files: list[tuple[pathlib.Path, ManifestFile]] = []
    for entry in list(journal["streams"]):
        stream_id = str(entry["stream_id"])
        for suffix in (".webm", ".mkv"):
            path = directory / f"{entry.get('stem') or stream_id}{suffix}"
            if not path.is_file() or path.stat().st_size == 0:
                continue
            stat = path.stat()
            stop_ms = entry.get("stop_ms")
            if stop_ms is None:
                stop_ms = max(int(entry["start_ms"]), int(stat.st_mtime * 1000) - started_at)
            files.append(
                (
                    path,
                    ManifestFile(
                        stream_id,
                        str(entry.get("connection_data") or ""),
                        path.name,
                        stat.st_size,
                        int(entry["start_ms"]),
                        int(stop_ms),
                    ),
                )
            )
    zip_path = directory / f"{archive_id}.zip"
    write_archive_zip(
        zip_path,
        archive_id=archive_id,
        name=journal.get("name"),
        session_id=str(journal["session_id"]),
        created_at=int(journal["created_at"]),
        files=files,
    )
    duration_ms = max((m.stop_offset_ms for _, m in files), default=0)
    return RecordingResult(
        archive_id,
        zip_path,
        [
            RecordedFile(
                m.stream_id, m.connection_data, m.filename, m.size, m.start_offset_ms, m.stop_offset_ms
            )
            for _, m in files
        ],
        zip_path.stat().st_size,
        round(duration_ms / 1000.0, 3),
    )


class RecordingManager:
    """Every individual recording of the server: starts them, stops them all on close."""

    def __init__(self, plane: RecordingPlane, root: pathlib.Path, *, log_level: str = "WARNING") -> None:
        self.plane = plane
        self.root = root
        self.log_level = log_level
        self.recordings: dict[str, IndividualRecording] = {}

    async def start(
        self,
        archive_id: str,
        session_id: str,
        streams: Iterable[StreamSource] = (),
        *,
        name: str | None = None,
        created_at: int | None = None,
        on_ended: Callable[[IndividualRecording, RecordingResult], None] | None = None,
    ) -> IndividualRecording:
        if archive_id in self.recordings:
            raise RecordingError(f"archive {archive_id} is being recorded already")

        def ended(recording: IndividualRecording, result: RecordingResult) -> None:
            self.recordings.pop(archive_id, None)
            if on_ended is not None:
                on_ended(recording, result)

        recording = IndividualRecording(
            self.plane,
            archive_id=archive_id,
            session_id=session_id,
            name=name,
            created_at=created_at,
            directory=self.root / archive_id,
            on_ended=ended,
            log_level=self.log_level,
        )
        self.recordings[archive_id] = recording
        try:
            await recording.start(streams)
        except BaseException:
            self.recordings.pop(archive_id, None)
            await recording.kill()
            raise
        return recording

    async def close(self) -> None:
        """Stop every recording (its files finished and packaged)."""
        recordings = list(self.recordings.values())
        await asyncio.gather(*(r.stop() for r in recordings), return_exceptions=True)
