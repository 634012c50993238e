"""A stream's media life through signalling, checked inside the media worker process.

Real aiortc clients against the real server (its router in a media worker process, 127.0.0.1
only): a late subscriber gets a picture from a key frame asked for it; pausing video stops the decoded frames
while audio goes on, and resuming brings them back; unsubscribe, disconnect and unpublish each
release their consumers in the worker (and transports: a client's subscribe transport goes
with its peer connection or its signalling connection), and at the end the worker holds no more
asyncio tasks and UDP sockets than before the session's first publish.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator

import pytest
from peers import Publisher, Subscriber, wait_for, wait_settled
from sfu_state import eventually_counts, worker_dump

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def media_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    # A generous heartbeat: the clients encode and decode video on the test's own loop.
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


async def subscribe(client: WsClient, stream_id: str, subscriber: Subscriber) -> str:
    reply = await client.request(
        {"type": "subscribe", "stream_id": stream_id, "sdp": await subscriber.offer()}
    )
    assert reply["type"] == "subscribed", reply
    await subscriber.answer(reply["answer"])
    return str(reply["subscription_id"])


async def test_pause_unsubscribe_disconnect_and_unpublish_release_the_worker(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    alice = await WsClient.join(server.url, sid, server.token(sid))
    bob = await WsClient.join(server.url, sid, server.token(sid))
    carol = await WsClient.join(server.url, sid, server.token(sid))
    pub, bob_sub, carol_sub = Publisher(), Subscriber(), Subscriber()
    try:
        before = await worker_dump(server)
        assert (before.routers, before.transports) == (0, 0)

        reply = await alice.request({"type": "publish", "name": "cam", "sdp": await pub.offer()})
        assert reply["type"] == "published", reply
        stream_id = reply["stream"]["stream_id"]
        await pub.answer(reply["answer"])
        await bob.next("stream_created", timeout=10)
        await carol.next("stream_created", timeout=10)

        bob_subscription = await subscribe(bob, stream_id, bob_sub)
        await wait_for(lambda: len(bob_sub.media.indices) >= 30, 10, "Bob's first 30 frames")

        # Carol joins a stream that has been flowing for a while. The publisher's encoder makes
        # a key frame every 100 s unless asked: a picture within 10 s means the SFU asked. (How
        # soon is a figure of `salon bench client`, printed here, not asserted.)
        asked = time.monotonic()
        await subscribe(carol, stream_id, carol_sub)
        await wait_for(lambda: carol_sub.media.first_video_at is not None, 10, "Carol's first frame")
        assert carol_sub.media.first_video_at is not None
        print(f"late subscriber's first picture after {carol_sub.media.first_video_at - asked:.3f} s")
        await eventually_counts(server, 3, 2, 4, "publisher and two subscribers")

        # Video paused for Bob: his decoded frames stop, his audio goes on, Carol's video too.
        ack = await bob.request(
            {"type": "set_subscription", "subscription_id": bob_subscription, "video": False}
        )
        assert ack["type"] == "ack", ack
        # Frames already in flight or in the jitter buffer may still come out; then no more.
        paused_at = await wait_settled(
            lambda: len(bob_sub.media.indices), 1.0, 10, "Bob's frames once paused"
        )
        carol_before, bob_audio = len(carol_sub.media.indices), bob_sub.media.audio_frames
        await wait_for(
            lambda: (
                len(carol_sub.media.indices) > carol_before + 20
                and bob_sub.media.audio_frames > bob_audio + 30
            ),
            10,
            "20 of Carol's frames and 30 of Bob's audio frames while Bob's video is paused",
        )
        assert len(bob_sub.media.indices) == paused_at, "video frames decoded while video was paused"
        # ... and resumed: frames come back (from a key frame the consumer asks for).
        ack = await bob.request(
            {"type": "set_subscription", "subscription_id": bob_subscription, "video": True}
        )
        assert ack["type"] == "ack", ack
        resumed = len(bob_sub.media.indices)
        await wait_for(lambda: len(bob_sub.media.indices) > resumed + 10, 5, "Bob's video to resume")

        # Unsubscribe: both of Bob's consumers go; his subscribe transport stays for his next
        # subscriptions (one per client) until his peer connection closes. Carol keeps receiving.
        ack = await bob.request({"type": "unsubscribe", "subscription_id": bob_subscription})
        assert ack["type"] == "ack", ack
        await eventually_counts(server, 3, 2, 2, "after Bob unsubscribed")
        gone_at = await wait_settled(
            lambda: len(bob_sub.media.indices), 1.0, 10, "Bob's frames once unsubscribed"
        )
        carol_before = len(carol_sub.media.indices)
        await wait_for(lambda: len(carol_sub.media.indices) > carol_before + 20, 10, "20 of Carol's frames")
        assert len(bob_sub.media.indices) == gone_at, "Bob decoded frames after unsubscribing"
        await bob_sub.close()  # DTLS close_notify: the server closes the transport
        await eventually_counts(server, 2, 2, 2, "after Bob closed his peer connection")
        carol_before = len(carol_sub.media.indices)
        await wait_for(lambda: len(carol_sub.media.indices) > carol_before + 10, 5, "Carol's video")

        # Carol disconnects: her transport and consumers go; the stream stays.
        await carol.close()
        await eventually_counts(server, 1, 2, 0, "after Carol disconnected")
        assert server.sdk.list_streams(sid).count == 1

        # Unpublish: nothing left in the worker, down to its tasks and sockets.
        ack = await alice.request({"type": "unpublish", "stream_id": stream_id})
        assert ack["type"] == "ack", ack
        await eventually_counts(server, 0, 0, 0, "after unpublish")
        deadline = time.monotonic() + 10
        while True:
            after = await worker_dump(server)
            if (after.tasks, after.udp_sockets) == (before.tasks, before.udp_sockets):
                break
            assert time.monotonic() < deadline, (
                f"worker left {after.tasks - before.tasks} tasks and "
                f"{after.udp_sockets - before.udp_sockets} UDP sockets behind"
            )
            await asyncio.sleep(0.1)
    finally:
        await asyncio.gather(pub.close(), bob_sub.close(), carol_sub.close())
        await alice.close()
        await bob.close()
        await carol.close()
