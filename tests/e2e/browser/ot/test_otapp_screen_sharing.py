"""Screen sharing as the OpenTok.js guide writes it, on salon in Chromium.

``--use-fake-ui-for-media-stream`` with ``--use-fake-device-for-media-stream`` (the browser
fixture's flags) make headless Chromium's ``getDisplayMedia`` pick a fake screen without a
picker; the app asks for it from a button's click, as a user would.
"""

from __future__ import annotations

import pytest
from otapp_helpers import AppServer, open_app, video_plays, wait_log
from playwright.async_api import Browser, expect

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)


async def test_a_shared_screen_reaches_the_other_page(
    media_server: RunningServer, app_server: AppServer, browser: Browser
) -> None:
    session_id = media_server.session()
    sharer, viewer = [
        await open_app(
            browser,
            app_server.page(
                "screen-sharing",
                api_key=media_server.api_key,
                session_id=session_id,
                token=media_server.token(session_id),
            ),
            label,
        )
        for label in ("sharer", "viewer")
    ]
    await wait_log(sharer, "connected")
    await wait_log(viewer, "connected")

    await sharer.get_by_role("button", name="Share your screen").click()
    await wait_log(sharer, "sharing screen")
    # The sharer's preview: the widget in #screen-preview, 100% of its 320x180, not mirrored.
    preview = sharer.locator("#screen-preview .OT_publisher")
    await expect(preview).to_have_count(1)
    classes = (await preview.get_attribute("class") or "").split()
    assert "OT_mirrored" not in classes, "a screen is never mirrored"
    assert "OT_fit-mode-contain" in classes, "OpenTok.js fits a screen in whole (fitMode contain)"
    stats = await video_plays(sharer, "#screen-preview .OT_publisher video")
    assert (stats["boxWidth"], stats["boxHeight"]) == (320, 180), stats

    # The viewer sees a screen stream (videoType "screen"; with the microphone's audio, as
    # OpenTok.js publishes a screen unless audioSource is null) and subscribes to it at half its
    # videoDimensions.
    await wait_log(viewer, "streamCreated screen true true")
    subscribed = await wait_log(viewer, r"subscribed to screen \d+x\d+")
    width, height = (int(v) for v in subscribed.rsplit(" ", 1)[1].split("x"))
    assert width >= 320 and height >= 180, subscribed
    stats = await video_plays(viewer, "#screen-subscriber .OT_subscriber video")
    assert (stats["boxWidth"], stats["boxHeight"]) == (width / 2, height / 2), stats
    assert stats["width"] > 0 and stats["height"] > 0 and not stats["paused"], stats
    # Real frames keep coming: the fake screen moves.
    more = await video_plays(viewer, "#screen-subscriber .OT_subscriber video", frames=stats["frames"] + 10)
    assert more["frames"] > stats["frames"], more

    # The sharer stops: the viewer's screen subscriber goes away.
    await sharer.get_by_role("button", name="Stop sharing").click()
    # OpenTok.js's reasons: "clientDisconnected" for the others, "unpublished" for the publisher.
    await wait_log(viewer, "streamDestroyed screen clientDisconnected")
    await expect(viewer.locator("#screen-subscriber .OT_subscriber")).to_have_count(0, timeout=30000)
    await wait_log(sharer, "screen publisher streamDestroyed unpublished")
    await expect(sharer.locator("#screen-preview .OT_publisher")).to_have_count(0, timeout=30000)
