"""Reconnection through the OpenTok.js layer, as OpenTok does it, in apps written as the OpenTok
docs write them (global OT from /v2/js/opentok.js, session.on({...}) handlers):

* a page whose link drops for 5 s gets ``sessionReconnecting`` then ``sessionReconnected``,
  keeps its connection ID, its stream ID, its Publisher and Subscriber objects (playing again
  once the media is back), and a ``retryAfterReconnect`` signal sent during the gap arrives
  after, called back once; the other page sees no destroyed or created events and decodes the
  first page's video again, from its new peer connection;
* past the server's grace period the resume is refused: ``sessionDisconnected`` with reason
  ``networkDisconnected``, never a new connection (OpenTok.js never silently becomes one);
* a Python SDK client that resumes its connection goes unnoticed by a browser page on OT.

The dropped page talks to the server through tests/tcpproxy.py (its script is loaded from the
proxy, so it talks to the proxy), which the test freezes and resets.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from browser_helpers import video_stats
from ot_helpers import open_ot_page, run_app, wait_for
from playwright.async_api import Browser, Page

from salon.client import Publisher, Reconnected, Reconnecting, Session, SessionState
from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(240)

#: An app as the OpenTok docs write one (the basic video chat, with the session's events
#: logged as the reconnection sample logs them); ``window.log`` is what it saw.
APP = """
var apiKey = {{API_KEY}};
var sessionId = {{SESSION_ID}};
var token = {{TOKEN}};
window.log = [];
window.errors = [];

function handleError(error) {
  if (error) {
    window.errors.push(error.name + ': ' + error.message);
  }
}

var session = OT.initSession(apiKey, sessionId);
window.session = session;

session.on({
  connectionCreated: function (event) {
    window.log.push('connectionCreated ' + event.connection.connectionId);
  },
  connectionDestroyed: function (event) {
    window.log.push('connectionDestroyed ' + event.connection.connectionId + ' ' + event.reason);
  },
  streamCreated: function (event) {
    window.log.push('streamCreated ' + event.stream.streamId);
    window.subscriber = session.subscribe(event.stream, 'subscriber', {
      insertMode: 'append',
      width: '100%',
      height: '100%'
    }, handleError);
  },
  streamDestroyed: function (event) {
    window.log.push('streamDestroyed ' + event.stream.streamId + ' ' + event.reason);
  },
  sessionReconnecting: function () {
    window.log.push('sessionReconnecting');
  },
  sessionReconnected: function () {
    window.log.push('sessionReconnected');
  },
  sessionDisconnected: function (event) {
    window.log.push('sessionDisconnected ' + event.reason);
  }
});

session.on('signal:msg', function (event) {
  window.log.push('signal:msg ' + event.data + ' from ' + event.from.connectionId);
});

var publisher = OT.initPublisher('publisher', {
  insertMode: 'append',
  width: '100%',
  height: '100%'
}, handleError);
window.publisher = publisher;
publisher.on('streamCreated', function (event) {
  window.log.push('publisher streamCreated ' + event.stream.streamId);
});
publisher.on('streamDestroyed', function (event) {
  window.log.push('publisher streamDestroyed ' + event.reason);
});

