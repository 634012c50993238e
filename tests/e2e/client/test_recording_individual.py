"""Individual-mode recording from the media plane, end to end.

The real server (one media worker) with a Python SDK publisher drawing a known colour and
playing a tone; a recording is started through the media plane's API
(:class:`~salon.archive.recorder.RecordingManager` → ``SfuMediaPlane.start_recording``) in an
archiver process, stopped, and its ZIP opened with PyAV: manifest, container, codecs, duration,
the frames' colour. And an archiver killed with SIGKILL mid-recording: the call goes on, the
recording ends by itself with a failure, and the file it left plays up to the kill.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import pathlib
import signal
import time
import zipfile
from collections.abc import Coroutine
from typing import Any, TypeVar

import av
import numpy as np
import pytest
from sdk_helpers import Recorder, auto_subscribe, dominant_frequency, session_for, wait_for

from salon.archive.recorder import IndividualRecording, RecordingManager, RecordingResult, StreamSource
from salon.client import (
    CustomVideoSource,
    Publisher,
    SessionState,
    TestPatternSource,
    ToneSource,
    read_test_pattern_index,
)
from salon.media.plane import SfuMediaPlane
from tests.conftest import RunningServer
from tests.e2e.lossy import drop_outgoing

pytestmark = pytest.mark.timeout(150)

T = TypeVar("T")
RED = (230, 20, 20)


async def on_server(server: RunningServer, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Run ``coroutine`` on the server's event loop (where the media plane lives)."""
    return await asyncio.wait_for(asyncio.wrap_future(server.thread.run_coroutine(coroutine)), timeout)


def media_plane(server: RunningServer) -> SfuMediaPlane:
    plane = server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)
    return plane


async def solid_colour(source: CustomVideoSource, colour: tuple[int, int, int]) -> None:
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:] = colour
    while True:
        source.push(frame)
        await asyncio.sleep(1 / 30)


async def media_flows(server: RunningServer, session_id: str, stream_id: str) -> None:
    """Wait until the worker has the stream's media (its publish transport reported flowing)."""
    plane = media_plane(server)

    def flowing() -> bool:
        media = plane.sessions.get(session_id)
        if media is None:
            return False
        transport = media.router.streams.get(stream_id)
        return transport is not None and transport.connected

    await wait_for(flowing, f"stream {stream_id}'s media to flow", timeout=30)


def open_archive(result: RecordingResult) -> tuple[dict[str, Any], zipfile.ZipFile]:
    assert result.path is not None and result.path.exists()
    archive = zipfile.ZipFile(result.path)
    manifest = json.loads(archive.read(f"{result.archive_id}.json"))
    return manifest, archive


def decode(data: bytes) -> tuple[Any, list[av.VideoFrame], int]:
    """(container format name, video frames, audio samples) of a media file's bytes."""
    with av.open(io.BytesIO(data)) as container:
        name = container.format.name
        codecs = sorted(s.codec_context.name for s in container.streams)
        frames = list(container.decode(video=0))
    with av.open(io.BytesIO(data)) as container:
        samples = sum(f.samples for f in container.decode(audio=0)) if container.streams.audio else 0
    return (name, codecs), frames, samples


def audio_tone(data: bytes) -> tuple[float, float]:
    """(dominant frequency, share of energy near it) of a media file's first audio channel."""
    with av.open(io.BytesIO(data)) as container:
        chunks = [f.to_ndarray()[0].astype(np.float64) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].codec_context.sample_rate
    return dominant_frequency(chunks[10:], rate)


def is_red(frame: av.VideoFrame) -> bool:
    rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).astype(int)
    mean = rgb.mean(axis=0)
    return bool(np.all(np.abs(mean - RED) < 25))


