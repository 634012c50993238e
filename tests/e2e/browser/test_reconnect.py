"""The web app reconnects by itself when its WebSocket drops, and media comes back."""

from __future__ import annotations

import pytest
from browser_helpers import join, open_page, remote_video_stats
from playwright.async_api import Browser, expect

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(180)


async def test_dropped_socket_reconnects_and_media_resumes(
    media_server: RunningServer, browser: Browser
) -> None:
    alice = await open_page(browser, "alice")
    bob = await open_page(browser, "bob")
    await join(alice, media_server.url, "flaky", "Alice")
    await expect(alice.locator(".tile.local video")).to_be_visible(timeout=15000)
    await join(bob, media_server.url, "flaky", "Bob")
    assert (await remote_video_stats(alice, "Bob"))["framesAdvanced"] > 0
    old_stream = await bob.evaluate("window.salonApp.publisher.stream.streamId")

    await bob.evaluate("window.salonApp.session._ws.close(4100, 'test: network drop')")
    await expect(bob.get_by_role("status")).to_contain_text("Reconnected", timeout=20000)
    new_stream = await bob.evaluate("window.salonApp.publisher.stream.streamId")
    assert new_stream != old_stream  # re-published
    # Alice saw Bob's old stream go and the new one come, and plays it.
    await expect(alice.locator(f'.tile[data-stream-id="{old_stream}"]')).to_have_count(0, timeout=20000)
    stats = await remote_video_stats(alice, "Bob")
    assert stats["found"] and stats["framesAdvanced"] > 0, stats
    # Bob re-subscribed to Alice.
    stats = await remote_video_stats(bob, "Alice")
    assert stats["found"] and stats["framesAdvanced"] > 0, stats
