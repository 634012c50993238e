"""The ASGI application: REST API, signalling WebSocket, OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from salon import __version__
from salon.archive.api import router as archive_router
from salon.archive.service import ArchiveService
from salon.archive.storage import StorageError, storage_from_url
from salon.callbacks import CallbackService
from salon.errors import ConflictError, SalonError
from salon.media import memtrace
from salon.media.plane import SfuMediaPlane
from salon.media.transport import WebRtcTransportOptions
from salon.observability.logs import LogContext
from salon.observability.metrics import MetricsServer, SalonCollector, registry_for
from salon.observability.metrics import router as metrics_router
from salon.server.config import ServerConfig
from salon.server.debug import router as debug_router
from salon.server.demo import router as demo_router
from salon.server.limits import BodyLimit, RateLimiter
from salon.server.rest import router
from salon.server.web import mount_web
from salon.signalling.observer import Observers
from salon.signalling.service import SignallingService
from salon.store import Project, Store
from salon.store.registry import Registry

__all__ = ["create_app", "ensure_project"]

if TYPE_CHECKING:
    from salon.cluster.pipes import NodeMediaLink

logger = logging.getLogger(__name__)

_SLASHES = re.compile(r"//+")


class CollapseSlashes:
    """``opentok.Client(api_url="http://host/")`` requests ``//session/create``: serve it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "//" in scope["path"]:
            scope = dict(scope, path=_SLASHES.sub("/", scope["path"]))
        await self.app(scope, receive, send)


