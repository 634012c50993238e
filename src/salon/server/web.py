"""The bundled browser SDK (``/sdk/salon.js``) and web app (``/``), served from the package."""

from __future__ import annotations

import pathlib

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from starlette.staticfiles import StaticFiles

__all__ = ["DEMO_DISABLED", "WEB_DIR", "mount_web"]

#: The message of ``POST /demo/join`` under ``salon serve --no-demo``.
DEMO_DISABLED = (
    "The demo endpoint is switched off on this server (salon serve --no-demo). Production "
    "applications mint session tokens in their own server, with the REST API or an OpenTok "
    "server SDK, after authenticating their users."
)

#: ``salon/web`` inside the installed package: ``sdk/`` and ``app/``.
WEB_DIR = pathlib.Path(__file__).resolve().parent.parent / "web"


def mount_web(app: FastAPI) -> None:
    """``/sdk/*`` and ``/app/*`` as static files, and ``/`` as the app's page.

    The app's page is a route rather than a mount at ``/`` so that a mount does not swallow
    the REST API's 404 and 405 answers. ``POST /demo/join`` answers 404 with the code
    ``demo_disabled`` and a message saying why; when the demo is on, its router, included
    before this, answers first.
    """
    index = WEB_DIR / "app" / "index.html"
    app.mount("/sdk", StaticFiles(directory=WEB_DIR / "sdk"), name="sdk")
    app.mount("/app", StaticFiles(directory=WEB_DIR / "app"), name="app")

    @app.get("/", include_in_schema=False)
    async def web_app() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8")

    @app.post("/demo/join", include_in_schema=False)
    async def demo_disabled() -> JSONResponse:
        return JSONResponse({"code": "demo_disabled", "message": DEMO_DISABLED}, status_code=404)
