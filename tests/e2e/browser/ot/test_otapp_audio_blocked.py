"""Sound the browser blocks, with OpenTok.js's default UI, in Chromium.

A page that only watches (the screen-sharing app, which captures nothing until its button is
clicked) and that the user has not interacted with: its subscriber's sound is refused, the
widget shows the "play audio" button, and clicking it (the user's gesture) plays the sound.
The camera comes from the basic video chat app in another page.

Chromium's own autoplay policy (``--autoplay-policy=document-user-activation-required``)
refused such a ``play()`` only in some runs here (Playwright's navigation already counts as a
user activation: ``navigator.userActivation.hasBeenActive`` is true), so the viewer's page
applies the policy's rule itself, before its scripts run: ``play()`` of an unmuted element is
refused with ``NotAllowedError`` until the user has pressed a pointer or a key in the page.
"""

from __future__ import annotations

import re

import pytest
from otapp_helpers import AppServer, open_app, video_plays, wait_log, wait_true
from playwright.async_api import Browser, expect

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)

AUTOPLAY_POLICY = """(() => {
    window.refusedPlays = 0;
    let activated = false;
    for (const type of ["pointerdown", "keydown"]) {
        window.addEventListener(type, (e) => { if (e.isTrusted) activated = true; }, true);
    }
    const play = HTMLMediaElement.prototype.play;
    HTMLMediaElement.prototype.play = function () {
        if (!this.muted && !activated) {
            window.refusedPlays += 1;
            return Promise.reject(new DOMException("play() needs a user gesture", "NotAllowedError"));
        }
        return play.call(this);
    };
})()"""


async def test_blocked_sound_is_played_from_the_widget(
    media_server: RunningServer, app_server: AppServer, browser: Browser
) -> None:
    session_id = media_server.session()

    def url(app: str) -> str:
        token = media_server.token(session_id)
        return app_server.page(app, api_key=media_server.api_key, session_id=session_id, token=token)

    camera = await open_app(browser, url("video-chat"), "camera")
    await wait_log(camera, r"publishing \S+")
    viewer = await open_app(browser, "about:blank", "viewer")
    await viewer.context.add_init_script(AUTOPLAY_POLICY)
    await viewer.goto(url("screen-sharing"))
    await wait_log(viewer, "streamCreated camera true true")

    blocked = re.compile(r"(^|\s)OT_audio-blocked(\s|$)")
    widget = viewer.locator("#camera-subscriber .OT_subscriber")
    await expect(widget).to_have_class(blocked, timeout=45000)
    assert await viewer.evaluate("window.refusedPlays") >= 1
    # The picture plays meanwhile (muted); the sound waits for the user.
    await video_plays(viewer, "#camera-subscriber .OT_subscriber video")
    assert await viewer.evaluate("document.querySelector('#camera-subscriber video').muted")
    await viewer.get_by_role("button", name="Play audio").click()
    await expect(widget).not_to_have_class(blocked, timeout=30000)
    await wait_true(
        viewer,
        "() => { const v = document.querySelector('#camera-subscriber video');"
        " return !v.muted && !v.paused; }",
        what="the subscriber playing with sound",
    )
    await expect(viewer.get_by_role("button", name="Play audio")).to_be_hidden()
