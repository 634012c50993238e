"""``salon bench archive --mode individual``: the archiver's CPU for streams remuxed, per stream.

A real archiver process (``python -m salon.archive.archiver``, as a recording starts it) is
given ``--streams`` streams, each 640x480 VP8 at 25 fps (a moving pattern, ~800 kbit/s) and
20 ms Opus packets, sent as the media workers' recorders send them: RTP over loopback UDP,
each datagram with its stream's token and track byte (:mod:`salon.media.recording`). The
sources are encoded and packetised before the measurement starts (not counted), then sent in
real time for ``--duration`` seconds. The archiver reorders, depacketises and writes each
stream to WebM without re-encoding (:mod:`salon.archive.individual`).

**CPU** is the archiver process's user + system time (``/proc/PID/stat``) from the first
packet sent to the last, divided by that wall time: the fraction of one core it needs; per
stream, divided by the streams (target: under 0.05 core per stream). Its start-up (importing
PyAV) and the writing of the ZIP are left out. The report also gives what it wrote (frames
per stream, the ZIP's size).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import secrets
import socket
import tempfile
import time
import zipfile
from typing import Any

from aiortc.codecs.vpx import Vp8Encoder

from salon.archive.archiver import AddStream, StopArchive, TrackSpec
from salon.archive.composed import ComposedOptions
from salon.archive.layout import compute_layout, parse_resolution
from salon.archive.recorder import ArchiverProcess
from salon.bench._harness import BenchError, machine, machine_line
from salon.media.recording import TRACK_AUDIO, TRACK_VIDEO
from salon.media.rtp import build_rtp

__all__ = [
    "PER_STREAM_TARGET",
    "passed_archiver",
    "passed_individual",
    "run_composed_archiver",
    "run_individual",
]

PER_STREAM_TARGET = 0.05
"""Individual (remux): under 0.05 core per stream."""
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """A process's user + system CPU time (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _packetise(
    stream: int, duration: float, clips: tuple[Any, Any], token: bytes
) -> list[tuple[float, bytes]]:
    """(send time, datagram) of one stream's video and audio over ``duration`` seconds."""
    video, audio = clips
    out: list[tuple[float, bytes]] = []
    seq = 1000 * stream
    picture_id = 0
    for data, pts in video.until(duration):
        payloads = Vp8Encoder._packetize(data, picture_id)
        picture_id = (picture_id + 1) % (1 << 15)
        for index, payload in enumerate(payloads):
            packet = build_rtp(
                payload_type=96,
                sequence_number=seq & 0xFFFF,
                timestamp=round(pts * 90000) & 0xFFFFFFFF,
                ssrc=1000 + stream,
                payload=payload,
                marker=index == len(payloads) - 1,
            )
            seq += 1
            out.append((pts, token + bytes([TRACK_VIDEO]) + packet))
    seq = 30000 + 1000 * stream
    for data, pts in audio.until(duration):
        packet = build_rtp(
            payload_type=111,
            sequence_number=seq & 0xFFFF,
            timestamp=round(pts * 48000) & 0xFFFFFFFF,
            ssrc=2000 + stream,
            payload=data,
        )
        seq += 1
        out.append((pts, token + bytes([TRACK_AUDIO]) + packet))
    return out


