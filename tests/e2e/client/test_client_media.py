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
    wait_settled,
)

from salon.client import (
    NotFound,
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
        # Stats from aiortc plus the SDK's frame counters; rates need a second call.
        subscriber, publisher = alice.subscribers[0], alice.publishers[0]
        await subscriber.get_stats()
        await publisher.get_stats()
        counted = len(received["alice"].indices)
        await wait_for(lambda: len(received["alice"].indices) >= counted + 45, "45 more frames", timeout=20)
        stats = await subscriber.get_stats()
        published = await publisher.get_stats()
        for kind, got in (("video", stats.video), ("audio", stats.audio)):
            assert got is not None and got.kind == kind and got.packets > 50, got
            assert 0 <= got.packets_lost < got.packets // 20, got  # loopback: next to no loss
            assert got.round_trip_time is not None and 0 < got.round_trip_time < 1.0, got
        assert stats.video is not None and (stats.video.width, stats.video.height) == (640, 480)
        assert stats.video.frame_rate is not None and 10 < stats.video.frame_rate < 45, stats.video
        assert stats.bitrate > 50_000, stats  # 640x480 VP8 plus Opus
        for kind, sent in (("video", published.video), ("audio", published.audio)):
            assert sent is not None and sent.packets > 50 and sent.bytes, sent
            assert sent.bitrate is not None and sent.bitrate > (50_000 if kind == "video" else 5_000), sent
            assert 0 <= sent.packets_lost < sent.packets // 20, sent
            assert sent.round_trip_time is not None and 0 < sent.round_trip_time < 1.0, sent
        assert published.video is not None and (published.video.width, published.video.height) == (640, 480)
        assert published.video.frame_rate is not None and 10 < published.video.frame_rate < 45
        assert published.bitrate > 50_000, published
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


async def test_a_session_receives_every_stream_on_one_peer_connection(media_server: RunningServer) -> None:
    """Three publishers (440, 660, 880 Hz); a viewer subscribes to all three on one peer
    connection and one server transport, each subscriber with its own frames, tone and stats;
    unsubscribing one leaves the others flowing, and subscribing again renegotiates once more."""
    server = media_server
    sid = server.session()
    tones = [440.0, 660.0, 880.0]
    plane = server.thread.server.config.app.state.media

    async def worker_counts() -> tuple[int, int]:
        (dump,) = await asyncio.wrap_future(server.thread.run_coroutine(plane.pool.dump()))
        return dump.transports, dump.consumers

    async with (
        session_for(server, sid) as a,
        session_for(server, sid) as b,
        session_for(server, sid) as c,
        session_for(server, sid, role="subscriber") as viewer,
    ):
        for session, tone in zip((a, b, c), tones, strict=True):
            await session.publish(
                Publisher(f"{tone:.0f}", video_source=TestPatternSource(), audio_source=ToneSource(tone))
            )
        await wait_for(lambda: len(viewer.streams) == 3, "three streams")
        recorders: dict[str, Recorder] = {}
        subscribers: dict[str, Subscriber] = {}
        for stream in viewer.streams.values():
            recorder = recorders[stream.name] = Recorder()
            subscriber = subscribers[stream.name] = Subscriber(
                stream, on_video_frame=recorder.on_video, on_audio_frame=recorder.on_audio
            )
            await viewer.subscribe(subscriber)
        await wait_for(
            lambda: all(len(r.indices) >= 20 and len(r.audio) >= 60 for r in recorders.values()),
            "frames and audio of all three",
            timeout=20,
        )
        peer = viewer._subscribe_peer
        assert peer is not None and len(peer.pc.getTransceivers()) == 6
        assert await worker_counts() == (4, 6)  # three publish transports, one subscribe transport
        for name, recorder in recorders.items():
            peak, share = dominant_frequency(recorder.audio[10:], recorder.audio_rate)
            assert abs(peak - float(name)) < 15 and share > 0.5, (name, peak, share)
            assert all(y > x for x, y in itertools.pairwise(recorder.indices)), (name, recorder.indices)
        # Per-subscriber stats, not the peer connection's total: three like streams share the
        # peer connection, so each subscriber has about a third of its payload.
        received_bytes = peer.received_bytes  # per receiver, all of the peer connection's

        def pc_bytes() -> int:
            return sum(received_bytes.values())

        for subscriber in subscribers.values():
            await subscriber.get_stats()
        start = (asyncio.get_running_loop().time(), pc_bytes())
        counted = {name: len(r.indices) for name, r in recorders.items()}
        await wait_for(
            lambda: all(len(r.indices) >= counted[n] + 30 for n, r in recorders.items()),
            "30 more frames each",
        )
        pc_bitrate = (pc_bytes() - start[1]) * 8 / (asyncio.get_running_loop().time() - start[0])
        rates: dict[str, float] = {}
        for name, subscriber in subscribers.items():
            stats = await subscriber.get_stats()
            assert stats.video is not None and stats.video.bytes and stats.video.bitrate, (name, stats)
            assert stats.audio is not None and stats.audio.bytes and stats.audio.bitrate, (name, stats)
            assert 50_000 < stats.bitrate < 3_000_000, (name, stats)
            rates[name] = stats.bitrate
        for name, rate in rates.items():
            assert 0.15 * pc_bitrate < rate < 0.6 * pc_bitrate, (name, rates, pc_bitrate)
        assert 0.6 * pc_bitrate < sum(rates.values()) < 1.4 * pc_bitrate, (rates, pc_bitrate)

        # Unsubscribe from one: its frames stop, the others go on, on the same transport.
        gone = subscribers.pop("660")
        await viewer.unsubscribe(gone)
        # Frames already decoded or in flight may still come out; then nothing more.
        stopped = await wait_settled(lambda: len(recorders["660"].indices), "frames after unsubscribing")
        before = {name: len(recorders[name].indices) for name in subscribers}
        await wait_for(
            lambda: all(len(recorders[n].indices) >= before[n] + 20 for n in subscribers), "the other two"
        )
        assert len(recorders["660"].indices) == stopped, "frames after unsubscribing"
        assert await worker_counts() == (4, 4)

        # Subscribing to it again: new m-lines on the same peer connection.
        again = Recorder()
        stream = next(s for s in viewer.streams.values() if s.name == "660")
        await viewer.subscribe(
            Subscriber(stream, on_video_frame=again.on_video, on_audio_frame=again.on_audio)
        )
        await wait_for(lambda: len(again.indices) >= 20 and len(again.audio) >= 60, "the stream again")
        assert viewer._subscribe_peer is peer and len(peer.pc.getTransceivers()) == 8
        assert await worker_counts() == (4, 6)
        peak, _ = dominant_frequency(again.audio[10:], again.audio_rate)
        assert abs(peak - 660) < 15, peak


async def test_a_refused_subscribe_leaves_the_shared_peer_connection_working(
    media_server: RunningServer,
) -> None:
    """Subscribing to a stream that has just ended fails with NotFound; the viewer's other
    subscription keeps flowing and its next subscribe renegotiates fine (the failed m-lines stay,
    inactive)."""
    server = media_server
    sid = server.session()
    async with (
        session_for(server, sid) as a,
        session_for(server, sid) as b,
        session_for(server, sid, role="subscriber") as viewer,
    ):
        first = Publisher("first", video_source=TestPatternSource(), audio_source=ToneSource(440))
        await a.publish(first)
        await wait_for(lambda: len(viewer.streams) == 1, "the first stream")
        (stream_a,) = viewer.streams.values()
        kept = Recorder()
        await viewer.subscribe(
            Subscriber(stream_a, on_video_frame=kept.on_video, on_audio_frame=kept.on_audio)
        )
        await wait_for(lambda: len(kept.indices) >= 10, "the first stream's frames")

        second = Publisher("second", video_source=TestPatternSource(), audio_source=ToneSource(660))
        await b.publish(second)
        await wait_for(lambda: len(viewer.streams) == 2, "the second stream")
        stale = next(s for s in viewer.streams.values() if s.name == "second")
        await b.unpublish(second)
        await wait_for(lambda: len(viewer.streams) == 1, "the second stream to end")
        with pytest.raises(NotFound):
            await viewer.subscribe(Subscriber(stale))

        before = len(kept.indices)
        await wait_for(lambda: len(kept.indices) >= before + 20, "the first stream after the refusal")
        third = Publisher("third", video_source=TestPatternSource(), audio_source=ToneSource(880))
        await b.publish(third)
        await wait_for(lambda: len(viewer.streams) == 2, "the third stream")
        stream_c = next(s for s in viewer.streams.values() if s.name == "third")
        got = Recorder()
        await viewer.subscribe(Subscriber(stream_c, on_video_frame=got.on_video, on_audio_frame=got.on_audio))
        await wait_for(lambda: len(got.indices) >= 20 and len(got.audio) >= 60, "the third stream")
        peak, _ = dominant_frequency(got.audio[10:], got.audio_rate)
        assert abs(peak - 880) < 15, peak
        before = len(kept.indices)
        await wait_for(lambda: len(kept.indices) >= before + 20, "the first stream still")
