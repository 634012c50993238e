"""The composed archiver without its process: RTP datagrams in, one MP4 out (opened with PyAV)."""

from __future__ import annotations

import pathlib
import secrets
from typing import Any

import av
import numpy as np

from salon.archive.archiver import (
    AddStream,
    ArchiverFinished,
    RemoveStream,
    SetLayout,
    SetStreamClasses,
    StopArchive,
    TrackSpec,
    from_archiver,
)
from salon.archive.composed import LAG, ComposedArchiver, ComposedOptions
from salon.media.channel import FrameDecoder
from salon.media.recording import TRACK_AUDIO, TRACK_VIDEO
from salon.media.rtp import parse_rtp_header
from tests.unit.archive.media_helpers import encode_video, rtp_opus, rtp_video

RED, BLUE = (230, 20, 20), (20, 40, 230)
TRACKS = [
    TrackSpec(kind="video", codec="vp8", clock_rate=90000),
    TrackSpec(kind="audio", codec="opus", clock_rate=48000, channels=2),
]


class Writer:
    """The archiver's channel to the main process, kept."""

    def __init__(self) -> None:
        self.data = b""

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.data += data

    def messages(self) -> list[Any]:
        return [from_archiver.validate_json(frame) for frame in FrameDecoder().feed(self.data)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def datagrams(
    token: bytes, colour: tuple[int, int, int], frames: int, tone: float, start: float
) -> list[Any]:
    """(arrival time, datagram) of a stream's 30 fps video and 20 ms audio from ``start``."""
    out: list[tuple[float, bytes]] = []
    for packet in rtp_video("vp8", encode_video("vp8", frames, colour)):
        ts = parse_rtp_header(packet).timestamp
        out.append((start + ts / 90000, token + bytes([TRACK_VIDEO]) + packet))
    first = None
    for packet in rtp_opus(frames * 5 // 3, freq=tone):
        ts = parse_rtp_header(packet).timestamp
        first = ts if first is None else first
        out.append((start + (ts - first) / 48000, token + bytes([TRACK_AUDIO]) + packet))
    return out


def run(archiver: ComposedArchiver, clock: Clock, events: list[tuple[float, Any]], until: float) -> None:
    """Deliver datagrams and control messages at their times, polling every 20 ms as the
    archiver's timer does."""
    events = sorted(events, key=lambda item: item[0])
    t = 0.0
    while t <= until:
        while events and events[0][0] <= t:
            _, item = events.pop(0)
            if isinstance(item, bytes):
                archiver.on_datagram(item, ("127.0.0.1", 9))
            else:
                archiver.handle(item)
        clock.now = t
        for entry in list(archiver.by_token.values()):
            entry.recording.poll(t)
        archiver._advance(t - LAG)
        t = round(t + 0.02, 4)


def colour_at(path: pathlib.Path, t: float, box: tuple[float, float, float, float]) -> tuple[int, ...]:
    with av.open(str(path)) as container:
        frame = min(container.decode(video=0), key=lambda f: abs(float(f.time) - t))
        rgb = frame.to_ndarray(format="rgb24")
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    region = rgb[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].reshape(-1, 3)
    return tuple(int(v) for v in region.mean(axis=0))


def near(colour: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 40 for a, b in zip(colour, expected, strict=True))


def tone_share(path: pathlib.Path, start: float, end: float, frequency: float) -> float:
    with av.open(str(path)) as container:
        audio = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1).mean(axis=0)
    signal = audio[int(start * 48000) : int(end * 48000)]
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)))) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / 48000)
    return float(spectrum[np.abs(freqs - frequency) < 20].sum() / max(spectrum.sum(), 1e-12))


