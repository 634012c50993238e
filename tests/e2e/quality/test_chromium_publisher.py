"""A real Chromium publisher in a namespace of its own, Python SDK subscribers in others."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import playwright.async_api as playwright_api
import pytest

from salon.bench.netlab import NetLab
from tests.e2e.browser.browser_helpers import open_sdk_page
from tests.e2e.quality.conftest import PUBLISH, Agent, HubServer, chromium_in

pytestmark = pytest.mark.timeout(180)


def _frames(report: dict[str, Any]) -> int:
    return sum(stream["frames"] for stream in report["streams"].values())


async def test_chromium_in_a_leaf_publishes_720p_to_python_subscribers(
    lab: NetLab,
    hub_server: HubServer,
    agents: Callable[..., Agent],
    pw: playwright_api.Playwright,
    tmp_path: pathlib.Path,
) -> None:
    lab.add_leaf("pub")
    lab.add_leaf("sub")
    session_id = hub_server.session()
    browser = await chromium_in(pw, lab, "pub", hub_server, tmp_path)
    try:
        page = await open_sdk_page(browser, hub_server.url, "pub")
        await page.evaluate(PUBLISH, {"sessionId": session_id, "token": hub_server.token(session_id)})
        sub = agents(lab, "sub", hub_server, session_id)
        report = sub.wait_for(lambda line: line["kind"] == "report" and _frames(line) > 5, "video", 60)
        sizes = {size for stream in report["streams"].values() for size in stream["sizes"]}
        assert sizes, report
        sent = await page.evaluate(
            """async () => {
                const stats = await window.publisher.pc.getStats();
                const out = [];
                stats.forEach((r) => { if (r.type === "outbound-rtp" && r.kind === "video")
                    out.push({rid: r.rid || null, width: r.frameWidth || 0, height: r.frameHeight || 0}); });
                return out;
            }"""
        )
        assert any(layer["width"] >= 640 for layer in sent), sent
    finally:
        await browser.close()
