"""``salon bench archive``: what recording costs, and how well the composed output keeps sync.

``--mode individual`` measures a real archiver process remuxing streams
(:mod:`salon.bench.archive_individual`); the rest of this module is ``--mode composed``.

``--mode composed`` runs a :class:`~salon.archive.composer.Composer` exactly as an archiver
does, in this process, fed encoded frames as the RTP depacketisers produce them:

* **Sources** (encoded before the measurement starts, not counted): ``--streams`` publishers of
  640x480 VP8 at 25 fps and 20 ms Opus packets. Stream 0 is a *flash-and-beep* source: black,
  with a white picture for 120 ms at every whole second, and a 2 kHz beep of 120 ms starting at
  the same instant. The others show a moving pattern (a gradient scrolling under a moving
  square, so that the encoders have work to do) and carry quiet low tones (200, 300, … Hz).
* **The run**: ``--duration`` seconds paced in real time (``--no-realtime``: as fast as it
  goes); every 20 ms the due frames and packets are pushed (decoded by PyAV, composed at
  ``--resolution`` with the best fit layout, mixed, encoded as H.264 + AAC in fragmented MP4)
  and :meth:`~salon.archive.composer.Composer.advance` is called 100 ms behind, as an
  archiver's jitter buffer would.
* **CPU**: the process's CPU time (all threads: decoders, swscale, x264's threads) during the
  run divided by the seconds of media written: the fraction of one core the archive needs in
  real time (target: under 1 core for 720p with 4 streams).
* **Audio-video offset**: the output file is decoded; each flash's first frame (stream 0's tile
  turns white) and each beep's onset (the 2 kHz band of the mix rises) are paired; the offset
  is the beep's time minus the flash's (positive: sound late). Target: under 80 ms.

The JSON report goes to stdout (exit 0 when both targets are met), progress to stderr.
"""

from __future__ import annotations

import argparse
import fractions
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from salon.archive.composer import AUDIO_RATE, Composer
from salon.archive.layout import LayoutSpec, compute_layout, parse_resolution
from salon.bench._harness import BenchError, machine, machine_line, percentile, run_and_report

__all__ = [
    "CPU_TARGET",
    "OFFSET_TARGET_MS",
    "EncodedClip",
    "beep_onsets",
    "encode_audio",
    "encode_video",
    "flash_onsets",
    "measure_av_offset",
    "run",
    "run_archive_bench",
]

CPU_TARGET = 1.0
"""Composed 720p with 4 streams: under one core."""
OFFSET_TARGET_MS = 80.0
FLASH_SECONDS = 0.12
BEEP_HZ = 2000.0
SOURCE_SIZE = (640, 480)
SOURCE_FPS = 25
OPUS_FRAME = 960
_LOOKAHEAD = 0.1


def _log(message: str) -> None:
    print(f"salon bench archive: {message}", file=sys.stderr, flush=True)


class EncodedClip:
    """Encoded frames ``(bytes, pts seconds)``; played in a loop, shifted by the clip's length."""

    def __init__(self, packets: list[tuple[bytes, float]], length: float) -> None:
        self.packets = packets
        self.length = length

    def until(self, end: float) -> Iterator[tuple[bytes, float]]:
        """Every packet with ``pts < end``, looping the clip."""
        loop = 0
        while True:
            for data, pts in self.packets:
                t = pts + loop * self.length
                if t >= end:
                    return
                yield data, t
            loop += 1
            if not self.packets:
                return


# -- sources -----------------------------------------------------------------------------------


def encode_video(
    frames: Iterator[np.ndarray[Any, Any]] | list[np.ndarray[Any, Any]],
    *,
    fps: int = SOURCE_FPS,
    bitrate: int = 800_000,
) -> EncodedClip:
    """RGB frames → VP8 (libvpx, realtime, a key frame first), timed at ``fps``."""
    encoder: Any = None
    packets: list[tuple[bytes, float]] = []
    count = 0
    for index, rgb in enumerate(frames):
        if encoder is None:
            encoder = av.CodecContext.create("libvpx", "w")
            encoder.width, encoder.height = rgb.shape[1], rgb.shape[0]
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = fractions.Fraction(1, fps)
            encoder.bit_rate = bitrate
            encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = encoder.time_base
        for packet in encoder.encode(frame):
            packets.append((bytes(packet), float(packet.pts) / fps))
        count = index + 1
    if encoder is not None:
        for packet in encoder.encode(None):
            packets.append((bytes(packet), float(packet.pts) / fps))
    return EncodedClip(packets, count / fps)


