"""Real media published by Chromium, recorded in an individual archive by ``salon serve``'s
recorders (archiver processes).

A page of the server's origin publishes through the browser SDK (``/sdk/salon.js``) from
Chromium's fake camera (640x480) and a fake microphone playing a 440 Hz tone from a WAV file.
The archive is started and stopped through the official ``opentok`` SDK, becomes
``available``, and the ZIP its ``url`` downloads is opened with PyAV: the manifest matches the
files, the stream's file is WebM with VP8 (and Opus carrying the tone), 640x480, and its media
lasts the time recorded (from the start call's return to the stop call) to within 1 s. And
the same through 5 % loss on Chromium's leg: the WebM decodes without an error or a hole.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import pathlib
import time
import urllib.request
import zipfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import av
import av.logging
import numpy as np
import opentok
import pytest
from browser_helpers import launch, open_sdk_page, write_tone
from playwright.async_api import Browser, Playwright
from test_sdk_loss_recovery import THROUGH_RELAY

from salon.media.plane import SfuMediaPlane
from tests.conftest import RunningServer, recording_server
from tests.e2e.lossy import producer_stats, router_dumps
from tests.e2e.udp_relay import LossyRelay, relay_answer

pytestmark = pytest.mark.timeout(180)

TONE = 440.0

PUBLISH = """async ([sessionId, token]) => {
    const s = window.salon.initSession(sessionId);
    await s.connect(token);
    const publisher = window.salon.initPublisher(document.body,
        {name: "chromium", resolution: "640x480"});
    await s.publish(publisher);
    window.session = s;
}"""


@pytest.fixture
def archive_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """The real server with ``salon serve``'s recorders (archiver processes)."""
    with recording_server(tmp_path) as server:
        yield server


@pytest.fixture
async def toned_browser(pw: Playwright, tmp_path: pathlib.Path) -> AsyncIterator[Browser]:
    """Chromium whose fake microphone plays a steady 440 Hz tone."""
    wav = write_tone(tmp_path / "tone.wav", hz=TONE)
    browser = await launch(pw, extra_args=(f"--use-file-for-fake-audio-capture={wav}",))
    yield browser
    await browser.close()


async def until(predicate: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.1)


def flowing(server: RunningServer, session_id: str) -> list[str]:
    """The IDs of the session's streams whose media reaches the worker."""
    plane = server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)
    media = plane.sessions.get(session_id)
    if media is None:
        return []
    return [sid for sid, transport in media.router.streams.items() if transport.connected]


def dominant(samples: np.ndarray[Any, Any], rate: int) -> tuple[float, float]:
    """(dominant frequency, share of the energy within 15 Hz of it) of a signal."""
    samples = samples - samples.mean()
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    peak = float(freqs[int(np.argmax(spectrum[1:])) + 1])
    return peak, float(spectrum[np.abs(freqs - peak) < 15].sum() / spectrum.sum())


async def test_chromium_media_recorded_in_an_individual_archive(
    archive_server: RunningServer, toned_browser: Browser, tmp_path: pathlib.Path
) -> None:
    server = archive_server
    client = server.sdk
    sid = server.session()
    page = await open_sdk_page(toned_browser, server.url, "chromium")
    await page.evaluate(PUBLISH, [sid, server.token(sid)])
    await until(lambda: flowing(server, sid), "Chromium's media to reach the worker", timeout=40)
    (stream_id,) = flowing(server, sid)

    asked = time.monotonic()
    archive = await asyncio.to_thread(
        client.start_archive, sid, name="chromium", output_mode=opentok.OutputModes.individual
    )
    started = time.monotonic()  # the SDK is told the archive is started: recording from now
    webm = tmp_path / "archives-work" / archive.id / f"{stream_id}.webm"
    await until(lambda: webm.exists() and webm.stat().st_size > 100_000, "the file to grow", timeout=60)
    await until(lambda: time.monotonic() - started >= 6.0, "6 s of recording", timeout=60)
    stopping = time.monotonic()
    stopped = await asyncio.to_thread(client.stop_archive, archive.id)
    recorded = stopping - started
    assert stopped.status == "stopped"
    await page.evaluate("() => window.session.disconnect()")

    deadline = time.monotonic() + 60
    while (done := await asyncio.to_thread(client.get_archive, archive.id)).status != "available":
        assert done.status == "stopped", done.status
        assert time.monotonic() < deadline, f"the archive is still {done.status} after 60 s"
        await asyncio.sleep(0.2)
    # The archive's duration counts from its creation (when it was asked for).
    assert abs(done.duration - (stopping - asked)) <= 1.0, (done.duration, stopping - asked)

    def get() -> bytes:
        with urllib.request.urlopen(done.url, timeout=30) as response:
            return bytes(response.read())

    data = await asyncio.to_thread(get)
    assert len(data) == done.size
    with zipfile.ZipFile(io.BytesIO(data)) as zipped:
        assert sorted(zipped.namelist()) == sorted([f"{stream_id}.webm", f"{archive.id}.json"])
        manifest = json.loads(zipped.read(f"{archive.id}.json"))
        media = zipped.read(f"{stream_id}.webm")
    assert manifest["id"] == archive.id and manifest["sessionId"] == sid and manifest["name"] == "chromium"
    (entry,) = manifest["files"]
    assert entry["streamId"] == stream_id and entry["filename"] == f"{stream_id}.webm"
    assert entry["size"] == len(media)
    # Offsets from the archive's creation: the file starts by the time the start call
    # returned (the archiver process is up and the recorder asked for a key frame), and stops
    # when the archive was stopped.
    start = entry["startTimeOffset"] / 1000
    assert 0 <= start <= started - asked + 0.5, (entry, started - asked)
    assert abs(entry["stopTimeOffset"] / 1000 - (stopping - asked)) < 1.0, (entry, stopping - asked)

    with av.open(io.BytesIO(media)) as container:
        assert container.format.name == "matroska,webm"
        assert sorted(s.codec_context.name for s in container.streams) == ["opus", "vp8"]
        frames = [(float(f.time), f.width, f.height) for f in container.decode(video=0)]
    with av.open(io.BytesIO(media)) as container:
        audio = [f.to_ndarray()[0].astype(np.float64) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].codec_context.sample_rate
    # Chromium may start below 640x480 while its encoder ramps up; it ends there.
    assert (frames[-1][1], frames[-1][2]) == (640, 480), frames[-1]
    duration = frames[-1][0] + 1 / 30
    assert abs(duration - recorded) < 1.0, (duration, recorded)
    assert len(frames) >= 10 * (recorded - 1), len(frames)  # Chromium sends ~30 fps
    samples = np.concatenate(audio)
    assert abs(len(samples) / rate - recorded) < 1.0, (len(samples) / rate, recorded)
    peak, share = dominant(samples[rate:], rate)
    assert abs(peak - TONE) < 15 and share > 0.5, f"the page's 440 Hz tone: {peak:.1f} Hz, {share:.0%}"