def test_rtp_of_two_streams_composed_with_a_join_a_layout_and_a_leave(tmp_path: pathlib.Path) -> None:
    writer, clock = Writer(), Clock()
    archiver = ComposedArchiver(
        tmp_path,
        0.0,
        writer,
        ComposedOptions(width=640, height=480),  # type: ignore[arg-type]
    )
    archiver.now = clock  # type: ignore[method-assign]
    a, b = secrets.token_bytes(16), secrets.token_bytes(16)
    events: list[tuple[float, Any]] = [
        (0.0, AddStream(stream_id="a", token=a.hex(), tracks=TRACKS, start_ms=0)),
        (2.0, AddStream(stream_id="b", token=b.hex(), tracks=TRACKS, start_ms=2000)),
        (4.0, SetLayout(layout={"type": "pip"})),
        (6.0, RemoveStream(stream_id="b", stop_ms=6000)),
    ]
    events += datagrams(a, RED, 240, 440.0, 0.0)  # 8 s
    events += datagrams(b, BLUE, 120, 1250.0, 2.0)  # 4 s: sent until it leaves
    run(archiver, clock, events, 8.0)
    assert not archiver.handle(StopArchive(archive_id="x", session_id="s", created_at=0, stop_ms=8000))

    (finished,) = writer.messages()
    assert isinstance(finished, ArchiverFinished) and finished.errors == []
    path = pathlib.Path(str(finished.zip_path))
    assert path.name == "archive.mp4" and finished.stats["duration"] == 8.0
    assert finished.stats["a"]["frames"] == {"video": 240, "audio": 400}
    assert finished.stats["b"]["frames"]["video"] >= 110
    # A alone fills the output; A and B side by side (best fit); pip: B in the corner; A alone.
    assert near(colour_at(path, 1.5, (0.1, 0.1, 0.9, 0.9)), RED)
    assert near(colour_at(path, 3.0, (0.0, 0.3, 0.5, 0.7)), RED)
    assert near(colour_at(path, 3.0, (0.5, 0.3, 1.0, 0.7)), BLUE)
    assert near(colour_at(path, 5.0, (0.1, 0.1, 0.6, 0.6)), RED)
    assert near(colour_at(path, 5.0, (0.75, 0.74, 0.95, 0.95)), BLUE)
    assert near(colour_at(path, 7.0, (0.1, 0.1, 0.9, 0.9)), RED)
    # The layout changed at 4 s on the archive's clock, not LAG earlier.
    assert near(colour_at(path, 3.9, (0.5, 0.3, 1.0, 0.7)), BLUE)
    # The mix: B's tone only while B is in.
    assert tone_share(path, 2.5, 5.5, 1250.0) > 0.15 and tone_share(path, 2.5, 5.5, 440.0) > 0.15
    assert tone_share(path, 6.5, 7.8, 1250.0) < 0.01 and tone_share(path, 6.5, 7.8, 440.0) > 0.3


def test_a_class_change_moves_the_focus_at_its_time(tmp_path: pathlib.Path) -> None:
    writer, clock = Writer(), Clock()
    options = ComposedOptions(width=640, height=480, has_audio=False, layout={"type": "verticalPresentation"})
    archiver = ComposedArchiver(tmp_path, 0.0, writer, options)  # type: ignore[arg-type]
    archiver.now = clock  # type: ignore[method-assign]
    for name in ("a", "b"):
        archiver.handle(AddStream(stream_id=name, token=secrets.token_bytes(16).hex(), tracks=TRACKS[:1]))
    clock.now = 1.5
    archiver.handle(SetStreamClasses(stream_id="b", layout_classes=["focus"]))

    def focus() -> str:
        return max(archiver.composer.tiles(), key=lambda tile: tile.w * tile.h).stream_id

    for step in range(1, 75):  # polls every 20 ms (each writes at most 0.1 s)
        archiver._advance(step * 0.02)
        assert focus() == ("b" if archiver.composer.duration > 1.5 else "a"), archiver.composer.duration
    archiver.handle(StopArchive(archive_id="x", session_id="s", created_at=0, stop_ms=2000))
    (finished,) = writer.messages()
    assert isinstance(finished, ArchiverFinished) and finished.stats["frames"] == 50