async def test_individual_recording_of_a_published_stream(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    server = media_server
    sid = server.session()
    source = CustomVideoSource(width=320, height=240)
    painter = asyncio.create_task(solid_colour(source, RED))
    manager = RecordingManager(media_plane(server), tmp_path / "archives")
    try:
        async with session_for(server, sid) as alice:
            publisher = Publisher("alice", video_source=source, audio_source=ToneSource(440.0))
            stream = await alice.publish(publisher)
            await media_flows(server, sid, stream.stream_id)

            recording = await on_server(
                server,
                manager.start(
                    "archive-1",
                    sid,
                    [StreamSource(stream.stream_id, connection_data="name=alice")],
                    name="Interview",
                    created_at=1_700_000_000_000,
                ),
            )
            started_at = time.monotonic()  # the recorder is on: recording from now
            archiver_pid = recording.archiver.pid if recording.archiver else 0
            # Record until the file holds 4 s of media (on a loaded machine, wall time may run
            # ahead of what was written: wait on the file, then on the clock).
            webm = recording.directory / f"{stream.stream_id}.webm"
            await wait_for(
                lambda: webm.exists() and webm.stat().st_size > 20_000, "the file to grow", timeout=30
            )
            await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - started_at)))
            stopping_at = time.monotonic()
            result = await on_server(server, recording.stop())
            recorded = stopping_at - started_at
    finally:
        painter.cancel()
    assert result.failure is None, result.failure
    assert not _alive(archiver_pid), "the archiver exits once its archive is written"
    manifest, archive = open_archive(result)
    with archive:
        assert sorted(archive.namelist()) == sorted([f"{stream.stream_id}.webm", "archive-1.json"])
        data = archive.read(f"{stream.stream_id}.webm")
    assert manifest["id"] == "archive-1" and manifest["name"] == "Interview"
    assert manifest["sessionId"] == sid and manifest["createdAt"] == 1_700_000_000_000
    (entry,) = manifest["files"]
    assert entry["streamId"] == stream.stream_id and entry["connectionData"] == "name=alice"
    assert entry["filename"] == f"{stream.stream_id}.webm" and entry["size"] == len(data)
    # Offsets count from the archive's start (createdAt), before the archiver process was up.
    assert 0 <= entry["startTimeOffset"] < 10_000
    assert abs((entry["stopTimeOffset"] - entry["startTimeOffset"]) / 1000 - recorded) < 1.0
    assert result.path is not None and result.size == result.path.stat().st_size

    (name, codecs), frames, samples = decode(data)
    assert name == "matroska,webm" and codecs == ["opus", "vp8"]
    duration = float(frames[-1].time)
    assert abs(duration - recorded) < 1.0, (duration, recorded)
    assert abs(samples / 48000 - recorded) < 1.0, (samples / 48000, recorded)
    peak, share = audio_tone(data)
    assert abs(peak - 440) < 15 and share > 0.5, f"the publisher's 440 Hz tone: {peak:.1f} Hz, {share:.0%}"
    assert len(frames) >= 15 * (recorded - 1), len(frames)  # ~30 fps published; generous on a loaded box
    assert (frames[0].width, frames[0].height) == (320, 240)
    red = [is_red(f) for f in frames]
    assert sum(red) >= 0.9 * len(frames), f"{sum(red)} of {len(frames)} frames are the publisher's red"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped still answers signal 0: look at its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


