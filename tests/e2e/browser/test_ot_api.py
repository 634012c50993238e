"""OpenTok.js semantics of salon's OT in Chromium, beyond the tutorial apps: return values
(publish and subscribe give their objects at once), cancelable default actions, handler
forms, insertDefaultUI false, targeted signals, and OpenTok's error names and codes."""

from __future__ import annotations

import pytest
from browser_helpers import open_page
from ot_helpers import open_ot_page
from playwright.async_api import Browser

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)

BODY = '<div id="pub"></div><div id="subs"></div><div id="kept"></div>'

#: Shared page code: connect a session (a promise), wait for a condition.
PRELUDE = """
window.connectSession = (apiKey, sessionId, token) => new Promise((resolve, reject) => {
    const s = OT.initSession(apiKey, sessionId);
    s.connect(token, (err) => (err ? reject(err) : resolve(s)));
});
window.until = (test, what, ms = 20000) => new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const tick = () => {
        const value = test();
        if (value) return resolve(value);
        if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`));
        setTimeout(tick, 50);
    };
    tick();
});
"""


async def test_publish_subscribe_and_default_actions(browser: Browser, server: RunningServer) -> None:
    session_id = server.session()
    page = await open_ot_page(browser, server.url, "api", body=BODY)
    await page.add_script_tag(content=PRELUDE)
    result = await page.evaluate(
        """async ([apiKey, sessionId, tokenA, tokenB]) => {
            const out = {};
            const a = await connectSession(apiKey, sessionId, tokenA);
            const b = await connectSession(apiKey, sessionId, tokenB);
            // on({type: handler}, context), space-separated types, once and off.
            const context = {created: 0, once: 0, both: []};
            b.on({streamCreated: function () { this.created += 1; }}, context);
            b.once("streamCreated", () => { context.once += 1; });
            const dropped = () => { context.dropped = true; };
            b.on("streamCreated", dropped);
            b.off("streamCreated", dropped);
            b.on("streamCreated streamDestroyed", (e) => context.both.push(e.type));

            // publish(target, properties, handler) returns the Publisher at once; with
            // insertDefaultUI false nothing is inserted, videoElementCreated gives the video.
            let element = null;
            let published = false;
            const publisher = a.publish("pub", {name: "Cam", insertDefaultUI: false}, (err) => {
                if (err) throw err;
                published = true;
            });
            out.publishReturned = publisher instanceof OT.Publisher && !published;
            publisher.on("videoElementCreated", (e) => { element = e.element; });
            await until(() => published && element, "publish");
            out.noWidget = document.querySelector("#pub").children.length === 0;
            out.videoElement = element instanceof HTMLVideoElement && !element.isConnected;

            // subscribe returns the Subscriber before its handler runs.
            const stream = await until(() => b.streams.find({name: "Cam"}), "the stream at b");
            out.findByFunction = b.streams.where((s) => s.streamId === stream.streamId).length === 1;
            let subscribed = false;
            const sub1 = b.subscribe(stream, "subs", {insertMode: "append", width: 200, height: 150},
                                     (err) => { if (err) throw err; subscribed = true; });
            out.subscribeReturned = sub1 instanceof OT.Subscriber && !subscribed;
            await until(() => subscribed, "subscribed");
            out.subscribersForStream = b.getSubscribersForStream(stream).length === 1
                && b.getSubscribersForStream(stream)[0] === sub1;
            out.publisherForStream = a.getPublisherForStream(publisher.stream) === publisher;
            const widget = sub1.element;
            out.widgetSize = [widget.offsetWidth, widget.offsetHeight];

            // The video goes off: the stream's property changes, the subscriber says why and
            // its widget shows the poster.
            const changes = [];
            b.on("streamPropertyChanged", (e) => changes.push([e.changedProperty, e.oldValue, e.newValue]));
            const disabled = new Promise((r) => sub1.once("videoDisabled", (e) => r(e.reason)));
            publisher.publishVideo(false);
            out.disabledReason = await disabled;
            out.changes = changes;
            out.poster = widget.classList.contains("OT_audio-only");

            // streamDestroyed prevented: the subscriber's element stays; the publisher's
            // streamDestroyed prevented: the publisher is not destroyed.
            b.on("streamDestroyed", (e) => { e.preventDefault(); out.prevented = e.isDefaultPrevented(); });
            publisher.on("streamDestroyed", (e) => { out.publisherReason = e.reason; e.preventDefault(); });
            let publisherDestroyed = false;
            publisher.on("destroyed", () => { publisherDestroyed = true; });
            a.unpublish(publisher);
            await until(() => out.prevented && out.publisherReason, "streamDestroyed");
            await new Promise((r) => setTimeout(r, 300));
            out.keptElement = widget.isConnected;
            out.publisherKept = !publisherDestroyed;
            out.context = context;
            return out;
        }""",
        [server.api_key, session_id, server.token(session_id), server.token(session_id)],
    )
    assert result["publishReturned"] and result["subscribeReturned"], result
    assert result["noWidget"] and result["videoElement"], result
    assert result["findByFunction"] and result["subscribersForStream"] and result["publisherForStream"]
    assert result["widgetSize"] == [200, 150]
    assert result["disabledReason"] == "publishVideo"
    assert result["changes"] == [["hasVideo", True, False]] and result["poster"] is True
    assert result["prevented"] is True and result["keptElement"] is True
    assert result["publisherReason"] == "unpublished" and result["publisherKept"] is True
    assert result["context"] == {"created": 1, "once": 1, "both": ["streamCreated", "streamDestroyed"]}


