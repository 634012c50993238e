"""The web app and the SDK when the signalling connection breaks: drops, silence, expiry.

The page that loses its connection talks to the server through :class:`TcpProxy`, which
can reset the TCP connections (the server side dropping them) or swallow everything (a
silent network, caught by the SDK's heartbeat check). Its media goes straight to the server.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from browser_helpers import (
    join,
    open_page,
    open_sdk_page,
    record_status,
    remote_video_stats,
    status_log,
)
from playwright.async_api import Browser, Page, Route, expect

from salon.tokens import generate_token
from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(240)

#: Short enough for a test, long enough for a loaded machine.
HEARTBEAT_TIMEOUT = 6.0


@pytest.fixture
def allowed_page_errors() -> list[str]:
    """Every test here breaks the signalling connection: the browser logs each refused or reset
    WebSocket attempt as a console error."""
    return [r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/signalling' failed"]


@pytest.fixture
def flaky_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=HEARTBEAT_TIMEOUT) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


@pytest.fixture
async def proxy(flaky_server: RunningServer) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(flaky_server.url) as proxy:
        yield proxy


async def _two_in_a_room(
    server: RunningServer, proxy: TcpProxy, browser: Browser, room: str
) -> tuple[Page, Page]:
    """Alice straight to the server, Bob through the proxy; both see each other's video."""
    alice = await open_page(browser, "alice")
    bob = await open_page(browser, "bob")
    await join(alice, server.url, room, "Alice")
    await expect(alice.locator(".tile.local video")).to_be_visible(timeout=15000)
    await join(bob, proxy.url, room, "Bob")
    await expect(bob.locator(".tile.local video")).to_be_visible(timeout=15000)
    assert (await remote_video_stats(alice, "Bob"))["framesAdvanced"] > 0
    assert (await remote_video_stats(bob, "Alice"))["framesAdvanced"] > 0
    await record_status(bob)
    return alice, bob


async def _media_is_back(alice: Page, bob: Page, old_stream: str) -> None:
    new_stream = await bob.evaluate("window.salonApp.publisher.stream.streamId")
    assert new_stream != old_stream  # re-published
    # Alice saw Bob's old stream go and the new one come, and plays it.
    await expect(alice.locator(f'.tile[data-stream-id="{old_stream}"]')).to_have_count(0, timeout=20000)
    stats = await remote_video_stats(alice, "Bob")
    assert stats["found"] and stats["framesAdvanced"] > 0, stats
    # Bob re-subscribed to Alice.
    stats = await remote_video_stats(bob, "Alice")
    assert stats["found"] and stats["framesAdvanced"] > 0, stats


async def test_dropped_connection_reconnects_and_media_resumes(
    flaky_server: RunningServer, proxy: TcpProxy, browser: Browser
) -> None:
    alice, bob = await _two_in_a_room(flaky_server, proxy, browser, "flaky")
    old_stream = await bob.evaluate("window.salonApp.publisher.stream.streamId")

    proxy.drop()  # the server side's TCP connection is reset
    status = bob.get_by_role("status")
    await expect(status).to_contain_text("Reconnected", timeout=30000)
    assert any("Reconnecting" in text for text in await status_log(bob)), await status_log(bob)
    await expect(status).to_be_hidden(timeout=15000)  # the message clears by itself
    await _media_is_back(alice, bob, old_stream)


async def test_silent_network_is_noticed_and_reconnects(
    flaky_server: RunningServer, proxy: TcpProxy, browser: Browser
) -> None:
    alice, bob = await _two_in_a_room(flaky_server, proxy, browser, "silent")
    old_stream = await bob.evaluate("window.salonApp.publisher.stream.streamId")

    proxy.freeze()  # nothing gets through, nothing is closed: only the heartbeat can tell
    status = bob.get_by_role("status")
    await expect(status).to_contain_text(
        "Connection lost. Reconnecting", timeout=(HEARTBEAT_TIMEOUT + 15) * 1000
    )
    # A few refused attempts while the network is still down, and the page keeps trying.
    refused = proxy.refused
    deadline = time.monotonic() + 30
    while proxy.refused < refused + 2:
        assert time.monotonic() < deadline, f"{proxy.refused - refused} reconnection attempts in 30 s"
        await asyncio.sleep(0.1)
    await expect(status).to_contain_text("Reconnecting")
    assert await bob.evaluate("window.salonApp.session.state") == "reconnecting"
    proxy.thaw()
    await expect(status).to_contain_text("Reconnected", timeout=30000)
    await expect(status).to_be_hidden(timeout=15000)
    assert await bob.evaluate("window.salonApp.session.state") == "connected"
    await _media_is_back(alice, bob, old_stream)


