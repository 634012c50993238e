"""Conformance of salon's OT with OpenTok.js 2.35.2's TypeScript definitions.

``scripts/opentok-dts-members.cjs`` lists, with the TypeScript compiler API, every member of
OT, Session, Publisher, Subscriber, Stream and Connection in ``@opentok/client``'s
``opentok.d.ts`` (a pinned dev dependency) and every event of each emitter with its fields.
A Chromium page loads ``/v2/js/opentok.js``, connects two sessions, publishes, subscribes,
signals, mutes, unpublishes and disconnects, and reports which members exist on the live
objects and which events were dispatched with which fields. The test fails when a member or
event is neither there nor listed in ``docs/opentok-js-missing.json`` (with its reason), when
a listed one is there after all (the list must shrink as features land), or when a
dispatched event lacks a field the definitions give it.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from typing import Any

import pytest
from ot_helpers import open_ot_page
from playwright.async_api import Browser

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(240)

ROOT = pathlib.Path(__file__).resolve().parents[3]
MISSING_FILE = ROOT / "docs" / "opentok-js-missing.json"

#: Events salon's OT dispatches that this page's scenario cannot cause, and why (they may
#: still be seen here; then their fields are checked like the others').
NOT_TRIGGERED_HERE = {
    "Session.event.sessionReconnecting": "needs a dropped link: salon.js's event of the same name, forwarded",
    "Session.event.sessionReconnected": "needs a dropped link: salon.js's event of the same name, forwarded",
    "Subscriber.event.disconnected": "dispatched to subscribers on sessionReconnecting",
    "Subscriber.event.connected": "dispatched to subscribers on sessionReconnected",
    "Publisher.event.accessDenied": "needs a refused camera (the fake UI grants it)",
    "Publisher.event.accessDialogOpened": "only when the browser will prompt (permission state 'prompt')",
    "Publisher.event.accessDialogClosed": "only when the browser will prompt (permission state 'prompt')",
    "Publisher.event.mediaStopped": "needs a track ended by its source (e.g. screen sharing stopped)",
    "Publisher.event.videoDimensionsChanged": "the fake camera's size does not change",
    "Subscriber.event.videoDimensionsChanged": "the fake camera's size does not change",
    "Subscriber.event.audioBlocked": "Chromium runs here with autoplay allowed",
    "Subscriber.event.audioUnblocked": "Chromium runs here with autoplay allowed",
    "Session.event.cpuPerformanceChanged": "needs CPU pressure changes: test_ot_api.py emulates them",
}

#: The page's scenario. ``spec`` is the definitions' JSON; returns what exists and what fired.
SCENARIO = """async ([apiKey, sessionId, moderatorToken, publisherToken, spec]) => {
    const observed = [];
    const waiters = [];
    let exceptionTarget = null;  // OT's exception events target the object the error happened on
    const seen = (key) => observed.some((o) => o.key === key);
    const until = (key, ms = 20000) => new Promise((resolve, reject) => {
        if (seen(key)) return resolve();
        const timer = setTimeout(() => reject(new Error(`no ${key} within ${ms} ms`)), ms);
        waiters.push({key, done: () => { clearTimeout(timer); resolve(); }});
    });
    const listen = (kind, emitter, names) => {
        for (const name of names) {
            const declared = (spec.events[kind] || {})[name.startsWith("signal:") ? "signal" : name];
            const fields = [...spec.eventBase, ...(declared || [])];
            emitter.on(name, (event) => {
                const key = `${kind}.event.${name}`;
                observed.push({key, type: event.type, missingFields: fields.filter((f) => !(f in event)),
                               targetOk: event.target === (kind === "OT" ? exceptionTarget : emitter),
                               cancelableIsBool: typeof event.cancelable === "boolean"});
                for (const w of waiters.filter((w) => w.key === key)) w.done();
            });
        }
    };
    const callback = () => {
        let done;
        const p = new Promise((res, rej) => { done = (err) => err ? rej(err) : res(); });
        return [p, done];
    };
    listen("OT", OT, Object.keys(spec.events.OT));
    const sessionEvents = [...Object.keys(spec.events.Session), "signal:probe"];

    const sA = OT.initSession(apiKey, sessionId);
    listen("Session", sA, sessionEvents);
    let [connected, done] = callback();
    sA.connect(moderatorToken, done);
    await connected;

    const [published0, pubDone] = callback();
    const pA = OT.initPublisher("pubA", {name: "A", insertMode: "append", width: 320, height: 240}, pubDone);
    listen("Publisher", pA, Object.keys(spec.events.Publisher));
    await published0;

    const sB = OT.initSession(apiKey, sessionId);
    let sub = null;
    const [subscribed, subDone] = callback();
    sB.on("streamCreated", (e) => {
        sub = sB.subscribe(e.stream, "subB", {insertMode: "append", width: 320, height: 240}, subDone);
        listen("Subscriber", sub, Object.keys(spec.events.Subscriber));
    });
    [connected, done] = callback();
    sB.connect(publisherToken, done);
    await connected;
    listen("SessionB", sB, sessionEvents);  // B's own log (A's events are under "Session")

    const [published, publishDone] = callback();
    sA.publish(pA, publishDone);
    await published;
    await subscribed;
    await until("Subscriber.event.videoElementCreated");

    // signal, signal:TYPE
    sA.signal({type: "probe", data: "hello"});
    await until("SessionB.event.signal:probe");
    // streamPropertyChanged; the subscriber's videoDisabled / videoEnabled (publishVideo)
    pA.publishVideo(false);
    await until("Subscriber.event.videoDisabled");
    pA.publishVideo(true);
    await until("Subscriber.event.videoEnabled");
    // audio levels (the server measures the fake microphone's beeps)
    await until("Publisher.event.audioLevelUpdated");
    await until("Subscriber.event.audioLevelUpdated");
    // muteForced, to the publisher and its session (a moderator muting its own stream)
    await sA.forceMuteStream(pA.stream);
    await until("Publisher.event.muteForced");
    await until("Session.event.muteForced");
    // audioInputDeviceChanged
    const mic = await OT.getUserMedia({videoSource: null});
    await pA.setAudioSource(mic.getAudioTracks()[0]);
    await until("Publisher.event.audioInputDeviceChanged");

    // Every member the definitions give, on live objects.
    const has = (object, member) => {
        const [head, tail] = member.split(".");
        if (!(head in object)) return false;
        if (!tail) return true;
        const value = object[head];
        return value != null && (typeof value === "object" || typeof value === "function") && tail in value;
    };
    const objects = {OT, Session: sA, Publisher: pA, Subscriber: sub, Stream: sub.stream,
                     Connection: sA.connection};
    const present = {};
    for (const [kind, object] of Object.entries(objects)) {
        present[kind] = Object.fromEntries(spec[kind].map((m) => [m, has(object, m)]));
    }
    const classes = {Session: sA instanceof OT.Session, Publisher: pA instanceof OT.Publisher,
                     Subscriber: sub instanceof OT.Subscriber, Stream: sub.stream instanceof OT.Stream,
                     Connection: sA.connection instanceof OT.Connection};

    // Unpublish: the publisher's streamDestroyed and destroyed; B's streamDestroyed; the
    // subscriber's destroyed. Then B leaves: A's connectionDestroyed, B's sessionDisconnected.
    sA.unpublish(pA);
    await until("Publisher.event.destroyed");
    await until("SessionB.event.streamDestroyed");
    await until("Subscriber.event.destroyed");
    sB.disconnect();
    await until("SessionB.event.sessionDisconnected");
    await until("Session.event.connectionDestroyed");
    // An error with a completion handler: the handler and OT's exception event.
    let signalError = null;
    exceptionTarget = sB;
    sB.signal({type: "late", data: "x"}, (err) => { signalError = err && {name: err.name, code: err.code}; });
    await until("OT.event.exception");
    sA.disconnect();
    await until("Session.event.sessionDisconnected");
    return {present, classes, observed, signalError};
}"""


def _definitions() -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node is needed (scripts/test installs it)"
    assert (ROOT / "node_modules" / "@opentok" / "client").is_dir(), (
        "run `npm ci`: @opentok/client is a dev dependency"
    )
    out = subprocess.run(
        [node, str(ROOT / "scripts" / "opentok-dts-members.cjs")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    spec: dict[str, Any] = json.loads(out.stdout)
    return spec


def test_definitions_are_parsed() -> None:
    """The parser finds what the definitions are known to hold (a parser that found nothing
    would make the conformance test pass vacuously)."""
    spec = _definitions()
    assert {"initSession", "initPublisher", "initPublisher.promise", "Session", "on"} <= set(spec["OT"])
    assert {"connect", "connect.promise", "subscribe", "signal", "capabilities.forceMute", "on"} <= set(
        spec["Session"]
    )
    assert spec["events"]["Session"]["streamPropertyChanged"] == [
        "stream",
        "changedProperty",
        "oldValue",
        "newValue",
    ]
    assert spec["events"]["OT"]["exception"] == ["code", "message", "title"]
    assert spec["eventBase"] == ["type", "cancelable", "target", "isDefaultPrevented", "preventDefault"]
    assert len(spec["Publisher"]) > 40 and len(spec["events"]["Subscriber"]) > 15


async def test_ot_has_every_member_and_event_of_the_definitions(
    server: RunningServer, browser: Browser
) -> None:
    spec = _definitions()
    missing: dict[str, str] = json.loads(MISSING_FILE.read_text())["missing"]
    assert all(reason.strip() for reason in missing.values()), "every missing member needs its reason"
    session_id = server.session()
    page = await open_ot_page(
        browser, server.url, "conformance", body='<div id="pubA"></div><div id="subB"></div>'
    )
    result = await page.evaluate(
        SCENARIO,
        [server.api_key, session_id, server.token(session_id, "moderator"), server.token(session_id), spec],
    )
    assert all(result["classes"].values()), result["classes"]

    problems = []
    declared = set()
    for kind, members in result["present"].items():
        for member, there in members.items():
            key = f"{kind}.{member}"
            declared.add(key)
            if not there and key not in missing:
                problems.append(f"{key}: neither implemented nor listed in {MISSING_FILE.name}")
            if there and key in missing:
                problems.append(f"{key}: implemented, so it must leave {MISSING_FILE.name}")
    observed: dict[str, list[dict[str, Any]]] = {}
    for entry in result["observed"]:
        key = entry["key"].replace("SessionB.", "Session.")
        observed.setdefault(key.replace("Session.event.signal:probe", "Session.event.signal"), []).append(
            entry
        )
    for kind, events in spec["events"].items():
        for name in events:
            key = f"{kind}.event.{name}"
            declared.add(key)
            if key in missing:
                if key in observed:
                    problems.append(f"{key}: dispatched, so it must leave {MISSING_FILE.name}")
            elif key not in observed and key not in NOT_TRIGGERED_HERE:
                problems.append(
                    f"{key}: never dispatched, and neither listed as missing nor as not triggered here"
                )
    for key, entries in observed.items():
        for entry in entries:
            if entry["missingFields"] or not entry["targetOk"] or not entry["cancelableIsBool"]:
                problems.append(f"{key}: event object {entry}")
    # signal and signal:TYPE events have type "signal:TYPE", as OpenTok.js's do.
    signal_types = {e["type"] for e in observed["Session.event.signal"]}
    assert signal_types == {"signal:probe"}, signal_types
    stale = set(missing) - declared
    problems += [f"{key}: listed in {MISSING_FILE.name} but not in the definitions" for key in sorted(stale)]
    assert not problems, "\n".join(problems)
    print("dispatched here:", sorted(observed))
    assert result["signalError"] == {"name": "OT_NOT_CONNECTED", "code": 500}
