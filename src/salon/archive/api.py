"""The OpenTok archive REST API: ``/v2/project/{apiKey}/archive`` (docs/archiving.md).

Paths, bodies, success codes and errors are those the official SDKs send and accept
(reference: start, stop and get answer 200 with the Archive JSON, delete 204, set layout 200
with the archive, add/remove stream 204; errors are JSON objects with a ``message``). Also
``GET /v2/archive-download/{archiveId}``: a locally stored archive's file, for a signed URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from salon.archive.models import ArchiveStatus, Layout, OutputMode, StreamMode
from salon.archive.service import ArchiveService, StartOptions
from salon.archive.storage import LocalStorage, StorageError
from salon.errors import AuthenticationError, NotFoundError
from salon.server.rest import ERRORS, AuthFirstRoute, ErrorBody, ProjectDep

__all__ = ["router"]

router = APIRouter(route_class=AuthFirstRoute)

A = "/v2/project/{apiKey}/archive"

Resolution = Literal["640x480", "480x640", "1280x720", "720x1280", "1920x1080", "1080x1920"]
LayoutType = Literal["bestFit", "pip", "verticalPresentation", "horizontalPresentation", "custom"]
ScreenshareType = Literal["bestFit", "pip", "verticalPresentation", "horizontalPresentation"]

ARCHIVE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"model": ErrorBody, "description": "Unknown session or archive"},
    409: {"model": ErrorBody, "description": "The archive or session is not in a state that allows it"},
}


class LayoutBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: LayoutType = "bestFit"
    stylesheet: str | None = Field(default=None, max_length=16384, description="For the custom type only.")
    screenshareType: ScreenshareType | None = None

    def layout(self) -> Layout:
        return Layout(self.type, self.stylesheet, self.screenshareType)


class StartBody(BaseModel):
    """What ``opentok`` (every key, nulls included) and ``vonage-video`` (nulls left out) send;
    other keys (``maxBitrate``, ``quantizationParameter``...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    sessionId: str = Field(min_length=1, max_length=255)
    name: str | None = Field(default=None, max_length=255)
    hasAudio: bool | None = None
    hasVideo: bool | None = None
    outputMode: Literal["composed", "individual"] | None = None
    resolution: Resolution | None = Field(default=None, description="Composed archives only.")
    layout: LayoutBody | None = None
    streamMode: Literal["auto", "manual"] | None = None
    multiArchiveTag: str | None = Field(default=None, max_length=255)


class StreamsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    addStream: str | None = Field(default=None, max_length=255)
    removeStream: str | None = Field(default=None, max_length=255)
    hasAudio: bool | None = None
    hasVideo: bool | None = None


class ArchiveStreamBody(BaseModel):
    streamId: str
    hasAudio: bool
    hasVideo: bool


class ArchiveBody(BaseModel):
    """The Archive JSON: every field the ``opentok`` and ``vonage-video`` SDKs read."""

    id: str
    event: Literal["archive"] = "archive"
    status: ArchiveStatus
    name: str | None
    reason: str
    sessionId: str
    projectId: int | str
    partnerId: int | str
    applicationId: str
    createdAt: int = Field(description="Milliseconds since the epoch.")
    updatedAt: int
    duration: int = Field(description="Seconds recorded.")
    size: int = Field(description="Bytes; 0 until available.")
    outputMode: OutputMode
    streamMode: StreamMode
    hasAudio: bool
    hasVideo: bool
    hasTranscription: bool
    resolution: str | None
    layout: dict[str, Any]
    streams: list[ArchiveStreamBody]
    multiArchiveTag: str | None
    sha256sum: str
    password: str
    url: str | None = Field(description="Only when available: an absolute URL valid for 10 minutes.")


class ArchiveList(BaseModel):
    count: int = Field(description="How many archives match, in all.")
    items: list[ArchiveBody]


def archives(request: Request) -> ArchiveService:
    service: ArchiveService = request.app.state.archives
    if service.config.public_url is None:
        service.base_url = str(request.base_url)
    return service


def _body(service: ArchiveService, request: Request, record: Any) -> ArchiveBody:
    return ArchiveBody.model_validate(service.json(record, str(request.base_url)))


@router.post(
    A, tags=["archives"], summary="Start an archive", response_model=ArchiveBody, responses=ARCHIVE_ERRORS
)
async def start_archive(request: Request, body: StartBody, project: ProjectDep) -> ArchiveBody:
    service = archives(request)
    layout = body.layout.layout() if body.layout is not None else Layout()
    options = StartOptions(
        session_id=body.sessionId,
        name=body.name,
        has_audio=True if body.hasAudio is None else body.hasAudio,
        has_video=True if body.hasVideo is None else body.hasVideo,
        output_mode=OutputMode(body.outputMode or "composed"),
        resolution=body.resolution,
        layout=layout,
        stream_mode=StreamMode(body.streamMode or "auto"),
        multi_archive_tag=body.multiArchiveTag,
    )
    record = await service.start_archive(project.api_key, options)
    return _body(service, request, record)


@router.get(
    A,
    tags=["archives"],
    summary="List archives, newest first",
    response_model=ArchiveList,
    responses=ARCHIVE_ERRORS,
)
async def list_archives(
    request: Request,
    project: ProjectDep,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    count: Annotated[int, Query(ge=1, le=1000)] = 50,
    sessionId: Annotated[str | None, Query(max_length=255)] = None,
    session_id: Annotated[
        str | None, Query(max_length=255, description="vonage-video's spelling (sessionId wins if both)")
    ] = None,
) -> ArchiveList:
    service = archives(request)
    total, records = await service.list_archives(
        project.api_key, session_id=sessionId or session_id, offset=offset, count=count
    )
    return ArchiveList(count=total, items=[_body(service, request, r) for r in records])


@router.get(
    A + "/{archiveId}",
    tags=["archives"],
    summary="Get an archive",
    response_model=ArchiveBody,
    responses=ARCHIVE_ERRORS,
)
async def get_archive(request: Request, archiveId: str, project: ProjectDep) -> ArchiveBody:
    service = archives(request)
    return _body(service, request, await service.get(project.api_key, archiveId))


@router.post(
    A + "/{archiveId}/stop",
    tags=["archives"],
    summary="Stop an archive",
    response_model=ArchiveBody,
    responses=ARCHIVE_ERRORS,
)
async def stop_archive(request: Request, archiveId: str, project: ProjectDep) -> ArchiveBody:
    service = archives(request)
    return _body(service, request, await service.stop(archiveId, api_key=project.api_key))


@router.delete(
    A + "/{archiveId}",
    tags=["archives"],
    summary="Delete an available archive's recording",
    status_code=204,
    responses=ARCHIVE_ERRORS,
)
async def delete_archive(request: Request, archiveId: str, project: ProjectDep) -> Response:
    await archives(request).delete(project.api_key, archiveId)
    return Response(status_code=204)


@router.put(
    A + "/{archiveId}/layout",
    tags=["archives"],
    summary="Change a composed archive's layout",
    response_model=ArchiveBody,
    responses=ARCHIVE_ERRORS,
)
async def set_archive_layout(
    request: Request, archiveId: str, body: LayoutBody, project: ProjectDep
) -> ArchiveBody:
    service = archives(request)
    return _body(service, request, await service.set_layout(project.api_key, archiveId, body.layout()))


@router.patch(
    A + "/{archiveId}/streams",
    tags=["archives"],
    summary="Add or remove a stream of a manual-mode archive",
    status_code=204,
    responses={
        **ARCHIVE_ERRORS,
        405: {"model": ErrorBody, "description": "The archive is not in manual stream mode"},
    },
)
async def archive_streams(
    request: Request, archiveId: str, body: StreamsBody, project: ProjectDep
) -> Response:
    await archives(request).select_stream(
        project.api_key,
        archiveId,
        add=body.addStream,
        remove=body.removeStream,
        has_audio=True if body.hasAudio is None else body.hasAudio,
        has_video=True if body.hasVideo is None else body.hasVideo,
    )
    return Response(status_code=204)


@router.get(
    "/v2/archive-download/{archiveId}",
    tags=["archives"],
    summary="Download an archive (the signed, time-limited URL of its `url`)",
    response_class=FileResponse,
    responses={
        200: {"description": "The archive's file", "content": {"application/octet-stream": {}}},
        400: {"model": ErrorBody, "description": "expires or signature missing or malformed"},
        403: {"model": ErrorBody, "description": "A wrong signature, or the URL expired"},
        404: {"model": ErrorBody, "description": "No such archive file"},
        503: {
            "model": ErrorBody,
            "description": "A cluster with local storage: the node that has the file cannot be reached",
        },
    },
)
async def download_archive(
    request: Request,
    archiveId: str,
    expires: Annotated[int, Query(ge=0, le=2**53)],
    signature: Annotated[str, Query(max_length=128)],
) -> Response:
    service: ArchiveService = request.app.state.archives
    storage = service.storage
    if not isinstance(storage, LocalStorage):
        raise NotFoundError("archives are not stored on this server")
    if not storage.verify(archiveId, expires, signature):
        raise AuthenticationError("the download URL is wrong or has expired")
    record = await service.store.get_archive(archiveId)
    if record is None or record.status != ArchiveStatus.AVAILABLE or record.location is None:
        raise NotFoundError("archive not found")
    try:
        path = storage.path(record.location)
    except StorageError as exc:
        raise NotFoundError("archive not found") from exc
    if path.is_file():
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)
    if service.file_elsewhere is None:
        raise NotFoundError("archive not found")
    # A cluster: the file is on the disk of the node that recorded it, streamed from there.
    remote = await service.file_elsewhere(record)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in remote.chunks:
                yield chunk
        finally:
            await remote.close()

    headers = {"Content-Disposition": f'attachment; filename="{remote.filename}"'}
    if remote.size is not None:
        headers["Content-Length"] = str(remote.size)
    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)
