"""Archives as the OpenTok API defines them: statuses, modes, layouts, and the Archive JSON.

An :class:`~salon.store.ArchiveRecord` is what the store keeps; :func:`archive_json` is the
body the REST API answers and the archive callbacks post (docs/archiving.md), with every field
the ``opentok`` and ``vonage-video`` SDKs read.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from salon.store import ArchiveRecord

__all__ = [
    "DEFAULT_RESOLUTION",
    "DELETABLE",
    "FINISHED",
    "LAYOUT_TYPES",
    "RECORDING",
    "RESOLUTIONS",
    "SCREENSHARE_TYPES",
    "UNFINISHED",
    "ArchiveStatus",
    "ArchiveStream",
    "Layout",
    "OutputMode",
    "StreamMode",
    "archive_json",
    "layout_of",
    "streams_of",
]


class ArchiveStatus(enum.StrEnum):
    STARTED = "started"
    PAUSED = "paused"
    STOPPED = "stopped"
    UPLOADED = "uploaded"
    AVAILABLE = "available"
    EXPIRED = "expired"
    FAILED = "failed"
    DELETED = "deleted"


class OutputMode(enum.StrEnum):
    COMPOSED = "composed"
    INDIVIDUAL = "individual"


class StreamMode(enum.StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


#: Recording (or being finalised): what a server restart must finish.
UNFINISHED = (ArchiveStatus.STARTED, ArchiveStatus.PAUSED, ArchiveStatus.STOPPED)
#: Recording: what a session may have only one of per ``multiArchiveTag``.
RECORDING = (ArchiveStatus.STARTED, ArchiveStatus.PAUSED)
FINISHED = (
    ArchiveStatus.AVAILABLE,
    ArchiveStatus.UPLOADED,
    ArchiveStatus.EXPIRED,
    ArchiveStatus.FAILED,
    ArchiveStatus.DELETED,
)
#: What ``DELETE …/archive/{id}`` accepts (OpenTok: "only available, uploaded or deleted").
DELETABLE = (ArchiveStatus.AVAILABLE, ArchiveStatus.UPLOADED, ArchiveStatus.DELETED)

#: The resolutions of composed archives (the ``vonage-video`` enum).
RESOLUTIONS = ("640x480", "480x640", "1280x720", "720x1280", "1920x1080", "1080x1920")
DEFAULT_RESOLUTION = "640x480"
LAYOUT_TYPES = ("bestFit", "pip", "verticalPresentation", "horizontalPresentation", "custom")
SCREENSHARE_TYPES = ("bestFit", "pip", "verticalPresentation", "horizontalPresentation")


@dataclass(frozen=True, slots=True)
class Layout:
    """A composed archive's layout: a predefined ``type``, or ``custom`` with a stylesheet;
    ``screenshare_type`` is the layout used while a screen share is in the archive."""

    type: str = "bestFit"
    stylesheet: str | None = None
    screenshare_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.stylesheet is not None:
            body["stylesheet"] = self.stylesheet
        if self.screenshare_type is not None:
            body["screenshareType"] = self.screenshare_type
        return body


@dataclass(frozen=True, slots=True)
class ArchiveStream:
    """A stream chosen for a manual-mode archive, with what of it is recorded."""

    stream_id: str
    has_audio: bool = True
    has_video: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"streamId": self.stream_id, "hasAudio": self.has_audio, "hasVideo": self.has_video}


def layout_of(record: ArchiveRecord) -> Layout:
    data = json.loads(record.layout)
    return Layout(data.get("type", "bestFit"), data.get("stylesheet"), data.get("screenshareType"))


def streams_of(record: ArchiveRecord) -> list[ArchiveStream]:
    return [ArchiveStream(s["streamId"], s["hasAudio"], s["hasVideo"]) for s in json.loads(record.streams)]


def _partner_id(api_key: str) -> int | str:
    return int(api_key) if api_key.isdigit() else api_key


def archive_json(record: ArchiveRecord, url: str | None = None) -> dict[str, Any]:
    """The Archive JSON of OpenTok (docs/archiving.md): ``url`` only when ``available``."""
    streams = streams_of(record)
    return {
        "id": record.archive_id,
        "event": "archive",
        "status": record.status,
        "name": record.name,
        "reason": record.reason,
        "sessionId": record.session_id,
        "projectId": _partner_id(record.api_key),
        "partnerId": _partner_id(record.api_key),
        "applicationId": record.api_key,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "duration": record.duration,
        "size": record.size,
        "outputMode": record.output_mode,
        "streamMode": record.stream_mode,
        "hasAudio": record.has_audio,
        "hasVideo": record.has_video,
        "hasTranscription": False,
        "resolution": record.resolution,
        "layout": layout_of(record).to_json(),
        "streams": [s.to_json() for s in streams],
        "multiArchiveTag": record.multi_archive_tag,
        "sha256sum": "",
        "password": "",
        "url": url if record.status == ArchiveStatus.AVAILABLE else None,
    }
