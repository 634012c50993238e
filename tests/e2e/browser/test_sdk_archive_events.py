"""The browser SDK's ``archiveStarted`` / ``archiveStopped`` events, from a real Chromium page.

A page of the server's origin imports ``/sdk/salon.js`` and connects; the archive is started
and stopped through the official ``opentok`` SDK. A second page joins while the archive records
and is told of it on connecting.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import opentok
import pytest
from browser_helpers import open_sdk_page
from playwright.async_api import Browser, Page

from tests.functional.test_archives import running

pytestmark = pytest.mark.timeout(180)

CONNECT = """async ([sessionId, token]) => {
    window.log = [];
    const s = window.salon.initSession(sessionId);
    s.on("archiveStarted", (e) => window.log.push({type: "archiveStarted", id: e.id, name: e.name}));
    s.on("archiveStopped", (e) => window.log.push({type: "archiveStopped", id: e.id, name: e.name}));
    await s.connect(token);
}"""


async def log_of(page: Page, count: int) -> list[dict[str, Any]]:
    await page.wait_for_function("(n) => window.log.length >= n", arg=count, timeout=20000)
    entries: list[dict[str, Any]] = await page.evaluate("() => window.log")
    return entries


async def test_pages_get_archive_started_and_stopped(browser: Browser, tmp_path: pathlib.Path) -> None:
    with running(tmp_path) as server:
        sid = await asyncio.to_thread(server.session)

        def token() -> str:
            return str(server.sdk.generate_token(sid, role=opentok.Roles.publisher))

        first = await open_sdk_page(browser, server.url, "first")
        await first.evaluate(CONNECT, [sid, token()])
        archive = await server.call("start_archive", sid, name="class")
        assert await log_of(first, 1) == [{"type": "archiveStarted", "id": archive.id, "name": "class"}]
        late = await open_sdk_page(browser, server.url, "late")
        await late.evaluate(CONNECT, [sid, token()])
        assert await log_of(late, 1) == [{"type": "archiveStarted", "id": archive.id, "name": "class"}]
        await server.call("stop_archive", archive.id)
        stopped = {"type": "archiveStopped", "id": archive.id, "name": "class"}
        assert (await log_of(first, 2))[1] == stopped
        assert (await log_of(late, 2))[1] == stopped
