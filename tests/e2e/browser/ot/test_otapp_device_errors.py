"""Camera and microphone errors as OpenTok.js reports them, in an app written as its
documentation handles them: the ``initPublisher`` completion handler's ``error.name`` and the
Publisher's ``accessDenied`` event.

A refusal is real: Chromium without ``--use-fake-ui-for-media-stream`` dismisses the headless
permission prompt, i.e. the user said no. A camera held by another application cannot be had
from the fake devices, so that page's ``getUserMedia`` rejects with the ``NotReadableError``
Chromium gives then (an init script, before the page's own scripts).
"""

from __future__ import annotations

import pytest
from browser_helpers import launch
from otapp_helpers import AppServer, app_log, open_app, wait_log
from playwright.async_api import Browser, Playwright, expect

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(180)


async def test_refused_camera_gives_access_denied(
    media_server: RunningServer, app_server: AppServer, pw: Playwright, allowed_page_errors: list[str]
) -> None:
    allowed_page_errors.append(r"OT_USER_MEDIA_ACCESS_DENIED|Permission denied|NotAllowedError")
    session_id = media_server.session()
    url = app_server.page(
        "device-errors",
        api_key=media_server.api_key,
        session_id=session_id,
        token=media_server.token(session_id),
    )
    browser = await launch(pw, fake_ui=False)  # no fake UI: the permission prompt is dismissed
    try:
        page = await open_app(browser, url, "refused")
        error = await wait_log(page, r"initPublisher error .*")
        assert error == "initPublisher error OT_USER_MEDIA_ACCESS_DENIED 1500", error
        await wait_log(page, "accessDenied")
        await expect(page.get_by_role("alert")).to_have_text(
            "Please allow access to the camera and microphone, then reload the page."
        )
        # The session still connects: a refused camera is no reason to fail the page.
        await wait_log(page, "connected")
        log = await app_log(page)
        assert "accessAllowed" not in log and "initPublisher ok" not in log, log
    finally:
        await browser.close()


async def test_a_busy_camera_gives_hardware_unavailable(
    media_server: RunningServer, app_server: AppServer, browser: Browser, allowed_page_errors: list[str]
) -> None:
    allowed_page_errors.append(r"OT_HARDWARE_UNAVAILABLE|NotReadableError|Could not start video source")
    session_id = media_server.session()
    url = app_server.page(
        "device-errors",
        api_key=media_server.api_key,
        session_id=session_id,
        token=media_server.token(session_id),
    )
    page = await open_app(browser, "about:blank", "busy")
    await page.context.add_init_script(
        """navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException("Could not start video source", "NotReadableError"));"""
    )
    await page.goto(url)
    error = await wait_log(page, r"initPublisher error .*")
    assert error.startswith("initPublisher error OT_HARDWARE_UNAVAILABLE "), error
    await expect(page.get_by_role("alert")).to_have_text(
        "The camera or microphone is in use by another application."
    )
    await wait_log(page, "connected")
    assert "accessAllowed" not in await app_log(page)
