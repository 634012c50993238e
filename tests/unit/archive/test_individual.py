"""Individual-mode writing: RTP packets in, a WebM / Matroska file out (opened with PyAV)."""

from __future__ import annotations

import io
import itertools
import json
import pathlib
import random
import time
import zipfile
from typing import Any

import av
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salon.archive.individual import ManifestFile, StreamRecording, TrackInfo, write_archive_zip
from salon.archive.recorder import JOURNAL, package_unfinished
from salon.media.rtp import build_rtp, parse_rtp_header
from tests.unit.archive.media_helpers import FPS, encode_video, rtp_opus, rtp_video

VP8 = TrackInfo("video", "vp8", 90000)
H264 = TrackInfo("video", "h264", 90000)
OPUS = TrackInfo("audio", "opus", 48000, 2)


class Feedback:
    def __init__(self) -> None:
        self.nacks: list[tuple[str, list[int]]] = []
        self.key_frames = 0

    def __call__(self, kind: str, seqs: list[int] | None) -> None:
        if seqs is None:
            self.key_frames += 1
        else:
            self.nacks.append((kind, seqs))


def video_times(packets: list[bytes], start: float = 0.0) -> list[float]:
    """Arrival time of each packet: its RTP timestamp (90 kHz) from the first one."""
    first = parse_rtp_header(packets[0]).timestamp
    return [start + ((parse_rtp_header(p).timestamp - first) & 0xFFFFFFFF) / 90000 for p in packets]


def decoded(path: pathlib.Path) -> tuple[list[av.VideoFrame], float]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return frames, float(frames[-1].time) - float(frames[0].time)


def test_vp8_and_opus_to_webm(tmp_path: pathlib.Path) -> None:
    video = rtp_video("vp8", encode_video("vp8", 60, (255, 0, 0)))
    audio = rtp_opus(100)
    feedback = Feedback()
    recording = StreamRecording("stream-1", [VP8, OPUS], tmp_path, feedback=feedback)
    events = [(t, "video", p) for t, p in zip(video_times(video), video, strict=True)]
    events += [(i * 0.02, "audio", p) for i, p in enumerate(audio)]
    for now, kind, packet in sorted(events, key=lambda e: e[0]):
        recording.push(kind, packet, now)
        recording.poll(now)
    recording.close(2.0)
    assert recording.error is None
    assert recording.path == tmp_path / "stream-1.webm"
    with av.open(str(recording.path)) as container:
        assert container.format.name == "matroska,webm"
        codecs = sorted(s.codec_context.name for s in container.streams)
        assert codecs == ["opus", "vp8"]
        assert abs(container.duration / 1e6 - 2.0) < 0.15
        samples = sum(f.samples for f in container.decode(audio=0))
        assert abs(samples / 48000 - 2.0) < 0.1
    frames, span = decoded(recording.path)
    assert len(frames) == 60
    assert abs(span - 59 / FPS) < 0.01
    red = frames[-1].to_ndarray(format="rgb24")[120, 160]
    assert red[0] > 200 and red[1] < 50 and red[2] < 50, red
    assert recording.tracks["video"].stats.frames == 60
    assert feedback.nacks == []


def test_h264_and_opus_to_matroska(tmp_path: pathlib.Path) -> None:
    video = rtp_video("h264", encode_video("h264", 30, (0, 0, 255)))
    recording = StreamRecording("s", [H264, OPUS], tmp_path, feedback=Feedback())
    for now, packet in zip(video_times(video), video, strict=True):
        recording.push("video", packet, now)
    recording.close(1.0)
    assert recording.path.suffix == ".mkv"
    with av.open(str(recording.path)) as container:
        assert container.format.name.startswith("matroska")
        assert container.streams.video[0].codec_context.name == "h264"
    # The track header's PixelWidth / PixelHeight (EBML 0xB0 / 0xBA) are the SPS's 320 x 240
    # (PyAV would report the decoded size whatever the header says).
    header = recording.path.read_bytes()[:2000]
    assert b"\xb0\x82\x01\x40" in header and b"\xba\x81\xf0" in header
    frames, _ = decoded(recording.path)
    assert len(frames) == 30
    blue = frames[-1].to_ndarray(format="rgb24")[120, 160]
    assert blue[2] > 200 and blue[0] < 50, blue