async def test_targeted_signals_and_opentok_error_codes(browser: Browser, server: RunningServer) -> None:
    session_id = server.session()
    page = await open_ot_page(browser, server.url, "errors", body=BODY)
    await page.add_script_tag(content=PRELUDE)
    result = await page.evaluate(
        """async ([apiKey, sessionId, tokenA, tokenB, tokenC, viewerToken]) => {
            const out = {};
            const exceptions = [];
            OT.on("exception", (e) => exceptions.push(e.code));
            // Before connect: subscribe and signal fail with OT_NOT_CONNECTED (1010).
            const idle = OT.initSession(apiKey, sessionId);
            await new Promise((r) => idle.signal({data: "x"}, (err) => {
                out.signalBefore = [err.name, err.code];
                r();
            }));
            // ...and subscribe gives no Subscriber, as in OpenTok.js (code 1501).
            out.subscribeBefore = [idle.subscribe({streamId: "x"}, "subs", {}, (err) => {
                out.subscribeError = [err.name, err.code];
            }) === undefined];
            const a = await connectSession(apiKey, sessionId, tokenA);
            const b = await connectSession(apiKey, sessionId, tokenB);
            const c = await connectSession(apiKey, sessionId, tokenC);
            // A signal to one connection reaches only it, from the sender's Connection.
            const got = {b: [], c: []};
            b.on("signal:chat", (e) => got.b.push([
                e.type, e.data, e.from.connectionId === a.connection.connectionId,
                e.from === b.connections.get(a.connection.connectionId)]));
            c.on("signal", (e) => got.c.push(e.type));
            await new Promise((r, j) => a.signal({type: "chat", data: "psst", to: b.connections.get(
                b.connection.connectionId)}, (err) => (err ? j(err) : r())));
            // ...the Connection object from a's own collection works as `to` as well:
            const toB = a.connections.get(b.connection.connectionId);
            await new Promise((r, j) => a.signal({type: "chat", data: "again", to: toB},
                                                 (err) => (err ? j(err) : r())));
            await until(() => got.b.length === 2, "two signals at b");
            await new Promise((r) => setTimeout(r, 300));
            out.signals = got;
            // Data over the server's 8192 characters: OT_INVALID_PARAMETER, 413.
            await new Promise((r) => a.signal({type: "chat", data: "x".repeat(9000)}, (err) => {
                out.tooLarge = [err.name, err.code];
                r();
            }));
            // A publisher token cannot moderate: OT_PERMISSION_DENIED with OpenTok's codes.
            await new Promise((r) => a.forceDisconnect(c.connection, (err) => {
                out.forceDisconnect = [err.name, err.code];
                r();
            }));
            // A subscriber token cannot publish.
            const viewer = await connectSession(apiKey, sessionId, viewerToken);
            out.capabilities = [viewer.capabilities.publish, viewer.capabilities.subscribe,
                                a.capabilities.forceDisconnect];
            await new Promise((r) => viewer.publish("pub", {}, (err) => {
                if (err) { out.publish = [err.name, err.code]; r(); }
            }));
            // An unknown session ID fails connect with OT_AUTHENTICATION_ERROR or OT_INVALID_SESSION_ID.
            const other = OT.initSession(apiKey, "2_MX4" + "0".repeat(20));
            await new Promise((r) => other.connect(tokenA, (err) => {
                out.wrongSession = [err.name, err.code];
                r();
            }));
            out.exceptions = exceptions;
            out.stillConnected = a.isConnected() && c.isConnected();
            return out;
        }""",
        [
            server.api_key,
            session_id,
            server.token(session_id),
            server.token(session_id),
            server.token(session_id),
            server.token(session_id, "subscriber"),
        ],
    )
    # OpenTok.js gives signal errors HTTP-like codes.
    assert result["signalBefore"] == ["OT_NOT_CONNECTED", 500]
    assert result["signals"]["b"] == [
        ["signal:chat", "psst", True, True],
        ["signal:chat", "again", True, True],
    ]
    assert result["signals"]["c"] == []
    assert result["forceDisconnect"] == ["OT_PERMISSION_DENIED", 1520]
    assert result["capabilities"] == [0, 1, 0]
    assert result["publish"] == ["OT_PERMISSION_DENIED", 1500]
    assert result["wrongSession"] == ["OT_AUTHENTICATION_ERROR", 1004]
    assert result["subscribeBefore"] == [True] and result["subscribeError"] == ["OT_NOT_CONNECTED", 1501]
    assert result["tooLarge"] == ["OT_INVALID_PARAMETER", 413]
    assert result["exceptions"] == [500, 1501, 413, 1520, 1500, 1004] and result["stillConnected"] is True


