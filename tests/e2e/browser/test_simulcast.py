"""Simulcast end to end: a real Chromium publishes its fake 1280x720 camera in three layers
(the SDK's default sendEncodings q/h/f), the SFU receives all three, and a Python SDK
subscriber forced from one layer to another through the media plane's layer hook
(``SfuMediaPlane.set_subscription_layer``, what the allocator and subscriber preferences call)
decodes every layer at its own size, with no decoder error across the switches."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from browser_helpers import open_sdk_page
from playwright.async_api import Browser

from salon.client import Session, StreamReceived, Subscriber
from tests.conftest import RunningServer
from tests.e2e.media.frames import FrameLog, decode_errors
from tests.e2e.media.sfu_state import plane_of

pytestmark = pytest.mark.timeout(240)


async def video_encodings(server: RunningServer) -> list[dict[str, Any]]:
    """The encodings of the only published video producer, from the worker's own dump."""
    plane = plane_of(server)

    async def dump() -> list[dict[str, Any]]:
        (worker,) = plane.pool.workers.values()
        result = await worker.dump(routers=True)
        encodings: list[dict[str, Any]] = []
        for router in result.router_dumps.values():
            for producers in router["streams"].values():
                video = producers.get("video")
                if video is not None:
                    encodings.extend(video["encodings"])
        return encodings

    return await asyncio.wrap_future(server.thread.run_coroutine(dump()))


async def video_consumers(server: RunningServer) -> list[dict[str, Any]]:
    plane = plane_of(server)

    async def dump() -> list[dict[str, Any]]:
        (worker,) = plane.pool.workers.values()
        result = await worker.dump(routers=True)
        return [
            c for r in result.router_dumps.values() for c in r["consumers"].values() if c["kind"] == "video"
        ]

    return await asyncio.wrap_future(server.thread.run_coroutine(dump()))


async def set_layer(
    server: RunningServer, session_id: str, subscription_id: str, spatial: int, temporal: int | None = None
) -> None:
    coroutine = plane_of(server).set_subscription_layer(
        session_id, subscription_id, spatial=spatial, temporal=temporal
    )
    assert await asyncio.wrap_future(server.thread.run_coroutine(coroutine))


async def test_chromium_simulcast_reaches_the_sfu_and_a_subscriber_switches_layers(
    media_server: RunningServer, browser: Browser
) -> None:
    async with httpx.AsyncClient() as http:
        grants = [
            (
                await http.post(f"{media_server.url}/demo/join", json={"room": "simulcast", "name": name})
            ).json()
            for name in ("Chromium", "Bot")
        ]
    session_id = grants[1]["sessionId"]
    page = await open_sdk_page(browser, media_server.url, "simulcast")
    sdp = await page.evaluate(
        """async ({sessionId, token}) => {
            const session = window.salon.initSession(sessionId);
            await session.connect(token);
            const options = {name: "simulcast", audio: false, resolution: "1280x720", frameRate: 30};
            const publisher = window.salon.initPublisher(document.body, options);
            await session.publish(publisher);
            window.simulcastPublisher = publisher;
            return {offer: publisher.pc.localDescription.sdp, answer: publisher.pc.remoteDescription.sdp};
        }""",
        {"sessionId": grants[0]["sessionId"], "token": grants[0]["token"]},
    )
    assert "a=simulcast:send q;h;f" in sdp["offer"], sdp["offer"]
    assert "a=simulcast:recv q;h;f" in sdp["answer"], sdp["answer"]

    # The SFU receives all three layers (Chromium ramps its estimate up before it sends f).
    deadline = time.monotonic() + 90
    counts: list[int] = []
    while True:
        encodings = await video_encodings(media_server)
        counts = [e["packets_received"] for e in encodings]
        if len(counts) == 3 and all(c > 50 for c in counts):
            break
        assert time.monotonic() < deadline, f"the SFU did not receive three layers: {encodings}"
        await asyncio.sleep(0.5)
    assert [e["rid"] for e in encodings] == ["q", "h", "f"]
    assert len({e["ssrc"] for e in encodings}) == 3

    frames = FrameLog()
    sizes = frames.sizes
    with decode_errors() as errors:
        async with Session(session_id, grants[1]["token"], media_server.url) as session:
            subscriber: Subscriber | None = None
            subscribed = asyncio.Event()

            async def on_stream(event: StreamReceived) -> None:
                nonlocal subscriber
                subscriber = Subscriber(event.stream, on_video_frame=frames.on_frame, audio=False)
                await session.subscribe(subscriber)
                subscribed.set()

            session.on(StreamReceived, on_stream)
            await asyncio.wait_for(subscribed.wait(), 20)
            assert subscriber is not None and subscriber.subscription_id is not None
            subscription_id = subscriber.subscription_id

            # Unconstrained, the subscriber gets the top layer.
            first = await frames.wait_frame("top layer", lambda s: s[0] >= 960)
            await frames.wait_frame("more top-layer frames", lambda s: True, 10, first + 10)
            top = sizes[-1]

            phases: list[tuple[int, tuple[int, int]]] = []
            for spatial, factor in ((0, 4), (2, 1), (1, 2), (2, 1)):
                switched_at = len(sizes)
                await set_layer(media_server, session_id, subscription_id, spatial)
                expected_width = top[0] // factor
                first = await frames.wait_frame(
                    f"layer {spatial}",
                    lambda s, w=expected_width: abs(s[0] - w) <= w // 8 + 2,
                    30,
                    switched_at,
                )
                size = sizes[first]
                # Until then the previous layer, then 20 frames all of the new size: no frame of
                # another layer slips in.
                assert all(s == sizes[switched_at] for s in sizes[switched_at:first]), sizes[
                    switched_at:first
                ]
                await frames.wait_frame(f"layer {spatial} frames", lambda s: True, 20, first + 20)
                assert all(s == size for s in sizes[first : first + 20]), (spatial, sizes[first : first + 20])
                phases.append((spatial, size))
            assert phases[0][1][0] * 3 < top[0], phases

            # VP8 temporal layers: TID 0 only lowers the frame rate on the same layer (Chromium
            # sends three temporal layers per simulcast encoding: TID 0 is every fourth frame).
            full = await frames.wait_rate("the top layer at full rate", lambda r: r >= 10)
            count = len(sizes)
            await set_layer(media_server, session_id, subscription_id, 2, temporal=0)
            low = await frames.wait_rate("temporal layer 0", lambda r: r < full * 0.6)
            await set_layer(media_server, session_id, subscription_id, 2)
            back = await frames.wait_rate("all temporal layers", lambda r: r > full * 0.8)
            assert set(sizes[count:]) == {phases[-1][1]}, "the size changed with the frame rate"
            print(f"frame rate: {full:.1f}/s all, {low:.1f}/s TID 0, {back:.1f}/s all again")
            consumers = await video_consumers(media_server)
            assert consumers and consumers[0]["simulcast"] and consumers[0]["current_layer"] == 2
            assert consumers[0]["stats"]["layer_switches"] >= 5, consumers[0]["stats"]
            assert consumers[0]["stats"]["temporal_dropped"] > 0, consumers[0]["stats"]
    assert not errors.messages, errors.messages[:5]
