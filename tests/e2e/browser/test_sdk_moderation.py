"""The browser SDK used directly from pages: moderation, subscriber options, unpublish, signal({to}).

Two pages of the server's origin import ``/sdk/salon.js``: a moderator (token minted here
with the OpenTok server SDK, against the test server) and a publisher.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from browser_helpers import open_sdk_page
from playwright.async_api import Browser, Page

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)

#: Listeners that log what a page's session sees into ``window.log``.
SESSION = """async ([sessionId, token]) => {
    window.log = [];
    const log = (entry) => window.log.push(entry);
    const s = window.salon.initSession(sessionId);
    window.session = s;
    s.on("signal", (e) => log({type: "signal", signalType: e.signalType, data: e.data,
                                from: e.from && e.from.connectionId}));
    s.on("streamCreated", (e) => log({type: "streamCreated", streamId: e.stream.streamId}));
    s.on("streamDestroyed", (e) => log({type: "streamDestroyed", streamId: e.stream.streamId,
                                        reason: e.reason}));
    s.on("streamPropertyChanged", (e) => log({type: "streamPropertyChanged", streamId: e.stream.streamId,
                                              changedProperty: e.changedProperty, newValue: e.newValue}));
    s.on("connectionDestroyed", (e) => log({type: "connectionDestroyed",
                                            connectionId: e.connection.connectionId, reason: e.reason}));
    s.on("sessionDisconnected", (e) => log({type: "sessionDisconnected", reason: e.reason}));
    s.on("muteForced", (e) => log({type: "muteForced", streamId: e.stream.streamId}));
    await s.connect(token);
    return {connectionId: s.connection.connectionId, role: s.role};
}"""

#: How much media of ``kind`` the subscriber ``window.sub`` gets: video frames decoded or
#: audio packets received, from its own receivers' stats.
RECEIVED = """async (kind) => {
    const stats = await window.sub.getStats();
    let value = 0;
    stats.forEach((r) => {
        if (r.type !== "inbound-rtp" || r.kind !== kind) return;
        value = kind === "video" ? r.framesDecoded || 0 : r.packetsReceived || 0;
    });
    return value;
}"""


async def received(page: Page, kind: str) -> int:
    value: int = await page.evaluate(RECEIVED, kind)
    return value


async def flow(page: Page, kind: str, seconds: float) -> int:
    """How much ``kind`` media arrives in ``seconds``."""
    before = await received(page, kind)
    await page.wait_for_timeout(seconds * 1000)
    return await received(page, kind) - before


async def stops_flowing(page: Page, kind: str, quiet: float = 1.5, timeout: float = 20.0) -> None:
    """Wait until no ``kind`` media has arrived for ``quiet`` seconds (what was in flight has
    drained); fail if it still flows after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = await received(page, kind), loop.time()
    while loop.time() - since < quiet:
        assert loop.time() < deadline, f"{kind} still arriving {timeout} s after it was switched off"
        await page.wait_for_timeout(100)
        if (now := await received(page, kind)) != last:
            last, since = now, loop.time()


async def starts_flowing(page: Page, kind: str, timeout: float = 20.0) -> None:
    before = await received(page, kind)
    await page.wait_for_function(
        f"async ([kind, before]) => (await ({RECEIVED})(kind)) > before + 3",
        arg=[kind, before],
        timeout=timeout * 1000,
    )


async def wait_log(page: Page, predicate: str, timeout: float = 20.0) -> dict[str, Any]:
    """Wait until ``window.log`` has an entry matching the JS ``predicate`` (of ``e``); return it."""
    await page.wait_for_function(f"window.log.some((e) => {predicate})", timeout=timeout * 1000)
    entry: dict[str, Any] = await page.evaluate(f"window.log.find((e) => {predicate})")
    return entry