session.connect(token, function (error) {
  if (error) {
    handleError(error);
  } else if ({{PUBLISH}}) {
    session.publish(publisher, handleError);
  }
});
"""

#: Sent while reconnecting; ``window.signalCallbacks`` collects each call of its handler
#: (and ``window.unqueuedCallbacks`` those of one sent with ``retryAfterReconnect: false``).
SIGNAL_DURING_THE_GAP = """() => {
    window.signalCallbacks = [];
    session.signal({type: 'msg', data: 'sent while away', retryAfterReconnect: true}, function (error) {
        window.signalCallbacks.push(error ? error.name : 'sent');
    });
    window.unqueuedCallbacks = [];
    session.signal({type: 'msg', data: 'not queued', retryAfterReconnect: false}, function (error) {
        window.unqueuedCallbacks.push(error ? error.name + ' ' + error.code : 'sent');
    });
}"""

SUBSCRIBER_VIDEO = "#subscriber .OT_subscriber video"
PUBLISHER_VIDEO = "#publisher .OT_publisher video"

#: Frames the <video> at a selector has shown so far.
FRAMES_SHOWN = """(selector) => {
    const video = document.querySelector(selector);
    return video ? video.getVideoPlaybackQuality().totalVideoFrames : 0;
}"""


@pytest.fixture
def allowed_page_errors() -> list[str]:
    """The dropped page's WebSocket is reset and refused while its network is down."""
    return [r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/signalling' failed"]


async def _start_app(page: Page, server: RunningServer, session_id: str, *, publish: bool = True) -> None:
    await run_app(
        page,
        APP,
        API_KEY=API_KEY,
        SESSION_ID=session_id,
        TOKEN=server.token(session_id),
        PUBLISH=publish,
    )


async def _frames_grow(
    page: Page, by: int, what: str, timeout: float = 30, selector: str = SUBSCRIBER_VIDEO
) -> None:
    """Wait until the <video> at ``selector`` has shown ``by`` more frames than now."""
    start = await page.evaluate(FRAMES_SHOWN, selector)
    deadline = asyncio.get_running_loop().time() + timeout
    while (now := await page.evaluate(FRAMES_SHOWN, selector)) < start + by:
        assert asyncio.get_running_loop().time() < deadline, f"{what}: {now - start} frames in {timeout} s"
        await asyncio.sleep(0.2)


async def _playing(page: Page, what: str) -> None:
    stats = await video_stats(page, SUBSCRIBER_VIDEO, timeout_ms=30000)
    assert stats["found"] and stats["framesAdvanced"] > 0 and not stats["paused"], f"{what}: {stats}"


async def test_an_opentok_app_resumes_with_the_same_ids_and_the_other_page_sees_nothing(
    grace_server: RunningServer, browser: Browser
) -> None:
    server = grace_server
    session_id = server.session()
    async with TcpProxy(server.url) as proxy:
        alice = await open_ot_page(browser, proxy.url, "alice")
        bob = await open_ot_page(browser, server.url, "bob")
        await _start_app(alice, server, session_id)
        await _start_app(bob, server, session_id)
        await _playing(alice, "alice playing bob")
        await _playing(bob, "bob playing alice")
        await wait_for(alice, "!!(publisher.stream && publisher._salon.pc)", what="alice publishing")
        before: dict[str, Any] = await alice.evaluate(
            """() => {
                window.subscriberEvents = [];
                for (const type of ['disconnected', 'connected', 'destroyed']) {
                    subscriber.on(type, function () { window.subscriberEvents.push(type); });
                }
                window.kept = {publisher: publisher, subscriber: subscriber,
                               publisherPc: publisher._salon.pc, receivingPc: session._s._subscribePc};
                return {connection: session.connection.connectionId, stream: publisher.stream.streamId,
                        streams: session.streams.map((s) => s.streamId).sort(), log: window.log.slice()};
            }"""
        )
        bob_before: list[str] = await bob.evaluate("window.log.slice()")
        assert before["log"].count(f"publisher streamCreated {before['stream']}") == 1, before["log"]
        # Bob saw alice's connection and stream come, once each, under the IDs she has.
        assert bob_before.count(f"connectionCreated {before['connection']}") == 1, bob_before
        assert [e for e in bob_before if e.startswith("streamCreated")] == [
            f"streamCreated {before['stream']}"
        ]

        # Alice's network goes for 5 s: her socket resets and new ones are refused.
        proxy.freeze()
        proxy.drop()
        await wait_for(alice, "window.log.includes('sessionReconnecting')", 15000, "alice reconnecting")
        await alice.evaluate(SIGNAL_DURING_THE_GAP)
        await asyncio.sleep(5)  # the outage itself
        assert await alice.evaluate("window.signalCallbacks") == [], "called back before the link came back"
        # Without retryAfterReconnect it fails at once, as in OpenTok.js (and is never sent).
        assert await alice.evaluate("window.unqueuedCallbacks") == ["OT_NOT_CONNECTED 500"]
        assert not any(e.startswith("signal:msg") for e in await bob.evaluate("window.log")), (
            "sent during the gap"
        )
        proxy.thaw()

        await wait_for(alice, "window.log.includes('sessionReconnected')", 40000, "alice reconnected")
        after: dict[str, Any] = await alice.evaluate(
            """() => ({connection: session.connection.connectionId, stream: publisher.stream.streamId,
                      streams: session.streams.map((s) => s.streamId).sort(), log: window.log.slice(),
                      samePublisher: window.publisher === window.kept.publisher,
                      sameSubscriber: window.subscriber === window.kept.subscriber,
                      elements: document.contains(publisher.element) && document.contains(subscriber.element),
                      newPublisherPc: publisher._salon.pc !== window.kept.publisherPc,
                      oldPublisherPcClosed: window.kept.publisherPc.connectionState === 'closed',
                      newReceivingPc: session._s._subscribePc !== window.kept.receivingPc,
                      connected: session.isConnected()})"""
        )
        # (A signal to the session reaches its sender too: alice's own may already be there.)
        tail = [e for e in after["log"][len(before["log"]) :] if not e.startswith("signal:msg")]
        assert tail == ["sessionReconnecting", "sessionReconnected"], after["log"]
        assert (after["connection"], after["stream"], after["streams"]) == (
            before["connection"],
            before["stream"],
            before["streams"],
        ), (before, after)
        assert after["samePublisher"] and after["sameSubscriber"] and after["elements"], after
        assert after["newPublisherPc"] and after["oldPublisherPcClosed"] and after["newReceivingPc"], after
        assert after["connected"], after
        assert await alice.evaluate("window.subscriberEvents") == ["disconnected", "connected"]

        # The signal sent during the gap goes after, once, and its handler is called once.
        await wait_for(
            bob, "window.log.some((e) => e.startsWith('signal:msg'))", 15000, "the held signal at bob"
        )
        await wait_for(alice, "window.signalCallbacks.length > 0", 10000, "the signal's completion handler")
        # Media set up again both ways: bob's subscriber plays alice's stream from her new peer
        # connection (the old one is closed), alice's subscriber plays bob's again.
        await _frames_grow(bob, 20, "bob's subscriber showing alice after the resume")
        await _frames_grow(alice, 20, "alice's subscriber showing bob after the resume")
        await _frames_grow(alice, 20, "alice's publisher showing her camera", selector=PUBLISHER_VIDEO)
        await _playing(alice, "alice playing bob after the resume")
        # The subscriber's element plays the new tracks only (the old ones, ended, left it).
        tracks = await alice.evaluate(
            "() => subscriber._video.srcObject.getTracks().map((t) => t.kind + ' ' + t.readyState).sort()"
        )
        assert tracks == ["audio live", "video live"], tracks
        assert await alice.evaluate("window.signalCallbacks") == ["sent"]
        mine = f"signal:msg sent while away from {before['connection']}"
        assert (await alice.evaluate("window.log.slice()"))[len(before["log"]) :] == [
            "sessionReconnecting",
            "sessionReconnected",
            mine,
        ]

        # Bob saw nothing of it but the signal: no connection or stream destroyed or created.
        bob_after: list[str] = await bob.evaluate("window.log.slice()")
        assert bob_after[len(bob_before) :] == [mine], bob_after
        assert await bob.evaluate("subscriber.stream.streamId") == before["stream"]
        assert await alice.evaluate("window.errors") == [] and await bob.evaluate("window.errors") == []


async def test_an_opentok_app_past_the_grace_period_is_disconnected_not_reconnected_anew(
    short_grace_server: RunningServer, browser: Browser
) -> None:
    """OpenTok.js: a client that cannot restore its connection disconnects from the session
    (sessionDisconnected, networkDisconnected); it never comes back as a new connection."""
    server = short_grace_server
    session_id = server.session()
    async with TcpProxy(server.url) as proxy:
        alice = await open_ot_page(browser, proxy.url, "alice")
        bob = await open_ot_page(browser, server.url, "bob")
        await _start_app(alice, server, session_id)
        await _start_app(bob, server, session_id, publish=False)
        await _playing(bob, "bob playing alice")
        ids = await alice.evaluate(
            "() => ({connection: session.connection.connectionId, stream: publisher.stream.streamId})"
        )
        proxy.freeze()
        proxy.drop()
        await wait_for(alice, "window.log.includes('sessionReconnecting')", 15000, "alice reconnecting")
        await alice.evaluate(SIGNAL_DURING_THE_GAP)
        # The server gives up on alice after its 1 s grace period: bob sees her go.
        await wait_for(
            bob,
            f"window.log.includes('connectionDestroyed {ids['connection']} networkDisconnected')",
            15000,
            "alice destroyed at bob",
        )
        proxy.thaw()

        await wait_for(
            alice, "window.log.some((e) => e.startsWith('sessionDisconnected'))", 40000, "alice's end"
        )
        log: list[str] = await alice.evaluate("window.log.slice()")
        at = log.index("sessionReconnecting")
        assert log[at:] == [
            "sessionReconnecting",
            "publisher streamDestroyed networkDisconnected",
            "sessionDisconnected networkDisconnected",
        ], log
        state = await alice.evaluate(
            """() => ({connection: session.connection === undefined, connected: session.isConnected(),
                      streams: session.streams.length(),
                      publisherElement: document.contains(publisher.element),
                      callbacks: window.signalCallbacks})"""
        )
        # The held signal fails once; the default action removed the publisher's widget.
        assert state == {
            "connection": True,
            "connected": False,
            "streams": 0,
            "publisherElement": False,
            "callbacks": ["OT_NOT_CONNECTED"],
        }, state
        bob_log: list[str] = await bob.evaluate("window.log.slice()")
        assert bob_log.count(f"streamDestroyed {ids['stream']} networkDisconnected") == 1, bob_log
        # Alice never came back as someone new: bob saw one connection of hers come, and go.
        assert len([e for e in bob_log if e.startswith("connectionCreated")]) == 2, bob_log  # bob's, alice's

        # Until her app connects again: a new connection, which bob sees come.
        await alice.evaluate(
            """() => new Promise((resolve, reject) =>
                session.connect(token, (error) => (error ? reject(error) : resolve())))"""
        )
        again = await alice.evaluate("session.connection.connectionId")
        assert again != ids["connection"]
        await wait_for(
            bob, f"window.log.includes('connectionCreated {again}')", 10000, "alice's new connection"
        )


async def test_a_python_client_resuming_goes_unnoticed_by_an_opentok_app(
    grace_server: RunningServer, browser: Browser
) -> None:
    server = grace_server
    session_id = server.session()
    async with TcpProxy(server.url) as proxy:
        page = await open_ot_page(browser, server.url, "browser")
        await _start_app(page, server, session_id)
        bot = Session(
            session_id, server.token(session_id, data="bot"), proxy.url, ice_addresses=["127.0.0.1"]
        )
        events: list[object] = []
        bot.on(Reconnecting, events.append)
        bot.on(Reconnected, events.append)
        async with bot:
            stream = await bot.publish(Publisher("bot"))
            await _playing(page, "the page playing the bot")
            before: list[str] = await page.evaluate("window.log.slice()")
            assert f"streamCreated {stream.stream_id}" in before, before

            proxy.freeze()
            proxy.drop()
            deadline = asyncio.get_running_loop().time() + 15
            while not events:
                assert asyncio.get_running_loop().time() < deadline, "the bot never noticed its link go"
                await asyncio.sleep(0.1)
            await asyncio.sleep(5)  # the outage itself
            proxy.thaw()
            deadline = asyncio.get_running_loop().time() + 40
            while not any(isinstance(e, Reconnected) for e in events):
                assert asyncio.get_running_loop().time() < deadline, f"the bot did not reconnect: {events}"
                await asyncio.sleep(0.1)
            reconnected = next(e for e in events if isinstance(e, Reconnected))
            assert reconnected.resumed and bot.state is SessionState.CONNECTED
            # The page keeps playing the bot's stream (its media set up again by the bot).
            await _frames_grow(page, 20, "the page showing the bot after its resume")
            await _playing(page, "the page playing the bot after its resume")
            assert await page.evaluate("window.log.slice()") == before
            assert await page.evaluate("subscriber.stream.streamId") == stream.stream_id
            assert await page.evaluate("window.errors") == []


@pytest.fixture
def no_grace_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0, reconnect_grace=0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


async def test_an_opentok_app_on_a_server_without_a_grace_period_is_disconnected_at_once(
    no_grace_server: RunningServer, browser: Browser
) -> None:
    """A server that keeps nothing to resume (--reconnect-grace 0): the dropped page's session
    ends (networkDisconnected) without trying to come back as a new connection."""
    server = no_grace_server
    session_id = server.session()
    async with TcpProxy(server.url) as proxy:
        alice = await open_ot_page(browser, proxy.url, "alice")
        await _start_app(alice, server, session_id, publish=False)
        await wait_for(alice, "session.isConnected() && window.log.length > 0", what="alice connected")
        proxy.drop()
        await wait_for(
            alice, "window.log.some((e) => e.startsWith('sessionDisconnected'))", 15000, "alice's end"
        )
        log: list[str] = await alice.evaluate("window.log.slice()")
        assert log[1:] == ["sessionDisconnected networkDisconnected"], log
        assert await alice.evaluate("session.connection === undefined && !session.isConnected()")


async def test_an_opentok_app_learns_on_resuming_what_came_meanwhile_and_subscribes_to_it(
    grace_server: RunningServer, browser: Browser
) -> None:
    """Carol joins and publishes while alice's link is down: on resuming alice gets her
    connectionCreated and streamCreated (before sessionReconnected), and the app's subscribe
    from its streamCreated handler plays carol's video."""
    server = grace_server
    session_id = server.session()
    async with TcpProxy(server.url) as proxy:
        alice = await open_ot_page(browser, proxy.url, "alice")
        carol = await open_ot_page(browser, server.url, "carol")
        await _start_app(alice, server, session_id, publish=False)
        await wait_for(alice, "session.isConnected() && window.log.length > 0", what="alice connected")
        alice_id = await alice.evaluate("session.connection.connectionId")
        proxy.freeze()
        proxy.drop()
        await wait_for(alice, "window.log.includes('sessionReconnecting')", 15000, "alice reconnecting")
        await _start_app(carol, server, session_id, publish=True)
        await wait_for(carol, "!!publisher.stream", 20000, "carol publishing")
        ids = await carol.evaluate(
            "() => ({connection: session.connection.connectionId, stream: publisher.stream.streamId})"
        )
        # Alice is suspended, not gone: carol sees her connection (and no stream of hers).
        assert f"connectionCreated {alice_id}" in await carol.evaluate("window.log.slice()")
        # What alice's session asks of the server from now on (to see it subscribe only once).
        await alice.evaluate(
            """() => {
                window.requests = [];
                const salonSession = session._s;
                const request = salonSession._request.bind(salonSession);
                salonSession._request = (message) => {
                    window.requests.push(message.type);
                    return request(message);
                };
            }"""
        )
        proxy.thaw()

        await wait_for(alice, "window.log.includes('sessionReconnected')", 40000, "alice reconnected")
        log: list[str] = await alice.evaluate("window.log.slice()")
        assert log[log.index("sessionReconnecting") :] == [
            "sessionReconnecting",
            f"connectionCreated {ids['connection']}",
            f"streamCreated {ids['stream']}",
            "sessionReconnected",
        ], log
        assert await alice.evaluate("session.connection.connectionId") == alice_id
        await _playing(alice, "alice playing carol, subscribed on resuming")
        await _frames_grow(alice, 20, "alice's subscriber showing carol")
        tracks = await alice.evaluate(
            "() => subscriber._video.srcObject.getTracks().map((t) => t.kind + ' ' + t.readyState).sort()"
        )
        assert tracks == ["audio live", "video live"], tracks
        requests = [r for r in await alice.evaluate("window.requests") if r != "ice_candidate"]
        assert requests == ["subscribe"], requests  # once: not subscribed again by the resume
        assert await alice.evaluate("window.errors") == [] and await carol.evaluate("window.errors") == []


async def test_an_opentok_app_resumes_over_a_link_the_server_still_holds(
    grace_server: RunningServer, browser: Browser
) -> None:
    """The page's end of its link resets while the server's end stays open and silent (the
    server would notice only at its heartbeat timeout, 15 s): the page resumes at once, the
    server replaces the old link, and the other page sees nothing."""
    server = grace_server
    session_id = server.session()
    async with TcpProxy(server.url) as proxy:
        alice = await open_ot_page(browser, proxy.url, "alice")
        bob = await open_ot_page(browser, server.url, "bob")
        await _start_app(alice, server, session_id)
        await _start_app(bob, server, session_id, publish=False)
        await _playing(bob, "bob playing alice")
        ids = await alice.evaluate(
            "() => ({connection: session.connection.connectionId, stream: publisher.stream.streamId})"
        )
        alice_before: list[str] = await alice.evaluate("window.log.slice()")
        bob_before: list[str] = await bob.evaluate("window.log.slice()")
        proxy.cut()
        await wait_for(alice, "window.log.includes('sessionReconnected')", 10000, "alice resumed")
        assert (await alice.evaluate("window.log.slice()"))[len(alice_before) :] == [
            "sessionReconnecting",
            "sessionReconnected",
        ]
        after = await alice.evaluate(
            "() => ({connection: session.connection.connectionId, stream: publisher.stream.streamId})"
        )
        assert after == ids, (after, ids)
        await _frames_grow(bob, 20, "bob's subscriber showing alice after the resume")
        assert await bob.evaluate("window.log.slice()") == bob_before
