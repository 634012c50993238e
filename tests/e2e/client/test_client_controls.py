"""Subscription and publishing controls seen end to end: media really stops and resumes,
the frame iterators and ``wait_closed()``, ``publish_audio(False)`` and the screen-share
video type as others see them, and a moderator muting everyone but some streams."""

from __future__ import annotations

import asyncio

import pytest
from sdk_helpers import EventLog, session_for, wait_for

from salon.client import (
    AudioFrame,
    MuteAllChanged,
    MuteForced,
    Publisher,
    StreamPropertyChanged,
    StreamReceived,
    Subscriber,
    TestPatternSource,
    ToneSource,
    VideoFrame,
    VideoType,
    read_test_pattern_index,
)
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(90)


async def stays_still(count: object, what: str, seconds: float = 2.0) -> None:
    """Assert the counter ``count()`` grows by at most a few in-flight frames over ``seconds``
    (after a moment for the server to apply the change)."""
    assert callable(count)
    await asyncio.sleep(1.0)
    before = count()
    await asyncio.sleep(seconds)
    assert count() - before <= 3, f"{what} kept coming: {count() - before} more"


def small_publisher(name: str) -> Publisher:
    return Publisher(name, video_source=TestPatternSource(width=320, height=240), audio_source=ToneSource())


async def test_subscription_toggles_stop_and_resume_video_and_audio(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        stream = await alice.publish(small_publisher("alice"))
        await wait_for(lambda: stream.stream_id in bob.streams, "alice's stream at bob")
        subscriber = Subscriber(bob.streams[stream.stream_id])
        await bob.subscribe(subscriber)
        await wait_for(
            lambda: subscriber.video_frames_received >= 15 and subscriber.audio_frames_received >= 25,
            "video and audio",
            20,
        )

        await subscriber.subscribe_to_video(False)
        assert not subscriber.subscribed_to_video
        await stays_still(lambda: subscriber.video_frames_received, "video after subscribe_to_video(False)")
        audio_now = subscriber.audio_frames_received
        await wait_for(lambda: subscriber.audio_frames_received > audio_now + 25, "audio meanwhile")
        await subscriber.subscribe_to_video(True)
        video_now = subscriber.video_frames_received
        await wait_for(lambda: subscriber.video_frames_received >= video_now + 15, "video to resume", 20)

        await subscriber.subscribe_to_audio(False)
        await stays_still(lambda: subscriber.audio_frames_received, "audio after subscribe_to_audio(False)")
        video_now = subscriber.video_frames_received
        await wait_for(lambda: subscriber.video_frames_received > video_now + 15, "video meanwhile")
        await subscriber.subscribe_to_audio(True)
        audio_now = subscriber.audio_frames_received
        await wait_for(lambda: subscriber.audio_frames_received >= audio_now + 25, "audio to resume", 20)


async def test_frame_iterators_deliver_decoded_media_and_end_with_the_subscriber(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        stream = await alice.publish(small_publisher("alice"))
        await wait_for(lambda: stream.stream_id in bob.streams, "alice's stream at bob")
        subscriber = Subscriber(bob.streams[stream.stream_id])
        videos = subscriber.video_frames(maxsize=100)
        audios = subscriber.audio_frames(maxsize=500)
        await bob.subscribe(subscriber)
        indices: list[int] = []
        async with asyncio.timeout(30):
            async for frame in videos:
                assert isinstance(frame, VideoFrame) and (frame.width, frame.height) == (320, 240)
                indices.append(read_test_pattern_index(frame))
                if len(indices) == 20:
                    break
        assert indices == sorted(indices) and indices[0] > 0, indices
        async with asyncio.timeout(30):
            first: AudioFrame = await anext(audios)
        assert first.sample_rate == 48000 and first.samples.shape[1] == first.channels
        closed = asyncio.create_task(subscriber.wait_closed())
        await asyncio.sleep(0.2)
        assert not closed.done()
        await alice.unpublish(alice.publishers[0])  # the stream ends: so does the subscriber
        async with asyncio.timeout(20):
            await closed
            rest = [frame async for frame in audios]  # the iterator ends (after what it holds)
        assert all(isinstance(frame, AudioFrame) for frame in rest)
        assert bob.subscribers == [] and subscriber.session is None
        late = subscriber.video_frames()
        assert [frame async for frame in late] == []  # made after the end: ends at once


async def test_publish_audio_false_and_screen_share_are_seen_by_others(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        bob_log = EventLog(bob)
        screen = Publisher(
            "slides", video_type=VideoType.SCREEN, video_source=TestPatternSource(width=320, height=240)
        )
        stream = await alice.publish(screen)
        await wait_for(lambda: bob_log.of(StreamReceived), "the screen share at bob")
        received = bob_log.of(StreamReceived)[0]
        assert isinstance(received, StreamReceived)
        assert received.stream.video_type is VideoType.SCREEN and received.stream.has_audio
        assert server.sdk.get_stream(sid, stream.stream_id).videoType == "screen"

        await screen.publish_audio(False)
        await wait_for(lambda: bob_log.of(StreamPropertyChanged), "has_audio to change at bob")
        change = bob_log.of(StreamPropertyChanged)[0]
        assert isinstance(change, StreamPropertyChanged)
        assert (change.property, change.old_value, change.new_value) == ("has_audio", True, False)
        assert not bob.streams[stream.stream_id].has_audio and not screen.publishing_audio
        await screen.publish_audio(True)
        await wait_for(lambda: len(bob_log.of(StreamPropertyChanged)) == 2, "has_audio back on")
        assert bob.streams[stream.stream_id].has_audio


async def test_force_mute_of_everyone_spares_the_excluded_streams(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    async with (
        session_for(server, sid) as alice,
        session_for(server, sid) as bob,
        session_for(server, sid, role="moderator") as moderator,
    ):
        logs = {"alice": EventLog(alice), "bob": EventLog(bob)}
        mod_log = EventLog(moderator)
        alice_pub, bob_pub = Publisher("alice", video=False), Publisher("bob", video=False)
        alice_stream = await alice.publish(alice_pub)
        bob_stream = await bob.publish(bob_pub)
        await wait_for(lambda: len(moderator.streams) == 2, "both streams at the moderator")

        await moderator.force_mute(excluded=[bob_stream])
        await wait_for(lambda: logs["alice"].of(MuteForced), "alice to be muted")
        alice_id = alice_stream.stream_id
        await wait_for(lambda: not moderator.streams[alice_id].has_audio, "has_audio off at the moderator")
        await asyncio.sleep(1.5)  # time for a wrong mute of bob to arrive
        assert not alice_pub.publishing_audio
        assert bob_pub.publishing_audio and not logs["bob"].of(MuteForced)
        assert moderator.streams[bob_stream.stream_id].has_audio
        # Every client, the moderator too, heard that mute-all is on, sparing bob's stream.
        for log in (*logs.values(), mod_log):
            assert log.of(MuteAllChanged) == [MuteAllChanged(True, (bob_stream.stream_id,))]
        changes = [e for e in mod_log.of(StreamPropertyChanged) if isinstance(e, StreamPropertyChanged)]
        assert {c.stream.stream_id for c in changes} == {alice_stream.stream_id}
