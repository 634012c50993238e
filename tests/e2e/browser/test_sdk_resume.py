"""The browser SDK resumes its connection after its socket drops for 5 s, as OpenTok.js does:
the same connection ID and stream ID before and after, ``sessionReconnected`` with
``resumed``, the other page sees no destroyed or created events and decodes the stream again
after the publisher's media was set up again (a new peer connection, the same stream)."""

from __future__ import annotations

import asyncio

import pytest
from browser_helpers import open_sdk_page
from playwright.async_api import Browser, Page

from tests.conftest import RunningServer
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def allowed_page_errors() -> list[str]:
    """The page's WebSocket is reset and refused while its network is down."""
    return [r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/signalling' failed"]


FRAMES_DECODED = """async () => {
    const pc = window.session._subscribePc;
    if (!pc) return 0;
    let frames = 0;
    (await pc.getStats()).forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
    });
    return frames;
}"""


async def _frames_grow(page: Page, by: int, what: str, timeout: float = 30) -> None:
    start = await page.evaluate(FRAMES_DECODED)
    deadline = asyncio.get_running_loop().time() + timeout
    while (now := await page.evaluate(FRAMES_DECODED)) < start + by:
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {now - start} frames in {timeout} s"
        await asyncio.sleep(0.2)


async def test_chromium_resumes_with_the_same_ids_and_the_other_page_sees_nothing(
    grace_server: RunningServer, browser: Browser
) -> None:
    server = grace_server
    sid = server.session()
    async with TcpProxy(server.url) as proxy:
        alice = await open_sdk_page(browser, proxy.url, "alice")
        bob = await open_sdk_page(browser, server.url, "bob")
        await bob.evaluate(
            """async ([sessionId, token]) => {
                window.events = [];
                const s = window.salon.initSession(sessionId);
                window.session = s;
                const kinds = ["connectionCreated", "connectionDestroyed",
                               "streamCreated", "streamDestroyed"];
                for (const name of kinds) s.on(name, (e) => window.events.push(name));
                s.on("signal:chat", (e) => window.events.push("signal:" + e.data));
                s.on("streamCreated", (e) => s.subscribe(e.stream, document.body));
                await s.connect(token);
            }""",
            [sid, server.token(sid)],
        )
        ids = await alice.evaluate(
            """async ([sessionId, token]) => {
                window.events = [];
                const s = window.salon.initSession(sessionId);
                window.session = s;
                for (const name of ["sessionReconnecting", "sessionReconnected", "sessionDisconnected"]) {
                    s.on(name, (e) => window.events.push({type: name, resumed: e.resumed ?? null}));
                }
                await s.connect(token);
                const publisher = window.salon.initPublisher(document.body,
                    {name: "alice", audio: false, resolution: "320x240"});
                await s.publish(publisher);
                window.publisher = publisher;
                window.firstPc = publisher.pc;
                return {connection: s.connection.connectionId, stream: publisher.stream.streamId};
            }""",
            [sid, server.token(sid)],
        )
        await _frames_grow(bob, 20, "bob decoding alice before the drop")
        assert await bob.evaluate("window.events") == ["connectionCreated", "streamCreated"]

        proxy.freeze()  # alice's network goes: her socket is reset, new ones are refused
        proxy.drop()
        await alice.wait_for_function(
            "window.events.some((e) => e.type === 'sessionReconnecting')", timeout=15000
        )
        # Sent while reconnecting: it waits, and goes once resumed.
        queued = asyncio.ensure_future(
            alice.evaluate(
                """() => window.session.signal({type: 'chat', data: 'back', retryAfterReconnect: true})
                    .then(() => window.session.state)"""
            )
        )
        await asyncio.sleep(5)  # the outage itself
        proxy.thaw()

        await alice.wait_for_function(
            "window.events.some((e) => e.type === 'sessionReconnected')", timeout=40000
        )
        after = await alice.evaluate(
            """() => ({events: window.events, connection: window.session.connection.connectionId,
                      stream: window.publisher.stream.streamId, state: window.session.state,
                      newPc: window.publisher.pc !== window.firstPc,
                      oldPcClosed: window.firstPc.connectionState === "closed"})"""
        )
        assert after["events"] == [
            {"type": "sessionReconnecting", "resumed": None},
            {"type": "sessionReconnected", "resumed": True},
        ], after
        assert (after["connection"], after["stream"]) == (ids["connection"], ids["stream"]), (after, ids)
        assert after["state"] == "connected" and after["newPc"] and after["oldPcClosed"], after
        assert await queued == "connected"

        # Bob decodes alice's stream again (from her new peer connection) and saw nothing.
        await _frames_grow(bob, 20, "bob decoding alice after the resume")
        await bob.wait_for_function("window.events.includes('signal:back')", timeout=10000)
        assert await bob.evaluate("window.events") == ["connectionCreated", "streamCreated", "signal:back"]
        await alice.evaluate("window.session.disconnect()")
        await bob.wait_for_function("window.events.includes('connectionDestroyed')", timeout=10000)


async def test_chromium_falls_back_to_a_new_connection_when_the_grace_period_is_over(
    short_grace_server: RunningServer, browser: Browser
) -> None:
    server = short_grace_server
    sid = server.session()
    async with TcpProxy(server.url) as proxy:
        alice = await open_sdk_page(browser, proxy.url, "alice")
        bob = await open_sdk_page(browser, server.url, "bob")
        await bob.evaluate(
            """async ([sessionId, token]) => {
                window.events = [];
                const s = window.salon.initSession(sessionId);
                window.session = s;
                s.on("connectionDestroyed", (e) => window.events.push("connectionDestroyed:" + e.reason));
                s.on("connectionCreated", (e) => window.events.push("connectionCreated"));
                await s.connect(token);
            }""",
            [sid, server.token(sid)],
        )
        first = await alice.evaluate(
            """async ([sessionId, token]) => {
                window.events = [];
                const s = window.salon.initSession(sessionId);
                window.session = s;
                s.on("sessionReconnected", (e) => window.events.push({resumed: e.resumed}));
                await s.connect(token);
                return s.connection.connectionId;
            }""",
            [sid, server.token(sid)],
        )
        await bob.wait_for_function("window.events.includes('connectionCreated')", timeout=10000)
        proxy.freeze()
        proxy.drop()
        # The server gives up on alice after its 1 s grace period: bob sees her go.
        await bob.wait_for_function(
            "window.events.includes('connectionDestroyed:networkDisconnected')", timeout=15000
        )
        proxy.thaw()
        await alice.wait_for_function("window.events.length > 0", timeout=40000)
        after = await alice.evaluate(
            "() => ({events: window.events, connection: window.session.connection.connectionId})"
        )
        assert after["events"] == [{"resumed": False}], after
        assert after["connection"] != first
        await bob.wait_for_function(
            "window.events.filter((e) => e === 'connectionCreated').length === 2", timeout=10000
        )
