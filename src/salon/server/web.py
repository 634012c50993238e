"""The bundled browser SDK (``/sdk/salon.js``), its OpenTok.js face (``/v2/js/opentok.js``)
and the web app (``/``), served from the package."""

from __future__ import annotations

import gzip
import hashlib
import pathlib
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from salon.server.jsbundle import bundle

__all__ = ["DEMO_DISABLED", "OPENTOK_SCRIPTS", "WEB_DIR", "mount_web"]

#: The message of ``POST /demo/join`` under ``salon serve --no-demo``.
DEMO_DISABLED = (
    "The demo endpoint is switched off on this server (salon serve --no-demo). Production "
    "applications mint session tokens in their own server, with the REST API or an OpenTok "
    "server SDK, after authenticating their users."
)

#: ``salon/web`` inside the installed package: ``sdk/`` and ``app/``.
WEB_DIR = pathlib.Path(__file__).resolve().parent.parent / "web"

#: The OpenTok.js-compatible scripts: URL path -> (entry module under ``sdk/``, bundle format).
#: ``opentok.min.js`` is the same script as ``opentok.js`` (pages name either), not minified.
OPENTOK_SCRIPTS: dict[str, tuple[str, Literal["iife", "esm"]]] = {
    "/v2/js/opentok.js": ("ot/classic.js", "iife"),
    "/v2/js/opentok.min.js": ("ot/classic.js", "iife"),
    "/v2/js/opentok.mjs": ("opentok.js", "esm"),
}

#: Scripts may be cached for this long, then revalidated (ETag, 304): an upgraded server's
#: script reaches pages within minutes.
SCRIPT_CACHE_CONTROL = "public, max-age=300"

#: Pages on any origin may load the SDK (classic script or ES modules): it holds no secrets,
#: and the token, not the page's origin, is what the server checks.
CORS = {"Access-Control-Allow-Origin": "*"}


@dataclass(frozen=True)
class _Script:
    body: bytes
    etag: str
    #: The same, gzip-compressed once (about a quarter of the size), with its own ETag.
    gzipped: bytes
    gzip_etag: str


class _CorsStaticFiles(StaticFiles):
    """Static files with ``Access-Control-Allow-Origin: *``, so that a page on another origin
    can import the ES modules (module scripts are fetched in CORS mode)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(CORS)
        return response


#: Bundles made by this process, by the sources' modification times (servers started again in
#: one process, as the tests do, bundle only when a source changed).
_BUILT: dict[tuple[tuple[str, int], ...], dict[str, _Script]] = {}


def _bundle_scripts() -> dict[str, _Script]:
    """Bundle each script once (at start-up: a module the bundler refuses stops the server)."""
    sdk = WEB_DIR / "sdk"
    sources = tuple(sorted((str(p), p.stat().st_mtime_ns) for p in sdk.rglob("*.js")))
    if sources not in _BUILT:
        _BUILT.clear()
        _BUILT[sources] = _bundle_now(sdk)
    return _BUILT[sources]


def _bundle_now(sdk: pathlib.Path) -> dict[str, _Script]:
    built: dict[tuple[str, str], _Script] = {}
    scripts = {}
    for url, (entry, fmt) in OPENTOK_SCRIPTS.items():
        if (entry, fmt) not in built:
            body = bundle(sdk / entry, fmt, root=sdk).encode()
            tag = hashlib.sha256(body).hexdigest()[:32]
            gzipped = gzip.compress(body, compresslevel=9, mtime=0)
            built[(entry, fmt)] = _Script(body, f'"{tag}"', gzipped, f'"{tag}-gzip"')
        scripts[url] = built[(entry, fmt)]
    return scripts


def mount_web(app: FastAPI) -> None:
    """``/sdk/*`` and ``/app/*`` as static files, and ``/`` as the app's page.

    The app's page is a route rather than a mount at ``/`` so that a mount does not swallow
    the REST API's 404 and 405 answers. ``POST /demo/join`` answers 404 with the code
    ``demo_disabled`` and a message saying why; when the demo is on, its router, included
    before this, answers first.
    """
    index = WEB_DIR / "app" / "index.html"
    app.mount("/sdk", _CorsStaticFiles(directory=WEB_DIR / "sdk"), name="sdk")
    app.mount("/app", StaticFiles(directory=WEB_DIR / "app"), name="app")

    @app.get("/", include_in_schema=False)
    async def web_app() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8")

    scripts = _bundle_scripts()

    async def opentok_script(request: Request) -> Response:
        script = scripts[request.url.path]
        compress = "gzip" in request.headers.get("accept-encoding", "").lower()
        etag = script.gzip_etag if compress else script.etag
        headers = {"ETag": etag, "Cache-Control": SCRIPT_CACHE_CONTROL, "Vary": "Accept-Encoding", **CORS}
        tags = {t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")}
        if etag in tags or "*" in tags:
            return Response(status_code=304, headers=headers)
        if compress:
            headers["Content-Encoding"] = "gzip"
        body = script.gzipped if compress else script.body
        return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)

    for path in OPENTOK_SCRIPTS:
        app.add_api_route(path, opentok_script, methods=["GET", "HEAD"], include_in_schema=False)

    @app.post("/demo/join", include_in_schema=False)
    async def demo_disabled() -> JSONResponse:
        return JSONResponse({"code": "demo_disabled", "message": DEMO_DISABLED}, status_code=404)
