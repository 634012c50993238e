"""Composed archives end to end: the opentok SDK starts them, Python SDK publishers are recorded.

The real server (one media worker, the real recorders of ``salon serve``) on 127.0.0.1; the
publishers are Python SDK clients, each drawing one known colour and playing one tone. An
archive is started and stopped through the official ``opentok`` SDK, becomes ``available``,
and the MP4 its ``url`` downloads is opened with PyAV: H.264 + AAC, the requested resolution, a
duration within 1 s of the time recorded, each publisher's tile in its colour where the layout
puts it, and the mixed audio carrying each publisher's tone while (and only while) it is in.
Also: manual stream mode and layout changes, screen shares, an archiver or the server killed
mid-recording, and the same recorders' individual mode.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pathlib
import signal
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import opentok
import pytest
from sdk_helpers import session_for, wait_for

from salon.archive.composed import ComposedRecording
from salon.client import CustomVideoSource, Publisher, Session, SessionState, ToneSource, VideoType
from salon.media.plane import SfuMediaPlane
from tests.conftest import API_KEY, API_SECRET, RunningServer, recording_server

pytestmark = pytest.mark.timeout(240)

RED = (230, 20, 20)
BLUE = (20, 40, 230)
ALICE_TONE = 440.0
BOB_TONE = 1250.0


@pytest.fixture
def archive_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """The real server with ``salon serve``'s recorders (archiver processes)."""
    with recording_server(tmp_path) as server:
        yield server


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


