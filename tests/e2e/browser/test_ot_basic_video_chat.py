"""OpenTok.js apps written as the OpenTok documentation writes them, run on salon by loading
``/v2/js/opentok.js`` instead of OpenTok's script: the basic video chat between two pages (video
seen both ways), and the connect callback's error for an expired token."""

from __future__ import annotations

import asyncio
import time

import pytest
from browser_helpers import video_stats
from ot_helpers import BASIC_VIDEO_CHAT, frame, open_ot_page, run_app, wait_for
from playwright.async_api import Browser

from salon.tokens import generate_token
from tests.conftest import API_KEY, API_SECRET, RunningServer

pytestmark = pytest.mark.timeout(240)


async def _sees_moving_video(page: object, selector: str, who: str) -> dict[str, object]:
    """The <video> at ``selector`` plays decoded frames of the fake camera (a moving pattern:
    not black, with contrast), and they advance."""
    stats = await video_stats(page, selector)  # type: ignore[arg-type]
    assert stats["found"] and stats["width"] > 0 and stats["height"] > 0, f"{who}: {stats}"
    assert stats["framesAdvanced"] > 0 and stats["callbacks"] >= 5, f"{who}: video not advancing: {stats}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        picture = await frame(page, selector)  # type: ignore[arg-type]
        if picture and picture["mean"] > 30 and picture["contrast"] > 60:
            break
        assert loop.time() < deadline, f"{who}: no picture in {selector}: {picture}"
        await asyncio.sleep(0.2)
    return stats


async def test_basic_video_chat_as_the_opentok_docs_write_it(server: RunningServer, browser: Browser) -> None:
    session_id = server.session()
    pages = []
    for name in ("alice", "bob"):
        page = await open_ot_page(browser, server.url, name)
        await run_app(
            page,
            BASIC_VIDEO_CHAT,
            API_KEY=server.api_key,
            SESSION_ID=session_id,
            TOKEN=server.token(session_id),
        )
        pages.append(page)
    alice, bob = pages

    for page, other, who in ((alice, bob, "alice"), (bob, alice, "bob")):
        # The default UI was appended into each container, filling it (100% of 640x480 / 240x180).
        stats = await _sees_moving_video(
            page, "#subscriber .OT_subscriber video", f"{who} watching the other"
        )
        assert (stats["boxWidth"], stats["boxHeight"]) == (640, 480), stats
        mine = await _sees_moving_video(page, "#publisher .OT_publisher video", f"{who}'s own camera")
        assert (mine["boxWidth"], mine["boxHeight"]) == (240, 180), mine
        # Each page subscribed to the other's published stream, and nobody got an error.
        watched = await wait_for(page, "window.subscriber && window.subscriber.stream.streamId")
        published = await wait_for(other, "window.publisher.stream && window.publisher.stream.streamId")
        assert watched == published
        assert await page.evaluate("window.errors") == []
        assert await page.evaluate("session.streams.length()") == 2  # its own and the other's
        assert await page.evaluate("publisher.accessAllowed") is True


async def test_an_expired_token_fails_connect_with_ot_authentication_error(
    server: RunningServer, browser: Browser
) -> None:
    session_id = server.session()
    # Minted as if an hour ago, for 60 s: expired a long time ago (the server allows no leeway).
    an_hour_ago = int(time.time()) - 3600
    expired = generate_token(API_KEY, API_SECRET, session_id, now=an_hour_ago, expire_time=an_hour_ago + 60)
    page = await open_ot_page(browser, server.url, "late")
    result = await page.evaluate(
        """([apiKey, sessionId, token]) => new Promise((resolve) => {
            const exceptions = [];
            OT.on("exception", (e) => exceptions.push({code: e.code, title: e.title, message: e.message,
                                                      target: e.target === session}));
            const session = OT.initSession(apiKey, sessionId);
            session.on("sessionConnected", () => resolve({connected: true}));
            session.connect(token, (error) => {
                // The exception event goes out too, as in OpenTok.js: let it arrive.
                setTimeout(() => resolve({name: error && error.name, code: error && error.code,
                                          message: error && error.message, exceptions,
                                          isError: error instanceof Error,
                                          connection: session.connection}), 0);
            });
        })""",
        [API_KEY, session_id, expired],
    )
    assert result["name"] == "OT_AUTHENTICATION_ERROR" and result["code"] == 1004, result
    assert result["isError"] is True and "expired" in result["message"], result
    assert result["connection"] is None
    assert result["exceptions"] == [
        {"code": 1004, "title": "Authentication error", "message": result["message"], "target": True}
    ]
