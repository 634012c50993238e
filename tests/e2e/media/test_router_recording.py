"""Recording from an in-process router with aiortc publishers, into a real archiver process.

A small adapter gives :class:`~salon.archive.recorder.IndividualRecording` the router's
``start_recording`` / ``stop_recording`` (the media plane's API, minus the worker process), so
these tests cover the recorder, the loopback datagrams and the archiver with codecs the SDK
does not choose (H.264), and the router's bookkeeping of its recorders.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import pathlib
import time
import zipfile

import av
import pytest
from peers import Publisher, publish, read_index, wait_for

from salon.archive.recorder import IndividualRecording, StreamSource
from salon.errors import NotFoundError
from salon.media.channel import RecordedTrack, RecordingResult
from salon.media.errors import MediaStateError
from salon.media.router import Router

pytestmark = pytest.mark.timeout(90)


class RouterPlane:
    """The media plane's recording API over one in-process router."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def start_recording(
        self,
        session_id: str,
        stream_id: str,
        sink: tuple[str, int],
        token: bytes,
        *,
        audio: bool = True,
        video: bool = True,
    ) -> RecordingResult:
        recorder = self.router.start_recording(stream_id, sink, token, audio=audio, video=video)
        return RecordingResult(
            recorder_id=recorder.id,
            tracks=[
                RecordedTrack(
                    kind=p.kind,
                    codec=p.codec.name,
                    clock_rate=p.codec.clock_rate,
                    payload_type=p.codec.payload_type,
                )
                for p in recorder.producers.values()
            ],
        )

    async def stop_recording(self, session_id: str, recorder_id: str) -> dict[str, int]:
        recorder = self.router.stop_recording(recorder_id)
        return {} if recorder is None else {"dropped": recorder.stats.dropped}


async def test_h264_and_opus_are_recorded_to_matroska(router: Router, tmp_path: pathlib.Path) -> None:
    pub = Publisher(video_codec="video/H264")
    published = await publish(router, pub)
    stream_id = published.stream.id
    try:
        video = published.stream.video
        assert video is not None and video.codec.name == "h264"
        await wait_for(lambda: video.stats.packets_received > 30, 20, "the publisher's video")
        recording = IndividualRecording(
            RouterPlane(router), archive_id="arch", session_id="sess", directory=tmp_path
        )
        await recording.start([StreamSource(stream_id, connection_data="who=pub")])
        started = time.monotonic()
        mkv = tmp_path / f"{stream_id}.mkv"
        await wait_for(lambda: mkv.exists() and mkv.stat().st_size > 50_000, 30, "the file to grow")
        await wait_for(lambda: time.monotonic() - started > 3, 10, "3 s of recording")
        (recorder,) = router.recorders.values()
        recorded = time.monotonic() - started
        result = await recording.stop()
        assert recorder.closed and router.recorders == {}
        assert video.recorders == []
    finally:
        await pub.close()
    assert result.failure is None, result.failure
    assert [f.filename for f in result.files] == [f"{stream_id}.mkv"]
    with zipfile.ZipFile(tmp_path / "arch.zip") as archive:
        assert sorted(archive.namelist()) == sorted([f"{stream_id}.mkv", "arch.json"])
    with av.open(str(mkv)) as container:
        assert container.format.name.startswith("matroska")
        assert sorted(s.codec_context.name for s in container.streams) == ["h264", "opus"]
        frames = list(container.decode(video=0))
    assert abs(float(frames[-1].time) - recorded) < 1.0
    indices = [read_index(f.to_ndarray(format="gray")) for f in frames]
    assert indices == sorted(indices), indices
    assert max(b - a for a, b in itertools.pairwise(indices)) <= 3, indices
    assert {(f.width, f.height) for f in frames} == {(640, 480)}


async def test_router_recorder_bookkeeping(router: Router, tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotFoundError):
        router.start_recording("nope", ("127.0.0.1", 9), bytes(16))
    pub = Publisher(audio=False)
    published = await publish(router, pub)
    try:
        with pytest.raises(MediaStateError, match="no track"):
            router.start_recording(published.stream.id, ("127.0.0.1", 9), bytes(16), video=False)
        recorder = router.start_recording(published.stream.id, ("127.0.0.1", 9), bytes(16))
        assert list(recorder.producers) == ["video"]
        assert router.dump()["recorders"][recorder.id]["kinds"] == ["video"]
        assert router.stop_recording("unknown") is None
        # The stream ends: its recorder closes and the router forgets it.
        await router.unpublish(published.stream.id)
        await wait_for(lambda: recorder.closed and not router.recorders, 10, "the recorder to close")
    finally:
        await pub.close()


async def test_a_stream_removed_and_added_again_gets_a_second_file(
    router: Router, tmp_path: pathlib.Path
) -> None:
    """Manual stream mode: a stream taken out of the archive and put back is recorded in a
    second file (``<streamId>-2.webm``); the manifest lists both with their own offsets."""
    pub = Publisher()
    published = await publish(router, pub)
    stream_id = published.stream.id
    try:
        video = published.stream.video
        assert video is not None
        await wait_for(lambda: video.stats.packets_received > 30, 20, "the publisher's video")
        recording = IndividualRecording(
            RouterPlane(router), archive_id="arch", session_id="sess", directory=tmp_path
        )
        await recording.start([StreamSource(stream_id)])
        first = tmp_path / f"{stream_id}.webm"
        await wait_for(
            lambda: first.exists() and first.stat().st_size > 150_000, 30, "the first file to grow"
        )
        await asyncio.sleep(1.0)
        await recording.remove_stream(stream_id)
        assert router.recorders == {}
        await recording.remove_stream(stream_id)  # again: nothing to do
        await asyncio.sleep(0.5)
        await recording.add_stream(StreamSource(stream_id))
        second = tmp_path / f"{stream_id}-2.webm"
        await wait_for(
            lambda: second.exists() and second.stat().st_size > 150_000, 30, "the second file to grow"
        )
        await asyncio.sleep(1.0)
        result = await recording.stop()
    finally:
        await pub.close()
    assert result.failure is None, result.failure
    with zipfile.ZipFile(tmp_path / "arch.zip") as archive:
        manifest = json.loads(archive.read("arch.json"))
        assert sorted(archive.namelist()) == sorted(["arch.json", first.name, second.name])
        for name in (first.name, second.name):
            with av.open(io.BytesIO(archive.read(name))) as container:
                assert len(list(container.decode(video=0))) >= 10, name
    one, two = manifest["files"]
    assert (one["streamId"], one["filename"]) == (stream_id, first.name)
    assert (two["streamId"], two["filename"]) == (stream_id, second.name)
    assert (
        one["startTimeOffset"] < one["stopTimeOffset"] <= two["startTimeOffset"] - 400 < two["stopTimeOffset"]
    )
