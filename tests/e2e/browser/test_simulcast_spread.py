"""Simulcast through a pipe: a real Chromium publishes its fake 1280x720 camera in three layers
(q/h/f) in a session spread over two media workers (``router_spread_consumers=1``). A first
Python subscriber fills the publisher's router; a second one lands on a router of the other
worker and gets the stream through a pipe (:mod:`salon.media.pipe`). The piped producer there
is simulcast with the publisher's encodings (same RIDs, SSRCs and order), and the second
subscriber, switched to lower layers through ``SfuMediaPlane.set_subscription_layer`` (its
consumer is on the far worker), decodes each layer at its own size, with no decoder error.
Both workers count the pipe's packets (``salon_pipe_packets``: out and in)."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from browser_helpers import open_sdk_page
from playwright.async_api import Browser

from salon.client import Session, Subscriber
from salon.media.channel import DumpRequest, WorkerDump
from salon.media.workers import RouterHandle
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.e2e.media.frames import FrameLog, decode_errors
from tests.e2e.media.sfu_state import plane_of

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def spread_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    config = ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0, reconnect_grace=0),
        workers=2,
        router_spread_consumers=1,
        demo_rate_burst=1000,
    )
    with ServerThread(config) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


def on_server(server: RunningServer, coroutine: Any) -> Any:
    return asyncio.wrap_future(server.thread.run_coroutine(coroutine))


async def video_encodings(
    server: RunningServer, router: RouterHandle, stream_id: str
) -> list[dict[str, Any]]:
    """The encodings of the stream's video producer on ``router``, from its worker's dump."""

    async def dump() -> list[dict[str, Any]]:
        result = await router.worker.dump(routers=True)
        streams = result.router_dumps.get(router.id, {}).get("streams", {})
        video = streams.get(stream_id, {}).get("video")
        return [] if video is None else list(video["encodings"])

    result: list[dict[str, Any]] = await on_server(server, dump())
    return result


async def media_totals(server: RunningServer, router: RouterHandle) -> dict[str, int]:
    async def dump() -> dict[str, int]:
        handle = router.worker
        return (await handle.request(DumpRequest(id=handle.next_id(), media=True), WorkerDump)).media

    result: dict[str, int] = await on_server(server, dump())
    return result


async def test_chromium_simulcast_through_a_pipe_and_a_far_subscriber_switches_layers(
    spread_server: RunningServer, browser: Browser
) -> None:
    server = spread_server
    plane = plane_of(server)
    async with httpx.AsyncClient() as http:
        grants = [
            (
                await http.post(f"{server.url}/demo/join", json={"room": "simulcast-spread", "name": name})
            ).json()
            for name in ("Chromium", "Filler", "Far")
        ]
    session_id = grants[0]["sessionId"]
    assert {g["sessionId"] for g in grants} == {session_id}
    page = await open_sdk_page(browser, server.url, "simulcast-spread")
    sdp = await page.evaluate(
        """async ({sessionId, token}) => {
            const session = window.salon.initSession(sessionId);
            await session.connect(token);
            const options = {name: "simulcast", audio: false, resolution: "1280x720", frameRate: 30};
            const publisher = window.salon.initPublisher(document.body, options);
            await session.publish(publisher);
            window.simulcastPublisher = publisher;
            return {offer: publisher.pc.localDescription.sdp};
        }""",
        {"sessionId": session_id, "token": grants[0]["token"]},
    )
    assert "a=simulcast:send q;h;f" in sdp["offer"], sdp["offer"]

    frames = FrameLog()
    sizes = frames.sizes

    media = plane.sessions[session_id]
    (stream_id,) = media.publications
    first = media.publications[stream_id].router

    async def subscribe(session: Session, **kwargs: Any) -> Subscriber:
        deadline = time.monotonic() + 20
        while stream_id not in session.streams:
            assert time.monotonic() < deadline, "the stream did not reach the subscriber"
            await asyncio.sleep(0.05)
        subscriber = Subscriber(session.streams[stream_id], audio=False, **kwargs)
        await session.subscribe(subscriber)
        return subscriber

    with decode_errors() as errors:
        async with (
            Session(session_id, grants[1]["token"], server.url) as filler,
            Session(session_id, grants[2]["token"], server.url) as far,
        ):
            await subscribe(filler)  # the publisher's router now has its one consumer
            assert filler.connection_id is not None and far.connection_id is not None
            assert media.homes[filler.connection_id] is first
            subscriber = await subscribe(far, on_video_frame=frames.on_frame)
            assert subscriber.subscription_id is not None
            second = media.homes[far.connection_id]
            assert second is not first and second.worker is not first.worker, "the session did not spread"
            assert set(media.pipes) == {(stream_id, second.id)}

            # Every layer reaches the far router: the same encodings, in the same order.
            deadline = time.monotonic() + 90
            while True:
                here = await video_encodings(server, first, stream_id)
                there = await video_encodings(server, second, stream_id)
                if len(there) == 3 and all(e["packets_received"] > 50 for e in there):
                    break
                assert time.monotonic() < deadline, (
                    f"three layers did not reach the far router: {here} {there}"
                )
                await asyncio.sleep(0.5)
            assert [e["rid"] for e in there] == [e["rid"] for e in here] == ["q", "h", "f"]
            assert [e["ssrc"] for e in there] == [e["ssrc"] for e in here] and len(
                {e["ssrc"] for e in here}
            ) == 3

            # Unconstrained, the far subscriber gets the top layer; then layer 0, then 1.
            first_top = await frames.wait_frame("top layer through the pipe", lambda s: s[0] >= 960, 60)
            await frames.wait_frame("more top-layer frames", lambda s: True, 20, first_top + 10)
            top = sizes[-1]
            assert subscriber.subscription_id is not None
            for spatial, factor in ((0, 4), (1, 2)):
                switched_at = len(sizes)
                switch = plane.set_subscription_layer(session_id, subscriber.subscription_id, spatial=spatial)
                assert await on_server(server, switch), "the far subscription has no media"
                width = top[0] // factor
                at = await frames.wait_frame(
                    f"layer {spatial} through the pipe",
                    lambda s, w=width: abs(s[0] - w) <= w // 8 + 2,
                    40,
                    switched_at,
                )
                size = sizes[at]
                await frames.wait_frame(f"layer {spatial} frames", lambda s: True, 20, at + 20)
                assert all(s == size for s in sizes[at : at + 20]), (spatial, sizes[at : at + 20])

            out = await media_totals(server, first)
            into = await media_totals(server, second)
            assert out["pipe_packets_out"] > 100 and out["pipe_bytes_out"] > 0, out
            assert into["pipe_packets_in"] > 100 and into["pipe_bytes_in"] > 0, into
    assert not errors.messages, errors.messages[:5]
