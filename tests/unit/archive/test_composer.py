"""The composer end to end: encoded VP8 + Opus in, a fragmented MP4 out, checked by content."""

from __future__ import annotations

import fractions
import pathlib
from typing import Any

import av
import numpy as np
import pytest

from salon.archive.composer import (
    AUDIO_RATE,
    AudioDecoder,
    AudioMixer,
    Composer,
    VideoDecoder,
    is_keyframe,
)
from salon.archive.layout import LayoutSpec, parse_layout
from salon.bench.archive import decode_audio, encode_audio, encode_video, run, solid_frames, tone

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
DURATION = 4.0
FPS = 25


def rgb_frames(path: pathlib.Path) -> list[tuple[float, Any, np.ndarray[Any, Any]]]:
    with av.open(str(path)) as container:
        return [(float(f.time), f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def colour_at(image: np.ndarray[Any, Any], x: int, y: int) -> tuple[int, int, int] | None:
    """The named colour around (x, y), or None (black is (0, 0, 0))."""
    r, g, b = (int(v) for v in image[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0))
    for name in (RED, GREEN, BLUE, (0, 0, 0)):
        if all(abs(c - n) < 60 for c, n in zip((r, g, b), name, strict=True)):
            return name
    return None


def tone_level(samples: np.ndarray[Any, Any], start: float, end: float, frequency: float) -> float:
    """The amplitude of ``frequency`` in ``samples[start:end]`` (Hann window)."""
    part = samples[round(start * AUDIO_RATE) : round(end * AUDIO_RATE)]
    window = np.hanning(len(part))
    spectrum = np.abs(np.fft.rfft(part * window))
    freqs = np.fft.rfftfreq(len(part), 1 / AUDIO_RATE)
    band = spectrum[np.abs(freqs - frequency) < 8]
    return float(band.max() * 2 / window.sum())


def compose_session(path: pathlib.Path) -> Composer:
    """Red all along (440 Hz), green until 2.5 s (660 Hz), blue from 1 s (880 Hz), bestFit 640x480;
    fed as an archiver feeds it: encoded packets as they come due, 100 ms of jitter buffer."""
    plan = {
        "red": (RED, 440.0, 0.0, DURATION),
        "green": (GREEN, 660.0, 0.0, 2.5),
        "blue": (BLUE, 880.0, 1.0, DURATION),
    }
    packets: list[tuple[float, str, str, bytes]] = []
    for sid, (colour, frequency, start, end) in plan.items():
        video = encode_video(solid_frames(colour, end - start))
        audio = encode_audio(tone(frequency, end - start))
        packets += [(start + pts, "video", sid, data) for data, pts in video.packets]
        packets += [(start + pts, "audio", sid, data) for data, pts in audio.packets]
    packets.sort(key=lambda p: p[0])
    composer = Composer(path, resolution=(640, 480), fps=FPS, layout=LayoutSpec("bestFit"))
    composer.add_stream("red")
    composer.add_stream("green")
    composer.add_stream("blue", at=1.0)
    composer.remove_stream("green", at=2.5)
    now, index = 0.0, 0
    while now < DURATION + 0.1:
        now += 0.02
        while index < len(packets) and packets[index][0] <= now:
            pts, kind, sid, data = packets[index]
            if kind == "video":
                composer.push_encoded_video(sid, data, pts)
            else:
                composer.push_encoded_audio(sid, data, pts)
            index += 1
        composer.advance(min(DURATION, now - 0.1))
    composer.close(DURATION)
    return composer


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("composer") / "composed.mp4"
    composer = compose_session(path)
    assert composer.frames == DURATION * FPS
    return path


def test_the_file_is_h264_and_aac_at_a_constant_frame_rate(composed: pathlib.Path) -> None:
    with av.open(str(composed)) as container:
        assert container.format.name.startswith("mov,mp4")
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == (640, 480)
        assert audio.codec_context.name == "aac"
        assert audio.codec_context.sample_rate == AUDIO_RATE and audio.codec_context.channels == 2
        assert container.duration is not None
        assert abs(container.duration / 1_000_000 - DURATION) < 1.0
    frames = rgb_frames(composed)
    assert len(frames) == DURATION * FPS
    times = [t for t, _, _ in frames]
    steps = np.diff(times[1:])
    # Constant rate (the first frame's time is clamped by the muxer; see decode_audio).
    assert np.allclose(steps, 1 / FPS, atol=1e-3), steps
    samples, _ = decode_audio(composed)
    assert abs(len(samples) / AUDIO_RATE - DURATION) < 1.0


def test_each_tile_shows_its_stream_as_streams_join_and_leave(composed: pathlib.Path) -> None:
    frames = rgb_frames(composed)

    def at(index: int) -> np.ndarray[Any, Any]:
        return frames[index][2]

    # 0-1 s: red and green side by side, each 4:3 picture letterboxed in its 320x480 tile.
    for index in (2, 12, 24):
        image = at(index)
        assert colour_at(image, 160, 240) == RED, index
        assert colour_at(image, 480, 240) == GREEN, index
        assert colour_at(image, 160, 40) == (0, 0, 0), index
    # From the tick at 1 s: 2x2, blue centred in the bottom row.
    for index in (25, 45, 62):
        image = at(index)
        assert colour_at(image, 160, 120) == RED, index
        assert colour_at(image, 480, 120) == GREEN, index
        assert colour_at(image, 320, 360) == BLUE, index
        assert colour_at(image, 40, 360) == (0, 0, 0), index
    # Green leaves at 2.5 s (the tick at 2.52): red and blue side by side.
    for index in (63, 82, 99):
        image = at(index)
        assert colour_at(image, 160, 240) == RED, index
        assert colour_at(image, 480, 240) == BLUE, index


def test_the_mix_carries_each_stream_s_tone_while_it_is_there(composed: pathlib.Path) -> None:
    samples, _ = decode_audio(composed)
    present, absent = 0.05, 0.01
    expected = {
        (0.2, 0.9): {440.0: True, 660.0: True, 880.0: False},
        (1.2, 2.3): {440.0: True, 660.0: True, 880.0: True},
        (2.8, 3.8): {440.0: True, 660.0: False, 880.0: True},
    }
    for (start, end), tones in expected.items():
        for frequency, there in tones.items():
            level = tone_level(samples, start, end, frequency)
            if there:
                assert level > present, (start, frequency, level)
            else:
                assert level < absent, (start, frequency, level)


def test_a_truncated_file_still_opens_and_plays_up_to_the_cut(
    composed: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    data = composed.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    with av.open(str(cut)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # Whole fragments (one per second: a key frame every second) up to the cut.
    assert FPS <= len(frames) < DURATION * FPS
    assert colour_at(frames[0], 160, 240) == RED
    # The packet cut in half does not decode (a player skips it); everything before does.
    audio, errors = 0, 0
    with av.open(str(cut)) as container:
        for packet in container.demux(audio=0):
            try:
                audio += sum(f.samples for f in packet.decode())
            except av.error.InvalidDataError:
                errors += 1
    assert audio >= AUDIO_RATE
    assert errors <= 1


def test_the_composer_writes_progressively(tmp_path: pathlib.Path) -> None:
    """While it runs, the file on disk already plays (as if the archiver had been killed)."""
    path = tmp_path / "live.mp4"
    composer = Composer(path, resolution=(320, 240), fps=FPS)
    composer.add_stream("a")
    image = np.zeros((120, 160, 3), np.uint8)
    image[:] = GREEN
    for index in range(3 * FPS):
        composer.push_video("a", image, index / FPS)
        composer.advance(index / FPS)
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(path.read_bytes())
    with av.open(str(copy)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) >= FPS, "fragments are not written as they complete"
    assert colour_at(frames[-1], 160, 120) == GREEN
    composer.close()


def test_numpy_frames_cover_fit_custom_layout_and_video_only(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "custom.mp4"
    layout = parse_layout("custom", "stream { width: 50%; object-fit: cover } .right { left: 50% }")
    composer = Composer(path, resolution=(640, 360), fps=FPS, layout=layout, has_audio=False)
    composer.add_stream("left")
    composer.add_stream("right", ["right"])
    # A tall picture: covering a 320x360 tile crops its top and bottom.
    tall = np.zeros((480, 160, 3), np.uint8)
    tall[:] = RED
    tall[:60] = GREEN
    tall[-60:] = GREEN
    wide = np.zeros((90, 320, 3), np.uint8)
    wide[:] = BLUE
    # New pictures on every other tick: the ticks in between repeat the picture, not composed.
    for index in range(0, FPS, 2):
        composer.push_video("left", tall, index / FPS)
        composer.push_video("right", wide, index / FPS)
    composer.close(1.0)
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video"]
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    # Cover: the tile is filled edge to edge with the centre of the picture (green cropped away).
    assert colour_at(image, 10, 4) == RED and colour_at(image, 310, 355) == RED
    assert colour_at(image, 480, 180) == BLUE and colour_at(image, 330, 4) == BLUE
    assert composer.frames == FPS and composer.composed == (FPS + 1) // 2


def test_audio_only(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "audio.mp4"
    composer = Composer(path, has_video=False)
    composer.add_stream("a")
    clip = encode_audio(tone(440.0, 1.0))
    for data, pts in clip.packets:
        composer.push_encoded_audio("a", data, pts)
    composer.close(1.0)
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["audio"]
    samples, _ = decode_audio(path)
    assert tone_level(samples, 0.2, 0.8, 440.0) > 0.1


def test_mixer_sums_clips_and_joins_frames() -> None:
    mixer = AudioMixer()

    def frame(value: float, count: int) -> Any:
        audio = av.AudioFrame.from_ndarray(
            np.full((1, count), value, np.float32), format="fltp", layout="mono"
        )
        audio.sample_rate = AUDIO_RATE
        return audio

    mixer.push("a", frame(0.7, 960), 0.0)
    mixer.push("b", frame(0.6, 960), 0.0)
    # 10 ms late by its timestamp: joined to the first frame without a gap.
    mixer.push("a", frame(0.1, 960), 0.03)
    block = mixer.mix(1920)
    assert block.shape == (2, 1920)
    assert np.allclose(block[:, :960], 1.0)  # 0.7 + 0.6 clipped
    assert np.allclose(block[:, 960:], 0.1)
    assert mixer.position == 1920
    # Frames wholly in the past are dropped; silence where nothing was pushed.
    mixer.push("c", frame(0.5, 960), 0.0)
    assert np.allclose(mixer.mix(1024), 0.0)


def test_decoders_drop_what_does_not_decode() -> None:
    video = VideoDecoder("vp8")
    assert video.decode(b"\x00garbage" * 10, 0.0) == []
    assert video.errors == 1
    clip = encode_video(solid_frames(RED, 0.2))
    decoded = [item for data, pts in clip.packets for item in video.decode(data, pts)]
    assert [round(t, 2) for _, t in decoded] == [round(i / FPS, 2) for i in range(5)]
    audio = AudioDecoder("opus")
    packets = encode_audio(tone(440.0, 0.1)).packets
    out = [item for data, pts in packets for item in audio.decode(data, pts)]
    assert len(out) == 5 and out[0][0].sample_rate == AUDIO_RATE
    with pytest.raises(ValueError, match="unsupported video codec"):
        VideoDecoder("av1")
    with pytest.raises(ValueError, match="even"):
        Composer(pathlib.Path("/nonexistent/x.mp4"), resolution=(641, 480))


def test_flash_and_beep_stay_in_sync() -> None:
    report = run(duration=4.0, streams=2, resolution="640x480", realtime=False)
    offset = report["av_offset"]
    assert offset["pairs"] >= 3, offset
    assert offset["max_abs_ms"] < 80, offset


def test_layout_and_classes_change_on_the_next_tick(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "switch.mp4"
    composer = Composer(path, resolution=(320, 240), fps=FPS, has_audio=False)
    composer.add_stream("r")
    composer.add_stream("g")
    red = np.zeros((240, 320, 3), np.uint8)
    red[:] = RED
    green = np.zeros((240, 320, 3), np.uint8)
    green[:] = GREEN
    composer.push_video("r", red, 0.0)
    composer.push_video("g", green, 0.0)
    # A tick is written once the input is complete up to half a tick after it.
    composer.advance(0.5)  # ticks 0-12 (0.48 s): best fit, side by side
    composer.set_layout(parse_layout("verticalPresentation"))
    composer.advance(1.0)  # ticks 13-24: r (the first) in focus on the right
    composer.set_layout_classes("g", ["focus"])
    composer.close(1.5)  # ticks 25-37: g in focus
    frames = rgb_frames(path)
    assert len(frames) == 38
    side = frames[12][2]
    assert colour_at(side, 80, 120) == RED and colour_at(side, 240, 120) == GREEN
    vertical = frames[13][2]
    assert colour_at(vertical, 200, 120) == RED and colour_at(vertical, 30, 120) == GREEN
    focus = frames[25][2]
    assert colour_at(focus, 200, 120) == GREEN and colour_at(focus, 30, 120) == RED


def test_h264_input_and_a_portrait_output(tmp_path: pathlib.Path) -> None:
    """H.264 in Annex B (what the H.264 depacketiser produces) decodes like VP8."""
    encoder: Any = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 320, 240, "yuv420p"
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "repeat-headers=1"}
    packets: list[tuple[bytes, float]] = []
    for index, image in enumerate(solid_frames(BLUE, 1.0)):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        packets += [(bytes(p), index / FPS) for p in encoder.encode(frame)]
    packets += [(bytes(p), len(packets) / FPS) for p in encoder.encode(None)]
    assert packets[0][0].startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
    path = tmp_path / "portrait.mp4"
    composer = Composer(path, resolution=(480, 640), fps=FPS, has_audio=False)
    composer.add_stream("cam", video_codec="h264")
    composer.add_stream("other")
    for data, pts in packets:
        composer.push_encoded_video("cam", data, pts)
    composer.close(1.0)
    frames = rgb_frames(path)
    assert len(frames) == FPS
    image = frames[-1][2]
    assert image.shape == (640, 480, 3)
    # Portrait best fit stacks the two: the H.264 stream on top, the silent one black below.
    assert colour_at(image, 240, 160) == BLUE
    assert colour_at(image, 240, 480) == (0, 0, 0)


def test_after_a_loss_only_a_key_frame_decodes() -> None:
    clip = encode_video(solid_frames(GREEN, 0.4))
    assert is_keyframe("vp8", clip.packets[0][0]) and not is_keyframe("vp8", clip.packets[1][0])
    decoder = VideoDecoder("vp8")
    # Nothing decodes before the first key frame.
    assert decoder.decode(clip.packets[1][0], 0.04) == [] and decoder.skipped == 1
    assert decoder.needs_keyframe
    assert len(decoder.decode(*clip.packets[0])) == 1 and not decoder.needs_keyframe
    assert len(decoder.decode(*clip.packets[1])) == 1
    # Frame 2 is lost: 3 and 4 would be built on it, so they are dropped.
    decoder.lost()
    assert decoder.decode(*clip.packets[3]) == [] and decoder.decode(*clip.packets[4]) == []
    assert decoder.skipped == 3 and decoder.needs_keyframe
    # The next key frame (here, the first one again) resumes decoding.
    assert [round(t, 2) for _, t in decoder.decode(clip.packets[0][0], 0.4)] == [0.4]
    assert len(decoder.decode(clip.packets[1][0], 0.44)) == 1


def test_key_frame_detection() -> None:
    assert is_keyframe("h264", b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x68\xce\x00\x00\x01\x65\x88")
    assert not is_keyframe("h264", b"\x00\x00\x00\x01\x41\x9a\x00")
    assert not is_keyframe("h264", b"\x00\x00\x01")
    assert is_keyframe("vp9", bytes([0b10000010]))  # profile 0, shown, key frame
    assert not is_keyframe("vp9", bytes([0b10000110]))  # inter frame
    assert not is_keyframe("vp9", bytes([0b10001000]))  # show an existing frame
    assert not is_keyframe("vp8", b"")


def test_the_composer_says_when_a_stream_needs_a_key_frame(tmp_path: pathlib.Path) -> None:
    composer = Composer(tmp_path / "k.mp4", resolution=(320, 240), has_audio=False)
    composer.add_stream("a")
    assert composer.needs_keyframe("a")
    clip = encode_video(solid_frames(RED, 0.2))
    composer.push_encoded_video("a", *clip.packets[0])
    assert not composer.needs_keyframe("a")
    composer.push_encoded_video("a", *clip.packets[2], lost=True)
    assert composer.needs_keyframe("a")
    assert not composer.needs_keyframe("unknown")
    composer.close(0.2)


def test_audio_at_other_rates_is_resampled_in_place() -> None:
    mixer = AudioMixer()
    rate = 16000
    t = np.arange(rate) / rate
    samples = (np.sin(2 * np.pi * 1000 * t) * 0.5).astype(np.float32)
    for start in range(0, rate, 320):  # 20 ms frames, 1 s in all, from 0.5 s on
        frame = av.AudioFrame.from_ndarray(
            samples[start : start + 320].reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = rate
        mixer.push("a", frame, 0.5 + start / rate)
    mixed = np.concatenate([mixer.mix(AUDIO_RATE // 10) for _ in range(15)], axis=1)
    left = mixed[0]
    assert np.abs(left[: AUDIO_RATE // 2 - 50]).max() < 1e-3  # silence before 0.5 s
    level = tone_level(left, 0.6, 1.4, 1000.0)
    assert 0.4 < level < 0.6, level
