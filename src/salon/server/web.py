"""The bundled browser SDK (``/sdk/salon.js``), its OpenTok.js face (``/v2/js/opentok.js``)
and the web app (``/``), served from the package."""

from __future__ import annotations

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


class _CorsStaticFiles(StaticFiles):
    """Static files with ``Access-Control-Allow-Origin: *``, so that a page on another origin
    can import the ES modules (module scripts are fetched in CORS mode)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(CORS)
        return response


def _bundle_scripts() -> dict[str, _Script]:
    """Bundle each script once (at start-up: a module the bundler refuses stops the server)."""
    sdk = WEB_DIR / "sdk"
    built: dict[tuple[str, str], _Script] = {}
    scripts = {}
    for url, (entry, fmt) in OPENTOK_SCRIPTS.items():
        if (entry, fmt) not in built:
            body = bundle(sdk / entry, fmt, root=sdk).encode()
            built[(entry, fmt)] = _Script(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
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
        headers = {"ETag": script.etag, "Cache-Control": SCRIPT_CACHE_CONTROL, **CORS}
        tags = {t.strip() for t in request.headers.get("if-none-match", "").split(",")}
        if script.etag in tags or "*" in tags:
            return Response(status_code=304, headers=headers)
        return Response(script.body, media_type="text/javascript; charset=utf-8", headers=headers)

    for path in OPENTOK_SCRIPTS:
        app.add_api_route(path, opentok_script, methods=["GET", "HEAD"], include_in_schema=False)

    @app.post("/demo/join", include_in_schema=False)
    async def demo_disabled() -> JSONResponse:
        return JSONResponse({"code": "demo_disabled", "message": DEMO_DISABLED}, status_code=404)
