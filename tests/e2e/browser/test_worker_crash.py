"""The browser SDK in real Chromium when the server's media worker is killed (SIGKILL).

Each page is an OpenTok-style application: it subscribes in its ``streamCreated`` handler and
publishes its camera, and has no code for failures. After the kill the SDKs recover on their
own: each publisher publishes again (a new stream ID), each page gets ``streamDestroyed``
(``mediaStopped``) then ``streamCreated`` for the other's new stream, subscribes to it from a
new receiving peer connection (the old one's transport died with the worker), and plays it.
The mixed case does the same with a Python SDK client on the other side.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import numpy as np
import pytest
from browser_helpers import open_sdk_page, video_stats
from playwright.async_api import Browser, Page

from salon.client import Publisher, Session, StreamReceived, Subscriber, TestPatternSource, VideoFrame
from salon.media.plane import SfuMediaPlane
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)

#: The application: subscribe to every stream in streamCreated (into a box named by the
#: stream ID), publish the camera, keep a log of the session's stream events.
APP = """async ({sessionId, token, name}) => {
    const session = window.salon.initSession(sessionId);
    window.session = session;
    window.log = [];
    session.on("streamCreated", (e) => {
        window.log.push(["streamCreated", e.stream.streamId]);
        const box = document.createElement("div");
        box.dataset.streamId = e.stream.streamId;
        document.body.append(box);
        session.subscribe(e.stream, box).catch((err) => window.log.push(["subscribeFailed", err.code]));
    });
    session.on("streamDestroyed", (e) => window.log.push(["streamDestroyed", e.stream.streamId, e.reason]));
    await session.connect(token);
    const publisher = window.salon.initPublisher(document.body, {name, resolution: "320x240"});
    publisher.on("streamDestroyed", (e) => window.log.push(["publisherDestroyed", e.reason]));
    await session.publish(publisher);
    window.publisher = publisher;
}"""


def kill_the_worker(server: RunningServer) -> int:
    plane = server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)
    (worker,) = plane.pool.workers.values()
    os.kill(worker.pid, signal.SIGKILL)
    return worker.pid


async def open_app(browser: Browser, server: RunningServer, session_id: str, name: str) -> Page:
    page = await open_sdk_page(browser, server.url, name)
    await page.evaluate(APP, {"sessionId": session_id, "token": server.token(session_id), "name": name})
    return page


async def own_stream(page: Page) -> str | None:
    stream_id: str | None = await page.evaluate("window.publisher?.stream?.streamId ?? null")
    return stream_id


async def wait_republished(page: Page, old: str, timeout_ms: int = 60000) -> str:
    """Wait until the page's publisher has a new stream (its SDK published again)."""
    await page.wait_for_function(
        "(old) => window.publisher.stream && window.publisher.stream.streamId !== old",
        arg=old,
        timeout=timeout_ms,
    )
    new = await own_stream(page)
    assert new is not None and new != old
    return new


async def plays(page: Page, stream_id: str) -> dict[str, Any]:
    """Wait until the page plays ``stream_id`` (in its box); its video's frame progress."""
    return await video_stats(page, f'div[data-stream-id="{stream_id}"] video', timeout_ms=60000)


async def test_two_pages_see_each_other_again_after_the_worker_is_killed(
    media_server: RunningServer, browser: Browser
) -> None:
    server = media_server
    sid = server.session()
    alice = await open_app(browser, server, sid, "alice")
    bob = await open_app(browser, server, sid, "bob")
    first = {"alice": await own_stream(alice), "bob": await own_stream(bob)}
    assert first["alice"] and first["bob"]
    for page, other in ((alice, first["bob"]), (bob, first["alice"])):
        stats = await plays(page, other)
        assert stats["found"] and stats["framesAdvanced"] > 0, stats
        await page.evaluate("window.oldPc = window.session._subscribePc")

    killed = kill_the_worker(server)

    second = {
        "alice": await wait_republished(alice, first["alice"]),
        "bob": await wait_republished(bob, first["bob"]),
    }
    for page, name, other in ((alice, "alice", "bob"), (bob, "bob", "alice")):
        stats = await plays(page, second[other])
        assert stats["found"] and stats["width"] > 0 and stats["framesAdvanced"] > 0, (name, stats)
        log = await page.evaluate("window.log")
        assert ["streamDestroyed", first[other], "mediaStopped"] in log, (name, log)
        assert ["streamCreated", second[other]] in log, (name, log)
        assert not [e for e in log if e[0] in ("subscribeFailed", "publisherDestroyed")], (name, log)
        state = await page.evaluate(
            """() => ({
                fresh: window.session._subscribePc !== window.oldPc
                    && window.oldPc.connectionState === "closed",
                subscribers: [...window.session.subscribers].map((s) => s.stream.streamId),
                old: document.querySelectorAll(".salon-subscriber").length,
            })"""
        )
        assert state == {"fresh": True, "subscribers": [second[other]], "old": 1}, (name, state)
    plane = server.thread.server.config.app.state.media
    assert killed not in {w.pid for w in plane.pool.workers.values()}


