"""NOT COLLECTED (the file name does not start with ``test_``): issue 13's shaped-link test
with Python SDK subscribers, kept to be made reliable. Run by hand with
``pytest tests/e2e/quality/unstable_layer_allocation.py`` (2-3 min).

Status (shapedpy branch, with the pacer merged; load average 2.7-18 from sibling sessions):
1 pass in 8 runs (that pass with a NACK hold since reverted; the last run failed at load
2.7-4). Fixed on the way: the REMB-only (aiortc) budget grows on clean reports only up to
1.25x what got through (not while a video is paused), probes at most 1.5x, a failed probe
no longer cuts the media's share, and reports are judged against the padding really sent
(the pacer holds padding back). Still failing, from the server logs:

* the 600 and 300 kbit/s subscribers still report 15-60% loss while sent well under their
  link (``receiver-reported loss 0.33, sent 402307`` on 600 kbit/s; at load 3, 13-36% for
  three seconds at 400-430 kbit/s with no padding at all): tbf drops are real
  (``tc -s qdisc`` counts hundreds), so something still bursts or overshoots (key frames
  after PLIs, probe ramps through the 200 ms queue: ``estimate 832026 ... (2, 2)`` on the
  600 kbit/s link) and a layer switch down then freezes 2.0-2.4 s (bound 2 s);
* after the weak link's limit is lifted its video resumes and is paused again within a
  second, twice (``receiver-reported loss 0.79, sent 190503`` on an unlimited link): the
  resumed stream's loss looks like an artefact (sequence numbers skipped over the pause?);
* under load 15-18 the Python agents stop decoding for seconds (all four showed 0 frames for
  six reports) and the free agent's socket overflowed (79 UDP receive-buffer errors in
  /proc/net/snmp); the leaves' net.core.rmem_default cannot be raised (EINVAL in a child
  namespace), so the agent would have to set SO_RCVBUF itself;
* Chromium drops its top layer under such load (``limitation: bandwidth``).

2026-12-08, idle host, with the cut's gaps left out of the loss reports, the cut discarding
its queued retransmissions, the 600-number gap and the Python SDK's 0.5 s hole wait (quality
bench: freeze 1.2-2.2 s, was 4-16 s): 3 runs, 3 failures, each further on: a decoder error
on the weak link (before the SDK's frame-start rule), then the weak subscriber decoding
1280x720 after the lift without a ``VideoEnabled`` after it (its video had resumed before
the lift: a try the 70 kbit/s link could not carry, never paused again), then the 600 kbit/s
subscriber swinging between 640x360 and 320x180 (reports of 11-34% loss at 390-410 kbit/s
sent: the budget still overshoots a 600 kbit/s tbf link).

Per-subscriber layers under shaped links: one Chromium publisher (1280x720, three simulcast
layers), subscribers in namespaces of their own whose downlinks are shaped; the SFU's
allocator gives each the layer its link carries. The Chromium subscriber part is in
unstable_chromium_subscriber_shaped.py (not collected either).

Bounds are for a loaded 2-core machine: settling is given tens of seconds (aiortc's REMB, the
Python subscribers' estimate, grows about 8% a second), freezes a second or two around a
switch, and nothing is asserted about a report while its link changes. The server runs at a
higher CPU priority than the clients (see ``HubServer``): on a shared host its scheduling
delays otherwise read as overuse of the publisher's uplink and Chromium drops its upper layers.
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
from salon.bench.quality import _SENT as SENT
from tests.e2e.browser.browser_helpers import open_sdk_page
from tests.e2e.quality.conftest import PUBLISH, Agent, HubServer, chromium_in

pytestmark = pytest.mark.timeout(360)

LAYERS = {"320x180", "640x360", "1280x720"}


def sizes(report: dict[str, Any]) -> set[str]:
    return {size for stream in report["streams"].values() for size in stream["sizes"]}


def frames(report: dict[str, Any]) -> int:
    return sum(stream["frames"] for stream in report["streams"].values())


def audio(report: dict[str, Any]) -> int:
    return sum(stream["audio_frames"] for stream in report["streams"].values())


def decode_errors(report: dict[str, Any]) -> int:
    """aiortc's decoder failures so far in the agent (a running total)."""
    return max((stream["decode_errors"] for stream in report["streams"].values()), default=0)


