"""``salon bench quality``: how one subscriber's video follows its link, on shaped links.

What runs where
---------------

Everything is inside a :class:`~salon.bench.netlab.NetLab` the command builds (root needed):
``salon serve`` (one media worker) in the hub namespace; Debian's Chromium, driven by
Playwright, in leaf ``pub``, publishing its fake camera at 1280x720 with the browser SDK's
defaults (three simulcast layers); a Python SDK subscriber (:mod:`salon.bench.quality_agent`,
decoding every frame) in leaf ``sub``, reporting twice a second the frames it decoded, their
sizes, the longest gap between two frames and the subscription's received bitrate.

Measurement
-----------

1. Warm-up: at least ``--warm-up`` seconds (Chromium's encoder ramps its layers up), then
   until the subscriber has decoded the top layer (the largest size it saw) for three seconds.
2. **Drop**: ``sub``'s downlink is limited to ``--drop-to`` kbit/s (``tc`` ``tbf``).
   *Seconds to fit*: from the limit until the received bitrate stays under the limit for
   three seconds. *Longest freeze*: the longest gap between decoded frames in the
   ``--hold`` seconds after the limit. The layer it settles on is reported.
3. **Lift**: the limit is removed. *Seconds back to the top*: until the subscriber decodes
   the top layer's size again in two consecutive reports.

Targets (issue 13): fit under 5 s, freeze under 1 s, back to the top under 10 s. Decoder
errors (aiortc's "failed to decode") over the run are reported and should be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

from salon.bench._harness import (
    CHROMIUM_ARGS,
    BenchError,
    ServerProcess,
    machine,
    machine_line,
    run_and_report,
)
from salon.bench.netlab import NetLab, NetLabError
from salon.bench.quality_agent import AgentProcess

__all__ = ["run_quality_bench"]


_PUBLISH = """async ({sessionId, token}) => {
    window.salon = await import('/sdk/salon.js');
    const session = window.salon.initSession(sessionId);
    await session.connect(token);
    const publisher = window.salon.initPublisher(document.body,
        {name: "bench", resolution: "1280x720", frameRate: 30});
    await session.publish(publisher);
    window.publisher = publisher;
    // On a busy host Chromium's CPU adaptation drops the top layer (quality limitation
    // "cpu"), and the figures would be about a 640x360 top: keep the resolution, lower the
    // frame rate instead.
    for (const sender of publisher.pc.getSenders()) {
        if (!sender.track || sender.track.kind !== "video") continue;
        const params = sender.getParameters();
        params.degradationPreference = "maintain-resolution";
        try { await sender.setParameters(params); } catch (e) { console.warn(e); }
    }
}"""

_SENT = """async () => {
    const stats = await window.publisher.pc.getStats();
    const out = [];
    stats.forEach((r) => { if (r.type === "outbound-rtp" && r.kind === "video")
        out.push({rid: r.rid || null, width: r.frameWidth || 0, height: r.frameHeight || 0,
                  fps: r.framesPerSecond || 0, bytes: r.bytesSent || 0,
                  limitation: r.qualityLimitationReason || null}); });
    return out;
}"""


#: The publisher's capture size: its top layer.
CAPTURE = (1280, 720)


def _log(message: str) -> None:
    print(f"salon bench quality: {message}", file=sys.stderr, flush=True)


def _size(report: dict[str, Any]) -> tuple[int, int] | None:
    """The size most frames of a report had (None: no video frame)."""
    sizes: dict[str, int] = {}
    for stream in report["streams"].values():
        for size, count in stream["sizes"].items():
            sizes[size] = sizes.get(size, 0) + count
    if not sizes:
        return None
    width, height = max(sizes, key=lambda size: sizes[size]).split("x")
    return int(width), int(height)


def _bitrate(report: dict[str, Any]) -> float | None:
    rates = [stream["bitrate"] for stream in report["streams"].values() if stream["bitrate"] is not None]
    return sum(rates) if rates else None


def _next_report(agent: AgentProcess, timeout: float = 10.0) -> dict[str, Any]:
    return agent.wait_for(lambda line: line.get("kind") == "report", "a report", timeout)


def _warm_up(agent: AgentProcess, minimum: float, timeout: float) -> tuple[int, int]:
    """Wait at least ``minimum`` seconds (the publisher's encoder ramps up), then until the
    top layer (the capture size) has been decoded for 3 s; return its size."""
    deadline = time.monotonic() + timeout
    # The agent's first report comes once it has connected and subscribed: slow on a busy host.
    earliest = _next_report(agent, timeout=60.0)["t"] + minimum
    top: tuple[int, int] | None = None
    since: float | None = None
    while time.monotonic() < deadline:
        report = _next_report(agent)
        size = _size(report)
        if size is None:
            since = None
            continue
        if top is None or size[0] * size[1] > top[0] * top[1]:
            top, since = size, report["t"]
        elif size != top:
            since = None
        elif since is None:
            since = report["t"]
        if (
            top is not None
            and top[0] >= CAPTURE[0]
            and since is not None
            and report["t"] - since >= 3.0
            and report["t"] >= earliest
        ):
            return top
    raise BenchError(
        f"the subscriber did not settle on the top layer ({CAPTURE[0]}x{CAPTURE[1]}) within {timeout:.0f} s "
        f"(largest size seen {top}: Chromium, short of CPU, may have stopped sending its top layer)"
    )


def _drop(agent: AgentProcess, lab: NetLab, args: argparse.Namespace) -> dict[str, Any]:
    limit = args.drop_to * 1000
    link = lab.links["sub"]
    start = _next_report(agent)["t"]
    link.shape(down=args.drop_to)
    reports: list[dict[str, Any]] = []
    while True:
        report = _next_report(agent)
        reports.append(report)
        if report["t"] - start >= args.hold:
            break
    fit: float | None = None
    for i, report in enumerate(reports):
        window = [r for r in reports[i:] if r["t"] - report["t"] <= 3.0]
        if window[-1]["t"] - report["t"] < 2.5:
            break
        rates = [_bitrate(r) for r in window]
        if all(rate is not None and rate <= limit for rate in rates):
            fit = round(report["t"] - start, 2)
            break
    freeze = max((s["frozen_ms"] for r in reports for s in r["streams"].values()), default=0.0)
    settled = [_size(r) for r in reports[-4:]]
    tail_rates = [rate for r in reports[-6:] if (rate := _bitrate(r)) is not None]
    return {
        "limit_kbit": args.drop_to,
        "seconds_to_fit": fit,
        "longest_freeze_ms": freeze,
        "settled_size": settled[-1],
        "settled_bitrate_kbit": round(sum(tail_rates) / len(tail_rates) / 1000, 1) if tail_rates else None,
        "link_drops": link.counters("down")["dropped"],
    }


def _lift(agent: AgentProcess, lab: NetLab, top: tuple[int, int], args: argparse.Namespace) -> dict[str, Any]:
    start = _next_report(agent)["t"]
    lab.links["sub"].shape(down=None)
    streak = 0
    back: float | None = None
    freeze = 0.0
    while True:
        report = _next_report(agent)
        freeze = max([freeze, *(s["frozen_ms"] for s in report["streams"].values())])
        if _size(report) == top:
            streak += 1
            if streak == 2 and back is None:
                back = round(report["t"] - start, 2)
                break
        else:
            streak = 0
        if report["t"] - start >= args.hold * 2:
            break
    return {"seconds_back_to_top": back, "longest_freeze_ms": freeze}


async def _run(
    args: argparse.Namespace, lab: NetLab, server: ServerProcess, tmp: pathlib.Path
) -> dict[str, Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        raise BenchError("salon bench quality needs Playwright for Python: pip install playwright") from None
    session_id = server.create_session()
    async with async_playwright() as pw:
        wrapper = lab.wrapper("pub", args.chromium, tmp)
        chromium_args = [*CHROMIUM_ARGS, f"--unsafely-treat-insecure-origin-as-secure={server.url}"]
        browser = await pw.chromium.launch(executable_path=str(wrapper), headless=True, args=chromium_args)
        agent: AgentProcess | None = None
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(f"{server.url}/")
            await page.evaluate("() => document.body.replaceChildren()")
            await page.evaluate(_PUBLISH, {"sessionId": session_id, "token": server.token(session_id)})
            _log("Chromium publishing 1280x720; subscriber starting")
            agent = AgentProcess(lab, "sub", server.url, session_id, server.token(session_id))
            top = await asyncio.to_thread(_warm_up, agent, args.warm_up, args.timeout)
            _log(f"warm: top layer {top[0]}x{top[1]}; limiting the link to {args.drop_to} kbit/s")
            sent_before = await page.evaluate(_SENT)
            drop = await asyncio.to_thread(_drop, agent, lab, args)
            _log(f"drop: {drop}; lifting the limit")
            lift = await asyncio.to_thread(_lift, agent, lab, top, args)
            sent_after = await page.evaluate(_SENT)
            errors = max(
                (s["decode_errors"] for r in agent.reports() for s in r["streams"].values()), default=0
            )
            return {
                "top_size": list(top),
                "drop": drop,
                "lift": lift,
                "decode_errors": errors,
                "chromium_layers_before": sent_before,
                "chromium_layers_after": sent_after,
            }
        finally:
            if agent is not None:
                agent.stop()
            await browser.close()


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    if not pathlib.Path(args.chromium).exists():
        raise BenchError(f"no Chromium at {args.chromium} (apt-get install chromium)")
    description = machine()
    _log(machine_line(description))
    try:
        lab = NetLab(tag="b")
    except NetLabError as exc:
        raise BenchError(str(exc)) from None
    with lab, tempfile.TemporaryDirectory(prefix="salon-bench-quality-") as tmp:
        lab.add_leaf("pub")
        lab.add_leaf("sub")
        server = ServerProcess(
            pathlib.Path(tmp),
            workers=1,
            host=lab.server_address,
            prefix=lab.command("hub", []),
            serve_args=["--media-address", lab.server_address],
            log_level="info" if args.server_log else "warning",
        )
        server.start()
        try:
            result = asyncio.run(_run(args, lab, server, pathlib.Path(tmp)))
        finally:
            server.stop()
            if args.server_log:
                shutil.copyfile(pathlib.Path(tmp) / "server.log", args.server_log)
    return {
        "benchmark": "quality",
        "machine": description,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        **result,
    }


def _passed(report: dict[str, Any]) -> bool:
    fit = report["drop"]["seconds_to_fit"]
    back = report["lift"]["seconds_back_to_top"]
    return (
        fit is not None
        and fit < 5
        and report["drop"]["longest_freeze_ms"] < 1000
        and back is not None
        and back < 10
        and report["decode_errors"] == 0
    )


def run_quality_bench(args: argparse.Namespace) -> int:
    if args.forwarding:
        from salon.bench.quality_forwarding import run_forwarding

        return run_and_report(
            "quality",
            lambda: run_forwarding(args),
            lambda report: (
                report["three_layers_in"]["subscribers_on_their_layer"] == report["subscribers"]
                and report["ratio_three_to_one"] is not None
            ),
        )
    return run_and_report("quality", lambda: _bench(args), _passed)