def test_reordered_and_nacked_packets_are_recovered(tmp_path: pathlib.Path) -> None:
    """Packets arrive shuffled within a window and some only after a NACK: all 60 frames."""
    video = rtp_video("vp8", encode_video("vp8", 60, (0, 255, 0)))
    times = video_times(video)
    rng = random.Random(7)
    feedback = Feedback()
    recording = StreamRecording("s", [VP8], tmp_path, feedback=feedback)
    held: list[tuple[float, bytes]] = []
    order = list(range(len(video)))
    for i in range(0, len(order) - 3, 4):
        chunk = order[i : i + 4]
        rng.shuffle(chunk)
        order[i : i + 4] = chunk
    dropped = set(rng.sample(range(5, len(video)), 6))
    for index in order:
        now = times[index]
        if index in dropped:
            held.append((now + 0.1, video[index]))  # comes back 100 ms later, as a retransmission
            continue
        recording.push("video", video[index], now)
        for at, packet in [h for h in held if h[0] <= now]:
            held.remove((at, packet))
            recording.push("video", packet, at)
        recording.poll(now)
    for at, packet in held:
        recording.push("video", packet, at)
    recording.close(times[-1] + 1)
    frames, _ = decoded(recording.path)
    assert len(frames) == 60
    assert feedback.nacks, "the missing packets were NACKed"
    assert recording.tracks["video"].stats.lost == 0


def test_unrepaired_loss_waits_for_the_next_key_frame(tmp_path: pathlib.Path) -> None:
    encoded = encode_video("vp8", 90, (255, 255, 0), key_every=30)
    assert [k for _, _, k in encoded].count(True) == 3
    video = rtp_video("vp8", encoded)
    times = video_times(video)
    # Lose a packet of frame 10 for good: frames 10..29 cannot be decoded, 30.. can.
    lost = next(i for i, p in enumerate(video) if parse_rtp_header(p).timestamp == encoded[10][1])
    feedback = Feedback()
    recording = StreamRecording("s", [VP8], tmp_path, feedback=feedback)
    for i, (now, packet) in enumerate(zip(times, video, strict=True)):
        if i != lost:
            recording.push("video", packet, now)
        recording.poll(now)
        recording.poll(now + 0.5)  # time passes: the hole is given up
    recording.close(times[-1] + 2)
    stats = recording.tracks["video"].stats
    assert stats.lost == 1
    assert stats.frames == 70 and stats.frames_dropped == 19  # frame 10 never arrived at all
    assert feedback.key_frames >= 1
    frames, span = decoded(recording.path)
    assert len(frames) == 70
    # Timestamps keep the gap: the last frame is still at 89/30 s.
    assert abs(span - 89 / FPS) < 0.01


def test_timestamps_follow_the_rtp_clock_across_a_pause(tmp_path: pathlib.Path) -> None:
    """A publisher that stops sending video for 2 s (muted): the file keeps real time."""
    encoded = encode_video("vp8", 40, (0, 0, 0))
    video = rtp_video("vp8", encoded[:20])
    # Frames 20.. are sent with timestamps 2 s later (as a paused encoder resuming would).
    later = [(d, t + 2 * 90000, k) for d, t, k in encoded[20:]]
    video += rtp_video("vp8", later, seq=1000 + len(video))
    recording = StreamRecording("s", [VP8], tmp_path, feedback=Feedback())
    for now, packet in zip(video_times(video), video, strict=True):
        recording.push("video", packet, now)
    recording.close(5.0)
    frames, span = decoded(recording.path)
    assert len(frames) == 40
    assert abs(span - (39 / FPS + 2.0)) < 0.01


