"""A Chromium subscriber under a shaped link: one Chromium (1280x720, three simulcast layers)
publishes in a leaf of the lab and subscribes to itself from a second page; that leaf's
downlink drops to 500 kbit/s and comes back. Chromium negotiates transport-cc: the SFU's own
estimator and probes drive its layer; its getStats (freezes, frames dropped, PLIs sent) stay
within the bounds stated below across the switches.

It was out of the suite (unstable_…) after a scratch CI run failed it (no log kept). Runs
here showed what made it fragile: it shaped as soon as one sample showed the top layer (the
allocator then still moved it: its own switch to 640 passed for the reaction to the limit,
then 1280 inside the hold failed), and the SFU's probes misjudged the link both ways (a
burst Chromium stamped at one 250 us tick failed every probe on the unlimited link, leaving
the climb back to 8% a second from the ~80-300 kbit/s a limit left; five padding packets
claimed 755 kbit/s whatever the target, and the lab tbf's 1600-byte bucket let a probe
"succeed" past 500 kbit/s, which cost a freeze).
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Callable
from typing import Any

import playwright.async_api as playwright_api
import pytest

from salon.bench.netlab import NetLab
from tests.e2e.browser.browser_helpers import open_sdk_page
from tests.e2e.quality.conftest import PUBLISH, HubServer, chromium_in

pytestmark = pytest.mark.timeout(180)

SUBSCRIBE = """async ({sessionId, token}) => {
    const session = window.salon.initSession(sessionId);
    session.on("streamCreated", async (event) => {
        window.sub = await session.subscribe(event.stream, document.body);
    });
    await session.connect(token);
}"""
INBOUND = """async () => {
    const pc = window.sub && window.sub.pc;
    if (!pc) return null;
    const stats = await pc.getStats();
    let out = null;
    stats.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "video")
        out = {width: r.frameWidth || 0, decoded: r.framesDecoded || 0, dropped: r.framesDropped || 0,
               freezes: r.freezeCount || 0, frozen: r.totalFreezesDuration || 0, plis: r.pliCount || 0,
               nacks: r.nackCount || 0}; });
    return out;
}"""


async def test_a_chromium_subscriber_follows_its_link(
    lab: NetLab, hub_server: HubServer, pw: playwright_api.Playwright, tmp_path: pathlib.Path
) -> None:
    """A second page of the publishing Chromium subscribes; its downlink (the leaf's) drops to
    500 kbit/s and comes back. Chromium negotiates transport-cc: the SFU's own estimator and
    probes drive its layer. Its getStats stay within bounds across the switches."""
    link = lab.add_leaf("pub")
    session_id = hub_server.session()
    browser = await chromium_in(pw, lab, "pub", hub_server, tmp_path)
    try:
        page = await open_sdk_page(browser, hub_server.url, "pub")
        await page.evaluate(PUBLISH, {"sessionId": session_id, "token": hub_server.token(session_id)})
        viewer = await open_sdk_page(browser, hub_server.url, "viewer")
        await viewer.evaluate(SUBSCRIBE, {"sessionId": session_id, "token": hub_server.token(session_id)})
        history: list[dict[str, Any]] = []

        async def until(check: Callable[[dict[str, Any]], bool], what: str, timeout: float) -> float:
            start = time.monotonic()
            while True:
                stats = await viewer.evaluate(INBOUND)
                if stats is not None:
                    history.append(stats)
                    if check(stats):
                        return time.monotonic() - start
                assert time.monotonic() - start < timeout, f"no {what} in {timeout:g} s: {history[-6:]}"
                await asyncio.sleep(0.5)

        # The top layer held for two seconds (four samples), not merely seen once: the consumer
        # starts on the top layer before the allocator's first runs, which may still move it
        # (a run that shaped right after one 1280 sample took the allocator's own switch to 640
        # for the reaction to the limit, then saw 1280 again inside the hold).
        await until(lambda s: [x["width"] for x in history[-4:]] == [1280] * 4, "top layer held", 60)
        before, began = history[-1], time.monotonic()
        link.shape(down=500)
        await until(lambda s: 0 < s["width"] <= 640, "a lower layer on 500 kbit/s", 30)
        # Held there: five more seconds of samples, none above the middle layer.
        held, mark = time.monotonic() + 5, len(history)
        await until(lambda s: time.monotonic() >= held, "five seconds on 500 kbit/s", 15)
        assert all(0 < sample["width"] <= 640 for sample in history[mark:]), history[mark:]
        link.shape(down=None)
        await until(lambda s: s["width"] == 1280, "top layer again after lifting", 45)
        after, elapsed = history[-1], time.monotonic() - began
        decoded = after["decoded"] - before["decoded"]
        # Video went on through it all: at least 5 fps on average (the fake camera runs at
        # 15-30 fps on a busy host; the freezes around the switches are bounded below).
        assert decoded >= 5 * elapsed, (decoded, elapsed, before, after)
        # Across a drop, a hold and a climb (two or more layer switches): few freezes, few
        # dropped frames, few key-frame requests.
        # Bounds for a loaded 2-core host, about twice the worst measured with the probe fixes
        # (six runs at load 8-17: 1-3 freezes, 0-6 frames dropped of 211-489, no PLI; before
        # them 8 freezes and 44 dropped of 285; with the pacer too, three runs at load 4-6
        # within these bounds).
        assert after["freezes"] - before["freezes"] <= 6, (before, after)
        assert after["dropped"] - before["dropped"] <= max(15, decoded // 20), (before, after)
        assert after["plis"] - before["plis"] <= 5, (before, after)
    finally:
        await browser.close()
