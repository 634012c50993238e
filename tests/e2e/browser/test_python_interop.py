"""A browser page and a Python SDK client (salon.client) exchange media both ways."""

from __future__ import annotations

import asyncio
import pathlib

import httpx
import numpy as np
import pytest
from browser_helpers import join, open_page, open_sdk_page, remote_audio_level, remote_video_stats
from playwright.async_api import Browser, expect

from salon.client import Publisher, Session, StreamReceived, Subscriber, VideoFrame
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(180)


async def test_browser_and_python_client_exchange_media(
    media_server: RunningServer, browser: Browser, artifacts: pathlib.Path
) -> None:
    page = await open_page(browser, "browser")
    await join(page, media_server.url, "interop", "Erin")
    await expect(page.locator(".tile.local video")).to_be_visible(timeout=15000)
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{media_server.url}/demo/join", json={"room": "interop", "name": "Bot"})
    grant = reply.json()

    frames: list[VideoFrame] = []
    got_frames = asyncio.Event()

    def on_frame(frame: VideoFrame) -> None:
        frames.append(frame)
        if sum((f.width, f.height) == (frame.width, frame.height) for f in frames) >= 45:
            got_frames.set()  # 45 frames of one size (a simulcast layer switch changes it)

    async with Session(grant["sessionId"], grant["token"], media_server.url) as session:
        subscribed = asyncio.Event()

        async def on_stream(event: StreamReceived) -> None:
            await session.subscribe(Subscriber(event.stream, on_video_frame=on_frame))
            subscribed.set()

        session.on(StreamReceived, on_stream)
        await session.publish(Publisher("Python bot"))
        await asyncio.wait_for(subscribed.wait(), 15)
        await asyncio.wait_for(got_frames.wait(), 30)

        # The Python side decodes the browser's frames: sane size, a moving picture.
        # Simulcast: the subscriber may start on a lower layer and climb once Chromium sends the
        # full one; compare frames of the final size.
        last = frames[-1]
        first = next(f for f in frames if (f.width, f.height) == (last.width, last.height))
        assert 160 <= first.width <= 1920 and 120 <= first.height <= 1080, (first.width, first.height)
        assert first.width % 2 == 0 and first.height % 2 == 0
        a = first.to_i420().astype(np.int16)
        b = last.to_i420().astype(np.int16)
        assert a.shape == b.shape
        assert float(np.abs(a - b).mean()) > 0.5, "the browser's fake camera pattern does not move"
        assert float(a.std()) > 5, "the browser's frame is flat"

        # The browser plays the Python client's video and audio.
        stats = await remote_video_stats(page, "Python bot")
        assert stats["found"] and stats["width"] > 0 and stats["framesAdvanced"] > 0, stats
        assert stats["timeAdvanced"] > 0, stats
        assert await remote_audio_level(page, "Python bot") > 0.01
        await page.screenshot(path=str(artifacts / "browser-and-python.png"))
        offer = await page.evaluate("window.salonApp.publisher.pc.localDescription.sdp")
        (artifacts / "chromium-publish-offer.sdp").write_text(offer)


async def test_chromium_publishes_h264_that_the_sfu_forwards_and_python_decodes(
    media_server: RunningServer, browser: Browser
) -> None:
    """Real Chromium H.264 (packetization-mode 1, its own profile-level-id and RTCP feedback)
    through the SFU, decoded by a Python subscriber."""
    async with httpx.AsyncClient() as http:
        grants = [
            (await http.post(f"{media_server.url}/demo/join", json={"room": "h264", "name": name})).json()
            for name in ("Chromium", "Bot")
        ]
    page = await open_sdk_page(browser, media_server.url, "h264")
    codec = await page.evaluate(
        """async ({sessionId, token}) => {
            const session = window.salon.initSession(sessionId);
            await session.connect(token);
            const options = {name: "h264", audio: false, videoCodec: "H264"};
            const publisher = window.salon.initPublisher(document.body, options);
            await session.publish(publisher);
            window.h264 = publisher;
            const sdp = publisher.pc.localDescription.sdp;
            return sdp.split("\\r\\n").find((l) => l.startsWith("m=video"));
        }""",
        {"sessionId": grants[0]["sessionId"], "token": grants[0]["token"]},
    )
    frames: list[VideoFrame] = []
    got_frames = asyncio.Event()

    def on_frame(frame: VideoFrame) -> None:
        frames.append(frame)
        if sum((f.width, f.height) == (frame.width, frame.height) for f in frames) >= 30:
            got_frames.set()  # 30 frames of one size (a simulcast layer switch changes it)

    async with Session(grants[1]["sessionId"], grants[1]["token"], media_server.url) as session:

        async def on_stream(event: StreamReceived) -> None:
            await session.subscribe(Subscriber(event.stream, on_video_frame=on_frame, audio=False))

        session.on(StreamReceived, on_stream)
        await asyncio.wait_for(got_frames.wait(), 30)
    sent = await page.evaluate(
        """async () => {
            const stats = await window.h264.pc.getStats();
            let codecId = null, mime = null;
            stats.forEach((r) => {
                if (r.type === "outbound-rtp" && r.kind === "video") codecId = r.codecId;
            });
            stats.forEach((r) => { if (r.id === codecId) mime = r.mimeType + " " + (r.sdpFmtpLine || ""); });
            return mime;
        }"""
    )
    assert sent is not None and sent.startswith("video/H264") and "packetization-mode=1" in sent, (
        sent,
        codec,
    )
    # Chromium sends H.264 simulcast too: the subscriber may start on the lower layer and
    # climb; compare frames of the final size.
    last = frames[-1]
    first = next(f for f in frames if (f.width, f.height) == (last.width, last.height))
    assert 160 <= first.width <= 1920 and 120 <= first.height <= 1080, (first.width, first.height)
    a = first.to_i420().astype(np.int16)
    b = last.to_i420().astype(np.int16)
    assert float(np.abs(a - b).mean()) > 0.5, "the decoded H.264 picture does not move"
    assert float(a.std()) > 5, "the decoded H.264 frame is flat"