def test_killed_writer_leaves_a_playable_file(tmp_path: pathlib.Path) -> None:
    """The file is readable while being written (what a kill -9 leaves), up to the last
    cluster flushed."""
    video = rtp_video("vp8", encode_video("vp8", 60, (255, 0, 255)))
    recording = StreamRecording("s", [VP8], tmp_path, feedback=Feedback())
    for now, packet in zip(video_times(video), video, strict=True):
        recording.push("video", packet, now)
    # Not closed: read what is on disk now.
    with av.open(str(recording.path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) >= 60 - FPS * 0.25, len(frames)
    pixel = frames[-1].to_ndarray(format="rgb24")[120, 160]
    assert pixel[0] > 200 and pixel[1] < 50 and pixel[2] > 200, pixel
    recording.close(3.0)


def test_zip_with_manifest(tmp_path: pathlib.Path) -> None:
    media = tmp_path / "abc.webm"
    media.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(100))
    entry = ManifestFile("abc", "name=alice", "abc.webm", 104, 0, 5000)
    manifest = write_archive_zip(
        tmp_path / "arch.zip",
        archive_id="arch",
        name="Interview",
        session_id="sess",
        created_at=1_700_000_000_000,
        files=[(media, entry)],
    )
    with zipfile.ZipFile(tmp_path / "arch.zip") as archive:
        assert sorted(archive.namelist()) == ["abc.webm", "arch.json"]
        assert json.loads(archive.read("arch.json")) == manifest
        assert archive.read("abc.webm") == media.read_bytes()
    assert manifest == {
        "id": "arch",
        "name": "Interview",
        "sessionId": "sess",
        "createdAt": 1_700_000_000_000,
        "files": [
            {
                "streamId": "abc",
                "connectionData": "name=alice",
                "filename": "abc.webm",
                "size": 104,
                "startTimeOffset": 0,
                "stopTimeOffset": 5000,
            }
        ],
    }


def test_a_full_disk_fails_the_file_not_the_archiver(tmp_path: pathlib.Path) -> None:
    """Writes that fail with ENOSPC (the file is /dev/full): the stream's recording ends with
    an error saying so, and nothing raises."""
    (tmp_path / "s.webm").symlink_to("/dev/full")
    video = rtp_video("vp8", encode_video("vp8", 60, (255, 0, 0)))
    recording = StreamRecording("s", [VP8], tmp_path, feedback=Feedback())
    for now, packet in zip(video_times(video), video, strict=True):
        recording.push("video", packet, now)
        recording.poll(now)
    recording.close(3.0)
    assert recording.closed
    assert recording.error is not None and "s.webm" in recording.error, recording.error
    assert recording.tracks["video"].stats.frames < 60


def test_a_missing_directory_fails_the_file_clearly(tmp_path: pathlib.Path) -> None:
    audio = rtp_opus(20)
    recording = StreamRecording("s", [OPUS], tmp_path / "gone", feedback=Feedback())
    for i, packet in enumerate(audio):
        recording.push("audio", packet, 0.2 + i * 0.02)
        recording.poll(0.2 + i * 0.02)
    recording.close(1.0)
    assert recording.error is not None and "s.webm" in recording.error and "No such file" in recording.error
    assert not recording.written


def test_a_late_first_frame_does_not_delay_the_timeline(tmp_path: pathlib.Path) -> None:
    """The encoder's start-up backlog: the first 15 frames arrive together 0.5 s late, the
    rest on time. The timeline catches up (frames at most 20 % closer together, in order),
    so the video ends where real time is, aligned with audio that was on time."""
    video = rtp_video("vp8", encode_video("vp8", 90, (0, 128, 255)))
    audio = rtp_opus(150)
    times = video_times(video, start=0.1)
    first = parse_rtp_header(video[0]).timestamp
    late = [
        max(t, 0.6) if (parse_rtp_header(p).timestamp - first) < 15 * 3000 else t
        for t, p in zip(times, video, strict=True)
    ]
    events = [(t, "video", p) for t, p in zip(late, video, strict=True)]
    events += [(0.1 + i * 0.02, "audio", p) for i, p in enumerate(audio)]
    recording = StreamRecording("s", [VP8, OPUS], tmp_path, feedback=Feedback())
    for now, kind, packet in sorted(events, key=lambda e: e[0]):
        recording.push(kind, packet, now)
        recording.poll(now)
    recording.close(3.2)
    frames, _ = decoded(recording.path)
    assert len(frames) == 90
    pts = [float(f.time) for f in frames]
    steps = [b - a for a, b in itertools.pairwise(pts)]
    assert min(steps) >= 0.8 / FPS - 0.002, min(steps)
    # On real time by the end: the last frame (captured at 0.1 + 89/30 s) is within 50 ms.
    assert abs(pts[-1] - (0.1 + 89 / FPS)) < 0.05, pts[-1]
    assert recording.tracks["audio"].first_ms == 100


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    packets=st.lists(
        st.tuples(
            st.sampled_from(["audio", "video"]),
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFFFFFFFF),
            st.booleans(),
            st.binary(max_size=40),
            st.floats(0, 0.5),
        ),
        max_size=40,
    )
)
def test_arbitrary_rtp_never_breaks_a_recording(tmp_path: pathlib.Path, packets: list[Any]) -> None:
    """Any sequence numbers, timestamps, markers and payloads, at any pace: the recording
    drops what it cannot use and never raises; what it writes is a readable file."""
    directory = tmp_path / str(len(list(tmp_path.iterdir())))
    directory.mkdir()
    recording = StreamRecording("s", [VP8, OPUS], directory, feedback=Feedback())
    now = 0.0
    for kind, seq, ts, marker, payload, step in packets:
        now += step
        data = build_rtp(
            payload_type=96, sequence_number=seq, timestamp=ts, ssrc=1, payload=payload, marker=marker
        )
        recording.push(kind, data, now)
        recording.push(kind, payload, now)  # not even RTP
        recording.poll(now)
    recording.close(now + 5)
    if recording.written and recording.error is None:
        with av.open(str(recording.path)) as container:
            for _ in container.demux():
                pass