async def test_a_page_and_a_python_client_see_each_other_again_after_the_worker_is_killed(
    media_server: RunningServer, browser: Browser
) -> None:
    server = media_server
    sid = server.session()
    page = await open_app(browser, server, sid, "page")
    frames: dict[str, list[VideoFrame]] = {}

    async with Session(sid, server.token(sid), server.url, ice_addresses=["127.0.0.1"]) as bot:
        subscribed: list[str] = []

        async def on_stream(event: StreamReceived) -> None:  # the Python application's only media code
            stream_id = event.stream.stream_id
            subscribed.append(stream_id)
            got = frames.setdefault(stream_id, [])
            await bot.subscribe(Subscriber(event.stream, on_video_frame=got.append, audio=False))

        bot.on(StreamReceived, on_stream)
        publisher = Publisher("python", audio=False, video_source=TestPatternSource(width=320, height=240))
        first_bot = await bot.publish(publisher)
        first_page = await own_stream(page)
        assert first_page is not None
        stats = await plays(page, first_bot.stream_id)
        assert stats["found"] and stats["framesAdvanced"] > 0, stats
        await wait_frames(frames, first_page, 10)

        kill_the_worker(server)

        second_page = await wait_republished(page, first_page)
        await wait_until(lambda: publisher.stream_id not in (None, first_bot.stream_id), "python republished")
        second_bot = publisher.stream_id
        assert second_bot is not None
        stats = await plays(page, second_bot)
        assert stats["found"] and stats["framesAdvanced"] > 0, stats
        await wait_frames(frames, second_page, 15)
        assert subscribed == [first_page, second_page]
        # The Python side decodes the browser's camera again: a sane, moving picture.
        got = frames[second_page]
        first, last = got[0].to_i420().astype(np.int16), got[-1].to_i420().astype(np.int16)
        assert first.shape == last.shape and float(first.std()) > 5, "a flat frame"
        assert float(np.abs(first - last).mean()) > 0.5, "the browser's picture does not move"


async def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_frames(frames: dict[str, list[VideoFrame]], stream_id: str, count: int) -> None:
    await wait_until(lambda: len(frames.get(stream_id, [])) >= count, f"{count} frames of {stream_id}")


async def test_a_page_that_missed_media_reset_subscribes_from_a_new_peer_connection_when_refused(
    media_server: RunningServer, browser: Browser
) -> None:
    """The page's SDK does not act on ``media_reset`` (as if it had not heard it): it offers the
    new subscription from its old receiving peer connection, the server refuses it with
    ``transport_closed``, and the SDK subscribes from a new one; the application sees nothing."""
    server = media_server
    sid = server.session()
    page = await open_sdk_page(browser, server.url, "viewer")
    await page.evaluate(
        """async ({sessionId, token}) => {
            const session = window.salon.initSession(sessionId);
            session._mediaReset = () => {};  // deaf to media_reset
            window.session = session;
            window.log = [];
            session.on("streamCreated", (e) => {
                const box = document.createElement("div");
                box.dataset.streamId = e.stream.streamId;
                document.body.append(box);
                session.subscribe(e.stream, box)
                    .catch((err) => window.log.push(["subscribeFailed", err.code]));
            });
            await session.connect(token);
        }""",
        {"sessionId": sid, "token": server.token(sid, role="subscriber")},
    )
    async with Session(sid, server.token(sid), server.url, ice_addresses=["127.0.0.1"]) as bot:
        publisher = Publisher("python", audio=False, video_source=TestPatternSource(width=320, height=240))
        first = await bot.publish(publisher)
        stats = await plays(page, first.stream_id)
        assert stats["found"] and stats["framesAdvanced"] > 0, stats
        await page.evaluate("window.oldPc = window.session._subscribePc")

        kill_the_worker(server)

        await wait_until(lambda: publisher.stream_id not in (None, first.stream_id), "python republished")
        second = publisher.stream_id
        assert second is not None
        stats = await plays(page, second)
        assert stats["found"] and stats["framesAdvanced"] > 0, stats
        state = await page.evaluate(
            """() => ({
                log: window.log,
                fresh: window.session._subscribePc !== window.oldPc,
                subscribers: [...window.session.subscribers].map((s) => s.stream.streamId),
            })"""
        )
        assert state == {"log": [], "fresh": True, "subscribers": [second]}, state
