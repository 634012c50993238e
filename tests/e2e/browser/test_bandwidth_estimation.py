"""Bandwidth estimation toward real subscribers: Chromium negotiates transport-wide congestion
control, the SFU stamps every packet it sends it, Chromium's transport-cc feedback reaches the
estimator (worker dump) and its video keeps playing; an aiortc subscriber (REMB only) is
estimated from its REMB; toward the publishers, Chromium gets transport-cc feedback and the
Python publisher a REMB reflecting its own uplink."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from browser_helpers import join, open_page, remote_video_stats
from playwright.async_api import Browser, expect

from salon.client import Publisher, Session, StreamReceived, Subscriber, VideoFrame
from tests.conftest import RunningServer
from tests.e2e.lossy import router_dumps

pytestmark = pytest.mark.timeout(180)


def _transports(routers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for r in routers for t in r["transports"] if t.get("bandwidth")]


async def test_chromium_transport_cc_feedback_and_aiortc_remb_feed_the_estimators(
    media_server: RunningServer, browser: Browser
) -> None:
    page = await open_page(browser, "browser")
    await join(page, media_server.url, "bwe", "Erin")
    await expect(page.locator(".tile.local video")).to_be_visible(timeout=15000)
    async with httpx.AsyncClient() as http:
        reply = await http.post(f"{media_server.url}/demo/join", json={"room": "bwe", "name": "Bot"})
    grant = reply.json()
    frames: list[VideoFrame] = []

    async with Session(grant["sessionId"], grant["token"], media_server.url) as session:

        async def on_stream(event: StreamReceived) -> None:
            await session.subscribe(Subscriber(event.stream, on_video_frame=frames.append))

        session.on(StreamReceived, on_stream)
        await session.publish(Publisher("Python bot"))
        stats = await remote_video_stats(page, "Python bot")
        assert stats["found"] and stats["framesAdvanced"] > 0, stats

        # Both subscriber transports get estimated: Chromium's from transport-cc feedback,
        # aiortc's (no transport-cc in its offer) from REMB.
        deadline = time.monotonic() + 60
        chromium: dict[str, Any] | None = None
        aiortc: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            bandwidths = [t["bandwidth"] for t in _transports(await router_dumps(media_server))]
            chromium = next(
                (b for b in bandwidths if b["transport_cc"] and b["feedback_results"] > 300), None
            )
            aiortc = next((b for b in bandwidths if not b["transport_cc"] and b["remb_packets"] > 0), None)
            if chromium is not None and aiortc is not None:
                break
            await asyncio.sleep(0.5)
        assert chromium is not None, f"no transport-cc feedback from Chromium: {bandwidths}"
        assert aiortc is not None, f"no REMB from the Python subscriber: {bandwidths}"
        # Chromium acknowledged what was numbered (a loopback link loses nothing much), and the
        # estimate is a sane rate on an unshaped loopback link.
        assert chromium["packets_numbered"] >= chromium["feedback_results"] > 300, chromium
        assert chromium["loss_fraction"] < 0.1, chromium
        assert 100_000 <= chromium["estimate"] <= 10_000_000, chromium
        assert aiortc["estimate"] == aiortc["remb"] > 0, aiortc  # REMB-only: the REMB is the estimate

        # Chromium still decodes after all that stamping: its video keeps advancing.
        again = await remote_video_stats(page, "Python bot")
        assert again["framesAdvanced"] > 0, again

        # Toward the publishers: Chromium negotiated transport-cc, so its transport sends it
        # feedback and no REMB (no uplink estimate); the Python publisher (no transport-cc) gets
        # a REMB of its own (unconstrained loopback) uplink: the cap.
        routers = await router_dumps(media_server)
        videos = [
            p for r in routers for s in r["streams"].values() for p in s.values() if p["kind"] == "video"
        ]
        assert len(videos) == 2, videos
        (remb,) = [p for p in videos if p["uplink_estimate"] is not None]
        assert remb["uplink_estimate"] >= 1_000_000, videos
        publishers = [t for r in routers for t in r["transports"] if t["producers"]]
        assert sorted(t["feedback_sent"] is not None for t in publishers) == [False, True], publishers
        assert max(t["feedback_sent"] or 0 for t in publishers) > 20, publishers
