"""Per-subscriber layers under shaped links: one Chromium publisher (1280x720, three simulcast
layers), subscribers in namespaces of their own whose downlinks are shaped; the SFU's
allocator gives each the layer its link carries.

Bounds are for a loaded 2-core machine: settling is given tens of seconds (aiortc's REMB, the
Python subscribers' estimate, grows about 8% a second), freezes a second or two around a
switch, and nothing is asserted about a report while its link changes.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import playwright.async_api as playwright_api
import pytest

from salon.bench.netlab import NetLab
from tests.e2e.browser.browser_helpers import open_sdk_page
from tests.e2e.quality.conftest import Agent, HubServer, chromium_in

pytestmark = pytest.mark.timeout(240)

LAYERS = {"320x180", "640x360", "1280x720"}
PUBLISH = """async ({sessionId, token}) => {
    const session = window.salon.initSession(sessionId);
    await session.connect(token);
    const publisher = window.salon.initPublisher(document.body,
        {name: "chromium", resolution: "1280x720", frameRate: 30});
    await session.publish(publisher);
    window.publisher = publisher;
}"""


@pytest.fixture
async def pw() -> AsyncIterator[playwright_api.Playwright]:
    async with playwright_api.async_playwright() as playwright:
        yield playwright


def sizes(report: dict[str, Any]) -> set[str]:
    return {size for stream in report["streams"].values() for size in stream["sizes"]}


def frames(report: dict[str, Any]) -> int:
    return sum(stream["frames"] for stream in report["streams"].values())


def audio(report: dict[str, Any]) -> int:
    return sum(stream["audio_frames"] for stream in report["streams"].values())


def wait_until(check: Callable[[], bool], what: str, timeout: float) -> float:
    """Poll ``check`` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"no {what} within {timeout:g} s")
        time.sleep(0.25)
    return time.monotonic() - start


def settled_on(agent: Agent, size: str, reports: int = 4) -> Callable[[], bool]:
    """The agent's last ``reports`` reports all decoded frames of ``size`` only."""

    def check() -> bool:
        last = agent.reports()[-reports:]
        return len(last) == reports and all(frames(r) >= 2 and sizes(r) == {size} for r in last)

    return check


def event(agent: Agent, name: str, since: float = 0.0) -> dict[str, Any] | None:
    return next(
        (
            line
            for line in agent.lines
            if line.get("kind") == "event" and line.get("event") == name and line.get("t", 0) >= since
        ),
        None,
    )


def assert_clean(agent: Agent, since: float, *, video: bool = True) -> None:
    """No decoder error, only layer sizes, audio in every report, no long freeze."""
    reports = agent.reports(since)
    assert reports, agent.leaf
    for report in reports:
        for stream in report["streams"].values():
            assert stream["decode_errors"] == 0, (agent.leaf, report)
            assert set(stream["sizes"]) <= LAYERS, (agent.leaf, report)
            if video:
                assert stream["frozen_ms"] < 2000, (agent.leaf, report)
        assert audio(report) > 0, (agent.leaf, "audio broke", report)