class Lab:
    """What a failure message shows: the agents' last reports, the server's allocation log
    and what Chromium sends."""

    def __init__(self, server: HubServer, page: Any, subs: dict[str, Agent]) -> None:
        self.server, self.page, self.subs = server, page, subs

    async def wait_until(self, check: Callable[[], bool], what: str, timeout: float) -> float:
        """Poll ``check`` until it holds; returns the seconds it took."""
        start = time.monotonic()
        while not check():
            if time.monotonic() - start > timeout:
                raise AssertionError(f"no {what} within {timeout:g} s\n{await self.state()}")
            await asyncio.sleep(0.25)
        return time.monotonic() - start

    async def steady_window(
        self, expected: dict[str, str], seconds: float, timeout: float
    ) -> dict[str, float]:
        """Wait for a window of ``seconds`` that starts with every agent of ``expected`` on its
        layer and throughout which the publisher sends its three layers at full size; returns
        each agent's clock at the window's start (the agents' reports are then checked)."""
        deadline = time.monotonic() + timeout
        checks = [settled_on(self.subs[leaf], size, 2) for leaf, size in expected.items()]
        while True:
            while not (all(check() for check in checks) and _full_layers(await self.page.evaluate(SENT))):
                if time.monotonic() > deadline:
                    what = f"every subscriber on its layer while Chromium sends all three ({expected})"
                    raise AssertionError(f"no {what} within {timeout:g} s\n{await self.state()}")
                await asyncio.sleep(0.5)
            start = {leaf: sub.reports()[-1]["t"] for leaf, sub in self.subs.items()}
            full = True
            end = time.monotonic() + seconds
            while time.monotonic() < end or not all(
                sub.reports()[-1]["t"] > start[leaf] + seconds for leaf, sub in self.subs.items()
            ):
                full = full and _full_layers(await self.page.evaluate(SENT))
                await asyncio.sleep(0.5)
            if full:
                return start
            # Chromium dropped or shrank a layer during the window: try the next one.

    async def state(self) -> str:
        lines = [
            f"{leaf}: {[(sorted(sizes(r)), frames(r)) for r in sub.reports()[-6:]]}"
            for leaf, sub in self.subs.items()
        ]
        log = self.server.process.stderr_path.read_text(errors="replace").splitlines()
        lines += [line for line in log if "allocation:" in line or "REMB" in line][-30:]
        lines.append(str(await self.page.evaluate(SENT)))
        return "\n".join(lines)


