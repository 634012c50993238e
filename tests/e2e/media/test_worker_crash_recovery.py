"""After a media worker is killed (SIGKILL), on the wire: what the server tells each
connection, and what it does with a subscribe offer from a peer connection whose transport
died with the worker.

* every connection of the session gets ``media_reset`` (with its own streams that end),
  before the ``stream_destroyed`` (``mediaStopped``) of those streams;
* a subscribe offer from the subscriber's old receiving peer connection is refused with
  ``transport_closed`` (answering it with a transport on the new worker would be a silent
  answer: that peer connection's DTLS association is gone, no media could ever arrive);
* the same subscription from a new peer connection decodes the republished stream's frames.

(The SDKs acting on these, end to end: ``tests/e2e/client/test_client_worker_crash.py`` and
``tests/e2e/browser/test_worker_crash.py``.)
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
from collections.abc import Iterator

import pytest
from peers import Publisher, SharedSubscriber, Subscriber, wait_for
from sfu_state import plane_of

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def one_worker_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


async def publish(client: WsClient, publisher: Publisher) -> str:
    reply = await client.request({"type": "publish", "sdp": await publisher.offer()}, timeout=60)
    assert reply["type"] == "published", reply
    await publisher.answer(reply["answer"])
    return str(reply["stream"]["stream_id"])


async def test_a_subscribe_offer_from_a_peer_connection_of_the_dead_worker_is_refused(
    one_worker_server: RunningServer,
) -> None:
    server = one_worker_server
    plane = plane_of(server)
    sid = server.session()
    alice = await WsClient.join(server.url, sid, server.token(sid))
    bob = await WsClient.join(server.url, sid, server.token(sid))
    first_pub, second_pub = Publisher(), Publisher(first_frame=5000)
    shared, fresh = SharedSubscriber(), Subscriber()
    try:
        first = await publish(alice, first_pub)
        await bob.next(lambda m: m["type"] == "stream_created" and m["stream"]["stream_id"] == first, 15)
        media = shared.add()
        reply = await bob.request({"type": "subscribe", "stream_id": first, "sdp": await shared.offer()})
        assert reply["type"] == "subscribed", reply
        await shared.answer(reply["answer"])
        await wait_for(lambda: len(media.indices) >= 5, 20, "frames before the crash")

        (worker,) = plane.pool.workers.values()
        os.kill(worker.pid, signal.SIGKILL)

        # Each connection hears media_reset first (alice with her stream), then the stream ends.
        for client, own in ((alice, [first]), (bob, [])):
            reset = await client.next(lambda m: m["type"] in ("media_reset", "stream_destroyed"), 15)
            assert reset == {"type": "media_reset", "stream_ids": own}, reset
            destroyed = await client.next("stream_destroyed", 5)
            assert destroyed["stream_id"] == first and destroyed["reason"] == "mediaStopped", destroyed

        # Alice publishes again (on the replacement worker); bob is told of the new stream.
        second = await publish(alice, second_pub)
        await bob.next(lambda m: m["type"] == "stream_created" and m["stream"]["stream_id"] == second, 30)
        assert worker.pid not in {w.pid for w in plane.pool.workers.values()}

        # Bob offers from his old receiving peer connection: refused, not silently answered.
        shared.add()
        refused = await bob.request({"type": "subscribe", "stream_id": second, "sdp": await shared.offer()})
        assert refused["type"] == "error" and refused["code"] == "transport_closed", refused
        # The refusal changed nothing: from a new peer connection, the frames come.
        reply = await bob.request({"type": "subscribe", "stream_id": second, "sdp": await fresh.offer()})
        assert reply["type"] == "subscribed", reply
        await fresh.answer(reply["answer"])
        await wait_for(lambda: len(fresh.media.indices) >= 10, 30, "frames of the new stream")
        assert all(i >= 5000 for i in fresh.media.indices), fresh.media.indices[:10]

        # Bob leaving forgets his dead peer connection.
        bob_id = str(bob.connection_id)
        assert plane.lost_peers[sid][bob_id], plane.lost_peers
        await bob.close()
        await wait_for(lambda: bob_id not in plane.lost_peers.get(sid, {}), 10, "bob's dead peer forgotten")
    finally:
        await asyncio.gather(*(p.close() for p in (first_pub, second_pub, shared, fresh)))
        for client in (alice, bob):
            await client.close()