async def test_chromium_media_recorded_through_5_percent_loss(
    archive_server: RunningServer, toned_browser: Browser, tmp_path: pathlib.Path
) -> None:
    """Chromium's only path to the server is a UDP relay dropping 5 % of its VP8 packets
    (as in test_sdk_loss_recovery.py) while an individual archive records it: the worker
    NACKs, Chromium retransmits, and the WebM decodes without an error and without a hole."""
    server = archive_server
    client = server.sdk
    sid = server.session()
    relays: list[LossyRelay] = []
    page = await open_sdk_page(toned_browser, server.url, "lossy")

    async def answer_through_relay(sdp: str) -> str:
        return await relay_answer(sdp, "VP8", 0.05, relays)

    await page.expose_function("relayAnswer", answer_through_relay)
    await page.evaluate(THROUGH_RELAY)
    try:
        await page.evaluate(PUBLISH, [sid, server.token(sid)])
        await until(lambda: flowing(server, sid), "Chromium's media to reach the worker", timeout=40)
        (stream_id,) = flowing(server, sid)
        (relay,) = relays
        archive = await asyncio.to_thread(
            client.start_archive, sid, output_mode=opentok.OutputModes.individual
        )
        started = time.monotonic()
        first = len(relay.dropped)
        await until(
            lambda: len(relay.dropped) - first >= 30 and time.monotonic() - started >= 6,
            "30 packets dropped while recording",
            timeout=90,
        )
        relay.active = False
        lost = len(relay.dropped)

        async def recovered() -> dict[str, Any]:
            (producer,) = producer_stats(await router_dumps(server), "video")
            return producer

        def repaired(producer: dict[str, Any]) -> int:
            """Dropped packets that reached the worker after all: those it NACKed and got, and
            those it never found missing because an RTX copy came first (Chromium's bandwidth
            probes, on transport-cc feedback, are RTX copies of the packets it sent last)."""
            return int(producer["recovered"]) + max(0, lost - int(producer["nacked_sequence_numbers"]))

        deadline = time.monotonic() + 20
        while repaired(producer := await recovered()) < 0.8 * lost:
            assert time.monotonic() < deadline, f"{lost} dropped; producer {producer}"
            await asyncio.sleep(0.2)
        stopping = time.monotonic()
        await asyncio.to_thread(client.stop_archive, archive.id)
        recorded = stopping - started
        await page.evaluate("() => window.session.disconnect()")
    finally:
        for relay in relays:
            relay.close()
    summary = f"relay dropped {lost} of {lost + relay.forwarded}; producer {producer}"

    deadline = time.monotonic() + 60
    while (done := await asyncio.to_thread(client.get_archive, archive.id)).status != "available":
        assert done.status == "stopped", done.status
        assert time.monotonic() < deadline, f"the archive is still {done.status} after 60 s"
        await asyncio.sleep(0.2)

    def get() -> bytes:
        with urllib.request.urlopen(done.url, timeout=30) as response:
            return bytes(response.read())

    with zipfile.ZipFile(io.BytesIO(await asyncio.to_thread(get))) as zipped:
        media = zipped.read(f"{stream_id}.webm")
    with av.logging.Capture() as logs, av.open(io.BytesIO(media)) as container:
        times = [float(f.time) for f in container.decode(video=0)]
    errors = [message for level, _, message in logs if level <= av.logging.ERROR]
    assert errors == [], f"decoding logged errors: {errors[:5]} ({summary})"
    steps = sorted(b - a for a, b in itertools.pairwise(times))
    assert steps[0] > 0, "two frames at one time"
    period = steps[len(steps) // 2]  # Chromium's frame interval
    assert steps[-1] < 0.5, f"a {steps[-1]:.2f} s hole in the video ({summary})"
    assert len(times) >= 0.9 * (times[-1] - times[0]) / period, (len(times), period, summary)
    assert abs(times[-1] + period - recorded) < 1.0, (times[-1], recorded)
