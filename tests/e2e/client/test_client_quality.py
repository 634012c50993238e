"""Subscriber preferences and quality pauses end to end with the Python SDK: the preferred
resolution and frame rate reach the subscriber's video consumer in the media worker (at
subscribe time and when changed), and a consumer paused for quality in the worker (as the
allocator does when a link cannot carry the lowest layer) reaches the subscriber as
``VideoDisabled`` / ``VideoEnabled`` with reason ``quality``, its video stopping and resuming
while its audio goes on."""

from __future__ import annotations

import pytest
from sdk_helpers import EventLog, session_for, wait_for, wait_settled

from salon.client import (
    Publisher,
    Subscriber,
    TestPatternSource,
    ToneSource,
    VideoDisabled,
    VideoEnabled,
    VideoReason,
)
from tests.conftest import RunningServer
from tests.e2e.media.sfu_state import eventually_preferences, pause_for_quality, video_consumer

pytestmark = pytest.mark.timeout(120)


async def test_preferences_reach_the_consumer_and_quality_pauses_reach_the_subscriber(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        bob_events, alice_events = EventLog(bob), EventLog(alice)
        publisher = Publisher(
            "alice", video_source=TestPatternSource(width=320, height=240), audio_source=ToneSource()
        )
        stream = await alice.publish(publisher)
        await wait_for(lambda: stream.stream_id in bob.streams, "alice's stream at bob")
        subscriber = Subscriber(
            bob.streams[stream.stream_id], preferred_resolution=(160, 120), preferred_frame_rate=10
        )
        assert (subscriber.preferred_resolution, subscriber.preferred_frame_rate) == ((160, 120), 10.0)
        await bob.subscribe(subscriber)
        await eventually_preferences(
            server, {"max_width": 160, "max_height": 120, "max_frame_rate": 10.0}, "at subscribe"
        )
        await wait_for(lambda: subscriber.video_frames_received >= 10, "video", 30)

        await subscriber.set_preferred_resolution((640, 360))
        await eventually_preferences(
            server, {"max_width": 640, "max_height": 360, "max_frame_rate": 10.0}, "a new resolution"
        )
        await subscriber.set_preferred_frame_rate(None)
        await eventually_preferences(
            server, {"max_width": 640, "max_height": 360, "max_frame_rate": None}, "no frame rate"
        )
        for bad in (0, -1, 241, True):
            with pytest.raises(ValueError):
                await subscriber.set_preferred_frame_rate(bad)
        for resolution in ((0, 10), (10, 20000), (320.5, 240), (1, 2, 3)):
            with pytest.raises(ValueError):
                await subscriber.set_preferred_resolution(resolution)  # type: ignore[arg-type]
        assert (subscriber.preferred_resolution, subscriber.preferred_frame_rate) == ((640, 360), None)
        await eventually_preferences(
            server, {"max_width": 640, "max_height": 360, "max_frame_rate": None}, "after refusals"
        )

        # The allocator's decision, taken through the worker: the link cannot carry video.
        subscription_id = subscriber.subscription_id
        assert subscription_id is not None
        await pause_for_quality(server, sid, subscription_id, True)
        await wait_for(lambda: bob_events.of(VideoDisabled), "VideoDisabled at bob")
        (disabled,) = bob_events.of(VideoDisabled)
        assert isinstance(disabled, VideoDisabled)
        assert disabled.subscriber is subscriber and disabled.reason is VideoReason.QUALITY
        assert subscriber.video_disabled_reason == "quality"
        assert (await video_consumer(server))["quality_paused"] is True
        stopped_at = await wait_settled(lambda: subscriber.video_frames_received, "video after the pause")
        audio_now = subscriber.audio_frames_received
        await wait_for(lambda: subscriber.audio_frames_received > audio_now + 25, "audio meanwhile")
        assert subscriber.video_frames_received - stopped_at <= 1, "video came back without a resume"

        # Pausing again changes nothing and tells nobody.
        await pause_for_quality(server, sid, subscription_id, True)
        await pause_for_quality(server, sid, subscription_id, False)
        await wait_for(lambda: bob_events.of(VideoEnabled), "VideoEnabled at bob")
        assert len(bob_events.of(VideoDisabled)) == 1
        (enabled,) = bob_events.of(VideoEnabled)
        assert isinstance(enabled, VideoEnabled)
        assert enabled.subscriber is subscriber and enabled.reason is VideoReason.QUALITY
        assert subscriber.video_disabled_reason is None
        video_now = subscriber.video_frames_received
        await wait_for(lambda: subscriber.video_frames_received >= video_now + 10, "video to resume", 30)
        # The publisher is told nothing of a subscriber's quality pauses.
        assert not alice_events.of(VideoDisabled) and not alice_events.of(VideoEnabled)


async def test_a_new_subscription_carries_the_preferences_and_starts_with_video(
    media_server: RunningServer,
) -> None:
    """When the SDK subscribes again (as after a reconnection or a stream regaining video), the
    new subscription gets the subscriber's current preferences, and a subscriber whose video
    was held back for quality is told it is back."""
    server = media_server
    sid = server.session()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        bob_events = EventLog(bob)
        stream = await alice.publish(
            Publisher(
                "alice", video_source=TestPatternSource(width=320, height=240), audio_source=ToneSource()
            )
        )
        await wait_for(lambda: stream.stream_id in bob.streams, "alice's stream at bob")
        subscriber = Subscriber(bob.streams[stream.stream_id])
        await bob.subscribe(subscriber)
        await eventually_preferences(
            server, {"max_width": None, "max_height": None, "max_frame_rate": None}, "no preferences"
        )
        await subscriber.set_preferred_resolution((200, 100))
        await subscriber.set_preferred_frame_rate(12.5)
        old = subscriber.subscription_id
        assert old is not None
        await pause_for_quality(server, sid, old, True)
        await wait_for(lambda: bob_events.of(VideoDisabled), "VideoDisabled at bob")

        await bob._resubscribe(subscriber)  # what the SDK does after a reconnection
        assert subscriber.subscription_id not in (None, old)
        await wait_for(lambda: bob_events.of(VideoEnabled), "VideoEnabled for the new subscription")
        (enabled,) = bob_events.of(VideoEnabled)
        assert isinstance(enabled, VideoEnabled) and enabled.reason == "quality"
        assert subscriber.video_disabled_reason is None
        await eventually_preferences(
            server, {"max_width": 200, "max_height": 100, "max_frame_rate": 12.5}, "the new subscription"
        )
        video_now = subscriber.video_frames_received
        await wait_for(lambda: subscriber.video_frames_received >= video_now + 10, "video", 30)
