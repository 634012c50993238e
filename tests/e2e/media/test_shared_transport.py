"""One subscribe transport per client: every stream a client subscribes to arrives on one ICE +
DTLS-SRTP association, renegotiated for each new subscription (real aiortc peers, 127.0.0.1
only): on an in-process Router, then through signalling with the router in a media worker.

Two publishers send video numbered from different first indices and tones of different
frequencies, so each of the subscriber's m-line pairs can be checked to carry its own stream.
"""

from __future__ import annotations

import asyncio
import itertools
import pathlib
from collections.abc import Iterator

import pytest
from peers import (
    Publisher,
    ReceivedMedia,
    SharedSubscriber,
    dominant_frequency,
    publish,
    wait_for,
    wait_settled,
)
from sfu_state import eventually_counts

from salon.media.router import Router
from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(60)

FIRST = {"a": 1, "b": 30000}
TONE = {"a": 440.0, "b": 660.0}


def assert_stream(media: ReceivedMedia, name: str, min_frames: int = 20) -> None:
    indices = media.indices
    assert len(indices) >= min_frames, f"stream {name}: only {len(indices)} frames"
    assert all(b > a for a, b in itertools.pairwise(indices)), f"stream {name}: out of order: {indices}"
    assert all(FIRST[name] <= i < FIRST[name] + 20000 for i in indices), f"stream {name}: foreign frames"
    assert media.sizes == {(640, 480)}
    peak, share = dominant_frequency(media.audio_chunks[10:], media.audio_rate)
    assert abs(peak - TONE[name]) < 15 and share > 0.5, f"stream {name}: tone {peak:.0f} Hz ({share:.0%})"


async def test_one_transport_carries_every_subscription_of_a_client(router: Router) -> None:
    publishers = {name: Publisher(first_frame=FIRST[name], tone_hz=TONE[name]) for name in FIRST}
    client = SharedSubscriber()
    try:
        streams = {name: (await publish(router, pub)).stream.id for name, pub in publishers.items()}

        a = client.add()
        first = await router.subscribe(streams["a"], await client.offer())
        await client.answer(first.answer_sdp)
        await wait_for(lambda: len(a.indices) >= 10 and a.audio_frames > 30, 10, "stream a")

        # The second subscription renegotiates the same transport: same ICE, same DTLS.
        b = client.add()
        second = await router.subscribe(streams["b"], await client.offer(), transport_id=first.transport.id)
        assert second.transport is first.transport and not second.new_transport
        assert [c.kind for c in second.consumers] == ["audio", "video"]
        await client.answer(second.answer_sdp)
        await wait_for(lambda: len(b.indices) >= 20 and b.audio_frames > 60, 10, "stream b")
        a_before = len(a.indices)
        await wait_for(lambda: len(a.indices) >= a_before + 20, 10, "stream a going on")
        assert_stream(a, "a")
        assert_stream(b, "b")
        assert len(router.transports) == 3  # two publish transports, one subscribe transport
        assert len(first.transport.consumers) == 4

        # Unsubscribe from a: its consumers close, b keeps flowing on the same transport.
        await router.close_consumers(first.transport.id, [c.id for c in first.consumers])
        client.stop(a)
        assert all(c.closed for c in first.consumers) and len(first.transport.consumers) == 2
        # Frames already in flight or in the decoder may still come out; then nothing more.
        a_stopped = await wait_settled(lambda: len(a.indices), 1.0, 10, "stream a after its consumers closed")
        b_before = len(b.indices)
        await wait_for(lambda: len(b.indices) >= b_before + 20, 10, "stream b after unsubscribing a")
        assert len(a.indices) == a_stopped, "stream a still decodes after its consumers closed"

        # Subscribing to a again takes new m-lines; the old ones are answered inactive.
        a_again = client.add()
        third = await router.subscribe(streams["a"], await client.offer(), transport_id=first.transport.id)
        assert third.transport is first.transport
        assert third.answer_sdp.count("a=inactive") == 2, third.answer_sdp
        assert third.answer_sdp.count("m=") == 6 and third.answer_sdp.count(" 0 UDP/TLS") == 0
        await client.answer(third.answer_sdp)
        await wait_for(lambda: len(a_again.indices) >= 20 and a_again.audio_frames > 60, 10, "stream a again")
        assert_stream(a_again, "a")
        assert len(router.transports) == 3

        # An offer from another peer connection (other ICE credentials) gets its own transport.
        other = SharedSubscriber()
        try:
            other.add()
            fourth = await router.subscribe(
                streams["b"], await other.offer(), transport_id=first.transport.id
            )
            assert fourth.transport is not first.transport and fourth.new_transport
        finally:
            await other.close()
    finally:
        await asyncio.gather(client.close(), *(p.close() for p in publishers.values()))


@pytest.fixture
def media_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


async def test_over_signalling_a_client_gets_every_stream_on_one_transport(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    ann = await WsClient.join(server.url, sid, server.token(sid))
    ben = await WsClient.join(server.url, sid, server.token(sid))
    viewer = await WsClient.join(server.url, sid, server.token(sid, "subscriber"))
    publishers = {name: Publisher(first_frame=FIRST[name], tone_hz=TONE[name]) for name in FIRST}
    client = SharedSubscriber()
    try:
        streams: dict[str, str] = {}
        for name, signalling in (("a", ann), ("b", ben)):
            reply = await signalling.request({"type": "publish", "sdp": await publishers[name].offer()})
            assert reply["type"] == "published", reply
            await publishers[name].answer(reply["answer"])
            streams[name] = reply["stream"]["stream_id"]
        for stream_id in streams.values():
            await viewer.next(
                lambda m, s=stream_id: m["type"] == "stream_created" and m["stream"]["stream_id"] == s
            )

        received: dict[str, ReceivedMedia] = {}
        subscriptions: dict[str, str] = {}
        for name, stream_id in streams.items():
            received[name] = client.add()
            reply = await viewer.request(
                {"type": "subscribe", "stream_id": stream_id, "sdp": await client.offer()}
            )
            assert reply["type"] == "subscribed", reply
            await client.answer(reply["answer"])
            subscriptions[name] = reply["subscription_id"]
        await wait_for(
            lambda: all(len(m.indices) >= 20 and m.audio_frames > 60 for m in received.values()),
            10,
            "both streams",
        )
        for name, media in received.items():
            assert_stream(media, name)
        # Two publish transports and the viewer's one subscribe transport with four consumers.
        await eventually_counts(server, 3, 4, 4, "one subscribe transport for both streams")

        # Ann unpublishes: her consumers go, the viewer's transport keeps carrying Ben's stream.
        ack = await ann.request({"type": "unpublish", "stream_id": streams["a"]})
        assert ack["type"] == "ack", ack
        await eventually_counts(server, 2, 2, 2, "after Ann unpublished")
        b_before = len(received["b"].indices)
        await wait_for(lambda: len(received["b"].indices) >= b_before + 20, 10, "stream b after a ended")

        # The viewer leaves: its subscribe transport goes with its connection.
        await viewer.close()
        await eventually_counts(server, 1, 2, 0, "after the viewer left")
    finally:
        await asyncio.gather(client.close(), *(p.close() for p in publishers.values()))
        await ann.close()
        await ben.close()
        await viewer.close()
