"""The archive service's recorders (:class:`~salon.archive.service.Recorder`) on the media plane.

:class:`MediaRecorder` records one output mode from the SFU's streams: each archive is an
:class:`~salon.archive.recorder.IndividualRecording` (``individual``: a ZIP of one file per
stream) or a :class:`~salon.archive.composed.ComposedRecording` (``composed``: one MP4 at the
archive's resolution and layout) in its own archiver process. :func:`media_recorders` gives
the factories ``salon serve`` puts in :attr:`ServerConfig.archive_recorders
<salon.server.config.ServerConfig.archive_recorders>`.

A stream that cannot be recorded (its media is gone already) is left out and logged; an
archiver that dies ends the recording with what it wrote (the archive's ``reason`` says what
happened) and the service stops the archive. After a restart, :meth:`MediaRecorder.finalise`
delivers what the previous run's archiver left: the composed MP4 (fragmented, so playable up
to its last fragment), or the streams' files packaged into the ZIP.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

from salon.archive.composed import MP4_NAME, ComposedOptions, ComposedRecording, playable_duration
from salon.archive.layout import parse_resolution
from salon.archive.models import DEFAULT_RESOLUTION, Layout, OutputMode, layout_of
from salon.archive.recorder import (
    IndividualRecording,
    RecordingError,
    RecordingPlane,
    StreamSource,
    package_unfinished,
)
from salon.archive.recorder import RecordingResult as ArchiverResult
from salon.archive.service import (
    RecordedStream,
    Recorder,
    RecorderFactory,
    RecordingFailed,
    RecordingResult,
)
from salon.store import ArchiveRecord

__all__ = ["MediaRecorder", "media_recorders"]

logger = logging.getLogger(__name__)


def _source(stream: RecordedStream) -> StreamSource:
    return StreamSource(
        stream.stream_id,
        connection_data=stream.connection_data,
        has_audio=stream.has_audio,
        has_video=stream.has_video,
        layout_classes=tuple(stream.layout_class_list),
        video_type=stream.video_type,
    )


class _Recording:
    """One archive being recorded (:class:`~salon.archive.service.Recording`)."""

    def __init__(self, recording: IndividualRecording) -> None:
        self.recording = recording

    async def add_stream(self, stream: RecordedStream) -> None:
        if not (stream.has_audio or stream.has_video):
            return
        try:
            await self.recording.add_stream(_source(stream))
        except RecordingError as exc:
            logger.warning("%r: %s", self.recording, exc)

    async def remove_stream(self, stream_id: str) -> None:
        await self.recording.remove_stream(stream_id)

    async def set_layout(self, layout: Layout) -> None:
        if isinstance(self.recording, ComposedRecording):
            try:
                await self.recording.set_layout(layout.to_json())
            except RecordingError as exc:
                logger.warning("%r: %s", self.recording, exc)

    async def set_stream_classes(self, stream_id: str, classes: tuple[str, ...]) -> None:
        if isinstance(self.recording, ComposedRecording):
            try:
                await self.recording.set_stream_classes(stream_id, classes)
            except RecordingError as exc:
                logger.warning("%r: %s", self.recording, exc)

    async def stop(self) -> RecordingResult:
        return _result(await self.recording.stop())


def _result(result: ArchiverResult) -> RecordingResult:
    if result.path is None or not result.path.exists():
        raise RecordingFailed(result.failure or "nothing was recorded")
    if result.failure:
        logger.warning("archive %s: delivered with a failure: %s", result.archive_id, result.failure)
    return RecordingResult((result.path,), result.path.stat().st_size, result.duration)


class MediaRecorder:
    """Records archives of one output mode (``individual`` or ``composed``) from the media
    plane, each in its own archiver process (:class:`~salon.archive.service.Recorder`)."""

    def __init__(self, plane: RecordingPlane | None, mode: str, *, log_level: str = "WARNING") -> None:
        if mode not in (OutputMode.INDIVIDUAL, OutputMode.COMPOSED):
            raise ValueError(f"unknown output mode {mode!r}")
        self.plane = plane
        self.mode = mode
        self.log_level = log_level

    async def start(
        self,
        archive: ArchiveRecord,
        streams: list[RecordedStream],
        directory: pathlib.Path,
        on_failure: Callable[[str], None],
    ) -> _Recording:
        if self.plane is None:
            raise RecordingFailed("this server has no media plane to record from")

        def ended(recording: IndividualRecording, result: ArchiverResult) -> None:
            if result.failure and not recording._stopping:
                on_failure(result.failure)

        common: dict[str, Any] = {
            "archive_id": archive.archive_id,
            "session_id": archive.session_id,
            "name": archive.name,
            "created_at": archive.created_at,
            "directory": directory,
            "on_ended": ended,
            "log_level": self.log_level,
        }
        recording: IndividualRecording
        if self.mode == OutputMode.COMPOSED:
            width, height = parse_resolution(archive.resolution or DEFAULT_RESOLUTION)
            options = ComposedOptions(
                width=width,
                height=height,
                has_audio=archive.has_audio,
                has_video=archive.has_video,
                layout=layout_of(archive).to_json(),
            )
            recording = ComposedRecording(self.plane, options=options, **common)
        else:
            recording = IndividualRecording(self.plane, **common)
        # The archive's clock starts at its createdAt, so that offsets in the files (a stream's
        # join, the composed timeline) count from the time the archive JSON gives.
        t0 = time.monotonic() - max(0.0, time.time() - archive.created_at / 1000)
        try:
            await recording.start(t0=t0)
        except RecordingError as exc:
            raise RecordingFailed(str(exc)) from exc
        handle = _Recording(recording)
        for stream in streams:
            await handle.add_stream(stream)
        return handle

    async def finalise(self, archive: ArchiveRecord, directory: pathlib.Path) -> RecordingResult:
        if self.mode == OutputMode.COMPOSED:
            return await asyncio.to_thread(_composed_left, directory)
        return await asyncio.to_thread(_individual_left, directory)


def _composed_left(directory: pathlib.Path) -> RecordingResult:
    """The composed MP4 a previous run left (playable up to its last complete fragment)."""
    path = directory / MP4_NAME
    duration = playable_duration(path) if path.exists() else 0.0
    if duration <= 0:
        raise RecordingFailed("the server restarted before the composed archive held any media")
    return RecordingResult((path,), path.stat().st_size, duration)


def _individual_left(directory: pathlib.Path) -> RecordingResult:
    """The streams' files a previous run left, packaged into the archive's ZIP with the offsets
    the recording's journal kept (:func:`~salon.archive.recorder.package_unfinished`)."""
    try:
        result = package_unfinished(directory)
    except (OSError, ValueError) as exc:
        raise RecordingFailed(f"the server restarted; the recording could not be packaged: {exc}") from exc
    if not result.files or result.path is None:
        raise RecordingFailed("the server restarted before the archive held any media")
    return RecordingResult((result.path,), result.size, result.duration)


def media_recorders(*, log_level: str = "WARNING") -> dict[str, RecorderFactory]:
    """The factories of both output modes' recorders, for ``ServerConfig.archive_recorders``."""

    def factory(mode: str) -> RecorderFactory:
        def make(plane: Any) -> Recorder:
            return MediaRecorder(plane, mode, log_level=log_level)

        return make

    return {
        OutputMode.INDIVIDUAL: factory(OutputMode.INDIVIDUAL),
        OutputMode.COMPOSED: factory(OutputMode.COMPOSED),
    }
