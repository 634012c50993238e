"""The OpenTok.js "Text Chat" tutorial, unchanged but for its script tag, on salon in Chromium.

Two pages of the app: each message typed into one appears in both histories, marked ``mine``
on the sender's page and ``theirs`` on the other's by comparing ``event.from.connectionId``
with ``session.connection.connectionId``; the signal's completion handler empties the input.
"""

from __future__ import annotations

import pytest
from otapp_helpers import AppServer, open_app, video_plays, wait_log
from playwright.async_api import Browser, Page, expect

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)


async def say(page: Page, text: str) -> None:
    box = page.get_by_label("Message")
    await box.fill(text)
    await box.press("Enter")
    # The completion handler of session.signal() empties the box once the signal is sent.
    await expect(box).to_have_value("", timeout=30000)


async def test_text_chat_marks_mine_and_theirs(
    media_server: RunningServer, app_server: AppServer, browser: Browser
) -> None:
    session_id = media_server.session()
    pages = []
    for label in ("alice", "bob"):
        url = app_server.page(
            "text-chat",
            api_key=media_server.api_key,
            session_id=session_id,
            token=media_server.token(session_id),
        )
        pages.append(await open_app(browser, url, label))
    alice, bob = pages
    ids = [(await wait_log(p, r"connected .+")).split()[1] for p in pages]
    assert ids[0] != ids[1], ids
    # A generic listener as well: event.type is "signal:msg" and event.from the sender.
    for page in pages:
        await page.evaluate(
            """() => {
                window.signals = [];
                session.on('signal', (e) => window.signals.push([e.type, e.data, e.from.connectionId]));
            }"""
        )

    messages = [
        (alice, "Hello Bob"),
        (bob, "Hi Alice!"),
        (alice, 'Unicode and markup: héllo <b>"bold"</b> \U0001f44b'),
    ]
    for sender, text in messages:
        await say(sender, text)
        for page in pages:
            await expect(page.locator("#history p").last).to_have_text(text, timeout=30000)

    expected_alice = [("mine", messages[0][1]), ("theirs", messages[1][1]), ("mine", messages[2][1])]
    expected_bob = [("theirs" if c == "mine" else "mine", t) for c, t in expected_alice]
    for page, expected in ((alice, expected_alice), (bob, expected_bob)):
        history = await page.eval_on_selector_all(
            "#history p", "(ps) => ps.map((p) => [p.className, p.textContent])"
        )
        assert [tuple(h) for h in history] == expected, history
        await expect(page.locator("#history .mine").first).to_have_css("color", "rgb(0, 202, 255)")
        signals = await page.evaluate("window.signals")
        senders = [ids[0], ids[1], ids[0]]
        assert signals == [["signal:msg", t, s] for (_, t), s in zip(messages, senders, strict=True)], signals

    # The tutorial is a video chat too: each page plays the other's camera in its subscriber.
    for page in pages:
        stats = await video_plays(page, "#subscriber .OT_subscriber video")
        assert stats["width"] > 0 and not stats["paused"], stats
