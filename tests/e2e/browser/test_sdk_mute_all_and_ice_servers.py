"""The browser SDK in real Chromium: ``forceMuteAll`` and the ICE servers of its peer connections.

* A moderator page that publishes too calls ``forceMuteAll([its own stream])``: the two other
  publishers get ``muteForced`` (session and publisher), their microphone track is disabled
  and the tone the moderator received from each stops (its subscribers' audio energy falls to
  silence), ``hasAudio`` turns false for everyone; the moderator's own stream keeps its audio.
* With the server handing out a real coturn (``use-auth-secret``), the session's
  ``iceServers`` (the minted username and HMAC credential) are what the publisher's and the
  subscriber's ``RTCPeerConnection`` are configured with, and Chromium gathers a relay
  candidate with them; ``initSession(id, {iceServers})`` replaces them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser_helpers import launch, open_sdk_page, write_tone
from playwright.async_api import Page, Playwright

from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.e2e.test_turn import Coturn, coturn  # noqa: F401 (the fixture)

pytestmark = pytest.mark.timeout(120)

#: Connect ``window.session`` with listeners logging into ``window.log``.
CONNECT = """async ([sessionId, token, options]) => {
    window.log = [];
    const s = window.salon.initSession(sessionId, options || {});
    window.session = s;
    s.on("muteForced", (e) => window.log.push({type: "muteForced", streamId: e.stream.streamId}));
    s.on("streamPropertyChanged", (e) => window.log.push({type: "streamPropertyChanged",
        streamId: e.stream.streamId, changedProperty: e.changedProperty, newValue: e.newValue}));
    await s.connect(token);
}"""

#: Publish (audio, and video if asked) as ``window.publisher``; returns the stream ID.
PUBLISH = """async ([name, video]) => {
    const publisher = window.salon.initPublisher(document.body, {name, video});
    publisher.on("muteForced", () => window.log.push({type: "publisherMuteForced"}));
    window.publisher = publisher;
    await window.session.publish(publisher);
    return publisher.stream.streamId;
}"""

#: Total audio energy received so far by each subscriber in ``window.subs`` (by stream ID).
ENERGY = """async () => {
    const out = {};
    for (const [id, sub] of Object.entries(window.subs)) {
        const stats = await sub.getStats();
        out[id] = 0;
        stats.forEach((r) => {
            if (r.type === "inbound-rtp" && r.kind === "audio") out[id] = r.totalAudioEnergy || 0;
        });
    }
    return out;
}"""


async def energy_in(page: Page, seconds: float) -> dict[str, float]:
    """Audio energy each subscriber of ``page`` received during the next ``seconds``."""
    before: dict[str, float] = await page.evaluate(ENERGY)
    await page.wait_for_timeout(seconds * 1000)
    after: dict[str, float] = await page.evaluate(ENERGY)
    return {sid: after[sid] - before[sid] for sid in before}


async def test_force_mute_all_silences_the_others_but_not_the_excluded(
    media_server: RunningServer, pw: Playwright, tmp_path: pathlib.Path
) -> None:
    tone = write_tone(tmp_path / "tone.wav", hz=440.0, amplitude=0.4)
    browser = await launch(pw, extra_args=(f"--use-file-for-fake-audio-capture={tone}",))
    try:
        server = media_server
        sid = server.session()
        mod, alice, bob = [await open_sdk_page(browser, server.url, name) for name in ("mod", "alice", "bob")]
        await mod.evaluate(CONNECT, [sid, server.token(sid, "moderator"), None])
        mod_stream = await mod.evaluate(PUBLISH, ["mod", False])
        streams = {}
        for name, page in (("alice", alice), ("bob", bob)):
            await page.evaluate(CONNECT, [sid, server.token(sid), None])
            streams[name] = await page.evaluate(PUBLISH, [name, False])
        await mod.evaluate(
            """async (ids) => {
                window.subs = {};
                for (const id of ids) {
                    while (!window.session.streams.get(id)) await new Promise((r) => setTimeout(r, 50));
                    window.subs[id] = await window.session.subscribe(window.session.streams.get(id),
                        document.body, {subscribeToVideo: false});
                }
            }""",
            list(streams.values()),
        )
        await mod.wait_for_function(
            "Object.values(window.subs).every((s) => s.pc.connectionState === 'connected')", timeout=20000
        )
        deadline = time.monotonic() + 20
        while min((loud := await energy_in(mod, 1.5)).values()) < 0.01:
            assert time.monotonic() < deadline, f"the tones do not reach the moderator: {loud}"

        await mod.evaluate("async (own) => window.session.forceMuteAll([own])", mod_stream)

        for name, page in (("alice", alice), ("bob", bob)):
            await page.wait_for_function(
                "window.log.some((e) => e.type === 'publisherMuteForced')", timeout=10000
            )
            state = await page.evaluate(
                """() => ({track: window.publisher.audioTrack.enabled,
                          session: window.log.filter((e) => e.type === "muteForced")
                                             .map((e) => e.streamId)})"""
            )
            assert state == {"track": False, "session": [streams[name]]}, (name, state)
        for stream_id in streams.values():
            await mod.wait_for_function(
                """(id) => window.log.some((e) => e.type === "streamPropertyChanged" && e.streamId === id
                          && e.changedProperty === "hasAudio" && e.newValue === false)""",
                arg=stream_id,
                timeout=10000,
            )
        # The tones stop (packets still flow: Chromium sends silence for a disabled track).
        deadline = time.monotonic() + 10
        while max((quiet := await energy_in(mod, 1.5)).values()) > min(loud.values()) / 100:
            assert time.monotonic() < deadline, f"still audible after forceMuteAll: {quiet} (was {loud})"
        # The excluded stream, the moderator's own, keeps its audio.
        own: dict[str, Any] = await mod.evaluate(
            """() => ({track: window.publisher.audioTrack.enabled,
                      forced: window.log.filter((e) => e.type === "muteForced").length,
                      hasAudio: window.publisher.stream.hasAudio})"""
        )
        assert own == {"track": True, "forced": 0, "hasAudio": True}, own
    finally:
        await browser.close()


@pytest.fixture
def turn_server(tmp_path: pathlib.Path, coturn: Coturn) -> Iterator[RunningServer]:  # noqa: F811
    config = ServerConfig(
        port=0,
        data_dir=tmp_path / "salon",
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0),
        workers=1,
        ice_servers=(f"turn:127.0.0.1:{coturn.port}",),
        turn_secret=coturn.secret,
    )
    with ServerThread(config) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


#: The ICE servers of a peer connection, as Chromium reports its configuration.
SERVERS = """(pc) => pc.getConfiguration().iceServers.map(
    (s) => ({urls: [].concat(s.urls), username: s.username, credential: s.credential}))"""

#: Whether the publisher's ICE gathered a relay candidate.
GATHERED_RELAY = """async () => {
    const stats = await window.publisher.pc.getStats();
    let relay = false;
    stats.forEach((r) => { if (r.type === "local-candidate" && r.candidateType === "relay") relay = true; });
    return relay;
}"""


def check_minted(handed: dict[str, Any], coturn: Coturn) -> None:  # noqa: F811
    """``handed`` is a TURN server entry for ``coturn`` with a fresh credential of its secret."""
    assert handed["urls"] == [f"turn:127.0.0.1:{coturn.port}"]
    expiry, _, user = handed["username"].partition(":")
    assert int(expiry) > time.time() and user, handed["username"]
    mac = hmac.new(coturn.secret.encode(), handed["username"].encode(), hashlib.sha1).digest()
    assert handed["credential"] == base64.b64encode(mac).decode(), "not signed with coturn's secret"


async def test_the_ice_servers_handed_out_configure_the_peer_connections(
    turn_server: RunningServer,
    coturn: Coturn,  # noqa: F811
    pw: Playwright,
) -> None:
    server = turn_server
    sid = server.session()
    browser = await launch(pw)
    try:
        # A publisher: its peer connection has the session's minted TURN server, and
        # Chromium allocates a relay candidate on coturn with it.
        pub = await open_sdk_page(browser, server.url, "publisher")
        await pub.evaluate(CONNECT, [sid, server.token(sid), None])
        stream_id = await pub.evaluate(PUBLISH, ["me", True])
        (handed,) = await pub.evaluate("() => window.session.iceServers")
        check_minted(handed, coturn)
        assert await pub.evaluate(f"() => ({SERVERS})(window.publisher.pc)") == [handed]
        await pub.wait_for_function(GATHERED_RELAY, timeout=20000, polling=200)

        # A subscriber on another page: its own minted credential, on its subscriber's pc.
        sub = await open_sdk_page(browser, server.url, "subscriber")
        await sub.evaluate(CONNECT, [sid, server.token(sid), None])
        await sub.evaluate(
            """async (id) => {
                while (!window.session.streams.get(id)) await new Promise((r) => setTimeout(r, 50));
                window.sub = await window.session.subscribe(window.session.streams.get(id), document.body);
            }""",
            stream_id,
        )
        (theirs,) = await sub.evaluate("() => window.session.iceServers")
        check_minted(theirs, coturn)
        assert theirs["username"] != handed["username"], "one credential for two connections"
        assert await sub.evaluate(f"() => ({SERVERS})(window.sub.pc)") == [theirs]

        # A session's own iceServers replace the server's.
        other = await open_sdk_page(browser, server.url, "own")
        own = [{"urls": [f"stun:127.0.0.1:{coturn.port}"]}]
        await other.evaluate(CONNECT, [sid, server.token(sid), {"iceServers": own}])
        await other.evaluate(PUBLISH, ["own", False])
        servers = await other.evaluate(
            "() => window.publisher.pc.getConfiguration().iceServers.map((s) => [].concat(s.urls))"
        )
        assert servers == [own[0]["urls"]]
    finally:
        await browser.close()
