"""An OpenTok.js app across a dropped signalling link: sessionReconnecting, then
sessionReconnected; subscribers get disconnected / connected and play again; a signal sent
while reconnecting (retryAfterReconnect, OpenTok's default) goes out afterwards.

Bob's page is loaded through a TCP proxy (tests/tcpproxy.py) that the test resets; the script
then talks to the proxy, the server it was loaded from. (Whether Bob keeps his connection and
stream IDs is the server's resume, tested with it; here the OT layer's mapping is.)
"""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator

import pytest
from browser_helpers import video_stats
from ot_helpers import BASIC_VIDEO_CHAT, open_ot_page, run_app, wait_for
from playwright.async_api import Browser

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(240)

#: What Bob's page records around the reconnection (added after the tutorial's code).
RECORDER = """
window.log = [];
session.on("sessionReconnecting", function () {
  window.log.push("sessionReconnecting");
  session.signal({type: "during", data: "sent while reconnecting"}, function (error) {
    window.log.push(error ? "signal failed: " + error.name : "signal sent");
  });
});
session.on("sessionReconnected", function () { window.log.push("sessionReconnected"); });
session.on("sessionDisconnected", function (e) { window.log.push("sessionDisconnected " + e.reason); });
"""


@pytest.fixture
def allowed_page_errors() -> list[str]:
    """The browser logs each reset WebSocket as a console error."""
    return [r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/signalling' failed"]


@pytest.fixture
def flaky_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    # A grace period, so that a dropped link resumes (OT never reconnects as a new connection).
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=6.0, reconnect_grace=30) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


@pytest.fixture
async def proxy(flaky_server: RunningServer) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(flaky_server.url) as proxy:
        yield proxy


async def test_an_opentok_app_reconnects_after_the_link_drops(
    flaky_server: RunningServer, proxy: TcpProxy, browser: Browser
) -> None:
    server = flaky_server
    session_id = server.session()
    alice = await open_ot_page(browser, server.url, "alice")
    await run_app(
        alice, BASIC_VIDEO_CHAT, API_KEY=API_KEY, SESSION_ID=session_id, TOKEN=server.token(session_id)
    )
    await alice.evaluate(
        "() => { window.during = []; session.on('signal:during', (e) => window.during.push(e.data)); }"
    )
    bob = await open_ot_page(browser, proxy.url, "bob")
    await run_app(
        bob, BASIC_VIDEO_CHAT, API_KEY=API_KEY, SESSION_ID=session_id, TOKEN=server.token(session_id)
    )
    await bob.add_script_tag(content=RECORDER)
    for page in (alice, bob):
        stats = await video_stats(page, "#subscriber .OT_subscriber video")
        assert stats["found"] and stats["framesAdvanced"] > 0, stats
    await wait_for(bob, "window.subscriber && window.subscriber.element")
    await bob.evaluate(
        """() => {
            window.subscriberLog = [];
            for (const type of ["disconnected", "connected", "destroyed"]) {
                window.subscriber.on(type, () => window.subscriberLog.push(type));
            }
        }"""
    )

    proxy.drop()  # the server side's TCP connections are reset

    await wait_for(bob, "window.log.includes('sessionReconnected')", 30000, "Bob reconnected")
    await wait_for(bob, "window.log.includes('signal sent')", 20000, "the held signal went out")
    log = await bob.evaluate("window.log")
    assert log[0] == "sessionReconnecting" and "sessionReconnected" in log, log
    assert not any(entry.startswith("sessionDisconnected") for entry in log), log
    assert await bob.evaluate("window.subscriberLog.slice(0, 2)") == ["disconnected", "connected"]
    assert await wait_for(alice, "window.during.length && window.during") == ["sent while reconnecting"]
    # Media flows both ways again: Bob's subscriber plays after resubscribing, and Alice
    # watches Bob (his stream, or the one he published again, subscribed by the app's code).
    for page, who in ((bob, "bob"), (alice, "alice")):
        stats = await video_stats(page, "#subscriber .OT_subscriber video", timeout_ms=30000)
        assert stats["found"] and stats["framesAdvanced"] > 0, f"{who}: {stats}"
    assert await bob.evaluate("window.errors") == [] and await alice.evaluate("window.errors") == []


async def test_set_proxy_url_routes_the_session_through_the_proxy(
    flaky_server: RunningServer, proxy: TcpProxy, browser: Browser
) -> None:
    """OT.setProxyUrl, before any session, makes OT talk to salon through that URL: the page
    loads the script from the server itself, yet resetting the proxy's links breaks (and
    reconnects) its session. Calls too late or twice are refused as OpenTok.js refuses them."""
    session_id = flaky_server.session()
    page = await open_ot_page(browser, flaky_server.url, "proxied")
    await page.evaluate(
        """([proxyUrl, apiKey, sessionId, token]) => new Promise((resolve, reject) => {
            window.log = [];
            OT.on("exception", (e) => window.log.push(`exception ${e.code} ${e.title}`));
            OT.setProxyUrl(proxyUrl);
            OT.setProxyUrl(proxyUrl);  // already set: 2022
            const s = OT.initSession(apiKey, sessionId);
            OT.setProxyUrl(proxyUrl);  // after initSession: 2021
            s.on("sessionReconnecting sessionReconnected", (e) => window.log.push(e.type));
            s.connect(token, (err) => (err ? reject(err) : resolve()));
        })""",
        [proxy.url, API_KEY, session_id, flaky_server.token(session_id)],
    )
    proxy.drop()
    await wait_for(page, "window.log.includes('sessionReconnected')", 30000, "reconnected through the proxy")
    assert await page.evaluate("window.log") == [
        "exception 2022 Proxy URL Already Set Error",
        "exception 2021 Proxy URL Timing Error",
        "sessionReconnecting",
        "sessionReconnected",
    ]