async def test_request_timeout_and_giving_up_on_reconnection(
    flaky_server: RunningServer, proxy: TcpProxy, browser: Browser
) -> None:
    session_id = flaky_server.session()
    token = flaky_server.token(session_id)
    page = await open_sdk_page(browser, proxy.url, "sdk")
    await page.evaluate(
        """async ([sessionId, token]) => {
            window.events = [];
            const s = window.salon.initSession(sessionId, {requestTimeout: 2, reconnectTimeout: 5});
            window.session = s;
            for (const name of ["sessionReconnecting", "sessionReconnected", "sessionDisconnected"]) {
                s.on(name, (e) => window.events.push({type: name, reason: e.reason || null, at: Date.now()}));
            }
            await s.connect(token);
            await s.signal({type: "ping-me", data: "before"});
        }""",
        [session_id, token],
    )
    proxy.freeze()
    # A request whose reply never comes rejects with a SalonError `timeout`, well before the
    # heartbeat check notices the silence.
    refused = await page.evaluate(
        """async () => {
            const started = Date.now();
            try {
                await window.session.signal({type: "lost", data: "into the void"});
                return {resolved: true};
            } catch (e) {
                return {name: e.name, code: e.code, message: e.message, after: Date.now() - started,
                        state: window.session.state};
            }
        }"""
    )
    assert refused["name"] == "SalonError" and refused["code"] == "timeout", refused
    # After its 2 s, and while the session still counts as connected: before the heartbeat.
    assert refused["after"] >= 1500, refused
    assert refused["state"] == "connected" and "signal" in refused["message"], refused
    # Then the silence is noticed; the network stays down past reconnectTimeout: the session ends.
    await page.wait_for_function(
        "window.events.some((e) => e.type === 'sessionDisconnected')", timeout=(HEARTBEAT_TIMEOUT + 30) * 1000
    )
    events = await page.evaluate("window.events")
    assert [e["type"] for e in events] == ["sessionReconnecting", "sessionDisconnected"], events
    assert events[1]["reason"] == "networkDisconnected", events
    assert 4000 <= events[1]["at"] - events[0]["at"] < 20000, events
    # The page is not stuck: requests reject at once, and a new session works once the network is back.
    proxy.thaw()
    after = await page.evaluate(
        """async ([sessionId, token]) => {
            const code = await window.session.signal({type: "x"}).then(() => "sent", (e) => e.code);
            const s = window.salon.initSession(sessionId);
            await s.connect(token);
            const got = new Promise((resolve) => s.on("signal:again", (e) => resolve(e.data)));
            await s.signal({type: "again", data: "back"});
            const data = await got;
            s.disconnect();
            return {code, data};
        }""",
        [session_id, token],
    )
    assert after == {"code": "not_connected", "data": "back"}


def _short_token(session_id: str, name: str, lifetime: int) -> tuple[str, int]:
    expires = int(time.time()) + lifetime
    token = generate_token(
        API_KEY, API_SECRET, session_id, expire_time=expires, data=json.dumps({"name": name})
    )
    return token, expires


async def _join_with_a_short_token(page: Page, proxy: TcpProxy, room: str, then: str) -> list[int]:
    """Join through the proxy with a token that expires a few seconds later, and wait for that.

    The first ``/demo/join`` gets the short token; later ones (the app asking for a fresh
    token when it reconnects) get the real endpoint (``then="server"``) or a 404, as under
    ``--no-demo`` (``then="off"``). Returns the list the calls are counted in.
    """
    calls: list[int] = []
    expires = 0

    async def demo_join(route: Route) -> None:
        nonlocal expires
        calls.append(1)
        if len(calls) == 1:
            reply = await route.fetch()
            grant = await reply.json()
            grant["token"], expires = _short_token(grant["sessionId"], "Bob", 5)
            await route.fulfill(status=200, content_type="application/json", body=json.dumps(grant))
        elif then == "server":
            await route.continue_()
        else:
            await route.fulfill(status=404, content_type="application/json", body='{"detail": "Not Found"}')

    await page.route("**/demo/join", demo_join)
    await join(page, proxy.url, room, "Bob")
    await expect(page.locator(".tile.local video")).to_be_visible(timeout=15000)
    await record_status(page)
    await asyncio.sleep(max(0.0, expires + 1.5 - time.time()))  # expired now (the server allows no leeway)
    return calls


async def test_expired_token_on_reconnect_gets_a_fresh_one(proxy: TcpProxy, browser: Browser) -> None:
    bob = await open_page(browser, "bob")
    calls = await _join_with_a_short_token(bob, proxy, "expiring", then="server")
    old_stream = await bob.evaluate("window.salonApp.publisher.stream.streamId")
    proxy.drop()
    status = bob.get_by_role("status")
    await expect(status).to_contain_text("Reconnected", timeout=30000)
    assert len(calls) == 2  # refreshToken asked the demo endpoint once more
    assert await bob.evaluate("window.salonApp.session.state") == "connected"
    await bob.wait_for_function(
        "(old) => window.salonApp.publisher.stream && window.salonApp.publisher.stream.streamId !== old",
        arg=old_stream,
        timeout=15000,
    )


async def test_expired_token_on_reconnect_says_so(
    proxy: TcpProxy, browser: Browser, allowed_page_errors: list[str]
) -> None:
    # the fresh token asked for: /demo/join is off
    allowed_page_errors.append(r"Failed to load resource: the server responded with a status of 404")
    bob = await open_page(browser, "bob")
    calls = await _join_with_a_short_token(bob, proxy, "expired", then="off")
    proxy.drop()
    status = bob.get_by_role("status")
    await expect(status).to_contain_text("access token expired while the connection was down", timeout=30000)
    assert "connection to the server was lost" not in (await status.text_content() or "")
    assert len(calls) == 2
    await expect(bob.get_by_role("button", name="Join")).to_be_enabled()
    await expect(bob.locator("#call")).to_be_hidden()