async def test_pages_on_another_origin_load_the_script_and_the_module(
    browser: Browser, server: RunningServer
) -> None:
    """A page of http://localhost:PORT loads the classic script and imports the ES module from
    http://127.0.0.1:PORT (another origin: the module needs CORS), and both talk to the server
    they came from, not to the page's origin."""
    session_id = server.session()
    page_url = server.url.replace("127.0.0.1", "localhost")
    assert page_url != server.url
    page = await open_page(browser, "other-origin")
    await page.goto(f"{page_url}/")
    await page.evaluate("() => document.body.replaceChildren()")
    await page.add_script_tag(url=f"{server.url}/v2/js/opentok.js")
    result = await page.evaluate(
        """async ([scriptServer, apiKey, sessionId, token1, token2]) => {
            const connect = (ot, token) => new Promise((resolve, reject) => {
                const s = ot.initSession(apiKey, sessionId);
                s.connect(token, (err) => (err ? reject(err) : resolve(s)));
            });
            const classic = await connect(OT, token1);
            const module = await import(scriptServer + "/v2/js/opentok.mjs");
            const viaModule = await connect(module.default, token2);
            // The classic session sees the module's connection arrive: the same session, same server.
            const deadline = Date.now() + 20000;
            while (!classic.connections.has(viaModule.connection.connectionId) && Date.now() < deadline) {
                await new Promise((r) => setTimeout(r, 50));
            }
            const out = {
                pageOrigin: location.origin,
                classicConnected: classic.isConnected(),
                moduleConnected: viaModule.isConnected(),
                sameSession: classic.connections.has(viaModule.connection.connectionId),
            };
            classic.disconnect();
            viaModule.disconnect();
            return out;
        }""",
        [server.url, server.api_key, session_id, server.token(session_id), server.token(session_id)],
    )
    assert result["pageOrigin"] == page_url
    assert result["classicConnected"] and result["moduleConnected"] and result["sameSession"], result


