"""Media-file sources and ``salon demo publish``: a file written in the test (frame numbers
drawn in the pixels, a tone) is published and a subscriber decodes that content; sources
that cannot start fail ``publish()``, and one that fails later is an ``Error`` event."""

from __future__ import annotations

import asyncio
import itertools
import pathlib

import pytest
from media_files import write_media_file
from sdk_helpers import EventLog, Recorder, auto_subscribe, dominant_frequency, session_for, wait_for

from salon.cli.main import main
from salon.client import (
    CameraSource,
    DeviceNotFound,
    Error,
    MediaFileAudioSource,
    MediaFileVideoSource,
    Publisher,
    SourceError,
    StreamReceived,
    ToneSource,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(90)


def assert_counts_up(indices: list[int], top: int) -> None:
    """Frame numbers 1..top, increasing within each pass over the looped file."""
    assert indices and all(1 <= i <= top for i in indices), indices
    passes = [[]]  # type: list[list[int]]
    for a, b in itertools.pairwise(indices):
        passes[-1].append(a)
        if b < a:  # the file started over
            passes.append([])
    assert all(p == sorted(p) for p in passes), indices
    assert len(set(indices)) >= 20, indices


@pytest.mark.parametrize("suffix", ["webm", "mp4"])
async def test_a_media_file_is_published_with_its_frames_and_its_tone(
    media_server: RunningServer, tmp_path: pathlib.Path, suffix: str
) -> None:
    server = media_server
    sid = server.session()
    path = write_media_file(tmp_path / f"clip.{suffix}", seconds=2.0, tone=660.0)
    seen = Recorder()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        log = EventLog(bob)
        auto_subscribe(bob, seen)
        video = MediaFileVideoSource(path)
        assert (video.width, video.height, video.frame_rate) == (320, 240, 30.0)
        await alice.publish(Publisher("clip", video_source=video, audio_source=MediaFileAudioSource(path)))
        await wait_for(lambda: len(seen.indices) >= 75 and len(seen.audio) >= 100, "2.5 s of the file", 30)
        video.close()
    received = log.of(StreamReceived)[0]
    assert isinstance(received, StreamReceived)
    assert (received.stream.width, received.stream.height) == (320, 240)
    assert seen.sizes == {(320, 240)}
    assert_counts_up(seen.indices, 60)
    peak, share = dominant_frequency(seen.audio[10:], seen.audio_rate)
    assert abs(peak - 660) < 15 and share > 0.5, (peak, share)


async def test_a_media_file_at_a_chosen_frame_rate_still_announces_its_size(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    server = media_server
    sid = server.session()
    path = write_media_file(tmp_path / "clip.webm", seconds=2.0, tone=None)
    seen = Recorder()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        log = EventLog(bob)
        auto_subscribe(bob, seen)
        video = MediaFileVideoSource(path, frame_rate=15)
        assert (video.width, video.height, video.frame_rate) == (320, 240, 15)
        await alice.publish(Publisher("slow", audio=False, video_source=video))
        await wait_for(lambda: len(seen.indices) >= 20, "20 frames", 30)
        await bob.subscribers[0].get_stats()  # the rates below count from here
        counted = len(seen.indices)
        await wait_for(lambda: len(seen.indices) >= counted + 30, "30 more frames", 30)
        stats = await bob.subscribers[0].get_stats()
        video.close()
    received = log.of(StreamReceived)[0]
    assert isinstance(received, StreamReceived)
    stream = received.stream
    assert (stream.width, stream.height, stream.frame_rate) == (320, 240, 15)
    assert_counts_up(seen.indices, 60)
    # Paced at the 15 frames/s asked for, not the file's 30 (a busy machine may decode fewer).
    assert stats.video is not None and stats.video.frame_rate is not None, stats
    assert 5 <= stats.video.frame_rate <= 19, stats.video
    assert (stats.video.width, stats.video.height) == (320, 240), stats.video


async def test_sources_that_cannot_start_fail_publish_with_a_typed_error(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    server = media_server
    sid = server.session()
    silent_film = write_media_file(tmp_path / "silent.mp4", seconds=1.0, tone=None)
    not_a_camera = tmp_path / "video9"
    not_a_camera.write_bytes(b"not a V4L2 device")
    async with session_for(server, sid) as alice:
        with pytest.raises(SourceError, match=r"silent\.mp4' has no audio stream"):
            await alice.publish(Publisher("no audio", audio_source=MediaFileAudioSource(silent_film)))
        camera = CameraSource(str(not_a_camera))  # the path exists: only opening it can tell
        with pytest.raises(DeviceNotFound, match=f"camera {not_a_camera} cannot be opened"):
            await alice.publish(Publisher("no camera", video_source=camera, audio_source=ToneSource()))
        with pytest.raises(DeviceNotFound, match="no V4L2 camera at /dev/nonexistent-video9"):
            CameraSource("/dev/nonexistent-video9")
        assert alice.publishers == []
        await asyncio.sleep(1)
        assert server.sdk.list_streams(sid).count == 0  # nothing was published
        # The sources are not left in use: a working publisher can follow.
        await alice.publish(Publisher("ok", video=False))


async def test_a_source_failing_while_published_is_an_error_event(
    media_server: RunningServer, tmp_path: pathlib.Path
) -> None:
    server = media_server
    sid = server.session()
    path = write_media_file(tmp_path / "short.webm", seconds=1.0, tone=None)
    async with session_for(server, sid) as alice:
        log = EventLog(alice)
        publisher = Publisher("once", audio=False, video_source=MediaFileVideoSource(path, loop=False))
        await alice.publish(publisher)
        await wait_for(lambda: log.of(Error), "an Error event when the file ends", 20)
    error = log.of(Error)[0]
    assert isinstance(error, Error) and isinstance(error.error, SourceError)
    assert "short.webm': end of video" in str(error.error)
    assert "video source stopped" in error.context and "once" in error.context


@pytest.mark.parametrize("file", [None, "clip.webm", "silent.mp4"], ids=["test-pattern", "file", "no-audio"])
async def test_demo_publish_sends_what_it_says(
    media_server: RunningServer, tmp_path: pathlib.Path, file: str | None
) -> None:
    server = media_server
    sid = server.session()
    seen = Recorder()
    argv = ["demo", "publish", server.url, sid, server.token(sid), "--duration", "12", "--name", "demo"]
    with_file, with_audio = file is not None, file != "silent.mp4"
    if file is not None:
        tone = 660.0 if with_audio else None
        argv += ["--file", str(write_media_file(tmp_path / file, seconds=2.0, tone=tone))]
    async with session_for(server, sid) as viewer:
        log = EventLog(viewer)
        auto_subscribe(viewer, seen)
        demo = asyncio.create_task(asyncio.to_thread(main, argv))
        want = 100 if with_audio else 0
        await wait_for(lambda: len(seen.indices) >= 60 and len(seen.audio) >= want, "2 s of demo media", 45)
        assert await asyncio.wait_for(demo, 30) == 0
    received = log.of(StreamReceived)[0]
    assert isinstance(received, StreamReceived) and received.stream.name == "demo"
    assert received.stream.has_audio is with_audio
    if not with_audio:
        assert seen.audio == []
        assert_counts_up(seen.indices, 60)
        return
    if with_file:
        assert seen.sizes == {(320, 240)}
        assert_counts_up(seen.indices, 60)
    else:
        assert seen.sizes == {(640, 480)}
        assert seen.indices == sorted(seen.indices) and seen.indices[0] > 0
    peak, share = dominant_frequency(seen.audio[10:], seen.audio_rate)
    assert abs(peak - (660 if with_file else 440)) < 15 and share > 0.5, (peak, share)
