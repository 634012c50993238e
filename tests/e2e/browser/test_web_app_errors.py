"""The web app's clear messages: a refused camera, an expired token, the demo switched off."""

from __future__ import annotations

import json
import pathlib
import time

import pytest
from browser_helpers import join, launch, open_page
from playwright.async_api import Browser, Playwright, Route, expect

from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.tokens import generate_token
from tests.conftest import API_KEY, API_SECRET, RunningServer

pytestmark = pytest.mark.timeout(120)


async def test_refused_camera_shows_a_clear_message(media_server: RunningServer, pw: Playwright) -> None:
    browser = await launch(pw, fake_ui=False)  # no fake UI: the permission prompt is dismissed
    try:
        page = await open_page(browser, "refused")
        await join(page, media_server.url, "refused", "Carol")
        status = page.get_by_role("status")
        await expect(status).to_contain_text("Camera and microphone access was refused", timeout=15000)
        # The page is not stuck: still in the room, the chat works.
        await page.get_by_label("Message").fill("I can only chat")
        await page.get_by_role("button", name="Send").click()
        await expect(page.locator("#messages")).to_contain_text("I can only chat")
    finally:
        await browser.close()


async def test_expired_token_shows_a_clear_message(media_server: RunningServer, pw: Playwright) -> None:
    browser = await launch(pw)
    try:
        page = await open_page(browser, "expired")
        session_id = media_server.session()
        now = int(time.time()) - 7200
        token = generate_token(API_KEY, API_SECRET, session_id, expire_time=now + 60, now=now)

        async def expired(route: Route) -> None:
            body = {"sessionId": session_id, "token": token, "apiKey": API_KEY}
            await route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

        await page.route("**/demo/join", expired)
        await join(page, media_server.url, "late", "Dave")
        await expect(page.get_by_role("status")).to_contain_text("token has expired", timeout=15000)
        await expect(page.get_by_role("button", name="Join")).to_be_enabled()
        await expect(page.locator("#call")).to_be_hidden()
    finally:
        await browser.close()


async def test_no_demo_says_the_demo_endpoint_is_off(
    tmp_path: pathlib.Path, browser: Browser, allowed_page_errors: list[str]
) -> None:
    # /demo/join, switched off
    allowed_page_errors.append(r"Failed to load resource: the server responded with a status of 404")
    config = ServerConfig(
        port=0, data_dir=tmp_path, api_key=API_KEY, api_secret=API_SECRET, media=False, demo=False
    )
    with ServerThread(config) as thread:
        page = await open_page(browser, "no-demo")
        await join(page, thread.url, "closed", "Erin")
        status = page.get_by_role("status")
        await expect(status).to_contain_text("demo endpoint is switched off", timeout=15000)
        await expect(status).to_contain_text("--no-demo")
        await expect(status).to_contain_text("mint session tokens in their own server")
        assert "Not Found" not in (await status.text_content() or "")
        await expect(page.get_by_role("button", name="Join")).to_be_enabled()
