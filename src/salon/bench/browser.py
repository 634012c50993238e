"""``salon bench browser``: join-to-first-remote-frame time in the web app, two local Chromium pages.

The server runs in this process (on its own thread, 127.0.0.1, port 0, a temporary data
directory). Chromium (``/usr/bin/chromium`` by default; Debian's ``chromium`` package) is driven
with Playwright for Python (``pip install playwright``; its own browser downloads are not used)
with a fake camera and microphone. For each run, page A joins a fresh room and publishes; then
page B clicks **Join**, and the time from that click to the first frame of A's video shown on B
(``requestVideoFrameCallback``) is recorded. It covers the demo token request, the WebSocket
``connect``, ``stream_created``, the subscribe offer/answer, ICE and DTLS, the first key frame and
its decoding. Prints JSON: every run, p50, p90, min and max in milliseconds, and per run when the
session was connected, the subscription answered, the subscriber's transport connected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import secrets
import statistics
import sys
import tempfile
import uuid

from salon.bench._harness import CHROMIUM_ARGS, machine, machine_line
from salon.server.config import ServerConfig
from salon.server.run import ServerThread

__all__ = ["run_browser_bench"]


# Click Join, then resolve with the milliseconds until the first remote frame is presented.
_MEASURE = """async (timeout) => {
    const start = performance.now();
    const marks = {};
    const mark = (name) => { if (!(name in marks)) marks[name] = performance.now() - start; };
    document.getElementById("join").click();
    const deadline = Date.now() + timeout;
    let video = null;
    while (!video && Date.now() < deadline) {
        if (window.salonApp.session && window.salonApp.session.state === "connected") mark("connected");
        video = document.querySelector(".tile:not(.local) video");
        if (!video) await new Promise((r) => setTimeout(r, 5));
    }
    if (!video) return {first_frame: -1};
    mark("subscribing");
    const poll = setInterval(() => {
        const sub = [...window.salonApp.subscribers.values()][0];
        if (sub && sub.subscriptionId) mark("subscribed");
        if (sub && sub.pc && sub.pc.connectionState === "connected") mark("transport_connected");
    }, 2);
    const first = await new Promise((resolve) => {
        video.requestVideoFrameCallback(() => resolve(performance.now() - start));
        setTimeout(() => resolve(-1), Math.max(0, deadline - Date.now()));
    });
    clearInterval(poll);
    return {...marks, first_frame: first};
}"""


async def _bench(url: str, args: argparse.Namespace, steps: list[dict[str, float]]) -> list[float]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        raise SystemExit("salon bench browser needs Playwright for Python: pip install playwright") from None
    times: list[float] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=args.chromium, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            for run in range(args.runs):
                room = f"bench-{run}-{uuid.uuid4().hex[:8]}"
                a = await browser.new_context()
                b = await browser.new_context()
                try:
                    page_a, page_b = await a.new_page(), await b.new_page()
                    await page_a.goto(f"{url}/?room={room}")
                    await page_a.fill("#name", "A")
                    await page_a.click("#join")
                    await page_a.wait_for_function(
                        "() => window.salonApp.publisher && window.salonApp.publisher.stream",
                        timeout=args.timeout * 1000,
                    )
                    await page_b.goto(f"{url}/?room={room}")
                    await page_b.fill("#name", "B")
                    marks: dict[str, float] = await page_b.evaluate(_MEASURE, args.timeout * 1000)
                    elapsed = float(marks["first_frame"])
                    if elapsed < 0:
                        raise SystemExit(f"run {run}: no remote frame within {args.timeout} s")
                    times.append(elapsed)
                    steps.append({k: round(float(v), 1) for k, v in marks.items()})
                finally:
                    await a.close()
                    await b.close()
        finally:
            await browser.close()
    return times


def run_browser_bench(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    if not pathlib.Path(args.chromium).exists():
        raise SystemExit(f"no Chromium at {args.chromium} (apt-get install chromium)")
    machine_description = machine()  # the load average before anything of ours runs
    print(f"salon bench browser: {machine_line(machine_description)}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="salon-bench-browser-") as data_dir:
        config = ServerConfig(
            port=0,
            data_dir=pathlib.Path(data_dir),
            api_key="47999999",
            api_secret=secrets.token_hex(20),
            workers=1,
            demo_rate_burst=2 * args.runs + 10,  # every run joins twice, from 127.0.0.1
        )
        with ServerThread(config) as server:
            steps: list[dict[str, float]] = []
            times = asyncio.run(_bench(server.url, args, steps))
    ordered = sorted(times)
    result = {
        "benchmark": "browser join to first remote frame",
        "runs_ms": [round(t, 1) for t in times],
        "p50_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 1),
        "min_ms": round(ordered[0], 1),
        "max_ms": round(ordered[-1], 1),
        "steps_ms": steps,
        "machine": machine_description,
    }
    print(json.dumps(result, indent=2))
    return 0