def encode_audio(samples: np.ndarray[Any, Any], *, bitrate: int = 48_000) -> EncodedClip:
    """Mono float samples at 48 kHz → Opus packets of 20 ms (libopus), timed by their first sample."""
    encoder: Any = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = AUDIO_RATE
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = bitrate
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    packets: list[tuple[bytes, float]] = []
    frames = len(pcm) // OPUS_FRAME
    for index in range(frames):
        chunk = pcm[index * OPUS_FRAME : (index + 1) * OPUS_FRAME].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = index * OPUS_FRAME
        out = encoder.encode(frame)
        for packet in out:
            packets.append((bytes(packet), index * OPUS_FRAME / AUDIO_RATE))
    return EncodedClip(packets, frames * OPUS_FRAME / AUDIO_RATE)


def solid_frames(
    color: tuple[int, int, int], seconds: float, size: tuple[int, int] = (320, 240)
) -> list[Any]:
    image = np.zeros((size[1], size[0], 3), np.uint8)
    image[:] = color
    return [image] * round(seconds * SOURCE_FPS)


def tone(frequency: float, seconds: float, level: float = 0.3) -> np.ndarray[Any, Any]:
    t = np.arange(round(seconds * AUDIO_RATE)) / AUDIO_RATE
    return (np.sin(2 * np.pi * frequency * t) * level).astype(np.float32)


def _flash_frames(seconds: int) -> Iterator[np.ndarray[Any, Any]]:
    width, height = SOURCE_SIZE
    black = np.zeros((height, width, 3), np.uint8)
    white = np.full((height, width, 3), 255, np.uint8)
    for index in range(seconds * SOURCE_FPS):
        t = index / SOURCE_FPS
        yield white if (t % 1.0) < FLASH_SECONDS - 1e-9 else black


def _beeps(seconds: int) -> np.ndarray[Any, Any]:
    samples = np.zeros(seconds * AUDIO_RATE, np.float32)
    beep = tone(BEEP_HZ, FLASH_SECONDS, 0.5)
    for second in range(seconds):
        samples[second * AUDIO_RATE : second * AUDIO_RATE + len(beep)] = beep
    return samples