async def ensure_project(store: Store, config: ServerConfig, announce: Callable[[str], None]) -> Project:
    """The project from the environment, or the first one with an API secret (not an
    application), created (and announced) if none exists.

    With ``SALON_API_KEY`` and ``SALON_API_SECRET`` (``config.api_key``/``api_secret``) that
    project is created if it does not exist, silently; if it exists with another secret the
    server refuses to start (:class:`SalonError`) rather than replace the secret.
    """
    if config.api_key and config.api_secret:
        project = await store.get_project(config.api_key)
        if project is None:
            try:
                project = await store.create_project(
                    "default", api_key=config.api_key, api_secret=config.api_secret
                )
            except ConflictError:
                # Another node of the cluster, started at the same time, created it first:
                # take that one, its secret checked as any stored project's.
                project = await store.get_project(config.api_key)
                if project is None:
                    raise
        if project.is_application:
            raise SalonError(
                f"{config.api_key} (SALON_API_KEY) is an application, which has no API secret: "
                "name a project with an API key and secret"
            )
        elif project.api_secret != config.api_secret:
            # Never overwrite a stored secret from the environment (nor print either one).
            raise SalonError(
                f"project {config.api_key} (SALON_API_KEY) exists with another secret: "
                "set SALON_API_SECRET to the secret it was created with"
            )
        return project
    # Applications have no usable secret (the demo endpoint mints HS256 tokens): skip them.
    projects = [p for p in await store.list_projects() if not p.is_application]
    if projects:
        return projects[0]
    project = await store.create_project("default")
    announce(
        "Created a project. Keep its secret; it is not shown again.\n"
        f"  SALON_API_KEY={project.api_key}\n  SALON_API_SECRET={project.api_secret}"
    )
    return project


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def create_app(config: ServerConfig | None = None, *, announce: Callable[[str], None] = print) -> FastAPI:
    """Build the application. Its lifespan opens the store and starts signalling."""
    config = config or ServerConfig()
    ice = config.ice  # checked now: a bad ICE configuration fails here, not in the lifespan

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The metrics address first: a port in use fails the start before anything else opens.
        app.state.metrics_registry = registry_for()
        metrics_server: MetricsServer | None = None
        app.state.metrics_url = None
        if config.metrics_address is not None:
            host, port = config.metrics_address
            try:
                metrics_server = await asyncio.to_thread(
                    MetricsServer, app.state.metrics_registry, config.metrics_address
                )
            except OSError as exc:
                why = f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                if not config.metrics_address_is_default:
                    raise SalonError(why) from None
                # The default address, taken (another server on this machine): go on without.
                logger.warning("%s; metrics not served (choose another --metrics-address)", why)
            else:
                app.state.metrics_url = metrics_server.url
                announce(f"salon metrics on {metrics_server.url}")
        try:
            async with services(app):
                yield
        finally:
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.close)

    @contextlib.asynccontextmanager
    async def services(app: FastAPI) -> AsyncIterator[None]:
        memtrace.start_from_env()
        config.data_dir.mkdir(parents=True, exist_ok=True)  # the database, archives
        store = Store(config.store_url)
        await store.open()
        registry = Registry(store)
        try:
            project = await ensure_project(store, config, announce)
        except BaseException:
            await store.close()
            raise
        if config.callback_url is not None:
            project = await store.update_project(project.api_key, callback_url=config.callback_url)
        registry.remember_project(project)
        try:
            storage = storage_from_url(
                config.archive_storage, config.data_dir, endpoint_url=config.archive_s3_endpoint
            )
        except (StorageError, ValueError) as exc:
            await store.close()
            raise SalonError(f"archive storage: {exc}") from exc
        callbacks = CallbackService(store, registry, config.callbacks)
        media: SfuMediaPlane | None = None
        if config.media:
            media = SfuMediaPlane(
                WebRtcTransportOptions(
                    listen_addresses=config.listen_addresses,
                    announced_address=config.announced_address,
                    port_range=config.port_range,
                    ice_allow=config.ice_allow,
                    ice_deny=config.ice_deny,
                ),
                workers=config.workers,
                spread_consumers=config.router_spread_consumers,
            )
            try:
                await media.start()
            except BaseException:
                await store.close()
                raise
        archives = ArchiveService(
            store,
            registry,
            storage,
            config.data_dir / "archives-work",
            recorders={mode: make(media) for mode, make in config.archive_recorders.items()},
            config=config.archives,
            emit=callbacks.emit,
        )
        service = SignallingService(
            registry, config.signalling, media=media, ice=ice, observer=Observers(callbacks, archives)
        )
        archives.signalling = service
        collector = SalonCollector(
            config.node_name, service, media=media, callbacks=callbacks, archives=archives, store=store
        )
        app.state.metrics_registry.register(collector)
        if media is not None:
            media.events = service
        cluster = None
        node_link: NodeMediaLink | None = None
        if config.redis_url is not None:
            # Imported here: the embedded server never loads Redis.
            from salon.cluster.bridge import ClusterBridge
            from salon.cluster.load import NodeLoad
            from salon.cluster.node import ClusterNode

            node_load = NodeLoad()
            plane = media

            def load() -> int:
                # Signalling connections, media consumers, the workers' smoothed CPU.
                workers = plane.pool.workers.values() if plane is not None else ()
                return node_load.points(len(service.links), sum(w.load()[0] for w in workers))

            async def measure() -> None:
                if plane is not None:
                    dumps = await plane.pool.dump()
                    node_load.sample(time.monotonic(), {d.pid: d.cpu_time for d in dumps})

            node = ClusterNode(
                config.redis_url,
                config.node_name or socket.gethostname(),
                config.node_address or config.announced_address or config.host,
                load=load,
                measure=measure,
                timeout=config.node_timeout,
            )
            node.on_project_changed = registry.forget_project
            node.on_reaped = callbacks.reaped
            node.client_url = config.node_url or ""
            cluster = service.cluster = ClusterBridge(node, service, placement_margin=config.placement_margin)
            # sessionCreated/sessionDestroyed once per cluster: decided in Redis by the bridge.
            callbacks.cluster_sessions = True
            cluster.on_session_created = callbacks.session_created
            cluster.on_session_destroyed = callbacks.session_destroyed
            service.elsewhere = archives.delivered_elsewhere
            try:
                await cluster.start()
                if media is not None:
                    from salon.cluster.pipes import NodeMediaLink, pipe_address_problem

                    problem = pipe_address_problem(node.address)
                    if problem is not None:
                        logger.warning("--node-address %s: %s", node.address, problem)

                    from salon.cluster.archives import (
                        ARCHIVE_FILE,
                        ARCHIVE_START,
                        ARCHIVE_STOP,
                        ArchiveForwarding,
                    )

                    async def node_request(origin: str, body: dict[str, Any]) -> dict[str, Any]:
                        if body.get("op") in (ARCHIVE_FILE, ARCHIVE_START, ARCHIVE_STOP):
                            return await forwarding.serve(origin, body)
                        return await media.node_request(origin, body)

                    node_link = NodeMediaLink(
                        node, node_request, watched=media.served_nodes, gone=media.node_gone
                    )
                    forwarding = ArchiveForwarding(node_link, archives)
                    archives.stop_elsewhere = forwarding.stop_elsewhere
                    archives.start_elsewhere = forwarding.start_elsewhere
                    archives.file_elsewhere = forwarding.file_elsewhere
                    await node_link.start()
                    media.nodes = node_link
            except BaseException:
                if media is not None:
                    await media.close()
                await store.close()
                raise
        await callbacks.start()
        await service.start()
        await archives.start()
        app.state.store, app.state.registry, app.state.signalling = store, registry, service
        app.state.media = media
        app.state.callbacks = callbacks
        app.state.archives = archives
        app.state.demo_project = project
        if config.demo:
            logger.warning(
                "the demo endpoint POST /demo/join is on: anyone who can reach this server can "
                "join any room of project %s (at most %d joins, then one per %g s, per client "
                "address); `salon serve --no-demo` switches it off",
                project.api_key,
                config.demo_rate_burst,
                config.demo_rate_interval,
            )
        try:
            yield
        finally:
            await archives.close()  # archives stop (their connections told) and are stored first
            await service.stop()
            if node_link is not None:
                await node_link.stop()
            if cluster is not None:
                await cluster.stop()
            if media is not None:
                await media.close()
            await callbacks.close()
            await store.close()
            collector.close()
            app.state.metrics_registry.unregister(collector)

    app = FastAPI(
        title="salon",
        version=__version__,
        summary="Self-hosted, OpenTok-compatible video sessions",
        description="The OpenTok-compatible REST API of a salon server. Authenticate with the "
        "`X-OPENTOK-AUTH` header: an HS256 JWT signed with the project's API secret, with claims "
        "`iss` (the API key), `ist: project`, `iat`, `exp` (at most 5 minutes after `iat`) and "
        "optionally `jti`; or, for a Vonage application, `Authorization: Bearer` and an RS256 "
        "JWT signed with its private key, with claims `application_id`, `iat` and `exp` (at most "
        "15 minutes after `iat`).",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(archive_router)
    if config.demo:
        app.state.demo_limiter = RateLimiter(config.demo_rate_burst, config.demo_rate_interval)
        app.include_router(demo_router)
    if config.debug_endpoints:
        app.include_router(debug_router)
    if config.metrics_token:
        app.state.metrics_token = config.metrics_token
        app.include_router(metrics_router)
    mount_web(app)

    @app.exception_handler(SalonError)
    async def salon_error(request: Request, exc: SalonError) -> JSONResponse:
        if exc.status >= 500:
            method = request.scope.get("method", "WEBSOCKET")
            logger.error("request %s %s failed: %s", method, request.url.path, exc.message)
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors: list[Any] = list(exc.errors())
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return _error(400, "invalid_request", f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names one route's methods; a path may have more
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        code = {
            400: "invalid_request",  # e.g. FastAPI's "There was an error parsing the body"
            404: "not_found",
            405: "method_not_allowed",
            413: "request_too_large",
            429: "rate_limited",
        }.get(exc.status_code, "http_error")
        return JSONResponse(
            {"code": code, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request %s %s failed", request.scope.get("method", "WEBSOCKET"), request.url.path)
        return _error(500, "internal_error", "internal server error")

    app.add_middleware(LogContext)
    app.add_middleware(CollapseSlashes)
    app.add_middleware(BodyLimit, max_size=config.max_body_size)
    _document_limits(app)
    return app


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path (routes asked as the router would)."""
    allowed = []
    for method in _METHODS:
        scope = dict(request.scope, method=method)
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


_TOO_LARGE = {
    "description": "The request body is larger than the server's limit (--max-body-size); "
    "answered before the body is read",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def _document_limits(app: FastAPI) -> None:
    """The OpenAPI document as served: what FastAPI generates, plus what middleware does.

    Validation errors are answered 400 (never FastAPI's 422), and every operation that takes
    a body may answer 413 (:class:`~salon.server.limits.BodyLimit`).
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                if "requestBody" in operation:
                    responses.setdefault("413", _TOO_LARGE)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