def test_an_unfinished_recording_is_packaged_from_its_journal(tmp_path: pathlib.Path) -> None:
    """After a server restart: the files an archiver left (one stream stopped, one cut off)
    and the main process's journal make the archive ZIP; the cut-off stream ends when its file
    was last written."""
    video = rtp_video("vp8", encode_video("vp8", 30, (255, 0, 0)))
    for stream_id in ("one", "two"):
        recording = StreamRecording(stream_id, [VP8], tmp_path, feedback=Feedback())
        for now, packet in zip(video_times(video), video, strict=True):
            recording.push("video", packet, now)
        # Not closed: the archiver died.
    started_at = int(time.time() * 1000) - 3000
    (tmp_path / JOURNAL).write_text(
        json.dumps(
            {
                "archive_id": "arch",
                "name": None,
                "session_id": "sess",
                "created_at": started_at,
                "started_at": started_at,
                "streams": [
                    {
                        "stream_id": "one",
                        "stem": "one",
                        "connection_data": "a",
                        "start_ms": 0,
                        "stop_ms": 1500,
                    },
                    {
                        "stream_id": "two",
                        "stem": "two",
                        "connection_data": "b",
                        "start_ms": 200,
                        "stop_ms": None,
                    },
                    # No file: nothing written before the crash.
                    {
                        "stream_id": "three",
                        "stem": "three",
                        "connection_data": "c",
                        "start_ms": 300,
                        "stop_ms": 400,
                    },
                ],
            }
        )
    )
    result = package_unfinished(tmp_path)
    assert result.path == tmp_path / "arch.zip"
    with zipfile.ZipFile(result.path) as archive:
        manifest = json.loads(archive.read("arch.json"))
        assert sorted(archive.namelist()) == ["arch.json", "one.webm", "two.webm"]
        for entry in manifest["files"]:
            with av.open(io.BytesIO(archive.read(entry["filename"]))) as container:
                assert len(list(container.decode(video=0))) >= 20
    files = {f["streamId"]: f for f in manifest["files"]}
    assert (files["one"]["startTimeOffset"], files["one"]["stopTimeOffset"]) == (0, 1500)
    assert files["two"]["startTimeOffset"] == 200
    assert abs(files["two"]["stopTimeOffset"] - 3000) < 1500, files["two"]
    assert manifest["sessionId"] == "sess" and manifest["name"] is None


def test_a_publisher_clock_running_slow_is_stretched_to_real_time(tmp_path: pathlib.Path) -> None:
    """A starved software encoder stamps its frames 1/30 s apart while it only manages 15 a
    second: the RTP clock runs at half speed. The file keeps real time (within the anchor
    window's lag), frames in order."""
    encoded = encode_video("vp8", 60, (255, 0, 0))
    video = rtp_video("vp8", encoded)
    first = parse_rtp_header(video[0]).timestamp
    # Arrival: frame i at i/15 s (its RTP time says i/30 s).
    times = [2 * ((parse_rtp_header(p).timestamp - first) / 90000) for p in video]
    recording = StreamRecording("s", [VP8], tmp_path, feedback=Feedback())
    for now, packet in zip(times, video, strict=True):
        recording.push("video", packet, now)
        recording.poll(now)
    recording.close(times[-1] + 1)
    frames, _ = decoded(recording.path)
    pts = [float(f.time) for f in frames]
    assert len(frames) == 60 and pts == sorted(pts)
    assert abs(pts[-1] - times[-1]) < 0.6, (pts[-1], times[-1])