def _pattern_frames(seed: int, seconds: float) -> Iterator[np.ndarray[Any, Any]]:
    width, height = SOURCE_SIZE
    x = np.arange(width, dtype=np.uint16)
    y = np.arange(height, dtype=np.uint16)[:, None]
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 24, (height, width), dtype=np.uint8)
    for index in range(round(seconds * SOURCE_FPS)):
        image = np.empty((height, width, 3), np.uint8)
        shift = index * 4 + seed * 50
        image[:, :, 0] = ((x + shift) % 256).astype(np.uint8)
        image[:, :, 1] = ((y + shift // 2) % 256).astype(np.uint8)
        image[:, :, 2] = noise + np.uint8(seed * 40)
        bx = (index * 9 + seed * 100) % (width - 80)
        by = (index * 5 + seed * 60) % (height - 80)
        image[by : by + 80, bx : bx + 80] = 255 - image[by : by + 80, bx : bx + 80]
        yield image


# -- measuring the output ----------------------------------------------------------------------


def flash_onsets(
    path: str | pathlib.Path, region: tuple[int, int, int, int], threshold: float = 128.0
) -> list[float]:
    """Times of the frames where ``region`` (x, y, w, h) of the video turns bright."""
    x, y, w, h = region
    onsets: list[float] = []
    bright = False
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            plane: Any = frame.planes[0]
            luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
            level = float(luma[y : y + h, x : x + w].mean())
            if level > threshold and not bright:
                onsets.append(float(frame.time))
            bright = level > threshold
    return onsets


def decode_audio(path: str | pathlib.Path) -> tuple[np.ndarray[Any, Any], float]:
    """The file's audio as mono float samples at 48 kHz from time 0 (the second return value).

    Each decoded frame is placed at its own time (not end to end): the first fragment's first
    packet of an MP4 track can carry a time clamped to 0 by the muxer's shift of negative
    timestamps (the AAC encoder's priming), and a player also follows the packets' times."""
    placed: list[tuple[int, np.ndarray[Any, Any]]] = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            data = frame.to_ndarray()
            mono = data.mean(axis=0) if data.ndim == 2 else data
            placed.append((max(0, round(float(frame.time or 0.0) * AUDIO_RATE)), mono))
    if not placed:
        return np.zeros(0, np.float32), 0.0
    total = max(start + len(mono) for start, mono in placed)
    samples = np.zeros(total, np.float32)
    for start, mono in placed:
        samples[start : start + len(mono)] = mono
    return samples, 0.0


def beep_onsets(samples: np.ndarray[Any, Any], start: float, frequency: float = BEEP_HZ) -> list[float]:
    """Onsets of bursts of ``frequency`` in ``samples`` (band-passed by FFT), in seconds."""
    if len(samples) == 0:
        return []
    spectrum = np.fft.rfft(samples)
    freqs = np.fft.rfftfreq(len(samples), 1 / AUDIO_RATE)
    spectrum[np.abs(freqs - frequency) > 150] = 0
    band = np.abs(np.fft.irfft(spectrum, len(samples)))
    # Envelope: max over 1 ms windows.
    window = AUDIO_RATE // 1000
    usable = len(band) // window * window
    envelope = band[:usable].reshape(-1, window).max(axis=1)
    if envelope.size == 0 or envelope.max() <= 0:
        return []
    threshold = envelope.max() * 0.3
    onsets: list[float] = []
    last = -1.0
    for index in np.flatnonzero(envelope > threshold):
        t = start + index / 1000
        if t - last > 0.5:
            onsets.append(t)
        last = t
    return onsets


def measure_av_offset(
    path: str | pathlib.Path, region: tuple[int, int, int, int], frequency: float = BEEP_HZ
) -> dict[str, Any]:
    """Pairs each flash of ``region`` with the nearest beep: offsets (audio - video) in ms."""
    flashes = flash_onsets(path, region)
    samples, start = decode_audio(path)
    beeps = beep_onsets(samples, start, frequency)
    offsets: list[float] = []
    for flash in flashes:
        if not beeps:
            break
        nearest = min(beeps, key=lambda b: abs(b - flash))
        if abs(nearest - flash) < 0.5:
            offsets.append((nearest - flash) * 1000)
    absolute = sorted(abs(o) for o in offsets)
    return {
        "flashes": len(flashes),
        "beeps": len(beeps),
        "pairs": len(offsets),
        "mean_ms": round(sum(offsets) / len(offsets), 1) if offsets else None,
        "max_abs_ms": round(absolute[-1], 1) if absolute else None,
        "p50_abs_ms": round(percentile(absolute, 0.5, presorted=True) or 0.0, 1) if absolute else None,
        "offsets_ms": [round(o, 1) for o in offsets],
    }


# -- the benchmark -----------------------------------------------------------------------------


def run(
    *,
    duration: float = 20.0,
    streams: int = 4,
    resolution: str = "1280x720",
    fps: int = 25,
    realtime: bool = True,
    preset: str = "veryfast",
    threads: int = 2,
    output_dir: pathlib.Path | None = None,
) -> dict[str, Any]:
    """The composed-archive benchmark (see the module); returns the report."""
    if streams < 1 or streams > 16:
        raise BenchError("--streams must be between 1 and 16")
    if duration < 2:
        raise BenchError("--duration must be at least 2 seconds")
    try:
        size = parse_resolution(resolution)
    except ValueError as exc:
        raise BenchError(str(exc)) from exc
    description = machine()
    _log(machine_line(description))
    _log(f"encoding {streams} sources")
    clip_seconds = 4
    videos = [encode_video(_flash_frames(clip_seconds))]
    audios = [encode_audio(_beeps(clip_seconds))]
    for index in range(1, streams):
        videos.append(encode_video(_pattern_frames(index, clip_seconds)))
        audios.append(encode_audio(tone(100.0 + 100 * index, clip_seconds, 0.05)))
    ids = [f"stream-{i}" for i in range(streams)]
    tile = next(
        t
        for t in compute_layout("bestFit", None, size, [(s, [], "camera") for s in ids])
        if t.stream_id == ids[0]
    )
    # The flash region: the middle of stream 0's tile (inside any letterbox).
    region = (tile.x + tile.w // 4, tile.y + tile.h // 4, tile.w // 2, tile.h // 2)

    with tempfile.TemporaryDirectory(prefix="salon-bench-archive-") as tmp:
        directory = output_dir or pathlib.Path(tmp)
        path = directory / "composed.mp4"
        composer = Composer(
            path, resolution=size, fps=fps, layout=LayoutSpec(), preset=preset, threads=threads
        )
        for sid in ids:
            composer.add_stream(sid)
        video_iters = [clip.until(duration + 1) for clip in videos]
        audio_iters = [clip.until(duration + 1) for clip in audios]
        pending_video: list[tuple[bytes, float] | None] = [next(it, None) for it in video_iters]
        pending_audio: list[tuple[bytes, float] | None] = [next(it, None) for it in audio_iters]
        _log(f"composing {duration:.0f} s at {resolution}, {fps} fps{' in real time' if realtime else ''}")
        cpu0, wall0 = time.process_time(), time.monotonic()
        step = 0.02
        now = 0.0
        while now < duration + _LOOKAHEAD:
            now += step
            for i, sid in enumerate(ids):
                while (item := pending_video[i]) is not None and item[1] <= now:
                    composer.push_encoded_video(sid, item[0], item[1])
                    pending_video[i] = next(video_iters[i], None)
                while (item := pending_audio[i]) is not None and item[1] <= now:
                    composer.push_encoded_audio(sid, item[0], item[1])
                    pending_audio[i] = next(audio_iters[i], None)
            composer.advance(min(duration, now - _LOOKAHEAD))
            if realtime:
                delay = wall0 + now - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        composer.close(duration)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        media = composer.duration
        size_bytes = os.path.getsize(path)
        _log("measuring the audio-video offset")
        offset = measure_av_offset(path, region)
    cores = cpu / media if media else None
    report: dict[str, Any] = {
        "benchmark": "archive",
        "mode": "composed",
        "machine": description,
        "config": {
            "duration_s": duration,
            "streams": streams,
            "resolution": resolution,
            "fps": fps,
            "source": f"{SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} VP8 {SOURCE_FPS} fps + Opus 20 ms",
            "preset": preset,
            "threads": threads,
            "realtime": realtime,
        },
        "cpu": {
            "cpu_seconds": round(cpu, 2),
            "wall_seconds": round(wall, 2),
            "media_seconds": round(media, 2),
            "cores": round(cores, 3) if cores is not None else None,
            "cores_per_stream": round(cores / streams, 3) if cores is not None else None,
            "target_cores": CPU_TARGET,
        },
        "output": {
            "bytes": size_bytes,
            "kbit_per_s": round(size_bytes * 8 / media / 1000, 1) if media else None,
            "frames": composer.frames,
            "composed_frames": composer.composed,
        },
        "av_offset": {**offset, "target_ms": OFFSET_TARGET_MS},
    }
    return report


def _passed(report: dict[str, Any]) -> bool:
    cores = report["cpu"]["cores"]
    offset = report["av_offset"]["max_abs_ms"]
    ok = True
    if report["config"]["resolution"] == "1280x720" and report["config"]["streams"] <= 4:
        if cores is None or cores >= CPU_TARGET:
            _log(f"CPU {cores} cores is over the {CPU_TARGET} core target")
            ok = False
    if offset is None or offset >= OFFSET_TARGET_MS:
        _log(f"audio-video offset {offset} ms is over the {OFFSET_TARGET_MS} ms target (or not measured)")
        ok = False
    return ok


def run_archive_bench(args: argparse.Namespace) -> int:
    """``salon bench archive``: run it, print the JSON report; 0 when the targets are met."""
    if args.mode == "individual":
        from salon.bench.archive_individual import passed_individual, run_individual

        return run_and_report(
            "archive", lambda: run_individual(duration=args.duration, streams=args.streams), passed_individual
        )
    if args.archiver:
        from salon.bench.archive_individual import passed_archiver, run_composed_archiver

        return run_and_report(
            "archive",
            lambda: run_composed_archiver(
                duration=args.duration, streams=args.streams, resolution=args.resolution
            ),
            passed_archiver,
        )
    return run_and_report(
        "archive",
        lambda: run(
            duration=args.duration,
            streams=args.streams,
            resolution=args.resolution,
            fps=args.fps,
            realtime=args.realtime,
            preset=args.preset,
            threads=args.threads,
        ),
        _passed,
    )
