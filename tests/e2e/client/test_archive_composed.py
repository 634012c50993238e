"""Composed archives end to end: the opentok SDK starts them, Python SDK publishers are recorded.

The real server (one media worker, the real recorders of ``salon serve``) on 127.0.0.1; the
publishers are Python SDK clients, each drawing one known colour and playing one tone. An
archive is started and stopped through the official ``opentok`` SDK, becomes ``available``,
and the MP4 its ``url`` downloads is opened with PyAV: H.264 + AAC, the requested resolution, a
duration within 1 s of the time recorded, each publisher's tile in its colour where the layout
puts it, and the mixed audio carrying each publisher's tone while (and only while) it is in.
"""

from __future__ import annotations

import asyncio
import io
import pathlib
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import opentok
import pytest
from sdk_helpers import session_for, wait_for

from salon.archive.recorders import media_recorders
from salon.client import CustomVideoSource, Publisher, Session, ToneSource
from salon.media.plane import SfuMediaPlane
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET, RunningServer

pytestmark = pytest.mark.timeout(240)

RED = (230, 20, 20)
BLUE = (20, 40, 230)
ALICE_TONE = 440.0
BOB_TONE = 1250.0


@pytest.fixture
def archive_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """The real server with ``salon serve``'s recorders (archiver processes)."""
    config = ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0),
        workers=1,
        demo_rate_burst=1000,
        archive_recorders=media_recorders(),
    )
    with ServerThread(config) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


async def paint(source: CustomVideoSource, colour: tuple[int, int, int]) -> None:
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:] = colour
    while True:
        source.push(frame)
        await asyncio.sleep(1 / 25)


class Painted:
    """A publisher drawing a solid colour (320x240) and playing a tone."""

    def __init__(self, name: str, colour: tuple[int, int, int], tone: float) -> None:
        self.source = CustomVideoSource(width=320, height=240)
        self.publisher = Publisher(name, video_source=self.source, audio_source=ToneSource(tone))
        self.task = asyncio.create_task(paint(self.source, colour))

    def close(self) -> None:
        self.task.cancel()


async def media_flows(server: RunningServer, session_id: str, stream_id: str) -> None:
    plane = server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)

    def flowing() -> bool:
        media = plane.sessions.get(session_id)
        transport = None if media is None else media.router.streams.get(stream_id)
        return transport is not None and transport.connected

    await wait_for(flowing, f"stream {stream_id}'s media to flow", timeout=30)


async def publish(server: RunningServer, session: Session, who: Painted) -> str:
    stream = await session.publish(who.publisher)
    await media_flows(server, session.session_id, stream.stream_id)
    return stream.stream_id


async def sdk(server: RunningServer, method: str, *args: Any, **kwargs: Any) -> Any:
    """An opentok SDK call (blocking HTTP) off the event loop the publishers run on."""
    return await asyncio.to_thread(getattr(server.sdk, method), *args, **kwargs)


async def available(server: RunningServer, archive_id: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        archive = await sdk(server, "get_archive", archive_id)
        if archive.status == "available":
            return archive
        assert archive.status in ("started", "stopped"), (archive.status, archive.reason)
        assert time.monotonic() < deadline, f"archive {archive_id} still {archive.status} after {timeout} s"
        await asyncio.sleep(0.2)


async def download(url: str) -> bytes:
    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=30) as response:
            return bytes(response.read())

    return await asyncio.to_thread(get)


class Mp4:
    """A downloaded composed archive, decoded."""

    def __init__(self, data: bytes) -> None:
        with av.open(io.BytesIO(data)) as container:
            self.codecs = sorted(s.codec_context.name for s in container.streams)
            self.frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        with av.open(io.BytesIO(data)) as container:
            audio = [f.to_ndarray() for f in container.decode(audio=0)]
            self.rate = container.streams.audio[0].rate
        self.audio = np.concatenate(audio, axis=1).mean(axis=0)
        self.width, self.height = self.frames[0][1].shape[1], self.frames[0][1].shape[0]
        self.duration = self.frames[-1][0] + 1 / 25

    def frame_at(self, t: float) -> np.ndarray[Any, Any]:
        return min(self.frames, key=lambda item: abs(item[0] - t))[1]

    def tone_share(self, start: float, end: float, frequency: float) -> float:
        """Share of the audio's spectral energy within ±20 Hz of ``frequency`` in [start, end)."""
        signal = self.audio[int(start * self.rate) : int(end * self.rate)]
        signal = signal - signal.mean()
        spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)))) ** 2
        freqs = np.fft.rfftfreq(len(signal), 1 / self.rate)
        return float(spectrum[np.abs(freqs - frequency) < 20].sum() / max(spectrum.sum(), 1e-12))


