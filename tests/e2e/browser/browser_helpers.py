"""Page helpers for the browser tests: join the web app, wait for remote media."""

from __future__ import annotations

import os
import pathlib
import wave
from typing import Any

import numpy as np
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


async def launch(pw: Playwright, *, fake_ui: bool = True, extra_args: tuple[str, ...] = ()) -> Browser:
    args = [*BASE_ARGS, FAKE_UI] if fake_ui else list(BASE_ARGS)
    return await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*args, *extra_args])


def write_tone(
    path: pathlib.Path, seconds: float = 4.0, hz: float = 440.0, amplitude: float = 0.3
) -> pathlib.Path:
    """A 48 kHz mono WAV of a steady tone, for ``--use-file-for-fake-audio-capture`` (it loops)."""
    rate = 48000
    t = np.arange(int(rate * seconds)) / rate
    samples = (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


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
    """Wait until the (camera) tile of ``name`` plays video; return its size and frame progress."""
    return await video_stats(page, f'.tile[data-name="{name}"]:not(.local):not(.screen) video', timeout_ms)


async def video_stats(page: Page, selector: str, timeout_ms: int = 20000) -> dict[str, Any]:
    """Wait until the <video> at ``selector`` plays; return its size and frame progress."""
    stats: dict[str, Any] = await page.evaluate(
        """async ([selector, timeout]) => {
            const deadline = Date.now() + timeout;
            let video = null;
            while (Date.now() < deadline) {
                video = document.querySelector(selector);
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
        [selector, timeout_ms],
    )
    return stats


async def remote_audio_level(page: Page, name: str) -> float:
    """The peak level (0-1) of the remote audio of ``name``, through a WebAudio analyser."""
    level: float = await page.evaluate(
        """async (name) => {
            const tile = document.querySelector(`.tile[data-name="${name}"]:not(.local):not(.screen)`);
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


async def record_status(page: Page) -> None:
    """Keep every text the app's status line shows in ``window.statusLog`` (some are brief)."""
    await page.evaluate(
        """() => {
            window.statusLog = [];
            const status = document.getElementById("status");
            new MutationObserver(() => window.statusLog.push(status.hidden ? "" : status.textContent))
                .observe(status, {childList: true, characterData: true, subtree: true, attributes: true});
        }"""
    )


async def status_log(page: Page) -> list[str]:
    log: list[str] = await page.evaluate("window.statusLog")
    return log


async def open_sdk_page(browser: Browser, base: str, label: str) -> Page:
    """A page of the server's origin, emptied, with the browser SDK imported as ``window.salon``.

    It is the app's page with its body cleared (the app stays idle until one joins): a page
    fulfilled by Playwright instead would not count as loopback for Chromium's local network
    access checks, which then block its WebSocket to 127.0.0.1.
    """
    page = await open_page(browser, label)
    await page.goto(f"{base}/")
    await page.evaluate(
        "async () => { document.body.replaceChildren(); window.salon = await import('/sdk/salon.js'); }"
    )
    return page
