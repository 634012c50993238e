"""Issue 14's kill -9 failover: three cluster nodes with media (real redis-server and
PostgreSQL). When a node is killed, its Python SDK clients (given every node's URL) move to the
next node: the dead node's resume secrets mean nothing there (``resume_refused``), so each
connects afresh, re-publishes and re-subscribes; a client on a third node sees only the
reconnecting participants' events. (The two-node metrics test is in test_cluster_metrics.py.)

The moved clients reach the next node before the death is noticed (within the node timeout):
its ``connected`` still lists the dead node's stream, and the subscriber's re-subscription to
it fails fast (the pipe request to a node gone from the registry fails, ``node_gone``) while
the new stream is subscribed on the same receiving peer connection: the case that used to
break this test (a subscription waiting its turn on a peer connection closed by the failed one).
"""

from __future__ import annotations

import os
import pathlib
import signal
from collections.abc import Iterator

import pytest

from salon.client import (
    Publisher,
    Reconnected,
    Session,
    StreamReceived,
    Subscriber,
    TestPatternSource,
    ToneSource,
)
from tests.e2e.client.sdk_helpers import EventLog, Recorder, wait_for
from tests.e2e.cluster.test_cluster_metrics import LOOPBACK, decoded_in_order, start_nodes
from tests.functional.test_cluster import create_session, token
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess
from tests.wsclient import Message, WsClient

#: What the watcher also gets while the tone is heard, from whichever node publishes it (audio
#: levels and the active speaker reach every node's clients): not participants' events.
SPEECH = {"audio_levels", "active_speaker"}

pytestmark = pytest.mark.timeout(300)

#: From kill -9 to the reconnected media: the death is noticed in about 4 s, the SDK moves at
#: once; generous for a loaded 2-core machine encoding and decoding on the test's loop.
FAILOVER_WITHIN = 60.0


@pytest.fixture
def three_nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    yield from start_nodes(tmp_path, redis_url, postgres_url, 3)


async def test_clients_of_a_killed_node_move_to_another_and_the_call_goes_on(
    three_nodes: list[ServeProcess],
) -> None:
    a, b, c = three_nodes
    urls = [a.url, b.url, c.url]  # every client is given the whole list; A answers first
    session_id = await create_session(a.url)
    watcher = await WsClient.join(c.url, session_id, token(session_id))

    recorders: dict[str, Recorder] = {}

    async with (
        Session(session_id, token(session_id), urls, ice_addresses=LOOPBACK) as publishing,
        Session(session_id, token(session_id), urls, ice_addresses=LOOPBACK) as subscribing,
    ):
        assert publishing.url == a.url and subscribing.url == a.url
        pub_log, sub_log = EventLog(publishing), EventLog(subscribing)

        async def subscribe(event: StreamReceived) -> None:
            recorder = recorders.setdefault(event.stream.stream_id, Recorder())
            await subscribing.subscribe(Subscriber(event.stream, on_video_frame=recorder.on_video))

        subscribing.on(StreamReceived, subscribe)
        publisher = Publisher("cam", video_source=TestPatternSource(), audio_source=ToneSource(440.0))
        await publishing.publish(publisher)
        first_stream = publisher.stream_id
        assert first_stream is not None
        await wait_for(
            lambda: first_stream in recorders and decoded_in_order(recorders[first_stream], 10),
            "the test pattern decoded on node A",
            timeout=60,
        )
        old_pub, old_sub = publishing.connection_id, subscribing.connection_id
        assert old_pub and old_sub
        # The watcher on C saw them arrive, then the stream.
        for cid in (old_pub, old_sub):
            await watcher.next(
                lambda m, cid=cid: (
                    m["type"] == "connection_created" and m["connection"]["connection_id"] == cid
                ),
                timeout=30,
            )
        await watcher.next(lambda m: m["type"] == "stream_created", timeout=30)
        assert [m for m in await watcher.quiet() if m["type"] not in SPEECH] == []

        os.kill(a.pid, signal.SIGKILL)

        # Both SDK clients move to B (the next URL): a new connection there, since a resume
        # secret is only valid on the node that issued it (B refuses it, the SDK connects afresh).
        await wait_for(
            lambda: pub_log.of(Reconnected) and sub_log.of(Reconnected),
            "both clients reconnected",
            timeout=FAILOVER_WITHIN,
        )
        for session, log, old in ((publishing, pub_log, old_pub), (subscribing, sub_log, old_sub)):
            (reconnected,) = log.of(Reconnected)
            assert isinstance(reconnected, Reconnected)
            assert not reconnected.resumed, "another node cannot resume the dead node's connection"
            assert session.url == b.url, session.url
            assert session.connection_id not in (None, old)
        new_pub, new_sub = publishing.connection_id, subscribing.connection_id
        assert new_pub and new_sub

        # The publisher published again (a new stream, on B); the subscriber, on B too, decodes it.
        second_stream = publisher.stream_id
        assert second_stream not in (None, first_stream)
        await wait_for(
            lambda: second_stream in recorders and decoded_in_order(recorders[second_stream], 10),
            "the test pattern decoded again on node B",
            timeout=FAILOVER_WITHIN,
        )

        # The watcher on C saw exactly the reconnecting participants' events: the dead node's
        # stream and connections destroyed as networkDisconnected (by the node that noticed the
        # death), the new connections and the new stream created.
        expected = {
            ("stream_destroyed", first_stream, "networkDisconnected"),
            ("connection_destroyed", old_pub, "networkDisconnected"),
            ("connection_destroyed", old_sub, "networkDisconnected"),
            ("connection_created", new_pub, None),
            ("connection_created", new_sub, None),
            ("stream_created", second_stream, None),
        }

        def key(m: Message) -> tuple[str, str | None, str | None]:
            if m["type"] == "connection_created":
                return (m["type"], m["connection"]["connection_id"], None)
            if m["type"] == "stream_created":
                return (m["type"], m["stream"]["stream_id"], None)
            return (m["type"], m.get("stream_id") or m.get("connection_id"), m.get("reason"))

        seen: list[Message] = []
        for _ in expected:
            seen.append(await watcher.next(lambda m: key(m) in expected, timeout=FAILOVER_WITHIN))
        seen += [m for m in await watcher.quiet() if m["type"] not in SPEECH]
        keys = [key(m) for m in seen]
        assert sorted(keys, key=str) == sorted(expected, key=str), seen
        assert keys.index(("stream_destroyed", first_stream, "networkDisconnected")) < keys.index(
            ("connection_destroyed", old_pub, "networkDisconnected")
        )
        assert keys.index(("connection_created", new_pub, None)) < keys.index(
            ("stream_created", second_stream, None)
        )
        stream_created = seen[keys.index(("stream_created", second_stream, None))]
        assert stream_created["stream"]["connection_id"] == new_pub
        # The SDK clients do not see their own former connections as someone else's.
        assert set(publishing.connections) == {watcher.connection_id, new_sub}
        assert set(subscribing.connections) == {watcher.connection_id, new_pub}
    await watcher.close()
