"""Client media sources and frames without a server: pacing, dropping, the test pattern."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from salon.client import (
    CameraSource,
    CustomAudioSource,
    CustomVideoSource,
    DeviceNotFound,
    TestPatternSource,
    ToneSource,
    VideoFrame,
    read_test_pattern_index,
)
from salon.client._emitter import Emitter, LatestQueue
from salon.client.events import Event, SignalReceived, StreamReceived


async def test_the_test_pattern_numbers_frames_readably() -> None:
    source = TestPatternSource(width=320, height=240, frame_rate=200)
    for expected in (1, 2, 3):
        frame = await source._next_frame()
        assert (frame.width, frame.height) == (320, 240)
        wrapped = VideoFrame(320, 240, 0.0, frame)
        assert read_test_pattern_index(wrapped) == expected
        assert read_test_pattern_index(wrapped.to_rgb()) == expected
    assert wrapped.planes[0].shape == (240, 320) and wrapped.planes[1].shape == (120, 160)


async def test_a_custom_capturer_keeps_the_latest_frame_and_counts_drops() -> None:
    source = CustomVideoSource(frame_rate=1000)
    frames = [np.full((48, 64, 3), value, dtype=np.uint8) for value in (10, 120, 250)]
    for frame in frames:
        source.push(frame)  # never blocks
    assert source.dropped == 2
    taken = await source._next_frame()
    assert taken.width == 64 and abs(int(taken.to_ndarray(format="rgb24")[0, 0, 0]) - 250) < 8
    i420 = np.full((72, 64), 128, dtype=np.uint8)
    source.push(i420)
    assert (await source._next_frame()).format.name == "yuv420p"
    with pytest.raises(ValueError, match="RGB"):
        source.push(np.zeros((10, 10, 4), dtype=np.uint8))


async def test_pushed_pcm_is_sent_in_20_ms_frames_then_silence() -> None:
    source = CustomAudioSource(sample_rate=48000, max_buffer=0.05)  # 2400 samples
    ramp = np.arange(1, 4001, dtype=np.int16)  # each sample says where it was pushed
    source.push(ramp[:3000])  # 62.5 ms > 50 ms: the oldest 600 samples are dropped
    assert source.dropped_samples == 600
    source.push(ramp[3000:3960])  # 960 more: the oldest 960 of the buffer go
    assert source.dropped_samples == 1560
    samples, rate = await source._next_samples()
    assert rate == 48000 and samples.shape == (960, 1)
    assert samples[:, 0].tolist() == ramp[1560:2520].tolist()  # the newest 2400 were kept, in order
    samples, _ = await source._next_samples()
    assert samples[:, 0].tolist() == ramp[2520:3480].tolist()
    samples, _ = await source._next_samples()
    assert samples[:480, 0].tolist() == ramp[3480:3960].tolist() and not samples[480:].any()
    samples, _ = await source._next_samples()
    assert not samples.any()


async def test_a_small_push_into_a_full_buffer_cuts_into_the_oldest_chunk() -> None:
    source = CustomAudioSource(sample_rate=48000, max_buffer=0.02, channels=2)  # 960 frames
    source.push(np.full((960, 2), 5, dtype=np.int16))
    source.push(np.full((100, 2), 9, dtype=np.int16))
    assert source.dropped_samples == 100
    samples, _ = await source._next_samples()
    assert samples.shape == (960, 2)
    assert (samples[:860] == 5).all() and (samples[860:] == 9).all()


async def test_decoded_planes_are_read_only_views() -> None:
    frame = VideoFrame(320, 240, 0.0, await TestPatternSource(width=320, height=240)._next_frame())
    for plane in frame.planes:
        assert not plane.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            plane[0, 0] = 1
    assert frame.to_rgb().flags.writeable  # conversions are the caller's copies


async def test_a_tone_has_its_frequency() -> None:
    samples, rate = await ToneSource(1000.0)._next_samples()
    crossings = np.count_nonzero(np.diff(np.signbit(samples[:, 0])))
    assert math.isclose(crossings, 2 * 1000 * len(samples) / rate, abs_tol=2)


def test_no_camera_is_a_clear_error() -> None:
    with pytest.raises(DeviceNotFound, match="no V4L2 camera at /dev/nonexistent-video"):
        CameraSource("/dev/nonexistent-video")


async def test_events_reach_typed_handlers_and_iterators_and_a_failing_handler_is_contained() -> None:
    emitter: Emitter[Event] = Emitter("test")
    signals: list[SignalReceived] = []
    everything: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("handler bug")

    emitter.on(SignalReceived, signals.append)  # type: ignore[arg-type]
    emitter.on(Event, everything.append)
    emitter.on(Event, broken)
    queue = emitter.iterator(maxsize=1)
    emitter.emit(SignalReceived("t", "d", None))
    emitter.emit(StreamReceived.__new__(StreamReceived))
    assert len(signals) == 1 and len(everything) == 2
    assert queue.dropped == 1
    emitter.end()
    assert [type(e) for e in [e async for e in queue]] == [StreamReceived]


async def test_a_latest_queue_drops_the_oldest() -> None:
    queue: LatestQueue[int] = LatestQueue(2)
    for i in range(5):
        queue.put(i)
    queue.end()
    assert [i async for i in queue] == [3, 4] and queue.dropped == 3
    await asyncio.sleep(0)
