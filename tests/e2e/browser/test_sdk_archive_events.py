"""The browser SDK's ``archiveStarted`` / ``archiveStopped`` events, from a real Chromium page.

A page of the server's origin imports ``/sdk/salon.js`` and connects; the archive is started
and stopped through the official ``opentok`` SDK. A second page joins while the archive records
and is told of it on connecting. A third page, an OpenTok.js app on the global ``OT``
(``/v2/js/opentok.js``), gets the Session's ``archiveStarted`` / ``archiveStopped`` as
OpenTok.js dispatches them.
"""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

import opentok
import pytest
from browser_helpers import open_sdk_page
from ot_helpers import open_ot_page
from playwright.async_api import Browser, Page

from tests.functional.test_archives import API_KEY, running

pytestmark = pytest.mark.timeout(180)

CONNECT = """async ([sessionId, token]) => {
    window.log = [];
    const s = window.salon.initSession(sessionId);
    s.on("archiveStarted", (e) => window.log.push({type: "archiveStarted", id: e.id, name: e.name}));
    s.on("archiveStopped", (e) => window.log.push({type: "archiveStopped", id: e.id, name: e.name}));
    await s.connect(token);
}"""


OT_CONNECT = """([apiKey, sessionId, token]) => new Promise((resolve, reject) => {
    window.log = [];
    const session = OT.initSession(apiKey, sessionId);
    const note = (event) => window.log.push({type: event.type, id: event.id, name: event.name,
                                            target: event.target === session, cancelable: event.cancelable});
    session.on({archiveStarted: note, archiveStopped: note});
    session.connect(token, (error) => (error ? reject(error.name) : resolve()));
})"""


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
        ot_page = await open_ot_page(browser, server.url, "ot")
        await ot_page.evaluate(OT_CONNECT, [API_KEY, sid, token()])
        archive = await server.call("start_archive", sid, name="class")
        assert await log_of(first, 1) == [{"type": "archiveStarted", "id": archive.id, "name": "class"}]
        ot_event = {"id": archive.id, "name": "class", "target": True, "cancelable": False}
        assert await log_of(ot_page, 1) == [{"type": "archiveStarted", **ot_event}]
        late = await open_sdk_page(browser, server.url, "late")
        await late.evaluate(CONNECT, [sid, token()])
        assert await log_of(late, 1) == [{"type": "archiveStarted", "id": archive.id, "name": "class"}]
        await server.call("stop_archive", archive.id)
        stopped = {"type": "archiveStopped", "id": archive.id, "name": "class"}
        assert (await log_of(first, 2))[1] == stopped
        assert (await log_of(late, 2))[1] == stopped
        assert (await log_of(ot_page, 2))[1] == {"type": "archiveStopped", **ot_event}