async def test_archiver_killed_mid_recording_leaves_a_playable_file_and_the_call_goes_on(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    server = media_server
    sid = server.session()
    seen = Recorder()
    ended: list[RecordingResult] = []
    manager = RecordingManager(media_plane(server), tmp_path / "archives")
    async with session_for(server, sid) as alice, session_for(server, sid, role="subscriber") as bob:
        auto_subscribe(bob, seen)
        publisher = Publisher(
            "alice", video_source=TestPatternSource(width=320, height=240), audio_source=ToneSource()
        )
        stream = await alice.publish(publisher)
        await media_flows(server, sid, stream.stream_id)
        await wait_for(lambda: len(seen.indices) >= 10, "bob to decode alice's video", timeout=30)

        def on_ended(_recording: IndividualRecording, result: RecordingResult) -> None:
            ended.append(result)

        recording = await on_server(
            server, manager.start("archive-2", sid, [StreamSource(stream.stream_id)], on_ended=on_ended)
        )
        assert recording.archiver is not None
        webm = recording.directory / f"{stream.stream_id}.webm"
        await wait_for(lambda: webm.exists() and webm.stat().st_size > 30_000, "the file to grow", timeout=30)
        killed_at = time.monotonic()
        os.kill(recording.archiver.pid, signal.SIGKILL)

        await wait_for(lambda: bool(ended), "the recording to end by itself", timeout=30)
        (result,) = ended
        assert result.failure is not None and "archiver" in result.failure, result.failure
        assert "archive-2" not in manager.recordings
        # The call goes on: bob keeps decoding alice's video after the kill.
        before = len(seen.indices)
        await wait_for(
            lambda: len(seen.indices) >= before + 30, "bob to keep decoding alice's video", timeout=30
        )
        assert alice.state is SessionState.CONNECTED and bob.state is SessionState.CONNECTED
    # The file left behind plays up to the kill, and it is packaged with its manifest.
    manifest, archive = open_archive(result)
    with archive:
        data = archive.read(f"{stream.stream_id}.webm")
    (entry,) = manifest["files"]
    assert entry["streamId"] == stream.stream_id and entry["size"] == len(data)
    assert 0 <= entry["startTimeOffset"] < entry["stopTimeOffset"]
    assert entry["stopTimeOffset"] / 1000 >= killed_at - recording.t0 - 0.1
    (name, codecs), frames, _samples = decode(data)
    assert name == "matroska,webm" and codecs == ["opus", "vp8"]
    assert len(frames) >= 10
    assert float(frames[-1].time) <= killed_at - recording.t0 + 0.5


async def test_recording_recovers_packets_lost_on_the_publishers_uplink(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    """5 % of the publisher's video RTP is dropped before it leaves (its retransmissions
    pass): the media worker NACKs upstream, the recovered packets reach the archiver late and
    out of order, and the file has the test pattern's frames in order without a lasting gap."""
    server = media_server
    sid = server.session()
    manager = RecordingManager(media_plane(server), tmp_path / "archives")
    async with session_for(server, sid) as alice:
        publisher = Publisher("alice", video_source=TestPatternSource(width=320, height=240), audio=False)
        stream = await alice.publish(publisher)
        await media_flows(server, sid, stream.stream_id)
        assert publisher._pc is not None
        uplink = drop_outgoing(publisher._pc, "video", 0.05)
        recording = await on_server(server, manager.start("archive-3", sid, [StreamSource(stream.stream_id)]))
        deadline = time.monotonic() + 40
        while len(uplink.dropped) < 15 or time.monotonic() - recording_started(recording) < 5:
            assert time.monotonic() < deadline, f"in 40 s only {len(uplink.dropped)} packets were dropped"
            await asyncio.sleep(0.1)
        uplink.active = False
        await asyncio.sleep(1.5)  # the last retransmissions arrive
        result = await on_server(server, recording.stop())
    assert result.failure is None, result.failure
    _, archive = open_archive(result)
    with archive:
        data = archive.read(f"{stream.stream_id}.webm")
    (_name, codecs), frames, _ = decode(data)
    assert codecs == ["vp8"]
    stats = result.stats[stream.stream_id]["tracks"]["video"]
    indices = [read_test_pattern_index(f.to_ndarray(format="gray")) for f in frames]
    gaps = [b - a for a, b in itertools.pairwise(indices)]
    summary = f"{len(uplink.dropped)} dropped; archiver {stats}; largest gap {max(gaps)} frames"
    assert indices == sorted(indices), f"frames out of order ({summary})"
    assert max(gaps) <= 15, summary
    span = indices[-1] - indices[0] + 1
    assert len(frames) >= 0.9 * span, f"{len(frames)} frames of {span} ({summary})"
    assert stats["lost"] <= 0.2 * len(uplink.dropped), summary


def recording_started(recording: IndividualRecording) -> float:
    return recording.t0


async def test_mute_and_unmute_during_a_recording(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    """The publisher turns its video off for ~2 s (black frames at a low rate) and on again:
    the file's timeline keeps real time through it, red, then black, then red again."""
    server = media_server
    sid = server.session()
    source = CustomVideoSource(width=320, height=240)
    painter = asyncio.create_task(solid_colour(source, RED))
    manager = RecordingManager(media_plane(server), tmp_path / "archives")
    try:
        async with session_for(server, sid) as alice:
            publisher = Publisher("alice", video_source=source, audio_source=ToneSource(440.0))
            stream = await alice.publish(publisher)
            await media_flows(server, sid, stream.stream_id)
            recording = await on_server(
                server, manager.start("archive-4", sid, [StreamSource(stream.stream_id)])
            )
            webm = recording.directory / f"{stream.stream_id}.webm"
            await wait_for(
                lambda: webm.exists() and webm.stat().st_size > 10_000, "the file to grow", timeout=30
            )
            await asyncio.sleep(1.0)
            muted_at = time.monotonic() - recording.t0
            await publisher.publish_video(False)
            await asyncio.sleep(2.0)
            unmuted_at = time.monotonic() - recording.t0
            await publisher.publish_video(True)
            await asyncio.sleep(2.0)
            stopping_at = time.monotonic() - recording.t0
            result = await on_server(server, recording.stop())
    finally:
        painter.cancel()
    assert result.failure is None, result.failure
    (entry,) = result.files
    _, archive = open_archive(result)
    with archive:
        data = archive.read(entry.filename)
    _, frames, samples = decode(data)
    start = entry.start_offset_ms / 1000  # the file's time 0 in archive time
    times = [float(f.time) + start for f in frames]
    assert times == sorted(times)
    assert abs(times[-1] - stopping_at) < 1.0, (times[-1], stopping_at)
    assert abs(samples / 48000 - (stopping_at - start)) < 1.0
    colours = ["red" if is_red(f) else "black" if is_black(f) else "other" for f in frames]
    before = [c for t, c in zip(times, colours, strict=True) if t < muted_at - 0.2]
    during = [c for t, c in zip(times, colours, strict=True) if muted_at + 0.5 < t < unmuted_at - 0.2]
    after = [c for t, c in zip(times, colours, strict=True) if t > unmuted_at + 1.0]
    assert before and set(before) == {"red"}, before
    assert during and set(during) == {"black"}, during
    assert after and set(after) == {"red"}, after


def is_black(frame: av.VideoFrame) -> bool:
    return bool(frame.to_ndarray(format="rgb24").mean() < 30)


async def test_a_stalled_archiver_never_delays_the_call(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    """The archiver is stopped (SIGSTOP) for 3 s: the subscriber keeps decoding at full rate
    meanwhile (the worker's sends never wait), and once the archiver runs again the recording
    goes on: what its socket could not hold is NACKed or skipped to the next key frame."""
    server = media_server
    sid = server.session()
    seen = Recorder()
    manager = RecordingManager(media_plane(server), tmp_path / "archives")
    async with session_for(server, sid) as alice, session_for(server, sid, role="subscriber") as bob:
        auto_subscribe(bob, seen)
        publisher = Publisher(
            "alice", video_source=TestPatternSource(width=320, height=240), audio_source=ToneSource()
        )
        stream = await alice.publish(publisher)
        await media_flows(server, sid, stream.stream_id)
        await wait_for(lambda: len(seen.indices) >= 10, "bob to decode alice's video", timeout=30)
        recording = await on_server(server, manager.start("archive-5", sid, [StreamSource(stream.stream_id)]))
        assert recording.archiver is not None
        webm = recording.directory / f"{stream.stream_id}.webm"
        await wait_for(lambda: webm.exists() and webm.stat().st_size > 10_000, "the file to grow", timeout=30)
        os.kill(recording.archiver.pid, signal.SIGSTOP)
        stalled_at = time.monotonic() - recording.t0
        try:
            before = len(seen.indices)
            await asyncio.sleep(3.0)
            decoded_meanwhile = len(seen.indices) - before
        finally:
            os.kill(recording.archiver.pid, signal.SIGCONT)
        resumed_at = time.monotonic() - recording.t0
        await asyncio.sleep(3.0)
        result = await on_server(server, recording.stop())
        stopping_at = time.monotonic() - recording.t0
    assert decoded_meanwhile >= 45, (
        f"bob decoded {decoded_meanwhile} frames in 3 s while the archiver was stopped"
    )
    assert result.failure is None, result.failure
    (entry,) = result.files
    _, archive = open_archive(result)
    with archive:
        data = archive.read(entry.filename)
    _, frames, _ = decode(data)
    start = entry.start_offset_ms / 1000
    times = [float(f.time) + start for f in frames]
    assert times == sorted(times)
    assert any(t < stalled_at for t in times), "frames before the stall"
    after = [t for t in times if t > resumed_at + 1.0]
    assert len(after) >= 30, f"{len(after)} frames recorded after the archiver resumed"
    assert abs(times[-1] - stopping_at) < 1.0, (times[-1], stopping_at)