async def test_switching_camera_and_microphone_keeps_the_stream(
    browser: Browser, server: RunningServer
) -> None:
    """cycleVideo / setVideoSource / setAudioSource replace the tracks in place: the stream
    and the subscription stay, and the subscriber goes on receiving."""
    session_id = server.session()
    page = await open_ot_page(browser, server.url, "switch", body=BODY)
    await page.add_script_tag(content=PRELUDE)
    result = await page.evaluate(
        """async ([apiKey, sessionId, tokenA, tokenB]) => {
            const a = await connectSession(apiKey, sessionId, tokenA);
            const b = await connectSession(apiKey, sessionId, tokenB);
            const publisher = await a.publish.promise("pub", {insertMode: "append"});
            const stream = await until(() => b.streams.get(publisher.stream.streamId), "the stream at b");
            const sub = await b.subscribe.promise(stream, "subs", {insertMode: "append"});
            const received = async () => (await sub.getStats()).video.bytesReceived;
            const flowing = async (what) => {
                const before = await received();
                const deadline = Date.now() + 15000;
                while (Date.now() < deadline) {
                    await new Promise((r) => setTimeout(r, 200));
                    if (await received() > before) return true;
                }
                throw new Error(`no video received after ${what}`);
            };
            await flowing("subscribing");
            const oldVideo = publisher.getVideoSource().track;
            const cycled = await publisher.cycleVideo();
            const newVideo = publisher.getVideoSource().track;
            await flowing("cycleVideo");
            const oldAudio = publisher.getAudioSource();
            const changed = new Promise((r) => publisher.once("audioInputDeviceChanged", (e) => r(e.device)));
            const mic = await OT.getUserMedia({videoSource: null});
            await publisher.setAudioSource(mic.getAudioTracks()[0]);
            const device = await changed;
            const devices = await OT.getDevices();
            // Snapshots of both ends (base64 PNGs, as OpenTok.js gives them), then the
            // subscriber turns its video off: videoDisabled (subscribeToVideo) and the poster.
            const snapshots = [publisher.getImgData(), sub.getImgData()].map((d) => d && d.slice(0, 8));
            const disabled = new Promise((r) => sub.once("videoDisabled", (e) => r(e.reason)));
            sub.subscribeToVideo(false);
            const disabledReason = await disabled;
            return {
                snapshots,
                disabledReason,
                poster: sub.element.classList.contains("OT_audio-only"),
                cycledTo: typeof cycled.deviceId === "string" && cycled.deviceId.length > 0,
                replaced: newVideo !== oldVideo && oldVideo.readyState === "ended"
                    && newVideo.readyState === "live",
                type: publisher.getVideoSource().type,
                audioReplaced: publisher.getAudioSource() !== oldAudio && oldAudio.readyState === "ended",
                device: typeof device.deviceId === "string",
                sameStream: publisher.stream.streamId === stream.streamId && b.streams.length() === 1,
                kinds: [...new Set(devices.map((d) => d.kind))].sort(),
            };
        }""",
        [server.api_key, session_id, server.token(session_id), server.token(session_id)],
    )
    assert result == {
        "snapshots": ["iVBORw0K", "iVBORw0K"],  # the PNG signature
        "disabledReason": "subscribeToVideo",
        "poster": True,
        "cycledTo": True,
        "replaced": True,
        "type": "camera",
        "audioReplaced": True,
        "device": True,
        "sameStream": True,
        "kinds": ["audioInput", "videoInput"],
    }
