"""MediaRecorder.finalise: what a composed recording left behind, after a restart."""

from __future__ import annotations

import asyncio
import pathlib

import av
import numpy as np
import pytest

from salon.archive.composed import MP4_NAME, playable_duration
from salon.archive.composer import Composer
from salon.archive.recorders import MediaRecorder
from salon.archive.service import RecordingFailed
from salon.store import ArchiveRecord


def _record(archive_id: str = "a-1") -> ArchiveRecord:
    return ArchiveRecord(
        archive_id=archive_id,
        api_key="47000001",
        session_id="s",
        name=None,
        status="stopped",
        reason="",
        created_at=1_700_000_000_000,
        updated_at=1_700_000_000_000,
        stopped_at=None,
        duration=0,
        size=0,
        output_mode="composed",
        stream_mode="auto",
        has_audio=True,
        has_video=True,
        resolution="640x480",
        layout='{"type": "bestFit"}',
        streams="[]",
        multi_archive_tag=None,
        location=None,
    )


def _composed(path: pathlib.Path, seconds: float) -> None:
    red = np.zeros((240, 320, 3), np.uint8)
    red[:] = (230, 20, 20)
    composer = Composer(path, resolution=(640, 480))
    composer.add_stream("x")
    for i in range(round(seconds * 25)):
        composer.push_video("x", red, i / 25)
        composer.advance(i / 25)
    composer.close(seconds)


def test_a_composed_file_cut_mid_fragment_is_delivered_up_to_its_last_fragment(
    tmp_path: pathlib.Path,
) -> None:
    whole = tmp_path / "whole.mp4"
    _composed(whole, 4.0)
    data = whole.read_bytes()
    directory = tmp_path / "a-1"
    directory.mkdir()
    (directory / MP4_NAME).write_bytes(data[: len(data) * 3 // 4])  # killed mid-fragment
    result = asyncio.run(MediaRecorder(None, "composed").finalise(_record(), directory))
    assert result.files == (directory / MP4_NAME,)
    assert result.size == len(data) * 3 // 4
    assert 1.0 <= result.duration < 4.0, result.duration
    with av.open(str(directory / MP4_NAME)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) >= 25
    assert abs(float(frames[-1].time) - result.duration) < 0.5, (frames[-1].time, result.duration)
    assert playable_duration(whole) == pytest.approx(4.0, abs=0.1)


def test_nothing_usable_left_fails_the_archive_with_a_reason(tmp_path: pathlib.Path) -> None:
    recorder = MediaRecorder(None, "composed")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecordingFailed, match="restarted"):
        asyncio.run(recorder.finalise(_record(), empty))
    (empty / MP4_NAME).write_bytes(b"\x00\x00\x00\x18ftypisom")  # a header, no media
    with pytest.raises(RecordingFailed, match="restarted"):
        asyncio.run(recorder.finalise(_record(), empty))
    with pytest.raises(RecordingFailed, match="no media plane"):
        asyncio.run(recorder.start(_record(), [], empty, lambda reason: None))
