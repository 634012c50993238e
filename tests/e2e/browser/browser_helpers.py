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
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (a failure, not a skip: the suite must run)
        raise AssertionError(f"no Chromium at {CHROMIUM} (scripts/test installs it)")
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


def write_voice(path: pathlib.Path, seconds: float = 6.0, amplitude: float = 0.6) -> pathlib.Path:
    """A 48 kHz mono WAV that Chromium's audio processing keeps as a voice, for a speaker.

    A steady tone is what WebRTC's noise suppressor learns as background noise: within seconds
    it attenuates it by some 15 dB. This is a voiced sound instead: five harmonics of a pitch
    that moves every 0.3 s between 140 and 260 Hz, never silent (the active-speaker detector
    wants 0.5 s of voice on end), so no frequency bin holds a steady level. Measured at a
    subscriber: a 0.3 tone fell from 0.13 to 0.024 within 5 s; this voice at 0.6 holds 0.12-0.18.
    """
    rate = 48000
    pitches = (180.0, 220.0, 150.0, 260.0, 200.0, 140.0, 240.0, 170.0, 230.0, 190.0)
    step = int(rate * 0.3)
    phase = 0.0
    chunks = []
    for i in range(int(seconds / 0.3)):
        pitch = pitches[i % len(pitches)]
        t = np.arange(step) / rate
        chunk = sum((0.6**k) * np.sin(2 * np.pi * pitch * (k + 1) * t + phase * (k + 1)) for k in range(5))
        phase += 2 * np.pi * pitch * step / rate
        chunks.append(chunk)
    signal = np.concatenate(chunks)
    signal *= amplitude / np.max(np.abs(signal))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((signal * 32767).astype("<i2").tobytes())
    return path


#: Console errors and uncaught exceptions of every page opened by :func:`open_page` during the
#: current test; the ``page_errors`` fixture (autouse, conftest.py) fails the test on any that
#: its allow-list does not expect.
PAGE_ERRORS: list[str] = []


async def open_page(browser: Browser, url: str) -> Page:
    context = await browser.new_context(viewport={"width": 1100, "height": 700})
    page = await context.new_page()

    def console(message: Any) -> None:
        if message.type == "error":
            PAGE_ERRORS.append(f"[{url} console] {message.text}")
            print(PAGE_ERRORS[-1])

    def page_error(error: Any) -> None:
        PAGE_ERRORS.append(f"[{url} pageerror] {error}")
        print(PAGE_ERRORS[-1])

    page.on("console", console)
    page.on("pageerror", page_error)
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


async def wait_remote_audio(page: Page, name: str, *, audible: bool, timeout_ms: int = 20000) -> float:
    """Wait until the remote audio of ``name`` is audible (a 1 s window peaks above 0.01) or
    silent (below 0.003); return that window's peak, or the last one when it timed out."""
    level: float = await page.evaluate(
        """async ([name, audible, timeout]) => {
            const tile = document.querySelector(`.tile[data-name="${name}"]:not(.local):not(.screen)`);
            const sub = window.salonApp.subscribers.get(tile.dataset.streamId);
            const ctx = new AudioContext();
            await ctx.resume();
            const source = ctx.createMediaStreamSource(sub.mediaStream);
            const analyser = ctx.createAnalyser();
            analyser.fftSize = 2048;
            source.connect(analyser);
            const buf = new Float32Array(analyser.fftSize);
            const deadline = Date.now() + timeout;
            let peak = 0;
            while (Date.now() < deadline) {
                peak = 0;
                const end = Date.now() + 1000;
                while (Date.now() < end) {
                    analyser.getFloatTimeDomainData(buf);
                    for (const v of buf) peak = Math.max(peak, Math.abs(v));
                    await new Promise((r) => setTimeout(r, 50));
                }
                if (audible ? peak > 0.01 : peak < 0.003) break;
            }
            await ctx.close();
            return peak;
        }""",
        [name, audible, timeout_ms],
    )
    return level


async def wait_remote_video_brightness(page: Page, name: str, *, dark: bool, timeout_ms: int = 20000) -> None:
    """Wait until the remote camera video of ``name`` shows black frames (``dark``: mean level
    below 8 of 255) or a picture (mean above 30); fail saying which, with the last level."""
    await page.evaluate(
        """async ([name, dark, timeout]) => {
            const selector = `.tile[data-name="${name}"]:not(.local):not(.screen) video`;
            const canvas = document.createElement("canvas");
            canvas.width = 64;
            canvas.height = 48;
            const g = canvas.getContext("2d", {willReadFrequently: true});
            const deadline = Date.now() + timeout;
            let level = -1;
            while (Date.now() < deadline) {
                const video = document.querySelector(selector);
                if (video && video.readyState >= 2 && video.videoWidth > 0) {
                    g.drawImage(video, 0, 0, 64, 48);
                    const d = g.getImageData(0, 0, 64, 48).data;
                    let sum = 0;
                    for (let i = 0; i < d.length; i += 4) sum += (d[i] + d[i + 1] + d[i + 2]) / 3;
                    level = sum / (d.length / 4);
                    if (dark ? level < 8 : level > 30) return;
                }
                await new Promise((r) => setTimeout(r, 100));
            }
            throw new Error(`video of ${name} not ${dark ? "black" : "showing a picture"} ` +
                            `after ${timeout} ms (mean level ${level.toFixed(1)})`);
        }""",
        [name, dark, timeout_ms],
    )


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
