"""Sound the browser blocks, with OpenTok.js's default UI, in Chromium.

A page that only watches (the screen-sharing app, which captures nothing until its button is
clicked) in a Chromium whose autoplay policy wants a user gesture first: the subscriber's
sound is blocked, its widget shows the "play audio" button, and clicking it (the gesture)
plays the sound. The camera comes from the basic video chat app in another browser.
"""

from __future__ import annotations

import re

import pytest
from browser_helpers import launch
from otapp_helpers import AppServer, open_app, video_plays, wait_log, wait_true
from playwright.async_api import Browser, Playwright, expect

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)


async def test_blocked_sound_is_played_from_the_widget(
    media_server: RunningServer, app_server: AppServer, browser: Browser, pw: Playwright
) -> None:
    session_id = media_server.session()

    def url(app: str) -> str:
        token = media_server.token(session_id)
        return app_server.page(app, api_key=media_server.api_key, session_id=session_id, token=token)

    camera = await open_app(browser, url("video-chat"), "camera")
    await wait_log(camera, r"publishing \S+")
    # The last --autoplay-policy on the command line wins over the fixture's permissive one.
    strict = await launch(pw, extra_args=("--autoplay-policy=document-user-activation-required",))
    try:
        viewer = await open_app(strict, url("screen-sharing"), "viewer")
        await wait_log(viewer, "streamCreated camera true true")
        widget = viewer.locator("#camera-subscriber .OT_subscriber")
        await expect(widget).to_have_class(re.compile(r"(^|\s)OT_audio-blocked(\s|$)"), timeout=45000)
        # The picture plays meanwhile (muted); the sound waits for the user.
        await video_plays(viewer, "#camera-subscriber .OT_subscriber video")
        assert await viewer.evaluate("document.querySelector('#camera-subscriber video').muted")
        await viewer.get_by_role("button", name="Play audio").click()
        await expect(widget).not_to_have_class(re.compile(r"(^|\s)OT_audio-blocked(\s|$)"), timeout=30000)
        await wait_true(
            viewer,
            "() => { const v = document.querySelector('#camera-subscriber video');"
            " return !v.muted && !v.paused; }",
            what="the subscriber playing with sound",
        )
        await expect(viewer.get_by_role("button", name="Play audio")).to_be_hidden()
    finally:
        await strict.close()
