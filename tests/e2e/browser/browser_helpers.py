"""Page helpers for the browser tests: join the web app, wait for remote media."""

from __future__ import annotations

import os
from typing import Any

from playwright.async_api import Browser, Page, Playwright

CHROMIUM = os.environ.get("SALON_CHROMIUM", "/usr/bin/chromium")
BASE_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
#: Grants every getUserMedia prompt; without it (and without a granted permission) the
#: prompt is dismissed in headless mode, i.e. the camera is refused.
FAKE_UI = "--use-fake-ui-for-media-stream"


async def launch(pw: Playwright, *, fake_ui: bool = True) -> Browser:
    args = [*BASE_ARGS, FAKE_UI] if fake_ui else BASE_ARGS
    return await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


async def open_page(browser: Browser, url: str) -> Page:
    context = await browser.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()
    page.on("console", lambda m: print(f"[{url} console] {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: print(f"[{url} pageerror] {e}"))
    return page


async def join(page: Page, base: str, room: str, name: str) -> None:
    await page.goto(f"{base}/?room={room}")
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Join").click()


async def remote_video_stats(page: Page, name: str, timeout_ms: int = 20000) -> dict[str, Any]:
    """Wait until the tile of ``name`` plays video; return its size and frame progress."""
    stats: dict[str, Any] = await page.evaluate(
        """async ([name, timeout]) => {
            const deadline = Date.now() + timeout;
            let video = null;
            while (Date.now() < deadline) {
                video = document.querySelector(`.tile[data-name="${name}"]:not(.local) video`);
                const played = video && video.getVideoPlaybackQuality().totalVideoFrames > 0;
                if (played && video.videoWidth > 0) break;
                await new Promise((r) => setTimeout(r, 100));
            }
            if (!video) return {found: false};
            const frames0 = video.getVideoPlaybackQuality().totalVideoFrames;
            const time0 = video.currentTime;
            let callbacks = 0;
            const counting = (resolve) => {
                const step = () => {
                    callbacks += 1;
                    if (callbacks < 10) video.requestVideoFrameCallback(step);
                    else resolve();
                };
                video.requestVideoFrameCallback(step);
            };
            await Promise.race([new Promise(counting), new Promise((r) => setTimeout(r, 5000))]);
            const rect = video.getBoundingClientRect();
            return {
                found: true, width: video.videoWidth, height: video.videoHeight,
                boxWidth: rect.width, boxHeight: rect.height, callbacks,
                framesAdvanced: video.getVideoPlaybackQuality().totalVideoFrames - frames0,
                timeAdvanced: video.currentTime - time0, paused: video.paused,
            };
        }""",
        [name, timeout_ms],
    )
    return stats


async def remote_audio_level(page: Page, name: str) -> float:
    """The peak level (0-1) of the remote audio of ``name``, through a WebAudio analyser."""
    level: float = await page.evaluate(
        """async (name) => {
            const tile = document.querySelector(`.tile[data-name="${name}"]:not(.local)`);
            const sub = window.salonApp.subscribers.get(tile.dataset.streamId);
            const ctx = new AudioContext();
            await ctx.resume();
            const source = ctx.createMediaStreamSource(sub.mediaStream);
            const analyser = ctx.createAnalyser();
            analyser.fftSize = 2048;
            source.connect(analyser);
            const buf = new Float32Array(analyser.fftSize);
            let peak = 0;
            const deadline = Date.now() + 4000;
            while (Date.now() < deadline) {
                analyser.getFloatTimeDomainData(buf);
                for (const v of buf) peak = Math.max(peak, Math.abs(v));
                await new Promise((r) => setTimeout(r, 50));
            }
            await ctx.close();
            return peak;
        }""",
        name,
    )
    return level
