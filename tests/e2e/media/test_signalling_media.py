"""Media through signalling: real aiortc clients negotiate over the signalling WebSocket with the
real server (media on, its router in a media worker process, 127.0.0.1 only).

The publisher sends its sendonly offer in ``publish``; the others hear ``stream_created`` only
once its media flows; a subscriber sends its recvonly offer in ``subscribe`` and decodes frames
numbered in their pixels plus a 440 Hz tone. Unpublishing destroys the stream for the
subscriber and releases the stream's transport and consumers in the worker (the subscriber's
transport goes with its peer connection); the router goes with the session. (Pause,
unsubscribe and disconnect, checked in the worker: test_media_lifecycle.py.)
"""

from __future__ import annotations

import asyncio
import itertools
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from peers import Publisher, Subscriber, dominant_frequency, wait_for
from sfu_state import eventually_counts, plane_of, worker_dump

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def media_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    # A generous heartbeat: the clients encode and decode video on the test's own loop.
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


async def eventually(predicate: Any, what: str, timeout: float = 5.0) -> None:
    await wait_for(predicate, timeout, what)


async def test_publish_and_subscribe_with_media_over_signalling(media_server: RunningServer) -> None:
    server = media_server
    plane = plane_of(server)
    sid = server.session()
    alice = await WsClient.join(server.url, sid, server.token(sid))
    bob = await WsClient.join(server.url, sid, server.token(sid))
    pub, sub = Publisher(), Subscriber()
    try:
        reply = await alice.request({"type": "publish", "name": "cam", "sdp": await pub.offer()})
        assert reply["type"] == "published", reply
        stream_id = reply["stream"]["stream_id"]
        assert "a=setup:active" in reply["answer"]
        # Pending until media flows: not in the REST listing, not subscribable, not announced.
        assert server.sdk.list_streams(sid).count == 0
        early = await bob.request({"type": "subscribe", "stream_id": stream_id})
        assert early["type"] == "error" and early["code"] == "not_found", early
        assert not [m for m in bob.messages if m["type"] == "stream_created"]
        await pub.answer(reply["answer"])

        created = await bob.next("stream_created", timeout=10)
        assert created["stream"]["stream_id"] == stream_id
        assert created["stream"]["name"] == "cam"
        assert server.sdk.list_streams(sid).count == 1

        reply = await bob.request({"type": "subscribe", "stream_id": stream_id, "sdp": await sub.offer()})
        assert reply["type"] == "subscribed", reply
        subscription_id = reply["subscription_id"]
        await sub.answer(reply["answer"])

        await eventually(lambda: len(sub.media.indices) >= 20, "20 decoded frames", timeout=10)
        await eventually(lambda: sub.media.audio_frames > 60, "audio frames", timeout=5)
        indices = sub.media.indices
        assert all(b > a for a, b in itertools.pairwise(indices)), f"frames out of order: {indices}"
        assert sub.media.sizes == {(640, 480)}
        assert len(indices) >= 0.5 * (indices[-1] - indices[0] + 1)
        peak, share = dominant_frequency(sub.media.audio_chunks[10:], sub.media.audio_rate)
        assert abs(peak - 440) < 15 and share > 0.5, (peak, share)

        # Audio only: the video consumer pauses, the audio one keeps going.
        ack = await bob.request(
            {"type": "set_subscription", "subscription_id": subscription_id, "video": False}
        )
        assert ack["type"] == "ack", ack
        consumers = plane.sessions[sid].subscriptions[subscription_id].consumers
        assert {c.kind: c.paused for c in consumers} == {"audio": False, "video": True}
        ack = await bob.request(
            {"type": "set_subscription", "subscription_id": subscription_id, "video": True}
        )
        assert ack["type"] == "ack" and not any(c.paused for c in consumers)

        # Trickled candidates reach the transport (end-of-candidates is harmless once connected).
        ack = await alice.request({"type": "ice_candidate", "stream_id": stream_id, "candidate": None})
        assert ack["type"] == "ack", ack

        ack = await alice.request({"type": "unpublish", "stream_id": stream_id})
        assert ack["type"] == "ack", ack
        destroyed = await bob.next("stream_destroyed")
        assert destroyed["stream_id"] == stream_id and destroyed["reason"] == "unpublished"
        media = plane.sessions[sid]
        # The publish transport, the producers and Bob's consumers close in the worker; Bob's
        # subscribe transport stays for his next subscriptions until he closes it.
        await eventually_counts(server, 1, 0, 0, "the stream's transport and consumers to close")
        assert not media.publications and not media.subscriptions and not media.router.streams
        await sub.close()
        await eventually_counts(server, 0, 0, 0, "Bob's subscribe transport to close with his peer")
        assert not media.router.transports and not media.subscribe_transports
    finally:
        await asyncio.gather(pub.close(), sub.close())
        await alice.close()
        await bob.close()
    await eventually(lambda: sid not in plane.sessions, "the session's media to be forgotten")
    # Its routers (a spread session may have several) close in the worker after that.
    await eventually(lambda: all(router.closed for router in media.routers), "the session's router to close")


