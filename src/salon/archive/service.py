"""The archive control plane: the archives' lifecycle, and the interface recorders implement.

:class:`ArchiveService` starts, stops and tracks archives (``docs/archiving.md``). Every
status change is written to the store first, then posted as an archive callback, and the
session's connections are told (``archive_started`` / ``archive_stopped``):

``started`` → (``paused`` while nothing is published → ``started``) → ``stopped`` →
``available`` (the recording stored) or ``failed`` (with a ``reason``); later ``expired``
(after the retention period, its file removed) or ``deleted``.

An archive stops when asked (``user initiated``), when its session has been empty for
:attr:`ArchiveConfig.empty_timeout` seconds (``session ended``), or at
:attr:`ArchiveConfig.max_duration` (``maximum duration exceeded``). After a restart, archives
left unfinished are finalised by their recorder (:meth:`Recorder.finalise`) or fail.

The media side is a :class:`Recorder` per output mode (``individual``, ``composed``): the
service hands it the streams to record and asks it for the result; it never sees media.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import pathlib
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from salon.archive import layout as layouts
from salon.archive.models import (
    DEFAULT_RESOLUTION,
    DELETABLE,
    LAYOUT_TYPES,
    RESOLUTIONS,
    SCREENSHARE_TYPES,
    UNFINISHED,
    ArchiveStatus,
    ArchiveStream,
    Layout,
    OutputMode,
    StreamMode,
    archive_json,
    streams_of,
)
from salon.archive.storage import ArchiveStorage, RemoteFile, StorageError, storage_error
from salon.errors import ClientError, ConflictError, InvalidRequestError, NotFoundError, SalonError
from salon.protocol import (
    ArchiveStartedEvent,
    ArchiveStoppedEvent,
    ConnectionCreatedEvent,
    ServerMessage,
    StreamCreatedEvent,
    StreamDestroyedEvent,
    StreamInfo,
)
from salon.store import ArchiveRecord, NewCallback, Store
from salon.store.registry import Registry

__all__ = [
    "ArchiveConfig",
    "ArchiveService",
    "NotManualError",
    "RecordedStream",
    "Recorder",
    "RecorderFactory",
    "Recording",
    "RecordingFailed",
    "RecordingResult",
    "StartOptions",
]

logger = logging.getLogger(__name__)

REASON_USER = "user initiated"
REASON_EMPTY = "session ended"
REASON_MAX_DURATION = "maximum duration exceeded"
REASON_RESTART = "the server restarted while the archive was recorded"
REASON_SHUTDOWN = "the server shut down"


# -- the recorder interface ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedStream:
    """A stream a recording takes, with what of it to record (``has_audio``/``has_video``:
    the archive's, narrowed in manual mode by the selection's). Not the stream's own
    ``hasAudio``/``hasVideo``: those say whether it is muted now, and a stream muted when its
    recording starts is recorded (black frames, silence) so that its unmute is too; the
    recorder takes whichever tracks the stream publishes."""

    stream_id: str
    connection_id: str
    connection_data: str
    name: str
    has_audio: bool
    has_video: bool
    video_type: str | None
    layout_class_list: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordingResult:
    """What a recording made: ``files[0]`` is the deliverable (the ZIP of an individual
    archive, the MP4 of a composed one), which storage keeps and the archive's ``url``
    downloads; ``size`` is its size in bytes; ``duration`` the seconds recorded."""

    files: tuple[pathlib.Path, ...]
    size: int
    duration: float


class RecordingFailed(Exception):
    """A recording produced nothing usable; ``str(exc)`` is the archive's ``reason``."""


class Recording(Protocol):
    """One archive being recorded (what :meth:`Recorder.start` returns)."""

    async def add_stream(self, stream: RecordedStream) -> None: ...

    async def remove_stream(self, stream_id: str) -> None: ...

    async def set_layout(self, layout: Layout) -> None:
        """A composed archive's new layout (individual recordings ignore it)."""
        ...

    async def set_stream_classes(self, stream_id: str, classes: tuple[str, ...]) -> None:
        """A recorded stream's layout classes changed (``PUT …/session/{id}/stream``): a
        composed archive's layout follows them (individual recordings ignore it)."""
        ...

    async def stop(self) -> RecordingResult:
        """Stop and finish the files (also after a failure was reported: salvage what was
        recorded).

        :raises RecordingFailed: when nothing usable was recorded.
        """
        ...