async def _run(
    duration: float, streams: int, directory: pathlib.Path, composed: ComposedOptions | None = None
) -> dict[str, Any]:
    from salon.bench.archive import (
        _beeps,
        _flash_frames,
        _log,
        _pattern_frames,
        encode_audio,
        encode_video,
        measure_av_offset,
        tone,
    )

    _log(f"encoding {streams} sources")
    clip_seconds = 4
    tokens = [secrets.token_bytes(16) for _ in range(streams)]
    datagrams: list[tuple[float, bytes]] = []
    for index in range(streams):
        if composed is not None and index == 0:
            # The composed output's A/V offset is measured on a flash-and-beep source.
            clips = (encode_video(_flash_frames(clip_seconds)), encode_audio(_beeps(clip_seconds)))
        else:
            clips = (
                encode_video(_pattern_frames(index % 4 + 1, clip_seconds)),
                encode_audio(tone(200.0 + 100 * index, clip_seconds, 0.2)),
            )
        datagrams += _packetise(index, duration, clips, tokens[index])
    datagrams.sort(key=lambda item: item[0])
    args = [] if composed is None else ["--composed", composed.model_dump_json()]
    archiver = await ArchiverProcess.spawn(directory, time.monotonic(), args=args)
    try:
        ready = archiver.ready.result()
        for index, token in enumerate(tokens):
            archiver.send(
                AddStream(
                    stream_id=f"stream-{index}",
                    token=token.hex(),
                    tracks=[
                        TrackSpec(kind="video", codec="vp8", clock_rate=90000),
                        TrackSpec(kind="audio", codec="opus", clock_rate=48000, channels=2),
                    ],
                )
            )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sink = (ready.host, ready.port)
        bytes_sent = sum(len(d) for _, d in datagrams)
        _log(
            f"sending {len(datagrams)} datagrams "
            f"({bytes_sent * 8 / duration / 1e6:.1f} Mbit/s) for {duration:.0f} s"
        )
        await asyncio.sleep(0.5)  # the archiver has taken the streams
        cpu0, wall0 = _cpu_seconds(archiver.pid), time.monotonic()
        for when, datagram in datagrams:
            delay = wall0 + when - time.monotonic()
            if delay > 0.002:
                await asyncio.sleep(delay)
            try:
                sock.sendto(datagram, sink)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                sock.sendto(datagram, sink)
        await asyncio.sleep(0.3)  # the last packets are through the reorder buffer
        cpu = _cpu_seconds(archiver.pid) - cpu0
        wall = time.monotonic() - wall0
        sock.close()
        archiver.send(StopArchive(archive_id="bench", session_id="bench", created_at=int(time.time() * 1000)))
        finished = await asyncio.wait_for(asyncio.shield(archiver.finished), 60)
        await archiver.exited.wait()
    finally:
        await archiver.kill()
    if finished.zip_path is None:
        raise BenchError("the archiver wrote no archive")
    zip_path = pathlib.Path(finished.zip_path)
    if composed is not None:
        ids = [f"stream-{i}" for i in range(streams)]
        size = (composed.width, composed.height)
        tiles = compute_layout("bestFit", None, size, [(s, [], "camera") for s in ids])
        tile = next(t for t in tiles if t.stream_id == ids[0])
        region = (tile.x + tile.w // 4, tile.y + tile.h // 4, tile.w // 2, tile.h // 2)
        offset = await asyncio.to_thread(measure_av_offset, zip_path, region)
        return {
            "av_offset": offset,
            "cpu": cpu,
            "wall": wall,
            "mbit_per_s": round(bytes_sent * 8 / duration / 1e6, 2),
            "bytes": (await asyncio.to_thread(zip_path.stat)).st_size,
            "stats": {k: v for k, v in finished.stats.items() if not isinstance(v, dict)},
            "frames": {
                sid: stats["frames"]
                for sid, stats in finished.stats.items()
                if isinstance(stats, dict) and "frames" in stats
            },
            "tracks": {
                sid: stats["tracks"]
                for sid, stats in finished.stats.items()
                if isinstance(stats, dict) and "tracks" in stats
            },
            "errors": list(finished.errors),
        }
    files, zip_bytes = await asyncio.to_thread(_zip_contents, zip_path)
    frames = {
        sid: {k: t["frames"] for k, t in stats["tracks"].items()}
        for sid, stats in finished.stats.items()
        if isinstance(stats, dict) and "tracks" in stats
    }
    return {
        "cpu": cpu,
        "wall": wall,
        "files": files,
        "zip_bytes": zip_bytes,
        "frames": frames,
        "errors": list(finished.errors),
        "mbit_per_s": round(bytes_sent * 8 / duration / 1e6, 2),
    }


def _zip_contents(path: pathlib.Path) -> tuple[list[str], int]:
    with zipfile.ZipFile(path) as archive:
        return sorted(n for n in archive.namelist() if n.endswith(".webm")), path.stat().st_size


def run_individual(
    *, duration: float = 20.0, streams: int = 4, output_dir: pathlib.Path | None = None
) -> dict[str, Any]:
    """The individual-archive benchmark (see the module); returns the report."""
    from salon.bench.archive import _log

    if streams < 1 or streams > 16:
        raise BenchError("--streams must be between 1 and 16")
    if duration < 2:
        raise BenchError("--duration must be at least 2 seconds")
    description = machine()
    _log(machine_line(description))
    with tempfile.TemporaryDirectory(prefix="salon-bench-archive-") as tmp:
        result = asyncio.run(_run(duration, streams, output_dir or pathlib.Path(tmp)))
    cores = result["cpu"] / result["wall"]
    return {
        "benchmark": "archive",
        "mode": "individual",
        "machine": description,
        "config": {
            "duration_s": duration,
            "streams": streams,
            "source": "640x480 VP8 25 fps (~800 kbit/s) + Opus 20 ms, RTP over loopback UDP",
            "input_mbit_per_s": result["mbit_per_s"],
        },
        "cpu": {
            "cpu_seconds": round(result["cpu"], 2),
            "wall_seconds": round(result["wall"], 2),
            "cores": round(cores, 3),
            "cores_per_stream": round(cores / streams, 4),
            "target_cores_per_stream": PER_STREAM_TARGET,
        },
        "output": {
            "files": result["files"],
            "zip_bytes": result["zip_bytes"],
            "frames": result["frames"],
            "errors": result["errors"],
        },
    }


def passed_individual(report: dict[str, Any]) -> bool:
    from salon.bench.archive import _log

    per_stream = float(report["cpu"]["cores_per_stream"])
    ok = per_stream < PER_STREAM_TARGET
    if not ok:
        _log(f"CPU {per_stream} core per stream is over the {PER_STREAM_TARGET} target")
    if len(report["output"]["files"]) != report["config"]["streams"] or report["output"]["errors"]:
        _log(f"the archive is not complete: {report['output']['files']} {report['output']['errors']}")
        ok = False
    return ok


def run_composed_archiver(
    *, duration: float = 20.0, streams: int = 4, resolution: str = "1280x720"
) -> dict[str, Any]:
    """``--mode composed --archiver``: the same RTP sources, composed by a real archiver process
    (``--composed``: depacketise, decode, lay out, mix, encode); its CPU from ``/proc``."""
    from salon.bench.archive import CPU_TARGET, OFFSET_TARGET_MS, _log

    if streams < 1 or streams > 16:
        raise BenchError("--streams must be between 1 and 16")
    if duration < 2:
        raise BenchError("--duration must be at least 2 seconds")
    try:
        width, height = parse_resolution(resolution)
    except ValueError as exc:
        raise BenchError(str(exc)) from exc
    description = machine()
    _log(machine_line(description))
    options = ComposedOptions(width=width, height=height)
    with tempfile.TemporaryDirectory(prefix="salon-bench-archive-") as tmp:
        result = asyncio.run(_run(duration, streams, pathlib.Path(tmp), options))
    cores = result["cpu"] / result["wall"]
    return {
        "benchmark": "archive",
        "mode": "composed (archiver process)",
        "machine": description,
        "config": {
            "duration_s": duration,
            "streams": streams,
            "resolution": resolution,
            "source": "640x480 VP8 25 fps (~800 kbit/s) + Opus 20 ms, RTP over loopback UDP",
            "input_mbit_per_s": result["mbit_per_s"],
        },
        "cpu": {
            "cpu_seconds": round(result["cpu"], 2),
            "wall_seconds": round(result["wall"], 2),
            "cores": round(cores, 3),
            "cores_per_stream": round(cores / streams, 4),
            "target_cores": CPU_TARGET,
        },
        "av_offset": {**result["av_offset"], "target_ms": OFFSET_TARGET_MS},
        "output": {
            "bytes": result["bytes"],
            "frames_in": result["frames"],
            "tracks": result["tracks"],
            **result["stats"],
            "errors": result["errors"],
        },
    }


def passed_archiver(report: dict[str, Any]) -> bool:
    from salon.bench.archive import CPU_TARGET, OFFSET_TARGET_MS, _log

    cores = float(report["cpu"]["cores"])
    ok = not report["output"]["errors"]
    offset = report["av_offset"]["max_abs_ms"]
    if offset is None or offset >= OFFSET_TARGET_MS:
        _log(f"audio-video offset {offset} ms is over the {OFFSET_TARGET_MS} ms target (or not measured)")
        ok = False
    if (
        report["config"]["resolution"] == "1280x720"
        and report["config"]["streams"] <= 4
        and cores >= CPU_TARGET
    ):
        _log(f"CPU {cores} cores is over the {CPU_TARGET} core target")
        ok = False
    return ok