async def archive_json(server: RunningServer, archive_id: str) -> Any:
    """The Archive JSON as the REST API gives it (``reason`` included, which the SDK drops)."""

    def get() -> Any:
        request = urllib.request.Request(
            f"{server.url}/v2/project/{API_KEY}/archive/{archive_id}", headers=server.sdk.get_json_headers()
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    return await asyncio.to_thread(get)


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
    """Times of the test's steps, in seconds since the archive's ``createdAt`` (its time 0;
    in ms from the REST API: the opentok SDK's ``created_at`` is truncated to the second)."""

    def __init__(self, created_at_ms: int) -> None:
        self.start = created_at_ms / 1000

    def now(self) -> float:
        return time.time() - self.start

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
            archive = await sdk(
                server,
                "start_archive",
                sid,
                name="composed",
                output_mode=opentok.OutputModes.composed,
                resolution="1280x720",
                layout={"type": "bestFit"},
            )
            clock = Clock((await archive_json(server, archive.id))["createdAt"])
            assert archive.status == "started" and archive.resolution == "1280x720"
            # Alice alone for 9 s (the archiver starts and gets her first key frame: a few
            # seconds on a loaded machine), Bob joins for 5 s, then leaves; Alice alone 4 s more.
            await clock.until(9.0)
            joined = clock.now()
            await publish(server, bob_session, bob)
            await clock.until(joined + 5.0)
            left = clock.now()
            await bob_session.unpublish(bob.publisher)
            await clock.until(left + 4.0)
            stopping = clock.now()
            stopped = await sdk(server, "stop_archive", archive.id)
            recorded = (stopping + clock.now()) / 2  # the stop lands in between
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
    assert abs(done.duration - mp4.duration) < 1.0, (done.duration, mp4.duration)  # whole seconds

    # The archiver starts (a process importing PyAV), asks for a key frame and composes it:
    # Alice's picture is in within a few seconds (black before: OpenTok's archives start so too).
    centre = [(t, colour_of(frame, 0.2, 0.1, 0.8, 0.9)) for t, frame in mp4.frames]
    first = next((t for t, colour in centre if near(colour, RED)), None)
    assert first is not None and first < joined - 1.5, ("Alice's first frame", first, centre[::25])
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


async def test_manual_streams_and_a_new_layout_change_the_composed_output(
    archive_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    """Manual stream mode: only the streams added are composed (Bob's without his audio), a
    layout set while recording takes effect, a stream removed leaves the picture and the mix."""
    server = archive_server
    sid = server.session()
    alice, bob = Painted("alice", RED, ALICE_TONE), Painted("bob", BLUE, BOB_TONE)
    try:
        async with session_for(server, sid) as alice_session, session_for(server, sid) as bob_session:
            alice_id = await publish(server, alice_session, alice)
            bob_id = await publish(server, bob_session, bob)
            archive = await sdk(
                server,
                "start_archive",
                sid,
                output_mode=opentok.OutputModes.composed,
                stream_mode=opentok.StreamModes.manual,
                resolution="640x480",
            )
            clock = Clock((await archive_json(server, archive.id))["createdAt"])
            await sdk(server, "add_archive_stream", archive.id, alice_id)
            await clock.until(9.0)
            bob_added = clock.now()
            await sdk(server, "add_archive_stream", archive.id, bob_id, has_audio=False)
            await clock.until(bob_added + 4.0)
            pip = clock.now()
            await sdk(server, "set_archive_layout", archive.id, "pip")
            await clock.until(pip + 4.0)
            removed = clock.now()
            await sdk(server, "remove_archive_stream", archive.id, alice_id)
            await clock.until(removed + 4.0)
            stopping = clock.now()
            await sdk(server, "stop_archive", archive.id)
            recorded = (stopping + clock.now()) / 2  # the stop lands in between
    finally:
        alice.close()
        bob.close()

    done = await available(server, archive.id)
    mp4 = Mp4(await download(done.url))
    assert mp4.codecs == ["aac", "h264"] and (mp4.width, mp4.height) == (640, 480)
    assert abs(mp4.duration - recorded) < 1.0, (mp4.duration, recorded)
    centre = [(t, colour_of(frame, 0.2, 0.2, 0.8, 0.8)) for t, frame in mp4.frames]
    first = next((t for t, colour in centre if near(colour, RED)), None)
    assert first is not None and first < bob_added - 1.5, ("Alice's first frame", first, centre[::25])

    def check(
        t: float, regions: list[tuple[tuple[float, float, float, float], tuple[int, int, int]]]
    ) -> None:
        frame = mp4.frame_at(t)
        for box, colour in regions:
            assert near(colour_of(frame, *box), colour), (t, box, colour_of(frame, *box), colour)

    # Only Alice (Bob is not added yet): her picture fills the output.
    for t in (first + 0.5, bob_added - 0.5):
        check(t, [((0.1, 0.1, 0.9, 0.9), RED)])
    # Both, best fit: side by side.
    for t in (bob_added + 2.0, pip - 0.5):
        check(t, [((0.0, 0.3, 0.5, 0.7), RED), ((0.5, 0.3, 1.0, 0.7), BLUE)])
    # Picture-in-picture: Alice full, Bob in the bottom-right corner.
    for t in (pip + 1.5, removed - 0.5):
        check(t, [((0.1, 0.1, 0.6, 0.6), RED), ((0.75, 0.74, 0.95, 0.95), BLUE)])
    # Alice removed: Bob alone, full.
    for t in (removed + 1.5, stopping - 0.8):
        check(t, [((0.1, 0.1, 0.9, 0.9), BLUE)])

    # The mix: Alice's tone until she is removed; Bob's never (added without audio).
    assert mp4.tone_share(first, removed - 0.5, ALICE_TONE) > 0.3
    assert mp4.tone_share(first, removed - 0.5, BOB_TONE) < 0.01
    silence = mp4.audio[int((removed + 1.0) * mp4.rate) : int((stopping - 0.5) * mp4.rate)]
    assert float(np.sqrt(np.mean(silence**2))) < 0.003, "silence once Alice is removed"


def _archiver_pid(server: RunningServer, archive_id: str) -> int:
    """The pid of an archive's archiver process (the service's recording of it)."""
    archives = server.thread.server.config.app.state.archives
    recording = archives._active[archive_id].recording.recording
    assert isinstance(recording, ComposedRecording) and recording.archiver is not None
    return recording.archiver.pid


async def test_an_archiver_killed_mid_recording_delivers_what_it_composed(
    archive_server: RunningServer,
) -> None:
    """``kill -9`` of a composed archive's archiver: the call goes on, the archive is stopped
    with the failure as its reason and delivered with what was composed until the kill."""
    server = archive_server
    sid = server.session()
    alice = Painted("alice", RED, ALICE_TONE)
    try:
        async with session_for(server, sid) as alice_session:
            await publish(server, alice_session, alice)
            archive = await sdk(server, "start_archive", sid, resolution="640x480")
            clock = Clock((await archive_json(server, archive.id))["createdAt"])
            await clock.until(6.0)
            killed = clock.now()
            os.kill(_archiver_pid(server, archive.id), signal.SIGKILL)
            deadline = time.monotonic() + 30
            while (await sdk(server, "get_archive", archive.id)).status == "started":
                assert time.monotonic() < deadline, "the archive is still started after its archiver died"
                await asyncio.sleep(0.1)
            # The call goes on: Alice still publishes and is still connected.
            assert alice_session.state == SessionState.CONNECTED
    finally:
        alice.close()
    done = await available(server, archive.id)
    body = await archive_json(server, archive.id)
    assert "archiver" in body["reason"] and "exit code -9" in body["reason"], body["reason"]
    mp4 = Mp4(await download(done.url))
    assert mp4.codecs == ["aac", "h264"] and (mp4.width, mp4.height) == (640, 480)
    # Fragments of one second: what was composed until the kill (0.5 s behind) is there.
    assert killed - 2.5 < mp4.duration <= killed + 0.5, (mp4.duration, killed)
    assert near(colour_of(mp4.frame_at(mp4.duration - 0.5), 0.1, 0.1, 0.9, 0.9), RED)


def _archivers_of(data_dir: pathlib.Path) -> list[int]:
    """Archiver processes writing under ``data_dir``."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"salon.archive.archiver" in cmdline and any(str(data_dir).encode() in a for a in cmdline):
            if state != "Z":
                pids.append(int(proc.name))
    return pids


async def test_a_composed_archive_is_finalised_after_salon_serve_is_killed(tmp_path: pathlib.Path) -> None:
    """``kill -9`` of ``salon serve`` while a composed archive records: its archiver finishes
    the MP4 up to then and exits; the restarted server delivers it (``available``, with the
    restart as its reason), playable, with the publisher's picture."""
    from tests.serveproc import ServeProcess

    data_dir = tmp_path / "data"
    alice = Painted("alice", RED, ALICE_TONE)
    try:
        with ServeProcess(data_dir, API_KEY, API_SECRET, ["--workers", "1"]) as first:
            server = RunningServer(first.url, API_KEY, API_SECRET, None)  # type: ignore[arg-type]
            sid = await asyncio.to_thread(server.session)
            async with session_for(server, sid) as alice_session:
                await alice_session.publish(alice.publisher)
                archive = await sdk(server, "start_archive", sid, resolution="640x480")
                clock = Clock((await archive_json(server, archive.id))["createdAt"])
                await wait_for(lambda: _archivers_of(data_dir), "the archiver to start", timeout=30)
                await clock.until(7.0)
                assert first.proc is not None
                first.proc.kill()  # SIGKILL: no shutdown path runs
                killed = clock.now()
                await asyncio.to_thread(first.proc.wait, 10)
                await wait_for(
                    lambda: not _archivers_of(data_dir), "the orphaned archiver to exit", timeout=30
                )
    finally:
        alice.close()
    with ServeProcess(data_dir, API_KEY, API_SECRET, ["--workers", "1"]) as second:
        server = RunningServer(second.url, API_KEY, API_SECRET, None)  # type: ignore[arg-type]
        done = await available(server, archive.id)
        reason = (await archive_json(server, archive.id))["reason"]
        assert reason.startswith("the server restarted"), reason
        mp4 = Mp4(await download(done.url))
    assert mp4.codecs == ["aac", "h264"] and (mp4.width, mp4.height) == (640, 480)
    assert killed - 2.5 < mp4.duration <= killed + 0.5, (mp4.duration, killed)
    assert near(colour_of(mp4.frame_at(mp4.duration - 0.5), 0.1, 0.1, 0.9, 0.9), RED)


async def test_a_screen_share_takes_the_focus_with_screenshare_type(archive_server: RunningServer) -> None:
    """``bestFit`` with ``screenshareType: pip``: Bob's screen share fills the output and
    Alice's camera, published first, goes to the corner."""
    server = archive_server
    sid = server.session()
    alice, bob = Painted("alice", RED, ALICE_TONE), Painted("bob", BLUE, BOB_TONE)
    bob.publisher = Publisher("bob", video_source=bob.source, video_type=VideoType.SCREEN)
    try:
        async with session_for(server, sid) as alice_session, session_for(server, sid) as bob_session:
            await publish(server, alice_session, alice)
            await publish(server, bob_session, bob)
            archive = await sdk(
                server,
                "start_archive",
                sid,
                resolution="640x480",
                layout={"type": "bestFit", "screenshareType": "pip"},
            )
            clock = Clock((await archive_json(server, archive.id))["createdAt"])
            await clock.until(9.0)
            await sdk(server, "stop_archive", archive.id)
    finally:
        alice.close()
        bob.close()
    done = await available(server, archive.id)
    mp4 = Mp4(await download(done.url))
    frame = mp4.frame_at(8.0)
    assert near(colour_of(frame, 0.1, 0.1, 0.6, 0.6), BLUE), colour_of(frame, 0.1, 0.1, 0.6, 0.6)
    assert near(colour_of(frame, 0.75, 0.74, 0.95, 0.95), RED), colour_of(frame, 0.75, 0.74, 0.95, 0.95)


async def test_an_individual_archive_through_the_sdk_is_a_zip_of_each_stream(
    archive_server: RunningServer,
) -> None:
    """The same recorders' individual mode through the REST API: the ZIP the ``url``
    downloads holds a WebM per stream (VP8 + Opus, the publisher's colour) and its manifest."""
    server = archive_server
    sid = server.session()
    alice = Painted("alice", RED, ALICE_TONE)
    try:
        async with session_for(server, sid) as alice_session:
            stream_id = await publish(server, alice_session, alice)
            archive = await sdk(
                server, "start_archive", sid, name="one by one", output_mode=opentok.OutputModes.individual
            )
            clock = Clock((await archive_json(server, archive.id))["createdAt"])
            await clock.until(6.0)
            await sdk(server, "stop_archive", archive.id)
            recorded = clock.now()
    finally:
        alice.close()
    done = await available(server, archive.id)
    data = await download(done.url)
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        manifest = json.loads(bundle.read(f"{archive.id}.json"))
        assert sorted(bundle.namelist()) == sorted([f"{stream_id}.webm", f"{archive.id}.json"])
        webm = bundle.read(f"{stream_id}.webm")
    assert manifest["id"] == archive.id and manifest["name"] == "one by one" and manifest["sessionId"] == sid
    (entry,) = manifest["files"]
    assert entry["streamId"] == stream_id and entry["size"] == len(webm)
    with av.open(io.BytesIO(webm)) as container:
        assert sorted(s.codec_context.name for s in container.streams) == ["opus", "vp8"]
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    end = entry["startTimeOffset"] / 1000 + frames[-1][0]
    assert abs(end - recorded) < 1.0, (end, recorded)
    assert near(colour_of(frames[-1][1], 0.1, 0.1, 0.9, 0.9), RED)