async def test_moderation_subscriber_options_unpublish_and_directed_signals(
    media_server: RunningServer, browser: Browser
) -> None:
    session_id = media_server.session()
    mod_token = media_server.token(session_id, "moderator", data="moderator")
    pub_token = media_server.token(session_id, "publisher", data="publisher")
    mod = await open_sdk_page(browser, media_server.url, "moderator")
    pub = await open_sdk_page(browser, media_server.url, "publisher")

    p = await pub.evaluate(SESSION, [session_id, pub_token])
    assert p["role"] == "publisher"
    stream_id = await pub.evaluate(
        """async () => {
            const publisher = window.salon.initPublisher(document.body, {name: "camera"});
            publisher.on("streamDestroyed",
                (e) => window.log.push({type: "publisherStreamDestroyed", reason: e.reason}));
            window.publisher = publisher;
            await window.session.publish(publisher);
            return publisher.stream.streamId;
        }"""
    )
    m = await mod.evaluate(SESSION, [session_id, mod_token])
    assert m["role"] == "moderator"
    await wait_log(mod, f"e.type === 'streamCreated' && e.streamId === '{stream_id}'")

    # Subscribe with neither audio nor video: nothing flows until switched on.
    await mod.evaluate(
        """async (id) => {
            const stream = window.session.streams.get(id);
            window.sub = await window.session.subscribe(stream, document.body,
                {subscribeToAudio: false, subscribeToVideo: false});
            window.sub.on("destroyed",
                (e) => window.log.push({type: "subscriberDestroyed", reason: e.reason}));
        }""",
        stream_id,
    )
    await mod.wait_for_function("window.sub.pc.connectionState === 'connected'", timeout=20000)
    assert await flow(mod, "video", 3) == 0
    assert await flow(mod, "audio", 1) == 0
    await mod.evaluate("window.sub.subscribeToVideo(true)")
    await starts_flowing(mod, "video")
    await mod.wait_for_function("window.sub.videoElement.videoWidth > 0", timeout=15000)
    assert await flow(mod, "audio", 1) == 0
    await mod.evaluate("window.sub.subscribeToAudio(true)")
    await starts_flowing(mod, "audio")
    await mod.evaluate("window.sub.subscribeToVideo(false)")
    await stops_flowing(mod, "video")
    assert await flow(mod, "video", 2) == 0
    assert await flow(mod, "audio", 1) > 0

    # signal({to}): only the target gets it; without `to`, everyone (the sender too).
    await pub.evaluate(
        f"window.session.signal({{type: 'dm', data: 'for the moderator', to: '{m['connectionId']}'}})"
    )
    await mod.evaluate(
        """async (to) => {
            const connection = window.session.connections.get(to);  // `to` as a Connection
            await window.session.signal({type: "dm", data: "for the publisher", to: connection});
            await window.session.signal({type: "all", data: "for everyone"});
        }""",
        p["connectionId"],
    )
    # The signal to all comes last on each page: anything wrongly delivered came before it.
    for page in (pub, mod):
        await wait_log(page, "e.type === 'signal' && e.signalType === 'all'")
    pub_signals = [(e["data"], e["from"]) for e in await pub.evaluate("window.log") if e["type"] == "signal"]
    mod_signals = [(e["data"], e["from"]) for e in await mod.evaluate("window.log") if e["type"] == "signal"]
    assert pub_signals == [("for the publisher", m["connectionId"]), ("for everyone", m["connectionId"])]
    assert mod_signals == [("for the moderator", p["connectionId"]), ("for everyone", m["connectionId"])]

    # A publisher's moderator calls are refused: SalonError permission_denied, nothing changes.
    refused = await pub.evaluate(
        """async ([modConnection, streamId]) => {
            const s = window.session;
            const calls = {
                forceDisconnect: () => s.forceDisconnect(modConnection),
                forceUnpublish: () => s.forceUnpublish(streamId),
                forceMuteStream: () => s.forceMuteStream(streamId),
            };
            const out = {};
            for (const [name, call] of Object.entries(calls)) {
                out[name] = await call().then(() => "resolved",
                    (e) => `${e instanceof window.salon.SalonError}:${e.code}`);
            }
            await s.signal({type: "still-here", data: "yes"});
            out.state = s.state;
            out.publishingAudio = window.publisher.publishingAudio;
            return out;
        }""",
        [m["connectionId"], stream_id],
    )
    assert refused == {
        "forceDisconnect": "true:permission_denied",
        "forceUnpublish": "true:permission_denied",
        "forceMuteStream": "true:permission_denied",
        "state": "connected",
        "publishingAudio": True,
    }
    await wait_log(mod, "e.type === 'signal' && e.signalType === 'still-here'")
    assert await mod.evaluate("window.session.state") == "connected"

    # The moderator mutes the publisher's stream.
    await mod.evaluate(f"window.session.forceMuteStream('{stream_id}')")
    assert (await wait_log(pub, "e.type === 'muteForced'"))["streamId"] == stream_id
    assert await pub.evaluate("window.publisher.publishingAudio") is False
    await wait_log(
        mod, "e.type === 'streamPropertyChanged' && e.changedProperty === 'hasAudio' && !e.newValue"
    )

    # unsubscribe.
    await mod.evaluate("window.session.unsubscribe(window.sub)")
    assert (await wait_log(mod, "e.type === 'subscriberDestroyed'"))["reason"] == "unsubscribed"
    assert await mod.evaluate("window.session.subscribers.size") == 0

    # unpublish: a second stream comes and goes; the devices stay open until destroy().
    second = await pub.evaluate(
        """async () => {
            const publisher = window.salon.initPublisher(document.body, {name: "second", audio: false});
            await window.session.publish(publisher);
            window.second = publisher;
            return publisher.stream.streamId;
        }"""
    )
    await wait_log(mod, f"e.type === 'streamCreated' && e.streamId === '{second}'")
    live = await pub.evaluate(
        """async () => {
            await window.session.unpublish(window.second);
            const live = window.second.videoTrack.readyState;
            const out = {stream: window.second.stream, live, publishers: window.session.publishers.size};
            await window.second.destroy();
            return out;
        }"""
    )
    assert live == {"stream": None, "live": "live", "publishers": 1}
    gone = await wait_log(mod, f"e.type === 'streamDestroyed' && e.streamId === '{second}'")
    assert gone["reason"] == "unpublished"

    # forceUnpublish, then forceDisconnect.
    await mod.evaluate(f"window.session.forceUnpublish('{stream_id}')")
    assert (await wait_log(pub, "e.type === 'publisherStreamDestroyed'"))["reason"] == "forceUnpublished"
    assert (await wait_log(mod, f"e.type === 'streamDestroyed' && e.streamId === '{stream_id}'"))[
        "reason"
    ] == "forceUnpublished"
    await mod.evaluate(f"window.session.forceDisconnect('{p['connectionId']}')")
    assert (await wait_log(pub, "e.type === 'sessionDisconnected'"))["reason"] == "forceDisconnected"
    destroyed = await wait_log(mod, "e.type === 'connectionDestroyed'")
    assert destroyed == {
        "type": "connectionDestroyed",
        "connectionId": p["connectionId"],
        "reason": "forceDisconnected",
    }
    assert await pub.evaluate("window.session.state") == "disconnected"
    assert await mod.evaluate("window.session.state") == "connected"
