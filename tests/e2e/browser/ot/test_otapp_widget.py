"""The OpenTok.js-compatible default UI (``/sdk/ot/widget.js``) in real Chromium.

A page of the server's origin, emptied of the web app's markup and styles, imports the module
and builds widgets against its own elements: where each ``insertMode`` puts the widget, the
sizes it takes, that the video fills it, and the name bar, mute button, audio-level meter and
poster with their ``style`` options. The OpenTok.js class names are checked because apps style
them.
"""

from __future__ import annotations

from typing import Any

import pytest
from browser_helpers import open_page
from playwright.async_api import Browser, Page

from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(120)


async def widget_page(browser: Browser, server: RunningServer) -> Page:
    page = await open_page(browser, "widget")
    await page.goto(f"{server.url}/")
    await page.evaluate(
        """async () => {
            document.head.replaceChildren();
            document.body.replaceChildren();
            document.body.style.margin = "0";
            window.ot = await import("/sdk/ot/widget.js");
        }"""
    )
    return page


async def test_insert_modes_place_the_widget_as_opentok_does(server: RunningServer, browser: Browser) -> None:
    page = await widget_page(browser, server)
    placed: dict[str, Any] = await page.evaluate(
        """() => {
            document.body.innerHTML = `
                <div id="before-me"></div>
                <div id="parent"><p id="first"></p>
                    <div id="slot" class="app-slot"><span>old</span></div></div>`;
            const slot = document.getElementById("slot");
            const parent = document.getElementById("parent");
            const ids = (el) => [...el.children].map((c) => c.id || c.tagName.toLowerCase());
            const out = {};

            const replaced = window.ot.createWidget("slot", {kind: "publisher"});
            out.replace = {
                same: replaced.element === slot, id: replaced.element.id,
                classes: [...replaced.element.classList], parent: ids(parent),
                children: [...replaced.element.children].map((c) => c.className),
            };
            replaced.destroy();
            out.replaceDestroyed = {inPage: document.getElementById("slot") !== null, parent: ids(parent)};

            const anchor = document.getElementById("first");
            const appended = window.ot.createWidget(parent, {insertMode: "append", kind: "subscriber"});
            const before = window.ot.createWidget(anchor, {insertMode: "before"});
            const after = window.ot.createWidget("first", {insertMode: "after", kind: "subscriber"});
            out.parent = ids(parent);
            out.ids = {appended: appended.element.id, before: before.element.id, after: after.element.id};
            out.classes = {
                appended: [...appended.element.classList],
                before: [...before.element.classList],
            };

            const loose = window.ot.createWidget(undefined, {kind: "subscriber"});
            const unknown = window.ot.createWidget("no-such-element", {insertMode: "append"});
            out.body = ids(document.body).slice(-2);
            out.loose = [loose.element.id, unknown.element.id];
            const errors = [];
            const detached = document.createElement("div");
            for (const bad of [{insertMode: "inside"}, {insertMode: "before", target: detached}]) {
                try { window.ot.createWidget(bad.target || "parent", bad); errors.push(null); }
                catch (e) { errors.push(e.name + ": " + e.message); }
            }
            try { window.ot.createWidget(42, {}); errors.push(null); }
            catch (e) { errors.push(e.name + ": " + e.message); }
            out.errors = errors;
            out.parentAfterErrors = ids(parent);
            return out;
        }"""
    )
    # replace: the target itself becomes the widget, emptied, keeping its id and classes.
    assert placed["replace"]["same"] and placed["replace"]["id"] == "slot", placed
    assert placed["replace"]["classes"][:2] == ["app-slot", "OT_publisher"], placed
    assert placed["replace"]["parent"] == ["first", "slot"], placed
    assert placed["replace"]["children"] == [
        "OT_name OT_edge-bar-item OT_mode-auto OT_widget-hidden",
        "OT_edge-bar-item OT_mute OT_mode-auto",
        "OT_audio-level-meter OT_mode-auto",
        "OT_widget-container",
    ], placed
    # As in OpenTok.js, destroying a "replace" widget removes the former target from the page.
    assert placed["replaceDestroyed"] == {"inPage": False, "parent": ["first"]}, placed
    ids = placed["ids"]
    assert placed["parent"] == [ids["before"], "first", ids["after"], ids["appended"]], placed
    assert len(set(ids.values())) == 3 and all(i.startswith("OT_") for i in ids.values()), ids
    assert "OT_subscriber" in placed["classes"]["appended"], placed
    assert "OT_mirrored" not in placed["classes"]["appended"], placed
    assert {"OT_publisher", "OT_mirrored", "OT_fit-mode-cover"} <= set(placed["classes"]["before"]), placed
    # No target, or an id that names no element: a new element at the end of <body>.
    assert placed["body"] == placed["loose"], placed
    assert placed["errors"][0].startswith("TypeError: insertMode must be one of"), placed
    assert placed["errors"][1].startswith("TypeError: insertMode before needs a target element with a parent")
    assert placed["errors"][2].startswith("TypeError: the target element must be"), placed
    assert placed["parentAfterErrors"] == placed["parent"], "a refused widget changed the page"


