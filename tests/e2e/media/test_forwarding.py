"""End-to-end media forwarding: real aiortc clients ↔ in-process Router on 127.0.0.1.

A publisher sends 640x480 VP8 (or H.264) frames numbered in their pixels plus a 440 Hz Opus
tone; subscribers decode and check order, size, content and the tone. Loss is injected on
the publisher leg (before SRTP unprotect, on the SFU side) and on a subscriber leg (SFU send),
and the SFU's recovery counters are checked. Counts are asserted with wide margins: the CI
machine is a shared 2-core VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import pytest
from peers import (
    LossyReceive,
    LossySend,
    Publisher,
    Subscriber,
    dominant_frequency,
    process_udp_sockets,
    publish,
    subscribe,
    wait_for,
)

from salon.media.consumer import ConsumerClosed, ConsumerCloseReason
from salon.media.router import Router
from salon.media.transport import TransportState

pytestmark = pytest.mark.timeout(60)

MIN_FRAMES = 30
"""Frames every subscriber must decode (1 s of the publisher's 30 frames/s) before checking."""


def assert_video_ok(sub: Subscriber, min_frames: int) -> None:
    indices = sub.media.indices
    assert len(indices) >= min_frames, f"only {len(indices)} frames decoded"
    assert all(b > a for a, b in itertools.pairwise(indices)), f"frames out of order: {indices}"
    assert sub.media.sizes == {(640, 480)}
    # Content: indices are the publisher's frame numbers, so they must be plausible and dense.
    span = indices[-1] - indices[0] + 1
    assert len(indices) >= 0.5 * span, f"{len(indices)} frames decoded over a span of {span}"


def assert_tone(sub: Subscriber) -> None:
    assert sub.media.audio_frames > 50, f"only {sub.media.audio_frames} audio frames"
    peak, share = dominant_frequency(sub.media.audio_chunks[10:], sub.media.audio_rate)
    assert abs(peak - 440) < 15, f"dominant frequency {peak:.1f} Hz"
    assert share > 0.5, f"only {share:.0%} of the energy near 440 Hz"


async def close_all(*peers: Publisher | Subscriber) -> None:
    await asyncio.gather(*(p.close() for p in peers))


async def test_publisher_video_and_tone_reach_three_subscribers_in_order(router: Router) -> None:
    pub = Publisher()
    subs = [Subscriber() for _ in range(3)]
    published = await publish(router, pub)
    results = [await subscribe(router, published.stream.id, s) for s in subs]
    try:
        await wait_for(
            lambda: all(len(s.media.indices) >= MIN_FRAMES and s.media.audio_frames > 100 for s in subs),
            30,
            f"{MIN_FRAMES} frames and 2 s of audio on every subscriber",
        )
        for sub in subs:
            assert_video_ok(sub, min_frames=MIN_FRAMES)
            assert_tone(sub)
        video = published.stream.video
        assert video is not None and video.stats.key_frames >= 1
        for result in results:
            assert result.transport.state is TransportState.CONNECTED
            assert [c.kind for c in result.consumers] == ["audio", "video"]
            assert all(c.stats.packets_sent > 0 for c in result.consumers)
    finally:
        await close_all(pub, *subs)


async def test_late_subscriber_starts_on_a_key_frame_it_asked_for(router: Router) -> None:
    """The publisher's encoder makes a key frame only every 3000 frames (100 s) unless asked:
    a late subscriber's first frame within 10 s proves the SFU asked. How fast that is, is a
    figure of ``salon bench client`` (time to first frame), printed here, not asserted."""
    pub = Publisher(audio=False)
    early = Subscriber(audio=False)
    published = await publish(router, pub)
    await subscribe(router, published.stream.id, early)
    late = Subscriber(audio=False)
    try:
        await wait_for(lambda: len(early.media.indices) > 30, 10, "the early subscriber's frames")
        video = published.stream.video
        assert video is not None
        requests, key_frames = video.stats.key_frame_requests_sent, video.stats.key_frames
        started = time.monotonic()
        result = await subscribe(router, published.stream.id, late)
        await wait_for(lambda: late.media.first_video_at is not None, 10, "the late subscriber's first frame")
        assert late.media.first_video_at is not None
        delay = late.media.first_video_at - started
        print(f"late subscriber: first decoded frame {delay * 1000:.0f} ms after subscribe")
        assert result.consumers[0].stats.key_frame_starts == 1
        assert video.stats.key_frame_requests_sent > requests and video.stats.key_frames > key_frames
        await wait_for(lambda: len(late.media.indices) >= 15, 10, "15 frames on the late subscriber")
        assert_video_ok(late, min_frames=15)
        assert late.media.indices[0] > early.media.indices[0]
    finally:
        await close_all(pub, early, late)


async def test_loss_on_publisher_leg_is_recovered_by_upstream_nack(router: Router) -> None:
    pub = Publisher()
    subs = [Subscriber(), Subscriber(), Subscriber()]
    published = await publish(router, pub)
    loss = LossyReceive(published.transport, rate=0.03)
    for sub in subs:
        await subscribe(router, published.stream.id, sub)
    try:
        video = published.stream.video
        assert video is not None and video.ssrc is not None
        ssrc, stats = video.ssrc, video.stats
        await wait_for(
            lambda: (
                all(len(s.media.indices) >= MIN_FRAMES and s.media.audio_frames > 100 for s in subs)
                and loss.dropped_by_ssrc[ssrc] > 5
            ),
            30,
            f"{MIN_FRAMES} frames on every subscriber and 6 video packets dropped",
        )
        # Nearly every lost video packet comes back (a retransmission can be lost too).
        await wait_for(
            lambda: (
                stats.nacked_sequence_numbers >= loss.dropped_by_ssrc[ssrc]
                and stats.recovered >= 0.8 * loss.dropped_by_ssrc[ssrc]
            ),
            10,
            "every lost packet NACKed and 80 % of them recovered",
        )
        dropped_video = loss.dropped_by_ssrc[ssrc]
        print(f"publisher leg: dropped {loss.dropped} ({dropped_video} video), {stats}")
        assert stats.rtx_received > 0
        for sub in subs:
            assert_video_ok(sub, min_frames=MIN_FRAMES)
            assert_tone(sub)
    finally:
        await close_all(pub, *subs)


async def test_loss_on_subscriber_leg_is_recovered_from_the_cache(router: Router) -> None:
    pub = Publisher()
    lossy_sub, clean_sub = Subscriber(), Subscriber()
    published = await publish(router, pub)
    result = await subscribe(router, published.stream.id, lossy_sub)
    await subscribe(router, published.stream.id, clean_sub)
    loss = LossySend(result.transport, rate=0.03)
    try:
        await wait_for(lambda: len(lossy_sub.media.indices) > 0, 10, "first frame")
        start = (len(lossy_sub.media.indices), len(clean_sub.media.indices))
        (consumer,) = [c for c in result.consumers if c.kind == "video"]
        stats = consumer.stats
        await wait_for(
            lambda: len(clean_sub.media.indices) >= start[1] + 90 and loss.dropped_by_ssrc[consumer.ssrc] > 5,
            30,
            "90 frames on the clean subscriber and 6 video packets dropped to the lossy one",
        )
        # Every lost video packet the subscriber asks for again comes from the cache.
        await wait_for(
            lambda: stats.retransmitted_from_cache >= 0.8 * loss.dropped_by_ssrc[consumer.ssrc],
            10,
            "80 % of the dropped packets retransmitted from the cache",
        )
        dropped_video = loss.dropped_by_ssrc[consumer.ssrc]
        print(f"subscriber leg: dropped {loss.dropped} ({dropped_video} video), {stats}")
        assert stats.nacks_received > 0
        assert stats.cache_misses == 0
        # ... so the lossy subscriber decodes about as many frames as the clean one.
        lossy_frames = len(lossy_sub.media.indices) - start[0]
        clean_frames = len(clean_sub.media.indices) - start[1]
        assert lossy_frames >= 0.85 * clean_frames, (lossy_frames, clean_frames)
        for sub in (lossy_sub, clean_sub):
            assert_video_ok(sub, min_frames=MIN_FRAMES)
            assert_tone(sub)
    finally:
        await close_all(pub, lossy_sub, clean_sub)


async def test_h264_publish_and_subscribe(router: Router) -> None:
    pub = Publisher(audio=False, video_codec="video/H264")
    sub = Subscriber(audio=False, video_codec="video/H264")
    published = await publish(router, pub)
    video = published.stream.video
    assert video is not None and video.codec.name == "h264"
    result = await subscribe(router, published.stream.id, sub)
    try:
        await wait_for(lambda: len(sub.media.indices) >= 20, 30, "20 H.264 frames")
        assert result.consumers[0].codec.name == "h264"
        assert_video_ok(sub, min_frames=20)
    finally:
        await close_all(pub, sub)


async def test_audio_only_subscription_by_pausing_video(router: Router) -> None:
    pub = Publisher()
    sub = Subscriber()
    published = await publish(router, pub)
    result = await subscribe(router, published.stream.id, sub, video=False)
    try:
        await wait_for(lambda: sub.media.audio_frames > 60, 10, "audio")
        video_consumer = next(c for c in result.consumers if c.kind == "video")
        assert video_consumer.paused and video_consumer.stats.packets_sent == 0
        assert sub.media.indices == []
        video_consumer.resume()
        await wait_for(lambda: len(sub.media.indices) > 10, 5, "video after resume")
        assert_tone(sub)
    finally:
        await close_all(pub, sub)


async def test_unpublish_closes_consumers_and_leaves_nothing_behind() -> None:
    sockets_before = process_udp_sockets()
    tasks_before = asyncio.all_tasks()
    router = Router()
    pub = Publisher()
    sub = Subscriber()
    published = await publish(router, pub)
    result = await subscribe(router, published.stream.id, sub)
    closed: list[ConsumerClosed] = []
    for consumer in result.consumers:
        consumer.events.add_listener(lambda e: closed.append(e) if isinstance(e, ConsumerClosed) else None)
    await wait_for(lambda: len(sub.media.indices) > 5, 10, "frames")

    await router.unpublish(published.stream.id)
    assert published.transport.closed
    assert sorted(e.reason.value for e in closed) == ["producer_closed"] * 2
    assert all(e.reason is ConsumerCloseReason.PRODUCER_CLOSED for e in closed)
    assert published.stream.id not in router.streams and not router.producers
    assert not result.transport.consumers

    await router.close()
    assert router.transports == {}
    assert result.transport.closed
    await close_all(pub, sub)

    def leftover() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() - tasks_before if not t.done()]

    # aiortc's own close callbacks may take a few loop turns.
    with contextlib.suppress(AssertionError):
        await wait_for(lambda: not leftover(), 10, "no task left")
    assert leftover() == [], f"tasks left behind: {leftover()}"
    assert process_udp_sockets() <= sockets_before, "UDP sockets left open"


async def test_an_open_router_keeps_nothing_of_closed_subscribers(router: Router) -> None:
    """A session's router outlives its subscribers: each subscriber's transport, once
    closed, leaves no entry in the router's tables (transports, streams, producers, the
    consumers' SSRCs), so a long session does not grow with every subscriber that passed."""
    pub = Publisher()
    published = await publish(router, pub)
    try:
        for _ in range(2):
            sub = Subscriber()
            result = await subscribe(router, published.stream.id, sub)
            await wait_for(lambda sub=sub: len(sub.media.indices) > 3, 10, "frames")
            ssrcs = {c.ssrc for c in result.consumers} | {c.rtx_ssrc for c in result.consumers} - {None}
            assert ssrcs <= router._ssrcs
            await result.transport.close()
            await sub.close()
            assert set(router.transports) == {published.transport.id}
            assert not ssrcs & router._ssrcs, "a closed subscriber's SSRCs are still reserved"
            assert router._ssrcs_by_transport == {}
        assert set(router.streams) == {published.stream.id}
        await router.unpublish(published.stream.id)
        assert router.transports == {} and router.streams == {} and router.producers == {}
        assert router._ssrcs == set() and router._ssrcs_by_transport == {}
    finally:
        await pub.close()
