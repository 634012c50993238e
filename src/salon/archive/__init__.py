"""Archiving: recording sessions through the OpenTok archive API (docs/archiving.md).

- :mod:`salon.archive.models`: statuses, modes, layouts and the Archive JSON.
- :mod:`salon.archive.service`: :class:`ArchiveService`, the archives' lifecycle, and the
  :class:`Recorder` / :class:`Recording` interface the media side implements.
- :mod:`salon.archive.storage`: local disk (signed download URLs) or S3 (presigned URLs).
- :mod:`salon.archive.layout`: where each stream goes (predefined layouts, the CSS subset).
- :mod:`salon.archive.composer`: the composed archive (decode, lay out, mix, encode).
- :mod:`salon.archive.api`: the REST routes under ``/v2/project/{apiKey}/archive``.
"""

from salon.archive.models import ArchiveStatus, ArchiveStream, Layout, OutputMode, StreamMode, archive_json
from salon.archive.service import (
    ArchiveConfig,
    ArchiveService,
    RecordedStream,
    Recorder,
    RecorderFactory,
    Recording,
    RecordingFailed,
    RecordingResult,
    StartOptions,
)
from salon.archive.storage import ArchiveStorage, LocalStorage, S3Storage, StorageError, storage_from_url

__all__ = [
    "ArchiveConfig",
    "ArchiveService",
    "ArchiveStatus",
    "ArchiveStorage",
    "ArchiveStream",
    "Layout",
    "LocalStorage",
    "OutputMode",
    "RecordedStream",
    "Recorder",
    "RecorderFactory",
    "Recording",
    "RecordingFailed",
    "RecordingResult",
    "S3Storage",
    "StartOptions",
    "StorageError",
    "StreamMode",
    "archive_json",
    "storage_from_url",
]