class Recorder(Protocol):
    """Records archives of one output mode. ``directory`` is the archive's own working
    directory (created, empty): write the files there, progressively."""

    async def start(
        self,
        archive: ArchiveRecord,
        streams: list[RecordedStream],
        directory: pathlib.Path,
        on_failure: Callable[[str], None],
    ) -> Recording:
        """Start recording ``streams`` (more come through :meth:`Recording.add_stream`).
        ``on_failure(reason)`` is called (from the event loop) if the recording breaks
        down; the service then stops it as it would any archive."""
        ...

    async def finalise(self, archive: ArchiveRecord, directory: pathlib.Path) -> RecordingResult:
        """After a server restart: make what a recording left in ``directory`` a result.

        :raises RecordingFailed: when nothing usable is there.
        """
        ...


#: Makes the recorder of one output mode once the server's media plane exists (it is given
#: the :class:`~salon.media.plane.SfuMediaPlane`, or None on a server without media):
#: ``ServerConfig.archive_recorders`` maps ``"individual"`` and ``"composed"`` to these.
RecorderFactory = Callable[[Any], Recorder]


# -- configuration and requests ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """Archive limits (seconds).

    :param max_duration: an archive stops at this length (``--archive-max-duration``, 4 h).
    :param empty_timeout: an archive stops when its session has been empty this long (60 s).
    :param retention: an available archive expires (its file removed) this long after it was
        created (``--archive-retention``, in days: 3).
    :param public_url: the base of download URLs for local storage (``--public-url``); by
        default the base URL of the REST request that asks (and, in callbacks, of the last one).
    """

    max_duration: float = 4 * 3600.0
    empty_timeout: float = 60.0
    retention: float = 72 * 3600.0
    public_url: str | None = None


@dataclass(frozen=True, slots=True)
class StartOptions:
    """The body of ``POST /v2/project/{apiKey}/archive``, checked."""

    session_id: str
    name: str | None = None
    has_audio: bool = True
    has_video: bool = True
    output_mode: OutputMode = OutputMode.COMPOSED
    resolution: str | None = None
    layout: Layout = field(default_factory=Layout)
    stream_mode: StreamMode = StreamMode.AUTO
    multi_archive_tag: str | None = None


class NotManualError(ClientError):
    """Streams are chosen only for archives in manual stream mode (OpenTok answers 405)."""

    status = 405
    code = "not_manual_stream_mode"


def check_layout(layout: Layout) -> Layout:
    """A layout, checked: its type, screenshare type and (custom) stylesheet.

    :raises InvalidRequestError: for anything OpenTok refuses.
    """
    if layout.type not in LAYOUT_TYPES:
        raise InvalidRequestError(f"layout type must be one of {', '.join(LAYOUT_TYPES)}")
    if layout.screenshare_type is not None:
        if layout.screenshare_type not in SCREENSHARE_TYPES:
            raise InvalidRequestError(f"screenshareType must be one of {', '.join(SCREENSHARE_TYPES)}")
        if layout.type != "bestFit":
            raise InvalidRequestError("screenshareType requires the layout type bestFit")
    if layout.type == "custom":
        if not layout.stylesheet:
            raise InvalidRequestError("a custom layout needs a stylesheet")
        try:
            layouts.parse_stylesheet(layout.stylesheet)
        except ValueError as exc:
            raise InvalidRequestError(f"invalid layout stylesheet: {exc}") from exc
    elif layout.stylesheet:
        raise InvalidRequestError("a stylesheet is only for the custom layout type")
    return layout


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(eq=False)
class _Active:
    """An archive being recorded."""

    record: ArchiveRecord
    recording: Recording | None = None
    recorder_missing: str = ""
    streams: dict[str, RecordedStream] = field(default_factory=dict)
    max_timer: asyncio.TimerHandle | None = None
    failure: str | None = None


class _Signalling(Protocol):
    """What the service needs of :class:`~salon.signalling.service.SignallingService`."""

    def live_session(self, session_id: str) -> Any: ...

    async def carry_out(self, session: Any, actions: list[Any]) -> None: ...


class ArchiveService:
    """Owns the archives being recorded; observes live sessions
    (:class:`~salon.signalling.observer.SessionObserver`) to feed them streams."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        storage: ArchiveStorage,
        work_dir: pathlib.Path,
        *,
        recorders: Mapping[str, Recorder] | None = None,
        config: ArchiveConfig | None = None,
        emit: Callable[[list[NewCallback]], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.storage = storage
        self.work_dir = work_dir
        self.recorders: dict[str, Recorder] = dict(recorders or {})
        self.config = config or ArchiveConfig()
        self._emit = emit
        self.signalling: _Signalling | None = None
        #: In a cluster: stops an archive another node records (``salon.cluster.archives``).
        self.stop_elsewhere: Callable[[str, str], Awaitable[ArchiveRecord]] | None = None
        #: In a cluster: starts an archive on a node with clients in the session.
        self.start_elsewhere: Callable[[str, StartOptions], Awaitable[ArchiveRecord]] | None = None
        #: In a cluster with local storage: opens an archive's file on the node that has it
        #: (for a download asked of a node that does not).
        self.file_elsewhere: Callable[[ArchiveRecord], Awaitable[RemoteFile]] | None = None
        self.base_url: str | None = self.config.public_url
        self._active: dict[str, _Active] = {}
        self._empty_timers: dict[str, asyncio.TimerHandle] = {}
        self._lock = asyncio.Lock()
        self._events: asyncio.Queue[tuple[str, str, ServerMessage | None]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        #: Archives started since the server started (metrics).
        self.started_total = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        await self._recover()
        loop = asyncio.get_running_loop()
        self._runner = loop.create_task(self._run_events(), name="salon-archive-events")
        self._reaper = loop.create_task(self._expire_loop(), name="salon-archive-retention")

    async def close(self) -> None:
        """Stop every archive being recorded (reason ``the server shut down``) and finish it."""
        if self._closed:
            return
        self._closed = True
        for task in (self._runner, self._reaper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for timer in self._empty_timers.values():
            timer.cancel()
        for archive_id in list(self._active):
            with contextlib.suppress(SalonError):
                await self.stop(archive_id, reason=REASON_SHUTDOWN)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("archive task %s failed", task.get_name(), exc_info=task.exception())

    # -- records, callbacks, events ----------------------------------------------------------

    @property
    def active_count(self) -> int:
        """Archives recording now (started or paused; metrics)."""
        return len(self._active)

    def url_of(self, record: ArchiveRecord, base_url: str | None = None) -> str | None:
        if record.status != ArchiveStatus.AVAILABLE or record.location is None:
            return None
        base = self.config.public_url or base_url or self.base_url or ""
        return self.storage.url(record.archive_id, record.location, base)

    def json(self, record: ArchiveRecord, base_url: str | None = None) -> dict[str, Any]:
        return archive_json(record, self.url_of(record, base_url))

    async def _save(self, record: ArchiveRecord, *, new: bool = False, notify: bool = True) -> ArchiveRecord:
        """Persist a record (then post its callback when its status changed)."""
        if new:
            await self.store.create_archive(record)
        else:
            await self.store.update_archive(record)
        if notify and self._emit is not None:
            body = json.dumps(self.json(record), separators=(",", ":"))
            self._emit([NewCallback(record.api_key, "archive", record.archive_id, body, record.updated_at)])
        return record

    async def _tell(self, session_id: str, message: ServerMessage, to: tuple[str, ...] | None = None) -> None:
        from salon.signalling.session import Deliver

        if self.signalling is None:
            return
        session = self.signalling.live_session(session_id)
        if session is not None:
            await self.signalling.carry_out(session, [Deliver(message, to=to)])

    def _live_streams(self, session_id: str) -> list[StreamInfo]:
        session = None if self.signalling is None else self.signalling.live_session(session_id)
        if session is None:
            return []
        return [s.info() for s in session.announced_streams()]

    def _connection_data(self, session_id: str, connection_id: str) -> str:
        session = None if self.signalling is None else self.signalling.live_session(session_id)
        connection = None if session is None else session.connections.get(connection_id)
        return "" if connection is None else str(connection.data)

    def _class_list(self, session_id: str, stream_id: str) -> tuple[str, ...]:
        session = None if self.signalling is None else self.signalling.live_session(session_id)
        stream = None if session is None else session.streams.get(stream_id)
        return () if stream is None else tuple(stream.layout_class_list)

    def _recorded(
        self, record: ArchiveRecord, info: StreamInfo, chosen: ArchiveStream | None = None
    ) -> RecordedStream:
        has_audio = record.has_audio and (chosen is None or chosen.has_audio)
        has_video = record.has_video and (chosen is None or chosen.has_video)
        return RecordedStream(
            stream_id=info.stream_id,
            connection_id=info.connection_id,
            connection_data=self._connection_data(record.session_id, info.connection_id),
            name=info.name,
            has_audio=has_audio,
            has_video=has_video,
            video_type=None if info.video_type is None else str(info.video_type),
            layout_class_list=self._class_list(record.session_id, info.stream_id),
        )

    # -- the REST API's calls ---------------------------------------------------------------

    async def get(self, api_key: str, archive_id: str) -> ArchiveRecord:
        record = await self.store.get_archive(archive_id)
        if record is None or record.api_key != api_key:
            raise NotFoundError("archive not found")
        return record

    async def list_archives(
        self, api_key: str, *, session_id: str | None, offset: int, count: int
    ) -> tuple[int, list[ArchiveRecord]]:
        return await self.store.list_archives(api_key, session_id=session_id, offset=offset, count=count)

    async def start_archive(
        self, api_key: str, options: StartOptions, *, forward: bool = True
    ) -> ArchiveRecord:
        """Start an archive (persisted before this returns). In a cluster, when this node has
        no client in the session, a node that has records it (:attr:`start_elsewhere`, unless
        ``forward`` is false).

        :raises NotFoundError: unknown session.
        :raises InvalidRequestError: bad options, or nobody connected.
        :raises ConflictError: a relayed session, or one being archived already with the
            same ``multiArchiveTag``.
        """
        session = await self.registry.session(options.session_id)
        if session is None or session.api_key != api_key:
            raise NotFoundError("Session not found")
        if options.output_mode == OutputMode.INDIVIDUAL and options.resolution is not None:
            raise InvalidRequestError("resolution is not supported for individual archives")
        if options.resolution is not None and options.resolution not in RESOLUTIONS:
            raise InvalidRequestError(f"resolution must be one of {', '.join(RESOLUTIONS)}")
        if not (options.has_audio or options.has_video):
            raise InvalidRequestError("an archive needs audio, video or both")
        check_layout(options.layout)
        if session.media_mode == "relayed":
            raise ConflictError("the session is relayed: only routed sessions can be archived")
        async with self._lock:
            live = None if self.signalling is None else self.signalling.live_session(options.session_id)
            here = live is not None and bool(live.connections)
            elsewhere = None if here or not forward else self.start_elsewhere
            if not here and elsewhere is None:
                raise InvalidRequestError("No clients are actively connected to the OpenTok session")
            for active in self._active.values():
                if (
                    active.record.session_id == options.session_id
                    and active.record.multi_archive_tag == options.multi_archive_tag
                ):
                    raise ConflictError(
                        "the session is being archived already: start another archive with a "
                        "distinct multiArchiveTag"
                    )
            if elsewhere is None:
                return await self._start(api_key, options)
        return await elsewhere(api_key, options)

    async def _start(self, api_key: str, options: StartOptions) -> ArchiveRecord:
        now = _now_ms()
        resolution = options.resolution
        if options.output_mode == OutputMode.COMPOSED and resolution is None:
            resolution = DEFAULT_RESOLUTION
        record = ArchiveRecord(
            archive_id=str(uuid.uuid4()),
            api_key=api_key,
            session_id=options.session_id,
            name=options.name,
            status=ArchiveStatus.STARTED,
            reason="",
            created_at=now,
            updated_at=now,
            stopped_at=None,
            duration=0,
            size=0,
            output_mode=options.output_mode,
            stream_mode=options.stream_mode,
            has_audio=options.has_audio,
            has_video=options.has_video,
            resolution=resolution,
            layout=json.dumps(options.layout.to_json()),
            streams="[]",
            multi_archive_tag=options.multi_archive_tag,
            location=None,
        )
        await self._save(record, new=True)
        active = _Active(record)
        self._active[record.archive_id] = active
        self.started_total += 1
        loop = asyncio.get_running_loop()
        active.max_timer = loop.call_later(
            self.config.max_duration, self._stop_later, record.archive_id, REASON_MAX_DURATION
        )
        streams: list[RecordedStream] = []
        if record.stream_mode == StreamMode.AUTO:
            streams = [self._recorded(record, info) for info in self._live_streams(record.session_id)]
        active.streams = {s.stream_id: s for s in streams}
        recorder = self.recorders.get(record.output_mode)
        if recorder is None:
            active.recorder_missing = f"this server has no recorder for {record.output_mode} archives"
        else:
            directory = self.work_dir / record.archive_id
            try:
                directory.mkdir(parents=True, exist_ok=True)
                active.recording = await recorder.start(
                    record, streams, directory, lambda reason: self._failed_later(record.archive_id, reason)
                )
            except (RecordingFailed, OSError) as exc:
                reason = str(storage_error(exc)) if isinstance(exc, OSError) else str(exc)
                active.failure = reason or "the recorder could not start"
            except Exception as exc:
                logger.exception("archive %s: the recorder could not start", record.archive_id)
                active.failure = f"the recorder could not start: {exc.__class__.__name__}"
        await self._tell(
            record.session_id, ArchiveStartedEvent(archive_id=record.archive_id, name=record.name)
        )
        if active.failure is not None:
            return await self._stop(active, active.failure)
        if not self._live_streams(record.session_id):
            await self._set_status(active, ArchiveStatus.PAUSED)
        return self._active[record.archive_id].record if record.archive_id in self._active else record

    async def _set_status(self, active: _Active, status: ArchiveStatus) -> None:
        if active.record.status == status:
            return
        active.record = dataclasses.replace(active.record, status=status, updated_at=_now_ms())
        await self._save(active.record)

    async def stop(
        self, archive_id: str, *, api_key: str | None = None, reason: str = REASON_USER, forward: bool = True
    ) -> ArchiveRecord:
        """Stop an archive being recorded; it is ``stopped`` when this returns, and becomes
        ``available`` or ``failed`` once its recording is finished and stored. In a cluster,
        an archive another node records is stopped there (:attr:`stop_elsewhere`, unless
        ``forward`` is false).

        :raises NotFoundError: unknown archive (of another project, with ``api_key``).
        :raises ConflictError: the archive is not being recorded.
        """
        async with self._lock:
            active = self._active.get(archive_id)
            if active is not None and (api_key is None or active.record.api_key == api_key):
                return await self._stop(active, reason)
            record = await self.get(api_key, archive_id) if api_key is not None else None
            if record is None:
                raise NotFoundError("archive not found")
            elsewhere = self.stop_elsewhere if forward else None
            if elsewhere is None or record.status not in (ArchiveStatus.STARTED, ArchiveStatus.PAUSED):
                raise ConflictError("Archive is not in started state")
        assert api_key is not None
        return await elsewhere(api_key, archive_id)

    async def _stop(self, active: _Active, reason: str) -> ArchiveRecord:
        now = _now_ms()
        self._active.pop(active.record.archive_id, None)
        if active.max_timer is not None:
            active.max_timer.cancel()
        active.record = dataclasses.replace(
            active.record,
            status=ArchiveStatus.STOPPED,
            reason=reason,
            updated_at=now,
            stopped_at=now,
            duration=round((now - active.record.created_at) / 1000),
        )
        await self._save(active.record)
        record = active.record
        await self._tell(
            record.session_id, ArchiveStoppedEvent(archive_id=record.archive_id, name=record.name)
        )
        self._spawn(self._finish(active), f"salon-archive-finish-{record.archive_id}")
        return record

    def _stop_later(self, archive_id: str, reason: str) -> None:
        self._spawn(self._stop_quietly(archive_id, reason), f"salon-archive-stop-{archive_id}")

    def _failed_later(self, archive_id: str, reason: str) -> None:
        active = self._active.get(archive_id)
        if active is not None:
            active.failure = reason
            logger.warning("archive %s: the recording failed: %s", archive_id, reason)
            self._stop_later(archive_id, reason)

    async def _stop_quietly(self, archive_id: str, reason: str) -> None:
        with contextlib.suppress(NotFoundError, ConflictError):
            await self.stop(archive_id, reason=reason)

    async def _finish(self, active: _Active) -> None:
        """Finish a stopped archive's recording and store it: ``available`` or ``failed``."""
        record = active.record
        try:
            if active.recording is None:
                raise RecordingFailed(active.failure or active.recorder_missing or "nothing was recorded")
            result = await active.recording.stop()
            await self._store_result(record, result)
        except RecordingFailed as exc:
            await self._fail(record, str(exc) or "nothing was recorded")
        except StorageError as exc:
            await self._fail(record, str(exc))
        except OSError as exc:
            await self._fail(record, str(storage_error(exc)))
        except Exception as exc:
            logger.exception("archive %s could not be finished", record.archive_id)
            await self._fail(record, f"the recording could not be finished: {exc.__class__.__name__}")

    async def _store_result(self, record: ArchiveRecord, result: RecordingResult) -> None:
        if not result.files:
            raise RecordingFailed("nothing was recorded")
        location = await self.storage.put(record.archive_id, result.files[0])
        shutil.rmtree(self.work_dir / record.archive_id, ignore_errors=True)
        record = dataclasses.replace(
            record,
            status=ArchiveStatus.AVAILABLE,
            updated_at=_now_ms(),
            size=result.size,
            duration=round(result.duration),
            location=location,
        )
        await self._save(record)

    async def _fail(self, record: ArchiveRecord, reason: str) -> None:
        logger.warning("archive %s failed: %s", record.archive_id, reason)
        current = await self.store.get_archive(record.archive_id) or record
        await self._save(
            dataclasses.replace(
                current, status=ArchiveStatus.FAILED, reason=reason[:255], updated_at=_now_ms()
            )
        )

    async def delete(self, api_key: str, archive_id: str) -> None:
        """Delete an available archive's file; it stays listed as ``deleted``.

        :raises ConflictError: unless the archive is ``available``, ``uploaded`` or ``deleted``.
        """
        async with self._lock:
            record = await self.get(api_key, archive_id)
            if record.status not in DELETABLE:
                raise ConflictError(
                    f"the archive is {record.status}: "
                    "only available, uploaded or deleted archives can be deleted"
                )
            if record.status == ArchiveStatus.DELETED:
                return
            if record.location is not None:
                await self.storage.delete(record.archive_id, record.location)
            await self._save(
                dataclasses.replace(
                    record, status=ArchiveStatus.DELETED, location=None, updated_at=_now_ms()
                ),
                notify=False,
            )

    async def set_layout(self, api_key: str, archive_id: str, layout: Layout) -> ArchiveRecord:
        async with self._lock:
            record = await self.get(api_key, archive_id)  # an unknown archive is 404 before all
            check_layout(layout)
            if record.output_mode != OutputMode.COMPOSED:
                raise InvalidRequestError("only composed archives have a layout")
            active = self._active.get(archive_id)
            if active is None:
                raise ConflictError("Archive is not in started state")
            active.record = dataclasses.replace(
                active.record, layout=json.dumps(layout.to_json()), updated_at=_now_ms()
            )
            await self._save(active.record, notify=False)
            if active.recording is not None:
                await active.recording.set_layout(layout)
            return active.record

    async def select_stream(
        self,
        api_key: str,
        archive_id: str,
        *,
        add: str | None,
        remove: str | None,
        has_audio: bool = True,
        has_video: bool = True,
    ) -> None:
        """Add (or change) the stream ``add``, or remove the stream ``remove``, of a
        manual-mode archive.

        :raises InvalidRequestError: unless exactly one of ``add`` and ``remove`` is given.
        :raises NotManualError: the archive is in auto stream mode.
        """
        async with self._lock:
            record = await self.get(api_key, archive_id)  # an unknown archive is 404 before all
            if (add is None) == (remove is None):
                raise InvalidRequestError("give addStream or removeStream")
            stream_id = add if add is not None else remove
            assert stream_id is not None
            active = self._active.get(archive_id)
            if active is None:
                raise ConflictError("Archive is not in started state")
            if record.stream_mode != StreamMode.MANUAL:
                raise NotManualError("streams are chosen only for archives in manual stream mode")
            chosen = {s.stream_id: s for s in streams_of(active.record)}
            info = None
            if add is not None:
                info = next(
                    (s for s in self._live_streams(record.session_id) if s.stream_id == stream_id), None
                )
                if info is None:
                    raise NotFoundError("stream not found in the session")
                chosen[stream_id] = ArchiveStream(stream_id, has_audio, has_video)
            elif chosen.pop(stream_id, None) is None:
                raise NotFoundError("the stream is not in the archive")
            active.record = dataclasses.replace(
                active.record,
                streams=json.dumps([s.to_json() for s in chosen.values()]),
                updated_at=_now_ms(),
            )
            await self._save(active.record, notify=False)
            if info is not None:
                await self._record_stream(active, self._recorded(active.record, info, chosen[stream_id]))
            else:
                await self._drop_stream(active, stream_id)

    async def _record_stream(self, active: _Active, stream: RecordedStream) -> None:
        if active.recording is not None and stream.stream_id in active.streams:
            await active.recording.remove_stream(stream.stream_id)
        active.streams[stream.stream_id] = stream
        if active.recording is not None:
            await active.recording.add_stream(stream)

    async def _drop_stream(self, active: _Active, stream_id: str) -> None:
        if active.streams.pop(stream_id, None) is not None and active.recording is not None:
            await active.recording.remove_stream(stream_id)

    async def stream_classes_changed(self, session_id: str, classes: Mapping[str, tuple[str, ...]]) -> None:
        """Streams' layout class lists changed (stream ID -> classes): tell the recordings
        that record them."""
        async with self._lock:
            for active in self._of_session(session_id):
                for stream_id, stream_classes in classes.items():
                    stream = active.streams.get(stream_id)
                    if stream is None or stream.layout_class_list == stream_classes:
                        continue
                    active.streams[stream_id] = dataclasses.replace(stream, layout_class_list=stream_classes)
                    if active.recording is not None:
                        await active.recording.set_stream_classes(stream_id, stream_classes)

    # -- SessionObserver ---------------------------------------------------------------------

    def session_started(self, session_id: str, api_key: str) -> None:
        self._events.put_nowait(("started", session_id, None))

    def delivered(self, session_id: str, api_key: str, message: ServerMessage) -> None:
        if isinstance(message, StreamCreatedEvent | StreamDestroyedEvent | ConnectionCreatedEvent):
            self._events.put_nowait(("delivered", session_id, message))

    def session_ended(self, session_id: str, api_key: str) -> None:
        self._events.put_nowait(("ended", session_id, None))

    def delivered_elsewhere(self, session_id: str, api_key: str, message: ServerMessage) -> None:
        """In a cluster: an event another node published on the session's bus (a stream
        created or destroyed there, a client joining there). This node's archives of the
        session follow it as they follow their own node's events, but an ``always`` archive
        is started only by the node where the stream was published."""
        if isinstance(message, StreamCreatedEvent | StreamDestroyedEvent | ConnectionCreatedEvent):
            self._events.put_nowait(("elsewhere", session_id, message))

    async def _run_events(self) -> None:
        while True:
            kind, session_id, message = await self._events.get()
            try:
                async with self._lock:
                    await self._on_event(kind, session_id, message)
            except Exception:
                logger.exception("archives of session %s: handling %s failed", session_id, kind)

    def _of_session(self, session_id: str) -> list[_Active]:
        return [a for a in self._active.values() if a.record.session_id == session_id]

    async def _on_event(self, kind: str, session_id: str, message: ServerMessage | None) -> None:
        if kind == "started":
            timer = self._empty_timers.pop(session_id, None)
            if timer is not None:
                timer.cancel()
        elif kind == "ended":
            if self._of_session(session_id) and session_id not in self._empty_timers:
                self._empty_timers[session_id] = asyncio.get_running_loop().call_later(
                    self.config.empty_timeout, self._session_empty, session_id
                )
        elif isinstance(message, ConnectionCreatedEvent):
            for active in self._of_session(session_id):
                event = ArchiveStartedEvent(archive_id=active.record.archive_id, name=active.record.name)
                await self._tell(session_id, event, to=(message.connection.connection_id,))
        elif isinstance(message, StreamCreatedEvent):
            await self._stream_created(session_id, message.stream, auto_start=kind != "elsewhere")
        elif isinstance(message, StreamDestroyedEvent):
            for active in self._of_session(session_id):
                await self._drop_stream(active, message.stream_id)
                if not self._live_streams(session_id):
                    await self._set_status(active, ArchiveStatus.PAUSED)

    async def _stream_created(self, session_id: str, info: StreamInfo, *, auto_start: bool = True) -> None:
        actives = self._of_session(session_id)
        if auto_start and not any(a.record.multi_archive_tag is None for a in actives):
            session = await self.registry.session(session_id)
            if session is not None and session.archive_mode == "always" and session.media_mode != "relayed":
                resolution = session.archive_resolution if session.archive_resolution in RESOLUTIONS else None
                options = StartOptions(session_id, name=session.archive_name, resolution=resolution)
                try:
                    await self._start(session.api_key, options)
                except SalonError:
                    logger.exception("session %s: the automatic archive could not start", session_id)
                return  # it took the session's streams, this one included
        for active in actives:
            if active.record.stream_mode == StreamMode.AUTO and info.stream_id not in active.streams:
                await self._record_stream(active, self._recorded(active.record, info))
            if active.record.status == ArchiveStatus.PAUSED:
                await self._set_status(active, ArchiveStatus.STARTED)

    def _session_empty(self, session_id: str) -> None:
        self._empty_timers.pop(session_id, None)
        live = None if self.signalling is None else self.signalling.live_session(session_id)
        if live is not None and live.connections:
            return
        for active in self._of_session(session_id):
            self._stop_later(active.record.archive_id, REASON_EMPTY)

    # -- restart and retention ---------------------------------------------------------------

    async def _recover(self) -> None:
        """Finalise the archives a previous run left unfinished."""
        for record in await self.store.archives_in(tuple(UNFINISHED)):
            now = _now_ms()
            if record.status != ArchiveStatus.STOPPED:
                record = dataclasses.replace(
                    record,
                    status=ArchiveStatus.STOPPED,
                    reason=REASON_RESTART,
                    updated_at=now,
                    stopped_at=now,
                    duration=round((now - record.created_at) / 1000),
                )
                await self._save(record)
            self._spawn(self._finalise(record), f"salon-archive-finalise-{record.archive_id}")

    async def _finalise(self, record: ArchiveRecord) -> None:
        recorder = self.recorders.get(record.output_mode)
        directory = self.work_dir / record.archive_id
        try:
            if recorder is None or not directory.is_dir():
                raise RecordingFailed(f"{REASON_RESTART}; nothing could be recovered")
            result = await recorder.finalise(record, directory)
            await self._store_result(record, result)
        except (RecordingFailed, StorageError) as exc:
            await self._fail(record, str(exc))
        except OSError as exc:
            await self._fail(record, str(storage_error(exc)))
        except Exception as exc:
            logger.exception("archive %s could not be finalised", record.archive_id)
            await self._fail(record, f"{REASON_RESTART}; finalising failed: {exc.__class__.__name__}")

    async def expire(self) -> int:
        """Expire the available archives older than the retention period; how many."""
        cutoff = _now_ms() - int(self.config.retention * 1000)
        expired = 0
        for record in await self.store.archives_in(
            (ArchiveStatus.AVAILABLE, ArchiveStatus.UPLOADED), created_before=cutoff
        ):
            async with self._lock:
                current = await self.store.get_archive(record.archive_id)
                if current is None or current.status not in (ArchiveStatus.AVAILABLE, ArchiveStatus.UPLOADED):
                    continue
                if current.location is not None:
                    await self.storage.delete(current.archive_id, current.location)
                await self._save(
                    dataclasses.replace(
                        current, status=ArchiveStatus.EXPIRED, location=None, updated_at=_now_ms()
                    )
                )
                expired += 1
        return expired

    async def _expire_loop(self) -> None:
        interval = min(60.0, max(0.05, self.config.retention / 4))
        while True:
            try:
                await self.expire()
            except Exception:
                logger.exception("expiring archives failed")
            await asyncio.sleep(interval)