async def test_sizes_and_the_video_filling_the_widget(server: RunningServer, browser: Browser) -> None:
    page = await widget_page(browser, server)
    sizes: dict[str, Any] = await page.evaluate(
        """async () => {
            document.body.innerHTML = `<div id="box" style="width: 400px; height: 300px"></div>
                                       <div id="half" style="width: 500px; height: 200px"></div>`;
            const rect = (el) => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
            const make = (target, opts) => window.ot.createWidget(target, {insertMode: "append", ...opts});
            const byDefault = make(document.body, {});
            const numbers = make(document.body, {width: 320, height: 240, kind: "subscriber"});
            const strings = make(document.body, {width: "150px", height: "7em"});
            const digits = make(document.body, {width: "200", height: "100"});
            const full = make("box", {width: "100%", height: "100%"});
            const half = make("half", {width: "50%", height: "50%", fitMode: "contain"});

            // Real frames in the full-size widget: a canvas stream 640x480 (4:3 into 4:3 box).
            const canvas = document.createElement("canvas");
            canvas.width = 640; canvas.height = 360;
            const g = canvas.getContext("2d");
            let tick = 0;
            const timer = setInterval(() => {
                g.fillStyle = tick++ % 2 ? "#c03" : "#03c";
                g.fillRect(0, 0, 640, 360);
            }, 50);
            full.video.srcObject = canvas.captureStream(20);
            const deadline = Date.now() + 15000;
            while (full.element.classList.contains("OT_loading") && Date.now() < deadline) {
                await new Promise((r) => setTimeout(r, 50));
            }
            clearInterval(timer);
            const css = (el) => getComputedStyle(el);
            return {
                byDefault: rect(byDefault.element), numbers: rect(numbers.element),
                strings: rect(strings.element), digits: rect(digits.element),
                full: rect(full.element), fullVideo: rect(full.video), half: rect(half.element),
                halfVideo: rect(half.video),
                loading: full.element.classList.contains("OT_loading"),
                videoSize: [full.video.videoWidth, full.video.videoHeight],
                fit: [css(full.video).objectFit, css(half.video).objectFit],
                transforms: [css(full.video).transform, css(numbers.video).transform],
                unmirrored: css(make(document.body, {mirror: false}).video).transform,
                mirroredSubscriber: css(make(document.body, {kind: "subscriber", mirror: true}).video)
                    .transform,
                muted: [full.video.muted, numbers.video.muted],
                fontSize: css(strings.element).fontSize,
            };
        }"""
    )
    assert sizes["byDefault"] == [264, 198], sizes  # OpenTok.js's default size
    assert sizes["numbers"] == [320, 240], sizes
    em = float(sizes["fontSize"].removesuffix("px"))
    assert sizes["strings"] == [150, 7 * em], sizes
    assert sizes["digits"] == [200, 100], sizes
    assert sizes["full"] == [400, 300] and sizes["fullVideo"] == [400, 300], sizes
    assert sizes["half"] == [250, 100] and sizes["halfVideo"] == [250, 100], sizes
    assert not sizes["loading"] and sizes["videoSize"] == [640, 360], "the canvas video never played"
    assert sizes["fit"] == ["cover", "contain"], sizes
    # A publisher's video is mirrored by default; a subscriber's is not.
    assert sizes["transforms"] == ["matrix(-1, 0, 0, 1, 0, 0)", "none"], sizes
    assert sizes["unmirrored"] == "none" and sizes["mirroredSubscriber"] == "matrix(-1, 0, 0, 1, 0, 0)", sizes
    # The publisher's own video never plays its microphone back; the subscriber's plays.
    assert sizes["muted"] == [True, False], sizes


