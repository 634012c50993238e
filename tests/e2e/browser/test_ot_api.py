"""OpenTok.js semantics of salon's OT in Chromium, beyond the tutorial apps: return values
(publish and subscribe give their objects at once), cancelable default actions, handler
forms, insertDefaultUI false, targeted signals, and OpenTok's error names and codes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from browser_helpers import open_page
from ot_helpers import open_ot_page
from playwright.async_api import Browser, Page

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


async def test_publish_subscribe_and_default_actions(server: RunningServer, browser: Browser) -> None:
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


async def test_targeted_signals_and_opentok_error_codes(server: RunningServer, browser: Browser) -> None:
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
    server: RunningServer, browser: Browser
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
    server: RunningServer, browser: Browser
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


async def test_cpu_performance_changes_are_dispatched(server: RunningServer, browser: Browser) -> None:
    """cpuPerformanceChanged follows the Compute Pressure API's CPU state, emulated through the
    DevTools protocol, once per change."""
    session_id = server.session()
    page = await open_ot_page(browser, server.url, "cpu", body=BODY)
    await page.add_script_tag(content=PRELUDE)
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Emulation.setPressureSourceOverrideEnabled", {"enabled": True, "source": "cpu"})
    await cdp.send("Emulation.setPressureStateOverride", {"source": "cpu", "state": "nominal"})
    await page.evaluate(
        """async ([apiKey, sessionId, token]) => {
            window.states = [];
            const s = OT.initSession(apiKey, sessionId);
            s.on("cpuPerformanceChanged", (e) => window.states.push([e.cpuPerformanceState, e.target === s]));
            await new Promise((resolve, reject) => {
                s.connect(token, (err) => (err ? reject(err) : resolve()));
            });
        }""",
        [server.api_key, session_id, server.token(session_id)],
    )
    await page.wait_for_function("window.states.length === 1", timeout=20000)
    for state in ("serious", "critical"):
        await cdp.send("Emulation.setPressureStateOverride", {"source": "cpu", "state": state})
        await page.wait_for_function(f"window.states.some(([s]) => s === '{state}')", timeout=20000)
    # The observer samples every second; each change is dispatched once.
    assert await page.evaluate("window.states") == [["nominal", True], ["serious", True], ["critical", True]]


#: The page's video send rate over the next window (bits per second), from the publisher's
#: own RTCStatsReport.
SEND_RATE = """async (ms) => {
    const sent = async () => {
        let bytes = 0;
        for (const {rtcStatsReport} of await window.publisher.getRtcStatsReport()) {
            rtcStatsReport.forEach((r) => {
                if (r.type === "outbound-rtp" && r.kind === "video") bytes += r.bytesSent;
            });
        }
        return bytes;
    };
    const before = await sent();
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, ms));
    return ((await sent()) - before) * 8 / ((performance.now() - t0) / 1000);
}"""


async def _wait_rate(page: Page, test: Callable[[float], bool], what: str) -> float:
    """Measure the send rate over 1.5 s windows until ``test`` holds (20 s at most)."""
    rates = []
    for _ in range(13):
        rates.append(await page.evaluate(SEND_RATE, 1500))
        if test(rates[-1]):
            return rates[-1]
    raise AssertionError(f"the video send rate never {what}: {[round(r) for r in rates]} bit/s")


async def test_max_video_bitrate_and_presets(server: RunningServer, browser: Browser) -> None:
    session_id = server.session()
    page = await open_ot_page(browser, server.url, "bitrate", body=BODY)
    await page.add_script_tag(content=PRELUDE)
    state = await page.evaluate(
        """async ([apiKey, sessionId, token]) => {
            const s = await connectSession(apiKey, sessionId, token);
            window.publisher = await s.publish.promise("pub", {insertMode: "append", resolution: "640x480"});
            const errors = [];
            const calls = [() => publisher.setMaxVideoBitrate(100),
                           () => publisher.setVideoBitratePreset("fast")];
            for (const call of calls) {
                await call().catch((e) => errors.push([e.name, e.code]));
            }
            return {preset: publisher.getVideoBitratePreset(), max: publisher.getMaxVideoBitrate(), errors};
        }""",
        [server.api_key, session_id, server.token(session_id)],
    )
    assert state == {
        "preset": "default",
        "max": 0,
        "errors": [["OT_INVALID_PARAMETER", 1011], ["OT_INVALID_PARAMETER", 1011]],
    }
    # Uncapped, the fake camera's moving pattern goes well above the caps below...
    await _wait_rate(page, lambda rate: rate > 250_000, "rose above 250 kbit/s uncapped")
    # ...extra_bw_saver at 640x480 caps it at 100 kbit/s (OpenTok.js's table)...
    await page.evaluate("publisher.setVideoBitratePreset('extra_bw_saver')")
    assert await page.evaluate("publisher.getVideoBitratePreset()") == "extra_bw_saver"
    await _wait_rate(page, lambda rate: rate < 100_000 * 1.3, "fell under extra_bw_saver's 100 kbit/s")
    # ...a custom cap is 'custom'; 0 removes it.
    await page.evaluate("publisher.setMaxVideoBitrate(50000)")
    assert await page.evaluate("[publisher.getVideoBitratePreset(), publisher.getMaxVideoBitrate()]") == [
        "custom",
        50000,
    ]
    await _wait_rate(page, lambda rate: rate < 50_000 * 1.3, "fell under the 50 kbit/s cap")
    await page.evaluate("publisher.setMaxVideoBitrate(0)")
    assert await page.evaluate("[publisher.getVideoBitratePreset(), publisher.getMaxVideoBitrate()]") == [
        "default",
        0,
    ]
    await _wait_rate(page, lambda rate: rate > 150_000, "rose again once uncapped")


async def test_static_functions(server: RunningServer, browser: Browser) -> None:
    """OT's functions that need no session: system and screen-sharing checks, codecs, audio
    outputs, log level."""
    page = await open_ot_page(browser, server.url, "static", body=BODY)
    result = await page.evaluate(
        """async () => {
            const outputs = await OT.getAudioOutputDevices();
            const bad = await OT.setAudioOutputDevice("no-such-device")
                .then(() => null, (e) => [e.name, e.code]);
            await OT.setAudioOutputDevice("default");
            const active = await OT.getActiveAudioOutputDevice();
            let screen = null;
            const response = await OT.checkScreenSharingCapability((r) => { screen = r; });
            const codecs = await OT.getSupportedCodecs();
            OT.setLogLevel(OT.DEBUG);
            OT.setLogLevel(OT.ERROR);
            return {
                system: OT.checkSystemRequirements(),
                outputsAreDevices: Array.isArray(outputs)
                    && outputs.every((o) => "deviceId" in o && "label" in o),
                bad, active: active.deviceId,
                screen: [screen === response, response.supported, response.supportedSources.screen],
                encoders: codecs.videoEncoders.sort(), decoders: codecs.videoDecoders.sort(),
                mediaProcessors: OT.hasMediaProcessorSupport(), e2ee: OT.hasEndToEndEncryptionSupport(),
                version: OT.version,
            };
        }"""
    )
    assert result == {
        "system": 1,
        "outputsAreDevices": True,
        "bad": ["OT_INVALID_AUDIO_OUTPUT_SOURCE", 1011],
        "active": "default",
        "screen": [True, True, True],
        "encoders": ["H264", "VP8"],
        "decoders": ["H264", "VP8"],
        "mediaProcessors": False,
        "e2ee": False,
        "version": "2.35.2",
    }
