"""The bundled browser SDK (``/sdk/salon.js``) and web app (``/``), served from the package."""

from __future__ import annotations

import pathlib

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

__all__ = ["WEB_DIR", "mount_web"]

#: ``salon/web`` inside the installed package: ``sdk/`` and ``app/``.
WEB_DIR = pathlib.Path(__file__).resolve().parent.parent / "web"


def mount_web(app: FastAPI) -> None:
    """``/sdk/*`` and ``/app/*`` as static files, and ``/`` as the app's page.

    The app's page is a route rather than a mount at ``/`` so that a mount does not swallow
    the REST API's 404 and 405 answers.
    """
    index = WEB_DIR / "app" / "index.html"
    app.mount("/sdk", StaticFiles(directory=WEB_DIR / "sdk"), name="sdk")
    app.mount("/app", StaticFiles(directory=WEB_DIR / "app"), name="app")

    @app.get("/", include_in_schema=False)
    async def web_app() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8")
