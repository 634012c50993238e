"""The OpenTok.js apps' web server, and page helpers for the tests that run them.

Each app in ``apps/NAME/`` is an ``index.html`` and an ``app.js`` written as the OpenTok.js
documentation writes them. ``index.html`` loads ``{{SALON}}/v2/js/opentok.js`` (the server
under test) and ``config.js``, which defines ``apiKey``, ``sessionId`` and ``token`` as the
documentation's samples do; :meth:`AppServer.page` makes one per page. Every app keeps what it
sees in a global ``log`` (strings, also shown in the page's ``#log`` list) for the tests to
wait on.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from browser_helpers import PAGE_ERRORS, open_page
from playwright.async_api import Browser, Dialog, Page

APPS = pathlib.Path(__file__).resolve().parent / "apps"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}


class AppServer:
    """Serves ``apps/`` on 127.0.0.1 (port 0): ``/N/APP/`` is APP's page with the N-th config."""

    def __init__(self, salon_url: str) -> None:
        self.salon_url = salon_url
        self._configs: dict[str, dict[str, str]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/favicon.ico":  # the apps have none; a 404 is a console error
                    self.send_response(204)
                    self.end_headers()
                    return
                body, content_type = server._resolve(self.path.split("?", 1)[0])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="app-server", daemon=True)

    def __enter__(self) -> AppServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def page(self, app: str, *, api_key: str, session_id: str, token: str) -> str:
        """The URL of ``app``'s page with this ``apiKey``, ``sessionId`` and ``token``."""
        assert (APPS / app / "index.html").is_file(), f"no app {app!r} in {APPS}"
        key = str(len(self._configs) + 1)
        self._configs[key] = {"apiKey": api_key, "sessionId": session_id, "token": token}
        return f"{self.url}/{key}/{app}/"

    def _resolve(self, path: str) -> tuple[bytes | None, str]:
        parts = path.strip("/").split("/")
        if path.endswith("/"):
            parts.append("index.html")
        if len(parts) != 3 or parts[0] not in self._configs:
            return None, ""
        key, app, name = parts
        if name == "config.js":
            config = "".join(f"var {k} = {json.dumps(v)};\n" for k, v in self._configs[key].items())
            return config.encode(), TYPES[".js"]
        file = (APPS / app / name).resolve()
        if not file.is_relative_to(APPS) or not file.is_file():
            return None, ""
        text = file.read_text().replace("{{SALON}}", self.salon_url)
        return text.encode(), TYPES.get(file.suffix, "application/octet-stream")


async def open_app(browser: Browser, url: str, label: str) -> Page:
    """Open an app's page. An ``alert()`` (the documentation's ``handleError``) is dismissed and
    counted as a page error: the ``page_errors`` fixture fails the test on one it does not expect."""
    page = await open_page(browser, label)

    async def dialog(d: Dialog) -> None:
        PAGE_ERRORS.append(f"[{label} {d.type}] {d.message}")
        print(PAGE_ERRORS[-1])
        await d.dismiss()

    page.on("dialog", dialog)
    await page.goto(url)
    return page


async def app_log(page: Page) -> list[str]:
    log: list[str] = await page.evaluate("window.log || []")
    return log


async def wait_log(page: Page, pattern: str, timeout: float = 45.0) -> str:
    """Wait until the app's log has an entry matching the regular expression ``pattern`` (whole
    entry); return it. Fail with the log as it is when ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        log = await app_log(page)
        for entry in log:
            if re.fullmatch(pattern, entry):
                return entry
        if loop.time() > deadline:
            raise AssertionError(f"no log entry matching {pattern!r} after {timeout} s; the log: {log}")
        await asyncio.sleep(0.1)


async def wait_true(page: Page, expression: str, arg: Any = None, *, what: str, timeout: float = 45.0) -> Any:
    """Wait until the page's function ``expression`` (called with ``arg``) returns a truthy
    value; return it. Fail saying ``what`` was awaited, with the app's log."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await page.evaluate(expression, arg)
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(
                f"{what}: not after {timeout} s (last {value!r}); log: {await app_log(page)}"
            )
        await asyncio.sleep(0.1)


#: Resolves when the <video> at the selector has played at least ``frames`` frames; returns
#: its size, the frames and whether it is still playing.
VIDEO_PLAYS = """async ([selector, frames]) => {
    const video = document.querySelector(selector);
    if (!video || video.readyState < 2 || video.videoWidth === 0) return null;
    const played = video.getVideoPlaybackQuality().totalVideoFrames;
    if (played < frames) return null;
    const rect = video.getBoundingClientRect();
    return {width: video.videoWidth, height: video.videoHeight, frames: played, paused: video.paused,
            boxWidth: rect.width, boxHeight: rect.height};
}"""


async def video_plays(page: Page, selector: str, frames: int = 10, timeout: float = 45.0) -> dict[str, Any]:
    """Wait until the <video> at ``selector`` has played ``frames`` frames; its size and state."""
    result: dict[str, Any] = await wait_true(
        page, VIDEO_PLAYS, [selector, frames], what=f"video {selector} playing", timeout=timeout
    )
    return result