async def test_shaped_subscribers_get_the_layer_their_link_carries(
    lab: NetLab,
    hub_server: HubServer,
    agents: Callable[..., Agent],
    pw: playwright_api.Playwright,
    tmp_path: pathlib.Path,
) -> None:
    lab.add_leaf("pub")
    links = {leaf: lab.add_leaf(leaf) for leaf in ("free", "mid", "low", "weak", "prefs")}
    links["mid"].shape(down=1000)
    links["mid"].set_loss(0.03, direction="down")
    links["low"].shape(down=300)
    links["weak"].shape(down=70)
    session_id = hub_server.session()
    browser = await chromium_in(pw, lab, "pub", hub_server, tmp_path)
    try:
        page = await open_sdk_page(browser, hub_server.url, "pub")
        await page.evaluate(PUBLISH, {"sessionId": session_id, "token": hub_server.token(session_id)})
        subs = {leaf: agents(lab, leaf, hub_server, session_id) for leaf in links}
        for sub in subs.values():
            sub.wait_for(lambda line: line["kind"] == "ready", "ready", 60)
        subs["prefs"].send({"preferred_resolution": [320, 180]})
        subs["prefs"].send({"preferred_frame_rate": 15})

        # Each settles on the layer its link carries (the 1 Mbit/s one with 3% loss too).
        wait_until(settled_on(subs["free"], "1280x720"), "top layer on the free link", 60)
        wait_until(settled_on(subs["mid"], "640x360"), "middle layer on 1 Mbit/s + 3% loss", 60)
        wait_until(settled_on(subs["low"], "320x180"), "lowest layer on 300 kbit/s", 60)
        wait_until(settled_on(subs["prefs"], "320x180"), "the preferred resolution", 30)
        # A link too weak for any video: video disabled for quality, audio goes on.
        wait_until(lambda: event(subs["weak"], "VideoDisabled") is not None, "VideoDisabled", 60)
        disabled = event(subs["weak"], "VideoDisabled")
        assert disabled is not None and disabled.get("reason") == "quality", disabled
        settled = max(sub.reports()[-1]["t"] for sub in subs.values())

        # Ten seconds on the settled layers: the preferred frame rate holds (about 15 fps, not
        # 30), nobody changes layer, and every subscriber's audio flows.
        for sub in subs.values():
            sub.wait_for(
                lambda line: line["kind"] == "report" and line["t"] > settled + 8, "eight seconds", 30
            )
        for leaf, size in (
            ("free", "1280x720"),
            ("mid", "640x360"),
            ("low", "320x180"),
            ("prefs", "320x180"),
        ):
            steady = [r for r in subs[leaf].reports(settled) if r["t"] > settled + 1]
            assert all(sizes(r) <= {size} for r in steady), (leaf, steady)
            assert_clean(subs[leaf], settled)
        # Frame rates: Chromium's fake camera runs at 20-30 fps on a busy host; a preference
        # of 15 fps takes its temporal layers 0 and 1 (half the frames).
        prefs = [r for r in subs["prefs"].reports(settled) if r["t"] > settled + 1]
        fps = sum(frames(r) for r in prefs) / (prefs[-1]["t"] - prefs[0]["t"] + 0.5)
        free = [r for r in subs["free"].reports(settled) if r["t"] > settled + 1]
        free_fps = sum(frames(r) for r in free) / (free[-1]["t"] - free[0]["t"] + 0.5)
        assert free_fps >= 12, free_fps
        assert 4 <= fps <= 16 and fps <= 0.7 * free_fps, (fps, free_fps)
        weak = subs["weak"].reports(settled)
        assert all(frames(r) == 0 for r in weak[2:]), weak
        assert_clean(subs["weak"], settled, video=False)

        # Lifting the limits: the 300 kbit/s one climbs, the weak one gets its video back.
        lifted = max(sub.reports()[-1]["t"] for sub in subs.values())
        links["low"].shape(down=None)
        links["weak"].shape(down=None)
        wait_until(
            lambda: event(subs["weak"], "VideoEnabled", lifted) is not None, "VideoEnabled after lifting", 45
        )
        enabled = event(subs["weak"], "VideoEnabled", lifted)
        assert enabled is not None and enabled.get("reason") == "quality", enabled
        wait_until(
            lambda: any("640x360" in sizes(r) or "1280x720" in sizes(r) for r in subs["low"].reports(lifted)),
            "a higher layer after lifting 300 kbit/s",
            45,
        )
        wait_until(lambda: frames(subs["weak"].reports()[-1]) > 0, "video back on the weak link", 20)
        for leaf in ("free", "mid", "low", "weak"):
            for report in subs[leaf].reports(lifted):
                for stream in report["streams"].values():
                    assert stream["decode_errors"] == 0, (leaf, report)
                    assert set(stream["sizes"]) <= LAYERS, (leaf, report)
    finally:
        await browser.close()