async def test_name_mute_meter_and_poster(server: RunningServer, browser: Browser) -> None:
    page = await widget_page(browser, server)
    await page.evaluate(
        """() => {
            window.toggles = [];
            window.pub = window.ot.createWidget(undefined, {name: "Alice", style: {nameDisplayMode: "on",
                                                            buttonDisplayMode: "on"}});
            window.sub = window.ot.createWidget(undefined, {kind: "subscriber", name: "Bob",
                style: {audioLevelDisplayMode: "on", backgroundImageURI: "data:image/png;base64,AAAA"}});
            window.pub.onMuteToggle((muted) => window.toggles.push(["pub", muted]));
            window.sub.onMuteToggle((muted) => window.toggles.push(["sub", muted]));
        }"""
    )
    state = """(name) => {
        const w = window[name];
        const q = (c) => w.element.querySelector(c);
        const shown = (el) => getComputedStyle(el).display !== "none" && getComputedStyle(el).opacity !== "0";
        return {
            name: q(".OT_name").textContent, nameShown: shown(q(".OT_name")),
            muteShown: shown(q(".OT_mute")), muteActive: q(".OT_mute").classList.contains("OT_active"),
            muteLabel: q(".OT_mute").getAttribute("aria-label"),
            meterShown: shown(q(".OT_audio-level-meter")),
            level: q(".OT_audio-level-meter").style.getPropertyValue("--OT-audio-level"),
            posterShown: shown(q(".OT_video-poster")), videoVisible: getComputedStyle(w.video).visibility,
            poster: q(".OT_video-poster").style.backgroundImage, videoMuted: w.video.muted,
        };
    }"""
    pub = await page.evaluate(state, "pub")
    assert pub["name"] == "Alice" and pub["nameShown"] and pub["muteShown"], pub
    assert not pub["muteActive"] and pub["muteLabel"] == "Mute", pub
    assert not pub["meterShown"] and not pub["posterShown"] and pub["videoVisible"] == "visible", pub
    assert pub["poster"].startswith('url("data:image/svg+xml'), pub  # the default silhouette
    sub = await page.evaluate(state, "sub")
    # "auto": the name bar and the button show on hover only; the meter is "on".
    assert sub["name"] == "Bob" and not sub["nameShown"] and not sub["muteShown"], sub
    assert sub["meterShown"] and sub["poster"] == 'url("data:image/png;base64,AAAA")', sub
    assert not sub["videoMuted"], sub

    # The user clicks the mute buttons (hovering shows the subscriber's).
    await page.locator(".OT_publisher .OT_mute").click()
    await page.locator(".OT_subscriber .OT_mute").click()
    assert await page.evaluate("window.toggles") == [["pub", True], ["sub", True]]
    pub = await page.evaluate(state, "pub")
    sub = await page.evaluate(state, "sub")
    assert pub["muteActive"] and pub["muteLabel"] == "Unmute", pub
    # The widget shows the state; acting on it (the volume) is its owner's part.
    assert sub["muteActive"] and not sub["videoMuted"], sub
    # Clicked again: unmute.
    await page.locator(".OT_subscriber .OT_mute").click()
    assert await page.evaluate("window.toggles") == [["pub", True], ["sub", True], ["sub", False]]
    # The owner says the state changed elsewhere (e.g. muteForced): no callback for that.
    await page.evaluate("() => { window.pub.setMuted(false); window.sub.setMuted(true); }")
    assert not (await page.evaluate(state, "pub"))["muteActive"]
    assert (await page.evaluate(state, "sub"))["muteActive"]
    assert await page.evaluate("window.toggles.length") == 3

    # Video off: the poster replaces the video, and "auto" shows the meter.
    await page.evaluate(
        """() => { window.pub.setVideoOff(true); window.pub.setAudioLevel(0.5);
                  window.sub.setAudioLevel(7); window.pub.setName(""); }"""
    )
    pub = await page.evaluate(state, "pub")
    assert pub["posterShown"] and pub["videoVisible"] == "hidden" and pub["meterShown"], pub
    assert pub["level"] == "0.500" and not pub["nameShown"], pub
    assert (await page.evaluate(state, "sub"))["level"] == "1.000"
    await page.evaluate(
        "() => { window.pub.setVideoOff(false); window.pub.setStyle({audioLevelDisplayMode: 'off'}); }"
    )
    pub = await page.evaluate(state, "pub")
    assert not pub["posterShown"] and not pub["meterShown"], pub
    assert await page.evaluate("window.pub.getStyle().audioLevelDisplayMode") == "off"
    # "off" hides it even while the video is off; an unknown mode leaves the setting as it was.
    await page.evaluate(
        "() => { window.pub.setVideoOff(true); window.pub.setStyle({nameDisplayMode: 'sometimes'}); }"
    )
    pub = await page.evaluate(state, "pub")
    assert not pub["meterShown"] and await page.evaluate("window.pub.getStyle().nameDisplayMode") == "on", pub

    # Sound the browser blocks (autoplay): a "play audio" button over the subscriber.
    blocked = """() => {
        const b = window.sub.element.querySelector(".OT_audio-blocked-indicator");
        return getComputedStyle(b).display !== "none";
    }"""
    await page.evaluate("() => { window.unblocks = 0; window.sub.onUnblockClick(() => window.unblocks++); }")
    assert not await page.evaluate(blocked)
    await page.evaluate("() => window.sub.setAudioBlocked(true)")
    assert await page.evaluate(blocked)
    await page.get_by_role("button", name="Play audio").click()
    assert await page.evaluate("window.unblocks") == 1
    await page.evaluate("() => window.sub.setStyle({audioBlockedDisplayMode: 'off'})")
    assert not await page.evaluate(blocked)
    await page.evaluate(
        "() => { window.sub.setStyle({audioBlockedDisplayMode: 'auto'}); window.sub.setAudioBlocked(false); }"
    )
    assert not await page.evaluate(blocked)

    await page.evaluate("() => { window.pub.destroy(); window.sub.destroy(); }")
    assert await page.locator(".OT_publisher, .OT_subscriber").count() == 0


async def test_the_apps_css_for_opentok_classes_wins(server: RunningServer, browser: Browser) -> None:
    page = await widget_page(browser, server)
    styled: dict[str, str] = await page.evaluate(
        """() => {
            const css = document.createElement("style");
            css.textContent = `.OT_name { color: rgb(255, 0, 0); }
                               .OT_subscriber { border-radius: 12px; }
                               .OT_mute { display: none; }`;
            document.head.appendChild(css);
            const w = window.ot.createWidget(undefined, {kind: "subscriber", name: "Carol"});
            const q = (c) => getComputedStyle(w.element.querySelector(c));
            return {color: q(".OT_name").color, radius: getComputedStyle(w.element).borderRadius,
                    mute: q(".OT_mute").display, first: document.head.firstElementChild.id};
        }"""
    )
    assert styled == {
        "color": "rgb(255, 0, 0)",
        "radius": "12px",
        "mute": "none",
        "first": "OT_widget-styles",
    }
