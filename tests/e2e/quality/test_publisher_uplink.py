"""A Chromium publisher on a constrained uplink, with transport-cc toward it: its own congestion
control, fed by the SFU's feedback, keeps its send rate within its shaped uplink (the estimate
follows the link, bandwidth named as the top layer's limit), and once the limit lifts it climbs
to its top layer. Chromium runs in a namespace of its own whose uplink is shaped with ``tbf``;
the server is in the hub namespace (:mod:`salon.bench.netlab`).

Measured 2026-12-07 (load 10-15): with transport-cc, Chromium sent 698 kb/s on the 800 kbit/s
uplink (estimate 777 kb/s, 5 of 1,999 packets dropped by the shaper) and sent its top layer 9 s
after the limit lifted. The same test on the code before (REMB only) failed: Chromium fell to
132 kb/s (estimate 257 kb/s, 398 of 1,382 packets dropped, 29 %) and had not climbed back 30 s
after the lift (estimate 279 kb/s)."""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import playwright.async_api as playwright_api
import pytest

from salon.bench.netlab import NetLab
from tests.e2e.browser.browser_helpers import open_sdk_page
from tests.e2e.quality.conftest import HubServer, chromium_in

pytestmark = pytest.mark.timeout(240)

UPLINK_KBIT = 800
"""The publisher's shaped uplink: less than Chromium's three 720p layers take (about 2.5 Mb/s)."""


STATS = """async () => {
    const report = await window.publisher.pc.getStats();
    const out = {layers: {}, estimate: 0};
    report.forEach((s) => {
        if (s.type === "outbound-rtp" && s.kind === "video") {
            out.layers[s.rid || "-"] = {bytesSent: s.bytesSent, frameWidth: s.frameWidth || 0,
                framesSent: s.framesSent || 0, reason: s.qualityLimitationReason};
        }
        if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate) {
            out.estimate = s.availableOutgoingBitrate;
        }
    });
    return out;
}"""


async def _sent_rate(page: Any, seconds: float) -> tuple[float, dict[str, Any]]:
    """Video bits per second Chromium sent over ``seconds`` (all layers), and the last stats."""
    before = await page.evaluate(STATS)
    start = time.monotonic()
    await asyncio.sleep(seconds)
    after = await page.evaluate(STATS)
    sent = sum(layer["bytesSent"] for layer in after["layers"].values()) - sum(
        layer["bytesSent"] for layer in before["layers"].values()
    )
    return sent * 8 / (time.monotonic() - start), after


async def test_chromium_keeps_to_its_shaped_uplink_and_climbs_when_it_lifts(
    lab: NetLab, hub_server: HubServer, pw: playwright_api.Playwright, tmp_path: pathlib.Path
) -> None:
    link = lab.add_leaf("pub")
    link.shape(up=UPLINK_KBIT)
    session_id = hub_server.session()
    browser = await chromium_in(pw, lab, "pub", hub_server, tmp_path)
    try:
        page = await open_sdk_page(browser, hub_server.url, "pub")
        answer = await page.evaluate(
            """async ({sessionId, token}) => {
                const session = window.salon.initSession(sessionId);
                await session.connect(token);
                const publisher = window.salon.initPublisher(document.body,
                    {name: "chromium", audio: false, resolution: "1280x720", frameRate: 30});
                await session.publish(publisher);
                window.publisher = publisher;
                return publisher.pc.remoteDescription.sdp;
            }""",
            {"sessionId": session_id, "token": hub_server.token(session_id)},
        )
        assert "transport-cc" in answer and "goog-remb" not in answer, answer

        # Shaped: after a settling time, Chromium's estimate and its send rate stay within
        # the link (with room for headers and its pacer's bursts), and the top layer is held
        # back for bandwidth.
        await asyncio.sleep(15)
        rate, stats = await _sent_rate(page, 5)
        assert rate <= UPLINK_KBIT * 1000 * 1.1, (rate, stats)
        assert 0 < stats["estimate"] <= UPLINK_KBIT * 1000 * 1.3, stats
        top = stats["layers"].get("f", {})
        assert top.get("reason") == "bandwidth" or top.get("frameWidth", 0) < 1280, stats
        drops = link.counters("up")
        print(f"shaped at {UPLINK_KBIT} kbit/s: sent {rate / 1000:.0f} kb/s, {stats}, link {drops}")

        # Lifted: the top layer sends full-size frames, not limited by bandwidth.
        link.shape(up=None)
        lifted = time.monotonic()
        while True:
            stats = await page.evaluate(STATS)
            top = stats["layers"].get("f", {})
            if top.get("frameWidth", 0) >= 1280 and top.get("reason") != "bandwidth":
                break
            assert time.monotonic() - lifted < 30, f"no climb to the top layer in 30 s: {stats}"
            await asyncio.sleep(0.5)
        print(f"lifted: top layer after {time.monotonic() - lifted:.1f} s, {stats}")
    finally:
        await browser.close()
