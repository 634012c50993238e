"""OpenTok.js's subscriber quality controls in Chromium through salon's OT: the
``preferredResolution`` / ``preferredFrameRate`` subscribe properties and
``setPreferredResolution`` / ``setPreferredFrameRate`` reach the subscriber's video consumer
in the media worker, a bad value is refused with OT_INVALID_PARAMETER and changes nothing,
and a consumer paused for quality in the worker (as the allocator does when the link cannot
carry the lowest layer) reaches the page as ``videoDisabled`` then ``videoEnabled`` with
reason ``quality``, the widget showing the audio-only poster meanwhile and the video
decoding again after."""

from __future__ import annotations

import asyncio
import time

import pytest
from ot_helpers import open_ot_page, wait_for
from playwright.async_api import Browser, Page

from tests.conftest import RunningServer
from tests.e2e.media.sfu_state import eventually_preferences, pause_for_quality

pytestmark = pytest.mark.timeout(240)

SETUP = """async ([apiKey, sessionId, tokenA, tokenB]) => {
    const connect = (token) => new Promise((resolve, reject) => {
        const s = OT.initSession(apiKey, sessionId);
        s.connect(token, (err) => (err ? reject(err) : resolve(s)));
    });
    const a = await connect(tokenA);
    const b = await connect(tokenB);
    window.log = [];
    const subscribed = new Promise((resolve, reject) => {
        b.on("streamCreated", (e) => {
            const sub = b.subscribe(e.stream, "subs", {
                preferredResolution: {width: 320, height: 240}, preferredFrameRate: 15,
            }, (err) => (err ? reject(err) : resolve(sub)));
            sub.on("videoDisabled", (ev) => window.log.push(`videoDisabled ${ev.reason}`));
            sub.on("videoEnabled", (ev) => window.log.push(`videoEnabled ${ev.reason}`));
        });
    });
    a.publish("pub", {resolution: "320x240", frameRate: 15, audioFallbackEnabled: false});
    window.sub = await subscribed;
    window.framesDecoded = async () => {
        let frames = 0;
        (await window.sub.getRtcStatsReport()).forEach((r) => {
            if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
        });
        return frames;
    };
    return window.sub._salon.subscriptionId;
}"""


async def frames_decoded_beyond(page: Page, count: int, what: str, timeout: float = 30) -> None:
    """Wait until the subscriber has decoded more than ``count`` video frames."""
    deadline = time.monotonic() + timeout
    while (now := await page.evaluate("window.framesDecoded()")) <= count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {now} video frames decoded after {timeout:g} s")
        await asyncio.sleep(0.2)


async def frames_settle(page: Page, what: str, quiet: float = 1.5, timeout: float = 10) -> int:
    """Wait until no video frame has been decoded for ``quiet`` seconds (the video stopped);
    fail if it keeps coming for ``timeout``."""
    deadline = time.monotonic() + timeout
    last, since = await page.evaluate("window.framesDecoded()"), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: video still decoded after {timeout:g} s (now {last} frames)")
        await asyncio.sleep(0.1)
        now = await page.evaluate("window.framesDecoded()")
        if now != last:
            last, since = now, time.monotonic()
    count: int = last
    return count


async def test_ot_subscriber_preferences_and_quality_events(server: RunningServer, browser: Browser) -> None:
    session_id = server.session()
    page = await open_ot_page(
        browser, server.url, "quality", body='<div id="pub"></div><div id="subs"></div>'
    )
    subscription_id = await page.evaluate(
        SETUP, [server.api_key, session_id, server.token(session_id), server.token(session_id)]
    )
    assert isinstance(subscription_id, str) and subscription_id
    await eventually_preferences(
        server, {"max_width": 320, "max_height": 240, "max_frame_rate": 15.0}, "subscribe properties"
    )
    await frames_decoded_beyond(page, 10, "video")

    result = await page.evaluate(
        """async () => {
            const refusals = [];
            for (const call of [
                () => window.sub.setPreferredFrameRate(-1),
                () => window.sub.setPreferredFrameRate("fast"),
                () => window.sub.setPreferredResolution({width: 0, height: 240}),
                () => window.sub.setPreferredResolution("hd"),
            ]) {
                try { await call(); refusals.push("accepted"); }
                catch (err) { refusals.push(`${err.name} ${err.code}`); }
            }
            const returned = window.sub.setPreferredResolution({width: 640, height: 360});
            const isPromise = returned instanceof Promise;
            await returned;
            await window.sub.setPreferredFrameRate(null);
            return {refusals, isPromise};
        }"""
    )
    assert result == {"refusals": ["OT_INVALID_PARAMETER 1011"] * 4, "isPromise": True}
    await eventually_preferences(
        server, {"max_width": 640, "max_height": 360, "max_frame_rate": None}, "setPreferred*"
    )

    await pause_for_quality(server, session_id, subscription_id, True)
    await wait_for(page, "window.log.includes('videoDisabled quality')", what="videoDisabled (quality)")
    assert await page.evaluate("window.sub.element.classList.contains('OT_audio-only')")
    await frames_settle(page, "after videoDisabled")
    await pause_for_quality(server, session_id, subscription_id, False)
    await wait_for(page, "window.log.includes('videoEnabled quality')", what="videoEnabled (quality)")
    assert await page.evaluate("window.log") == ["videoDisabled quality", "videoEnabled quality"]
    assert not await page.evaluate("window.sub.element.classList.contains('OT_audio-only')")
    before = await page.evaluate("window.framesDecoded()")
    await frames_decoded_beyond(page, before + 10, "video after videoEnabled")