def colour_of(frame: np.ndarray[Any, Any], x0: float, y0: float, x1: float, y1: float) -> tuple[int, ...]:
    """The mean colour of the central half of a region given in fractions of the frame."""
    h, w = frame.shape[:2]
    cx0, cx1 = x0 + (x1 - x0) / 4, x1 - (x1 - x0) / 4
    cy0, cy1 = y0 + (y1 - y0) / 4, y1 - (y1 - y0) / 4
    region = frame[int(cy0 * h) : int(cy1 * h), int(cx0 * w) : int(cx1 * w)].reshape(-1, 3)
    return tuple(int(v) for v in region.mean(axis=0))


def near(colour: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


class Clock:
    """Times of the test's steps, in seconds since the archive was started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.start

    async def until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()))


async def test_composed_archive_follows_a_join_and_a_leave(
    archive_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    server = archive_server
    sid = server.session()
    alice, bob = Painted("alice", RED, ALICE_TONE), Painted("bob", BLUE, BOB_TONE)
    try:
        async with session_for(server, sid) as alice_session, session_for(server, sid) as bob_session:
            await publish(server, alice_session, alice)
            clock = Clock()
            archive = await sdk(
                server,
                "start_archive",
                sid,
                name="composed",
                output_mode=opentok.OutputModes.composed,
                resolution="1280x720",
                layout={"type": "bestFit"},
            )
            assert archive.status == "started" and archive.resolution == "1280x720"
            # Alice alone for 7 s, Bob joins for 5 s, then leaves; Alice alone 4 s more.
            await clock.until(7.0)
            joined = clock.now()
            await publish(server, bob_session, bob)
            await clock.until(joined + 5.0)
            left = clock.now()
            await bob_session.unpublish(bob.publisher)
            await clock.until(left + 4.0)
            stopping = clock.now()
            stopped = await sdk(server, "stop_archive", archive.id)
            recorded = (stopping + clock.now()) / 2
            assert stopped.status == "stopped"
    finally:
        alice.close()
        bob.close()

    done = await available(server, archive.id)
    assert done.url and done.size > 0
    data = await download(done.url)
    assert len(data) == done.size
    mp4 = Mp4(data)
    assert mp4.codecs == ["aac", "h264"]
    assert (mp4.width, mp4.height) == (1280, 720)
    assert abs(mp4.duration - recorded) < 1.0, (mp4.duration, recorded)
    assert abs(done.duration - recorded) <= 1.0, (done.duration, recorded)

    # The archiver starts (a process importing PyAV), asks for a key frame and composes it:
    # Alice's picture is in within a few seconds (black before: OpenTok's archives start so too).
    centre = [(t, colour_of(frame, 0.2, 0.1, 0.8, 0.9)) for t, frame in mp4.frames]
    first = next((t for t, colour in centre if near(colour, RED)), None)
    assert first is not None and first < 6.0, ("Alice's first frame", first, centre[::25])
    # Alice alone: her 4:3 picture letterboxed in the whole output, red; the bars black.
    for t in (first + 0.5, joined - 0.5, left + 1.5, stopping - 0.8):
        frame = mp4.frame_at(t)
        assert near(colour_of(frame, 0.2, 0.1, 0.8, 0.9), RED), (t, colour_of(frame, 0.2, 0.1, 0.8, 0.9))
        assert near(colour_of(frame, 0.0, 0.0, 0.1, 1.0), (16, 16, 16), 30), (t, "left bar")
    # Both: side by side in the order they joined, Alice left, Bob right.
    for t in (joined + 2.5, left - 1.0):
        frame = mp4.frame_at(t)
        assert near(colour_of(frame, 0.0, 0.25, 0.5, 0.75), RED), (t, colour_of(frame, 0.0, 0.25, 0.5, 0.75))
        assert near(colour_of(frame, 0.5, 0.25, 1.0, 0.75), BLUE), (t, colour_of(frame, 0.5, 0.25, 1.0, 0.75))

    # The mix: Alice's tone throughout, Bob's only while he is in.
    alone = mp4.tone_share(first, joined - 0.5, BOB_TONE), mp4.tone_share(first, joined - 0.5, ALICE_TONE)
    assert alone[1] > 0.3 and alone[0] < 0.01, alone
    both = (
        mp4.tone_share(joined + 2.0, left - 0.5, ALICE_TONE),
        mp4.tone_share(joined + 2.0, left - 0.5, BOB_TONE),
    )
    assert both[0] > 0.15 and both[1] > 0.15, both
    after = (
        mp4.tone_share(left + 1.0, stopping - 0.5, BOB_TONE),
        mp4.tone_share(left + 1.0, stopping - 0.5, ALICE_TONE),
    )
    assert after[1] > 0.3 and after[0] < 0.01, after
