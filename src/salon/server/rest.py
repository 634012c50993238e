"""The OpenTok-compatible REST API.

Paths, bodies and success codes follow what the official ``opentok`` Python SDK sends and
accepts (see ``docs/rest-api.md``): for example force disconnect answers 204 (a 200 makes
the SDK raise), signals answer 204, mutes answer 200 with ``{}``, and ``/session/create``
answers a JSON array with ``Content-Type: application/json`` exactly.
"""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from salon.archive.models import RESOLUTIONS
from salon.archive.service import ArchiveService
from salon.errors import InvalidRequestError, NotFoundError
from salon.ids import encode_session_id
from salon.server.auth import authenticate, rest_jwt
from salon.signalling.service import SignallingService
from salon.signalling.session import Session, Stream
from salon.store import Project, SessionRecord, Store
from salon.store.registry import Registry

__all__ = ["router"]


class AuthFirstRoute(APIRoute):
    """Authenticates a ``/v2/project/{apiKey}/…`` request before FastAPI reads its body.

    FastAPI decodes a JSON body before it resolves any dependency, so a request with both a
    bad JWT and broken JSON would get 400; the API promises 403 (docs/rest-api.md §2). The
    project found is kept in ``request.state`` for :func:`project_auth`.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            api_key = request.path_params.get("apiKey")
            if api_key is not None:
                token = rest_jwt(request.headers.get("x-opentok-auth"), request.headers.get("authorization"))
                request.state.project = await authenticate(request.app.state.registry, token, str(api_key))
            return await handler(request)

        return authenticated


router = APIRouter(route_class=AuthFirstRoute)


class ErrorBody(BaseModel):
    code: str = Field(description="A stable machine-readable error code.")
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed input"},
    403: {"model": ErrorBody, "description": "Missing, expired, wrongly signed or foreign-project JWT"},
    404: {"model": ErrorBody, "description": "Unknown session, stream or connection"},
}


class StreamBody(BaseModel):
    id: str
    videoType: str | None = None
    name: str
    layoutClassList: list[str]
    hasAudio: bool
    hasVideo: bool


class StreamList(BaseModel):
    count: int
    items: list[StreamBody]


class SignalBody(BaseModel):
    # No string-value cache: signal data is mostly unique (see salon.signalling.schema).
    model_config = ConfigDict(extra="ignore", cache_strings="keys")
    type: str = ""
    data: str = ""


class MuteBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    active: bool
    excludedStreams: list[str] | None = None
    excludedStreamIds: list[str] | None = None

    @property
    def excluded(self) -> list[str]:
        return [*(self.excludedStreams or []), *(self.excludedStreamIds or [])]


class ClassListItem(BaseModel):
    id: str
    layoutClassList: list[str] = Field(max_length=100)


class ClassListBody(BaseModel):
    items: list[ClassListItem] = Field(min_length=1, max_length=1000)


class SessionCreated(BaseModel):
    session_id: str
    project_id: str
    partner_id: str
    create_dt: str
    media_mode: str
    archive_mode: str
    location: str | None
    e2ee: bool


# -- dependencies ------------------------------------------------------------------------


def registry(request: Request) -> Registry:
    reg: Registry = request.app.state.registry
    return reg


def signalling(request: Request) -> SignallingService:
    service: SignallingService = request.app.state.signalling
    return service


async def project_auth(
    apiKey: str,
    request: Request,
    reg: Annotated[Registry, Depends(registry)],
    x_opentok_auth: Annotated[str | None, Header(description="HS256 JWT signed with the API secret")] = None,
    authorization: Annotated[
        str | None, Header(description="Bearer RS256 JWT signed with an application's private key")
    ] = None,
) -> Project:
    project: Project | None = getattr(request.state, "project", None)
    if project is not None:  # authenticated by AuthFirstRoute, before the body was read
        return project
    return await authenticate(reg, rest_jwt(x_opentok_auth, authorization), apiKey)


ProjectDep = Annotated[Project, Depends(project_auth)]
SignallingDep = Annotated[SignallingService, Depends(signalling)]
RegistryDep = Annotated[Registry, Depends(registry)]


async def session_of(project: Project, reg: Registry, session_id: str) -> SessionRecord:
    record = await reg.session(session_id)
    if record is None or record.api_key != project.api_key:
        raise NotFoundError("session not found")
    return record


def stream_body(stream: Stream) -> StreamBody:
    return StreamBody(
        id=stream.stream_id,
        videoType=stream.video_type.value if stream.video_type and stream.has_video else None,
        name=stream.name,
        layoutClassList=stream.layout_class_list,
        hasAudio=stream.has_audio,
        hasVideo=stream.has_video,
    )


async def live(service: SignallingService, session_id: str, project: Project) -> Session | None:
    """The live session (in a cluster, wherever its clients are)."""
    return await service.session_view(session_id, project.api_key)


# -- sessions ------------------------------------------------------------------------------

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", ""}


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidRequestError(f"{name} must be true or false")


async def _session_options(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace").strip()
    if not body:
        return {}
    # vonage-video sends form bodies with Content-Type: application/json; decide by content.
    if body.startswith(("{", "[")):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise InvalidRequestError("the body is not valid JSON (or is nested too deeply)") from exc
        if not isinstance(data, dict):
            raise InvalidRequestError("the body must be a JSON object")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in data.items()}
    return dict(urllib.parse.parse_qsl(body, keep_blank_values=True))


def _any_case(*words: str) -> str:
    """A pattern matching ``words`` in any letter case (the server lower-cases these)."""
    alternatives = ["".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in w) for w in words]
    return "^(" + "|".join(alternatives) + ")$"


_SESSION_CREATE_BODY: dict[str, Any] = {
    "required": False,
    "description": "Deliberately lenient, for the SDKs' sake: the body is parsed as a form "
    "whatever its Content-Type (vonage-video sends its form labelled `application/json`), "
    "unless it starts with `{` or `[`, when it must be a JSON object of these same fields. "
    "Unknown fields are ignored; an empty body takes every default. The choices are matched "
    "in any letter case, and `e2ee` also takes `1`/`0`/`yes`/`no`/empty and surrounding "
    "spaces.",
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {
                    "p2p.preference": {"type": "string", "pattern": _any_case("enabled", "disabled", "")},
                    "media_mode": {"type": "string", "pattern": _any_case("routed", "relayed", "")},
                    "archiveMode": {"type": "string", "pattern": _any_case("manual", "always")},
                    "archiveName": {"type": "string"},
                    "archiveResolution": {"type": "string"},
                    "location": {
                        "anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "maxLength": 0}]
                    },
                    "e2ee": {
                        "type": "string",
                        "pattern": r"^\s*("
                        + _any_case("true", "false", "yes", "no", "1", "0", "")[2:-2]
                        + r")\s*$",
                    },
                },
            }
        },
    },
}


@router.post(
    "/session/create",
    tags=["sessions"],
    summary="Create a session",
    response_model=list[SessionCreated],
    responses=ERRORS,
    openapi_extra={"requestBody": _SESSION_CREATE_BODY},
)
async def create_session(
    request: Request,
    reg: RegistryDep,
    x_opentok_auth: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    project = await authenticate(reg, rest_jwt(x_opentok_auth, authorization), None)
    options = await _session_options(request)
    p2p = options.get("p2p.preference", "").lower()
    media_mode = options.get("media_mode", "").lower()
    if p2p not in {"", "enabled", "disabled"}:
        raise InvalidRequestError("p2p.preference must be enabled or disabled")
    if media_mode not in {"", "routed", "relayed"}:
        raise InvalidRequestError("media_mode must be routed or relayed")
    # salon always routes media through its SFU; the requested mode is recorded as asked.
    mode = media_mode or ("relayed" if p2p == "enabled" else "routed")
    archive_mode = options.get("archiveMode", "manual").lower()
    if archive_mode not in {"manual", "always"}:
        raise InvalidRequestError("archiveMode must be manual or always")
    location = options.get("location", "")
    if location:
        try:
            ipaddress.IPv4Address(location)
        except ValueError as exc:
            raise InvalidRequestError("location must be an IPv4 address") from exc
    e2ee = _bool(options.get("e2ee", "false"), "e2ee")
    store: Store = request.app.state.store
    session_id = encode_session_id(project.api_key, location)
    # archiveMode always: the automatic archive's name and resolution (an unknown resolution
    # takes the default; salon.archive).
    archive_name = options.get("archiveName", "").replace("\x00", "")[:255] or None
    archive_resolution = options.get("archiveResolution", "").lower()
    record = await store.create_session(
        project.api_key,
        session_id,
        media_mode=mode,
        archive_mode=archive_mode,
        location=location,
        e2ee=e2ee,
        archive_name=archive_name,
        archive_resolution=archive_resolution if archive_resolution in RESOLUTIONS else None,
    )
    reg.remember_session(record)
    body = [
        {
            "session_id": session_id,
            "project_id": project.api_key,
            "partner_id": project.api_key,
            "create_dt": time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime(record.created_at / 1000)),
            "media_mode": mode,
            "archive_mode": archive_mode,
            "location": location or None,
            "e2ee": e2ee,
            "session_status": None,
            "media_server_url": None,
            "properties": None,
        }
    ]
    return JSONResponse(body, media_type="application/json")


# -- streams -------------------------------------------------------------------------------

P = "/v2/project/{apiKey}/session/{sessionId}"


@router.get(
    P + "/stream",
    tags=["streams"],
    summary="List the streams of a session",
    response_model=StreamList,
    responses=ERRORS,
)
async def list_streams(
    sessionId: str, project: ProjectDep, reg: RegistryDep, service: SignallingDep
) -> StreamList:
    await session_of(project, reg, sessionId)
    session = await live(service, sessionId, project)
    items = [stream_body(s) for s in session.announced_streams()] if session else []
    return StreamList(count=len(items), items=items)


@router.get(
    P + "/stream/{streamId}",
    tags=["streams"],
    summary="Get one stream",
    response_model=StreamBody,
    responses=ERRORS,
)
async def get_stream(
    sessionId: str, streamId: str, project: ProjectDep, reg: RegistryDep, service: SignallingDep
) -> StreamBody:
    await session_of(project, reg, sessionId)
    session = await live(service, sessionId, project)
    if session is None:
        raise NotFoundError("stream not found")
    return stream_body(session.announced_stream(streamId))


@router.put(
    P + "/stream",
    tags=["streams"],
    summary="Set the layout class lists of streams",
    response_model=StreamList,
    responses=ERRORS,
)
async def set_stream_class_lists(
    sessionId: str,
    body: ClassListBody,
    request: Request,
    project: ProjectDep,
    reg: RegistryDep,
    service: SignallingDep,
) -> StreamList:
    await session_of(project, reg, sessionId)
    session = await live(service, sessionId, project)
    if session is None:
        raise NotFoundError("stream not found")
    streams = session.set_layout_class_lists({item.id: item.layoutClassList for item in body.items})
    archives: ArchiveService | None = getattr(request.app.state, "archives", None)
    if archives is not None:  # a composed archive's layout follows the classes
        changed = {s.stream_id: tuple(s.layout_class_list) for s in streams}
        await archives.stream_classes_changed(sessionId, changed)
    return StreamList(count=len(streams), items=[stream_body(s) for s in streams])


# -- signals -------------------------------------------------------------------------------


async def _signal_body(request: Request) -> SignalBody:
    try:
        return SignalBody.model_validate_json(await request.body())
    except ValidationError as exc:
        raise InvalidRequestError("the body must be a JSON object with string type and data") from exc


@router.post(
    P + "/signal",
    tags=["signals"],
    summary="Signal every connection of a session",
    status_code=204,
    responses={
        **ERRORS,
        413: {"model": ErrorBody, "description": "type or data too large, or the body over the limit"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,  # an empty body is a 400
            "content": {"application/json": {"schema": SignalBody.model_json_schema()}},
        }
    },
)
async def signal_session(
    sessionId: str, request: Request, project: ProjectDep, reg: RegistryDep, service: SignallingDep
) -> Response:
    body = await _signal_body(request)
    await session_of(project, reg, sessionId)
    session = await live(service, sessionId, project)
    if session is not None:
        await service.carry_out(session, session.signal(None, body.type, body.data, None))
    else:
        Session(sessionId, project.api_key).signal(None, body.type, body.data, None)  # checks the limits
    return Response(status_code=204)


@router.post(
    P + "/connection/{connectionId}/signal",
    tags=["signals"],
    summary="Signal one connection",
    status_code=204,
    responses={
        **ERRORS,
        413: {"model": ErrorBody, "description": "type or data too large, or the body over the limit"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,  # an empty body is a 400
            "content": {"application/json": {"schema": SignalBody.model_json_schema()}},
        }
    },
)
async def signal_connection(
    sessionId: str,
    connectionId: str,
    request: Request,
    project: ProjectDep,
    reg: RegistryDep,
    service: SignallingDep,
) -> Response:
    body = await _signal_body(request)
    await session_of(project, reg, sessionId)
    session = await live(service, sessionId, project)
    if session is None:
        raise NotFoundError("connection not found")
    await service.carry_out(session, session.signal(None, body.type, body.data, connectionId))
    return Response(status_code=204)


# -- moderation ----------------------------------------------------------------------------


@router.delete(
    P + "/connection/{connectionId}",
    tags=["moderation"],
    summary="Force a connection to disconnect",
    status_code=204,
    responses=ERRORS,
)
async def force_disconnect(
    sessionId: str, connectionId: str, project: ProjectDep, reg: RegistryDep, service: SignallingDep
) -> Response:
    await session_of(project, reg, sessionId)
    await service.force_disconnect(sessionId, connectionId, project.api_key)
    return Response(status_code=204)


@router.post(
    P + "/stream/{streamId}/mute",
    tags=["moderation"],
    summary="Force one stream to mute its audio",
    responses=ERRORS,
)
async def mute_stream(
    sessionId: str, streamId: str, project: ProjectDep, reg: RegistryDep, service: SignallingDep
) -> dict[str, Any]:
    await session_of(project, reg, sessionId)
    session = await live(service, sessionId, project)
    if session is None:
        raise NotFoundError("stream not found")
    await service.carry_out(session, session.force_mute(streamId))
    return {}


@router.post(
    P + "/mute",
    tags=["moderation"],
    summary="Force every stream (but excluded ones) to mute, and later ones, until disabled",
    responses=ERRORS,
)
async def mute_all(
    sessionId: str, body: MuteBody, project: ProjectDep, reg: RegistryDep, service: SignallingDep
) -> dict[str, Any]:
    await session_of(project, reg, sessionId)
    await service.mute_all(sessionId, body.excluded, active=body.active, api_key=project.api_key)
    return {}


@router.get("/health", tags=["server"], summary="Readiness: 200 once the server serves")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.websocket("/signalling")
async def signalling_socket(websocket: WebSocket) -> None:
    service: SignallingService = websocket.app.state.signalling
    await service.serve(websocket)
