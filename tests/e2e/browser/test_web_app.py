"""The web app in real headless Chromium: two pages see and hear each other, chat, mute, leave."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from browser_helpers import (
    join,
    open_page,
    remote_audio_level,
    remote_video_stats,
    wait_remote_audio,
    wait_remote_video_brightness,
)
from playwright.async_api import Browser, expect

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(180)


async def test_two_pages_see_and_hear_each_other(
    media_server: RunningServer, browser: Browser, artifacts: pathlib.Path
) -> None:
    alice = await open_page(browser, "alice")
    bob = await open_page(browser, "bob")
    await join(alice, media_server.url, "standup", "Alice")
    await expect(alice.locator(".tile.local video")).to_be_visible(timeout=15000)
    await expect(alice.locator("#join-form")).to_be_hidden()
    await join(bob, media_server.url, "standup", "Bob")

    for page, other in ((alice, "Bob"), (bob, "Alice")):
        stats = await remote_video_stats(page, other)
        assert stats["found"], f"no video of {other}"
        assert stats["width"] > 0 and stats["height"] > 0, stats
        assert stats["boxWidth"] > 0 and stats["boxHeight"] > 0, stats
        assert stats["callbacks"] >= 10 and stats["framesAdvanced"] > 0 and stats["timeAdvanced"] > 0, stats
        assert not stats["paused"]
        level = await remote_audio_level(page, other)
        assert level > 0.01, f"{other}'s audio is silent on the other page ({level})"

    # Chat through signals.
    await alice.get_by_label("Message").fill("hello from Alice")
    await alice.get_by_role("button", name="Send").click()
    await expect(bob.locator("#messages")).to_contain_text("hello from Alice")
    await expect(alice.locator("#messages")).to_contain_text("hello from Alice")
    await alice.screenshot(path=str(artifacts / "two-participants-alice.png"))
    await bob.screenshot(path=str(artifacts / "two-participants-bob.png"))

    # Mute and stop video: the indicators change and the media itself stops (silence, black
    # frames); then both come back.
    bob_tile_on_alice = alice.locator('.tile[data-name="Bob"]:not(.local)')
    await expect(bob_tile_on_alice.locator(".audio-off")).to_be_hidden()
    await wait_remote_video_brightness(alice, "Bob", dark=False)
    await bob.get_by_role("button", name="Mute").click()
    await expect(bob.get_by_role("button", name="Unmute")).to_be_visible()
    await expect(bob_tile_on_alice.locator(".audio-off")).to_be_visible()
    level = await wait_remote_audio(alice, "Bob", audible=False)
    assert level < 0.003, f"Bob muted, yet his audio still peaks at {level} on Alice's page"
    await bob.get_by_role("button", name="Stop video").click()
    await expect(bob.get_by_role("button", name="Start video")).to_be_visible()
    await expect(bob_tile_on_alice.locator(".video-off")).to_be_visible()
    await wait_remote_video_brightness(alice, "Bob", dark=True)
    await bob.get_by_role("button", name="Unmute").click()
    await expect(bob_tile_on_alice.locator(".audio-off")).to_be_hidden()
    level = await wait_remote_audio(alice, "Bob", audible=True)
    assert level > 0.01, f"Bob unmuted, yet his audio stays silent on Alice's page ({level})"
    await bob.get_by_role("button", name="Start video").click()
    await expect(bob.get_by_role("button", name="Stop video")).to_be_visible()
    await expect(bob_tile_on_alice.locator(".video-off")).to_be_hidden()
    await wait_remote_video_brightness(alice, "Bob", dark=False)
    stats = await remote_video_stats(alice, "Bob")
    assert stats["framesAdvanced"] > 0 and not stats["paused"], stats

    # Leave.
    await bob.get_by_role("button", name="Leave").click()
    await expect(bob.get_by_role("status")).to_contain_text("You left the room")
    await expect(bob_tile_on_alice).to_have_count(0)
    await expect(alice.locator("#messages")).to_contain_text("Bob left")


async def test_three_pages_each_receive_both_others_on_one_peer_connection(
    media_server: RunningServer, browser: Browser
) -> None:
    """Each page subscribes to two streams on one receiving peer connection; the server holds
    one subscribe transport per page (three publish + three subscribe transports in all)."""
    plane = media_server.thread.server.config.app.state.media

    async def worker_transports() -> int:
        (dump,) = await asyncio.wrap_future(media_server.thread.run_coroutine(plane.pool.dump()))
        return dump.transports

    names = ("Ann", "Ben", "Cat")
    pages = {name: await open_page(browser, name.lower()) for name in names}
    for name, page in pages.items():
        await join(page, media_server.url, "trio", name)
    for name, page in pages.items():
        for other in names:
            if other == name:
                continue
            stats = await remote_video_stats(page, other)
            assert stats["found"] and stats["framesAdvanced"] > 0, (name, other, stats)
        receiving = await page.evaluate(
            """() => {
                const pc = window.salonApp.session._subscribePc;
                const subs = [...window.salonApp.session.subscribers];
                return {
                    transceivers: pc.getTransceivers().length,
                    shared: subs.every((s) => s.pc === pc),
                    subscribers: subs.length,
                    state: pc.connectionState,
                };
            }"""
        )
        assert receiving == {"transceivers": 4, "shared": True, "subscribers": 2, "state": "connected"}, (
            name,
            receiving,
        )
    assert await worker_transports() == 6

    # Cat leaves: her transports go, Ann and Ben keep seeing each other.
    await pages["Cat"].get_by_role("button", name="Leave").click()
    await expect(pages["Ann"].locator('.tile[data-name="Cat"]')).to_have_count(0)
    deadline = asyncio.get_running_loop().time() + 10
    while await worker_transports() != 4:
        assert asyncio.get_running_loop().time() < deadline, "Cat's transports did not close"
        await asyncio.sleep(0.1)
    stats = await remote_video_stats(pages["Ann"], "Ben")
    assert stats["found"] and stats["framesAdvanced"] > 0, stats