async def test_bad_media_requests_get_errors_and_change_nothing(media_server: RunningServer) -> None:
    server = media_server
    plane = plane_of(server)
    sid = server.session()
    alice = await WsClient.join(server.url, sid, server.token(sid))
    bob = await WsClient.join(server.url, sid, server.token(sid))
    try:
        reply = await alice.request({"type": "publish", "sdp": "v=0\r\nthis is no offer\r\n"})
        assert reply["type"] == "error" and reply["code"] == "invalid_sdp", reply
        reply = await alice.request({"type": "ice_candidate", "stream_id": "nope", "candidate": None})
        assert reply["type"] == "error" and reply["code"] == "not_found", reply
        reply = await alice.request({"type": "ice_candidate", "candidate": None})
        assert reply["type"] == "error" and reply["code"] == "invalid_message", reply
        reply = await bob.request({"type": "set_subscription", "subscription_id": "nope", "audio": False})
        assert reply["type"] == "error" and reply["code"] == "not_found", reply
        assert await bob.quiet() == []
        assert server.sdk.list_streams(sid).count == 0
        media = plane.sessions.get(sid)
        assert media is None or not (media.router.transports or media.publications)
        assert (await worker_dump(server)).transports == 0

        # The connection is still healthy: a signalling-only stream is announced at once.
        reply = await alice.request({"type": "publish"})
        assert reply["type"] == "published" and reply.get("answer") is None, reply
        created = await bob.next("stream_created")
        stream_id = created["stream"]["stream_id"]
        # ... but has no media to subscribe to with an offer.
        sub = Subscriber()
        try:
            reply = await bob.request({"type": "subscribe", "stream_id": stream_id, "sdp": await sub.offer()})
        finally:
            await sub.close()
        assert reply["type"] == "error" and reply["code"] == "media_unavailable", reply
        reply = await bob.request({"type": "subscribe", "stream_id": stream_id})
        assert reply["type"] == "subscribed" and reply.get("answer") is None, reply
    finally:
        await alice.close()
        await bob.close()
    await eventually(lambda: sid not in plane.sessions, "the session's router to close")


def without_candidates(sdp: str) -> tuple[str, list[str]]:
    """The SDP with its ``a=candidate`` and ``a=end-of-candidates`` lines taken out (as a
    trickling client sends its offer), and the candidate values taken out."""
    kept, candidates = [], []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            if line[2:] not in candidates:
                candidates.append(line[2:])
        elif line != "a=end-of-candidates":
            kept.append(line)
    return "\r\n".join(kept), candidates


async def test_trickled_client_candidates_connect_publish_and_subscribe(media_server: RunningServer) -> None:
    """Offers without candidates, the candidates trickled after with ``ice_candidate``: both
    transports connect (the stream is announced, the subscriber decodes it)."""
    server = media_server
    sid = server.session()
    alice = await WsClient.join(server.url, sid, server.token(sid))
    bob = await WsClient.join(server.url, sid, server.token(sid))
    pub, sub = Publisher(), Subscriber()
    try:
        offer, candidates = without_candidates(await pub.offer())
        assert candidates and "a=candidate" not in offer
        reply = await alice.request({"type": "publish", "sdp": offer})
        assert reply["type"] == "published", reply
        stream_id = reply["stream"]["stream_id"]
        await pub.answer(reply["answer"])
        for candidate in [*candidates, None]:
            ack = await alice.request(
                {"type": "ice_candidate", "stream_id": stream_id, "candidate": candidate}
            )
            assert ack["type"] == "ack", ack
        await bob.next("stream_created", timeout=10)

        offer, candidates = without_candidates(await sub.offer())
        reply = await bob.request({"type": "subscribe", "stream_id": stream_id, "sdp": offer})
        assert reply["type"] == "subscribed", reply
        await sub.answer(reply["answer"])
        for candidate in candidates:
            ack = await bob.request(
                {"type": "ice_candidate", "subscription_id": reply["subscription_id"], "candidate": candidate}
            )
            assert ack["type"] == "ack", ack
        await eventually(lambda: len(sub.media.indices) >= 10, "frames over trickled candidates", timeout=10)

        # A malformed candidate is refused and changes nothing.
        bad = await bob.request(
            {"type": "ice_candidate", "subscription_id": reply["subscription_id"], "candidate": "candidate:x"}
        )
        assert bad["type"] == "error" and bad["code"] == "invalid_sdp", bad
        before = len(sub.media.indices)
        await eventually(lambda: len(sub.media.indices) >= before + 10, "frames after the bad candidate")
    finally:
        await asyncio.gather(pub.close(), sub.close())
        await alice.close()
        await bob.close()
