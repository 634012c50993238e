"""A browser on OpenTok.js (the basic video chat app) and a Python SDK client in one session,
media both ways, checked by content.

The Python client publishes a known colour (a :class:`~salon.client.CustomVideoSource`) and a
tone; the page's subscriber shows that colour (``subscriber.getImgData()``) and hears the tone
(its ``audioLevelUpdated``), and shows the poster and the audio-level meter of OpenTok.js's
default UI while the Python client's video is off. The Python client decodes the page's fake
camera at the size the publisher sends (OpenTok.js's default 640x480) and sees it move.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from otapp_helpers import AppServer, open_app, video_plays, wait_log, wait_true
from playwright.async_api import Browser

from salon.client import Publisher, Session, StreamReceived, Subscriber, VideoFrame
from salon.client.sources import CustomVideoSource
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)

#: The Python client's picture: one colour, far from grey and from the fake camera's.
COLOUR = (230, 120, 30)

#: The mean colour of a subscriber's getImgData() (a base64 PNG, as OpenTok.js returns it).
MEAN_COLOUR = """async () => {
    const data = subscribers.length ? subscribers[0].getImgData() : null;
    if (!data) return null;
    const image = new Image();
    image.src = 'data:image/png;base64,' + data;
    await image.decode();
    const canvas = document.createElement('canvas');
    canvas.width = image.width;
    canvas.height = image.height;
    const g = canvas.getContext('2d');
    g.drawImage(image, 0, 0);
    const d = g.getImageData(0, 0, canvas.width, canvas.height).data;
    const sum = [0, 0, 0];
    for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
    const n = d.length / 4;
    return {size: [image.width, image.height], mean: sum.map((v) => v / n)};
}"""


async def test_browser_on_ot_and_python_client_exchange_media(
    media_server: RunningServer, app_server: AppServer, browser: Browser
) -> None:
    session_id = media_server.session()
    page = await open_app(
        browser,
        app_server.page(
            "video-chat",
            api_key=media_server.api_key,
            session_id=session_id,
            token=media_server.token(session_id),
        ),
        "browser",
    )
    await wait_log(page, r"publishing \S+")

    frames: list[VideoFrame] = []
    full_size = asyncio.Event()

    def on_frame(frame: VideoFrame) -> None:
        frames.append(frame)
        if sum(1 for f in frames if (f.width, f.height) == (640, 480)) >= 15:
            full_size.set()

    source = CustomVideoSource(width=320, height=240, frame_rate=15)
    picture = np.empty((240, 320, 3), np.uint8)
    picture[:] = COLOUR

    async def paint() -> None:
        while True:
            source.push(picture.copy())
            await asyncio.sleep(1 / 15)

    painter = asyncio.create_task(paint())
    try:
        async with Session(session_id, media_server.token(session_id), media_server.url) as session:
            subscribed = asyncio.Event()

            async def on_stream(event: StreamReceived) -> None:
                await session.subscribe(Subscriber(event.stream, on_video_frame=on_frame))
                subscribed.set()

            session.on(StreamReceived, on_stream)
            publisher = Publisher("Python", video_source=source)
            await session.publish(publisher)
            await asyncio.wait_for(subscribed.wait(), 30)

            # The browser: the app subscribed to "Python" and its subscriber shows the colour.
            await wait_log(page, "subscribed Python")
            stats = await video_plays(page, "#subscriber .OT_subscriber video")
            assert (stats["width"], stats["height"]) == (320, 240), stats
            colour = await wait_true(
                page,
                MEAN_COLOUR,
                what="the subscriber's picture",
            )
            assert colour["size"] == [320, 240], colour
            assert all(abs(m - c) < 25 for m, c in zip(colour["mean"], COLOUR, strict=True)), colour
            # ...and hears the Python client's tone.
            level = await page.evaluate(
                """() => new Promise((resolve) => {
                    let peak = -1;
                    subscribers[0].on('audioLevelUpdated', (e) => {
                        peak = Math.max(peak, e.audioLevel);
                        if (e.audioLevel > 0.05) resolve(e.audioLevel);
                    });
                    setTimeout(() => resolve(peak), 30000);
                })"""
            )
            assert 0.05 < level <= 1, f"the subscriber's audioLevelUpdated peaked at {level} (-1: no event)"

            # The subscriber's mute button sets its volume to 0 and back, as in OpenTok.js.
            mute = page.locator("#subscriber .OT_subscriber .OT_mute")
            await mute.click()
            volume = (
                "() => [subscribers[0].getAudioVolume(), document.querySelector('#subscriber video').volume]"
            )
            assert await page.evaluate(volume) == [0, 0]
            await mute.click()
            assert await page.evaluate(volume) == [50, 0.5]

            # The Python client turns its video off: the subscriber says videoDisabled and its
            # default UI shows the poster and the audio-level meter (the tone's level).
            await publisher.publish_video(False)
            await wait_log(page, "videoDisabled publishVideo")
            widget = "#subscriber .OT_subscriber"
            shown = """(selector) => {
                const el = document.querySelector(selector);
                return el !== null && getComputedStyle(el).display !== "none";
            }"""
            await wait_true(
                page,
                "(w) => document.querySelector(w).classList.contains('OT_audio-only')",
                widget,
                what="the subscriber widget in audio-only mode",
            )
            assert await page.evaluate(shown, f"{widget} .OT_video-poster")
            assert await page.evaluate(shown, f"{widget} .OT_audio-level-meter")
            await wait_true(
                page,
                "(w) => Number(document.querySelector(w + ' .OT_audio-level-meter')"
                ".style.getPropertyValue('--OT-audio-level')) > 0.05",
                widget,
                what="the meter showing the Python client's tone",
            )
            await publisher.publish_video(True)
            await wait_log(page, "videoEnabled publishVideo")
            await wait_true(
                page,
                "(w) => !document.querySelector(w).classList.contains('OT_audio-only')",
                widget,
                what="the subscriber widget showing video again",
            )
            assert not await page.evaluate(shown, f"{widget} .OT_video-poster")
            before = await video_plays(page, f"{widget} video")
            await video_plays(page, f"{widget} video", frames=before["frames"] + 10)

            # Python: the browser's fake camera, decoded at 640x480, moving.
            await asyncio.wait_for(full_size.wait(), 60)
            sized = [f for f in frames if (f.width, f.height) == (640, 480)]
            a = sized[0].to_i420().astype(np.int16)
            b = sized[-1].to_i420().astype(np.int16)
            assert float(np.abs(a - b).mean()) > 0.5, "the browser's fake camera pattern does not move"
            assert float(a.std()) > 5, "the browser's frame is flat"
    finally:
        painter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await painter
