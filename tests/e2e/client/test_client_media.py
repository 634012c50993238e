"""Two SDK clients publish and subscribe to each other through the real server: video checked
by the frame numbers drawn in the pixels, audio by each publisher's own tone frequency."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from sdk_helpers import (
    EventLog,
    Recorder,
    auto_subscribe,
    dominant_frequency,
    energy_near,
    session_for,
    wait_for,
)

from salon.client import (
    Publisher,
    Session,
    StreamPublished,
    StreamReceived,
    Subscriber,
    TestPatternSource,
    ToneSource,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(60)


async def test_two_clients_exchange_numbered_video_and_their_own_tones(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    tones = {"alice": 440.0, "bob": 660.0}
    received: dict[str, Recorder] = {"alice": Recorder(), "bob": Recorder()}
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        sessions = {"alice": alice, "bob": bob}
        logs = {name: EventLog(s) for name, s in sessions.items()}
        for name, session in sessions.items():
            auto_subscribe(session, received[name])
        await asyncio.gather(
            *(
                session.publish(
                    Publisher(name, video_source=TestPatternSource(), audio_source=ToneSource(tones[name]))
                )
                for name, session in sessions.items()
            )
        )
        await wait_for(
            lambda: all(len(r.indices) >= 30 and len(r.audio) >= 75 for r in received.values()),
            "30 video frames and 1.5 s of audio on both sides",
            timeout=20,
        )
        # Stats from aiortc plus the SDK's frame counters; subscription toggles are accepted.
        subscriber = alice.subscribers[0]
        stats = await subscriber.get_stats()
        assert stats.video is not None and stats.video.packets > 0 and stats.video.width == 640
        assert stats.audio is not None and stats.audio.packets > 0 and stats.bitrate >= 0
        published = await alice.publishers[0].get_stats()
        assert published.video is not None and published.video.packets > 0 and published.video.bytes
        await subscriber.subscribe_to_video(False)
        await subscriber.subscribe_to_video(True)
        for name in sessions:
            assert len(logs[name].of(StreamPublished)) == 1
            assert len(logs[name].of(StreamReceived)) == 1
            assert len(sessions[name].subscribers) == 1
    for name, recorder in received.items():
        other = "bob" if name == "alice" else "alice"
        indices = recorder.indices
        assert all(b > a for a, b in itertools.pairwise(indices)), f"{name}: frames out of order: {indices}"
        assert len(indices) >= 0.5 * (indices[-1] - indices[0] + 1), f"{name}: too many gaps: {indices}"
        assert recorder.sizes == {(640, 480)}
        peak, share = dominant_frequency(recorder.audio[10:], recorder.audio_rate)
        assert abs(peak - tones[other]) < 15 and share > 0.5, (name, peak, share)
        assert energy_near(recorder.audio[10:], recorder.audio_rate, tones[name]) < 0.05, name


async def test_each_subscriber_hears_only_its_own_publisher_across_two_sessions(
    media_server: RunningServer,
) -> None:
    """One process, one loop, two sessions: a listener in session A subscribes to two tones
    (440 and 660 Hz) and each subscriber's callback hears its own; session B (880 Hz) is
    independent of A."""
    server = media_server
    sid_a, sid_b = server.session(), server.session()
    tones = {"alice": 440.0, "bob": 660.0, "carol": 880.0}
    async with (
        session_for(server, sid_a) as alice,
        session_for(server, sid_a) as bob,
        session_for(server, sid_a) as listener,
        session_for(server, sid_b) as carol,
        session_for(server, sid_b) as dave,
    ):
        by_stream: dict[str, Recorder] = {}

        def recorder_for(session: Session) -> None:
            async def subscribe(event: StreamReceived) -> None:
                recorder = by_stream.setdefault(event.stream.stream_id, Recorder())
                await session.subscribe(
                    Subscriber(event.stream, on_audio_frame=recorder.on_audio, video=False)
                )

            session.on(StreamReceived, subscribe)

        recorder_for(listener)
        recorder_for(dave)
        streams = await asyncio.gather(
            *(
                session.publish(Publisher(name, video=False, audio_source=ToneSource(tones[name])))
                for name, session in (("alice", alice), ("bob", bob), ("carol", carol))
            )
        )
        names = {stream.stream_id: name for stream, name in zip(streams, tones, strict=True)}
        await wait_for(
            lambda: len(by_stream) == 3 and all(len(r.audio) >= 75 for r in by_stream.values()),
            "1.5 s of audio from each of the three streams",
            timeout=20,
        )
        assert len(listener.subscribers) == 2 and len(dave.subscribers) == 1
        assert {s.stream.stream_id for s in dave.subscribers} == {streams[2].stream_id}
    for stream_id, recorder in by_stream.items():
        name = names[stream_id]
        peak, share = dominant_frequency(recorder.audio[10:], recorder.audio_rate)
        assert abs(peak - tones[name]) < 15 and share > 0.5, (name, peak, share)
        for other, frequency in tones.items():
            if other != name:
                assert energy_near(recorder.audio[10:], recorder.audio_rate, frequency) < 0.05, (name, other)