def _full_layers(sent: list[dict[str, Any]]) -> bool:
    """Chromium sends its three layers, each at its capture size (no CPU or bandwidth scaling)."""
    return sorted(layer["width"] for layer in sent if layer["fps"]) == [320, 640, 1280]


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
    errors = decode_errors(reports[0])
    for report in reports:
        assert decode_errors(report) == errors, (agent.leaf, "decoder error", report)
        for stream in report["streams"].values():
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
    links = {leaf: lab.add_leaf(leaf) for leaf in ("free", "mid", "low", "weak")}
    # 3% random loss on the unlimited link: NACK and RTX repair it, and the budget of a
    # REMB-only (aiortc) subscriber, loss-based, holds between 2% and 10% loss, so the loss
    # costs it neither its layer nor a decoder error. (A link both limited and lossy would
    # keep such a budget where the first cut left it: 2-10% holds, as in GCC's loss-based
    # controller; the REMB-only budget is not a loss model.)
    links["free"].set_loss(0.03, direction="down")
    # Chromium's layers of its fake camera (a simple picture) measure about 100, 350 and
    # 700 kbit/s on this kind of host: 600 kbit/s carries the middle one (with audio and the
    # allocator's 10% upgrade headroom) and not the top one, 300 kbit/s only the lowest.
    links["mid"].shape(down=600)
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
        lab_view = Lab(hub_server, page, subs)
        wait_until = lab_view.wait_until

        # Each settles on the layer its link carries; eight seconds there: nobody changes
        # layer, every subscriber's audio flows, no decoder error. Asserted over a window in
        # which Chromium sent its three layers at full size throughout: on a loaded host its
        # encoder or its own uplink estimate may drop or shrink a layer for a while, and a
        # subscriber then rightly gets another layer (the one its link carries of what is sent).
        expected = {"free": "1280x720", "mid": "640x360", "low": "320x180"}
        settled = await lab_view.steady_window(expected, seconds=8, timeout=150)
        for leaf, size in expected.items():
            steady = [r for r in subs[leaf].reports(settled[leaf]) if r["t"] > settled[leaf] + 1]
            assert all(sizes(r) <= {size} for r in steady), f"{leaf}: {[sorted(sizes(r)) for r in steady]}"
            assert_clean(subs[leaf], settled[leaf])
        # A link too weak for any video: video disabled for quality, audio goes on; at most a
        # short try (a resume the link could not carry) in the eight seconds.
        disabled = event(subs["weak"], "VideoDisabled")
        assert disabled is not None and disabled.get("reason") == "quality", disabled
        weak = subs["weak"].reports(settled["weak"])
        assert sum(frames(r) for r in weak[2:]) <= 20, [frames(r) for r in weak]
        assert_clean(subs["weak"], settled["weak"], video=False)
        steady = [r for r in subs["free"].reports(settled["free"]) if r["t"] > settled["free"] + 1]
        free_rate = sum(frames(r) for r in steady) / (steady[-1]["t"] - steady[0]["t"] + 0.5)
        # Chromium's fake camera runs at 15-30 fps on a busy host.
        assert free_rate >= 12, free_rate

        # Lifting the limits: the 300 kbit/s one climbs, the weak one gets its video back.
        lifted = {leaf: sub.reports()[-1]["t"] for leaf, sub in subs.items()}
        links["low"].shape(down=None)
        links["weak"].shape(down=None)
        await wait_until(
            lambda: event(subs["weak"], "VideoEnabled", lifted["weak"]) is not None,
            "VideoEnabled after lifting",
            45,
        )
        enabled = event(subs["weak"], "VideoEnabled", lifted["weak"])
        assert enabled is not None and enabled.get("reason") == "quality", enabled
        await wait_until(
            lambda: any(sizes(r) & {"640x360", "1280x720"} for r in subs["low"].reports(lifted["low"])),
            "a higher layer after lifting 300 kbit/s",
            45,
        )
        await wait_until(lambda: frames(subs["weak"].reports()[-1]) > 0, "video back on the weak link", 20)
        # No decoder error across the switches up, no frame of another size than a layer's.
        for leaf in ("free", "mid", "low", "weak"):
            reports = subs[leaf].reports(lifted[leaf])
            assert decode_errors(reports[-1]) == decode_errors(reports[0]), (leaf, reports[-1])
            for report in reports:
                assert sizes(report) <= LAYERS, (leaf, report)

        # Preferences on the unlimited link: 320x180 at 15 fps (the lowest layer's temporal
        # layers 0 and 1, about half the frames), without a decoder error.
        asked = subs["free"].reports()[-1]["t"]
        subs["free"].send({"preferred_resolution": [320, 180]})
        subs["free"].send({"preferred_frame_rate": 15})
        await wait_until(settled_on(subs["free"], "320x180"), "the preferred resolution", 30)
        since = subs["free"].reports()[-1]["t"]
        await wait_until(lambda: subs["free"].reports()[-1]["t"] > since + 6, "six more seconds", 20)
        steady = [r for r in subs["free"].reports(since) if r["t"] > since]
        assert all(sizes(r) <= {"320x180"} for r in steady), [sorted(sizes(r)) for r in steady]
        rate = sum(frames(r) for r in steady) / (steady[-1]["t"] - steady[0]["t"] + 0.5)
        assert 4 <= rate <= 16 and rate <= 0.7 * free_rate, (rate, free_rate)
        assert_clean(subs["free"], asked)
    finally:
        await browser.close()
