"""Screen sharing and the active speaker in the web app, in real Chromium.

``--use-fake-ui-for-media-stream`` with ``--use-fake-device-for-media-stream`` makes headless
Chromium's ``getDisplayMedia`` pick a fake "screen" (a moving 1280x720 pattern) without a
picker, so the app's "Share screen" button works as a user's would.
"""

from __future__ import annotations

import pathlib

import pytest
from browser_helpers import join, launch, open_page, video_stats, write_voice
from playwright.async_api import Browser, Page, Playwright, expect

from tests.conftest import RunningServer
from tests.e2e.lossy import router_dumps

pytestmark = pytest.mark.timeout(180)


async def _room_of_two(server: RunningServer, browser: Browser, room: str) -> tuple[Page, Page]:
    alice = await open_page(browser, "alice")
    bob = await open_page(browser, "bob")
    await join(alice, server.url, room, "Alice")
    await expect(alice.locator(".tile.local video")).to_be_visible(timeout=15000)
    await join(bob, server.url, room, "Bob")
    await expect(bob.locator('.tile[data-name="Alice"]:not(.local) video')).to_have_count(1, timeout=20000)
    await expect(alice.locator('.tile[data-name="Bob"]:not(.local) video')).to_have_count(1, timeout=20000)
    return alice, bob


async def test_screen_sharing_reaches_the_other_page(
    media_server: RunningServer, browser: Browser, artifacts: pathlib.Path
) -> None:
    alice, bob = await _room_of_two(media_server, browser, "screens")
    await alice.get_by_role("button", name="Share screen").click()
    await expect(alice.get_by_role("button", name="Stop sharing")).to_be_visible(timeout=15000)
    await expect(alice.locator(".tile.local.screen video")).to_be_visible()

    screen_tile = bob.locator('.tile.screen[data-name="Alice"]')
    await expect(screen_tile).to_have_count(1, timeout=20000)
    await expect(screen_tile).to_have_attribute("aria-label", "Alice's screen")
    stream_id = await screen_tile.get_attribute("data-stream-id")
    stream = await bob.evaluate(
        """(id) => {
            const s = window.salonApp.session.streams.get(id);
            return {videoType: s.videoType, hasVideo: s.hasVideo, hasAudio: s.hasAudio, name: s.name};
        }""",
        stream_id,
    )
    assert stream == {"videoType": "screen", "hasVideo": True, "hasAudio": False, "name": "Alice (screen)"}
    stats = await video_stats(bob, f'.tile.screen[data-stream-id="{stream_id}"] video')
    assert stats["found"] and stats["width"] > 0 and stats["height"] > 0, stats
    assert stats["framesAdvanced"] > 0 and stats["timeAdvanced"] > 0 and not stats["paused"], stats
    # Alice's camera still plays next to her screen.
    camera = await video_stats(bob, '.tile[data-name="Alice"]:not(.local):not(.screen) video')
    assert camera["framesAdvanced"] > 0, camera
    # The SFU knows which video is the screen share: its producer is marked, so subscribers'
    # allocators serve it before the cameras.
    videos = {
        sid: producers["video"]
        for r in await router_dumps(media_server)
        for sid, producers in r["streams"].items()
        if "video" in producers
    }
    assert videos[stream_id]["screen"] is True, videos
    assert [v["screen"] for sid, v in videos.items() if sid != stream_id] == [False, False], videos
    await bob.screenshot(path=str(artifacts / "screen-sharing-bob.png"))

    await alice.get_by_role("button", name="Stop sharing").click()
    await expect(screen_tile).to_have_count(0, timeout=20000)
    await expect(alice.get_by_role("button", name="Share screen")).to_be_visible()
    await expect(alice.locator(".tile.local.screen")).to_have_count(0)


async def test_audio_levels_and_the_active_speaker_are_shown(
    media_server: RunningServer, pw: Playwright, tmp_path: pathlib.Path
) -> None:
    # Chromium's fake microphone beeps 4 times a second, one 0.25 s level window on, one off:
    # the server's detector wants a voice above its threshold for 0.5 s on end, so it never
    # names a beeping speaker. A voiced sound from a file (looped) does qualify; a steady tone
    # would not for long: the publisher's noise suppressor fades it as background noise.
    voice = write_voice(tmp_path / "voice.wav")
    browser = await launch(pw, extra_args=(f"--use-file-for-fake-audio-capture={voice}",))
    try:
        await _audio_levels_and_the_active_speaker(media_server, browser)
    finally:
        await browser.close()


async def _audio_levels_and_the_active_speaker(media_server: RunningServer, browser: Browser) -> None:
    alice, bob = await _room_of_two(media_server, browser, "speakers")
    listen = """() => {
        window.levels = {};
        window.speakers = [];
        const s = window.salonApp.session;
        s.on("audioLevelUpdated", (e) => {
            window.levels[e.streamId] = Math.max(window.levels[e.streamId] || 0, e.audioLevel);
        });
        s.on("activeSpeaker", (e) => window.speakers.push(e.streamId));
    }"""
    await alice.evaluate(listen)
    await bob.evaluate(listen)
    # Only Alice's fake microphone beeps: Bob is muted.
    await bob.get_by_role("button", name="Mute").click()
    await expect(alice.locator('.tile[data-name="Bob"]:not(.local) .audio-off')).to_be_visible(timeout=15000)

    alice_stream = await alice.evaluate("window.salonApp.publisher.stream.streamId")
    bob_stream = await bob.evaluate("window.salonApp.publisher.stream.streamId")
    # Bob's page gets audio levels for Alice's stream (the beep), and names her the speaker.
    await bob.wait_for_function("(id) => (window.levels[id] || 0) > 0.05", arg=alice_stream, timeout=20000)
    await expect(bob.locator(f'.tile[data-stream-id="{alice_stream}"]')).to_have_class(
        "tile speaking", timeout=20000
    )
    # Alice's page highlights her own tile; Bob's tile is not highlighted anywhere.
    await expect(alice.locator(".tile.local:not(.screen)")).to_have_class(
        "tile local speaking", timeout=20000
    )
    assert await bob.locator(".tile.local.speaking").count() == 0
    assert await alice.locator('.tile[data-name="Bob"].speaking').count() == 0
    speakers = await bob.evaluate("window.speakers")
    assert alice_stream in speakers and bob_stream not in speakers, speakers
    levels = await alice.evaluate("window.levels")
    assert levels.get(alice_stream, 0) > 0.05, levels
    # The subscriber emits its own audioLevelUpdated too, with Alice's tone in it (not 0).
    level = await bob.evaluate(
        """(id) => new Promise((resolve) => {
            const sub = window.salonApp.subscribers.get(id);
            let peak = -1;
            sub.on("audioLevelUpdated", (e) => {
                peak = Math.max(peak, e.audioLevel);
                if (e.audioLevel > 0.05) resolve(e.audioLevel);
            });
            setTimeout(() => resolve(peak), 15000);
        })""",
        alice_stream,
    )
    assert 0.05 < level <= 1, f"the subscriber's audioLevelUpdated peaked at {level} in 15 s (-1: no event)"
