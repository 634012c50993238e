"""Each node's Prometheus metrics follow a call spanning two cluster nodes (real
redis-server and PostgreSQL; each node's clients with media on their own node)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pathlib
from collections.abc import Iterator

import pytest

from salon.client import Publisher, Session, Subscriber, TestPatternSource, ToneSource
from tests.e2e.client.sdk_helpers import Recorder, wait_for
from tests.functional.test_cluster import API_KEY, API_SECRET, create_session, token
from tests.metrics import FORWARDED, Node
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess

pytestmark = pytest.mark.timeout(300)

LOOPBACK = ["127.0.0.1"]


def start_nodes(
    tmp_path: pathlib.Path, redis_url: str, postgres_url: str, count: int
) -> Iterator[list[ServeProcess]]:
    with contextlib.ExitStack() as stack:
        started = []
        for i in range(1, count + 1):
            args = ["--workers", "1", "--redis-url", redis_url, "--database-url", postgres_url]
            args += ["--node-name", f"f{i}", "--node-address", "127.0.0.1"]
            started.append(stack.enter_context(ServeProcess(tmp_path / f"f{i}", API_KEY, API_SECRET, args)))
        yield started


@pytest.fixture
def two_nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    yield from start_nodes(tmp_path, redis_url, postgres_url, 2)


def decoded_in_order(recorder: Recorder, at_least: int) -> bool:
    """At least ``at_least`` test-pattern frames, their numbers read back rising (content)."""
    indices = recorder.indices
    return len(indices) >= at_least and all(b > a for a, b in itertools.pairwise(indices))


async def test_metrics_of_two_nodes_follow_a_call_spanning_them(two_nodes: list[ServeProcess]) -> None:
    """Clients of one session on two nodes (each node's with media on it): both nodes count
    their connections and forward packets, and the counters move while the call goes on."""
    nodes = [Node(n.url, n.metrics_url, f"f{i}") for i, n in enumerate(two_nodes, 1)]
    for n in nodes:
        assert n.metrics_url, "the node prints its metrics address"
    session_id = await create_session(nodes[0].url)
    before = {n.name: await asyncio.to_thread(n.scrape) for n in nodes}
    async with contextlib.AsyncExitStack() as stack:
        recorders: dict[str, Recorder] = {}
        sessions: dict[str, tuple[Session, Session]] = {}
        for n in nodes:
            publishing = await stack.enter_async_context(
                Session(session_id, token(session_id), n.url, ice_addresses=LOOPBACK)
            )
            subscribing = await stack.enter_async_context(
                Session(session_id, token(session_id), n.url, ice_addresses=LOOPBACK)
            )
            sessions[n.name] = (publishing, subscribing)
            recorder = recorders[n.name] = Recorder()
            publisher = Publisher(n.name, video_source=TestPatternSource(), audio_source=ToneSource(440.0))
            stream = await publishing.publish(publisher)
            # Subscribe to the stream of this node's publisher (media stays on its node), once
            # it is announced (its media flows).
            await wait_for(
                lambda s=subscribing, sid=stream.stream_id: sid in s.streams, "the stream announced", 30
            )
            announced = subscribing.streams[stream.stream_id]
            await subscribing.subscribe(Subscriber(announced, on_video_frame=recorder.on_video))
        # Every client sees the three others, whichever node they are on.
        await wait_for(
            lambda: all(len(s.connections) == 3 for pair in sessions.values() for s in pair),
            "each client to see the three others",
            timeout=30,
        )
        first = {}
        for n in nodes:
            first[n.name] = await n.wait_for(
                "two connections, a stream, consumers and forwarded packets",
                lambda s, n=n: (
                    s.value("salon_connections", node=n.name) == 2
                    and s.value("salon_streams", node=n.name) >= 1
                    and s.value("salon_consumers", node=n.name) >= 1
                    and s.value(FORWARDED, node=n.name) > before[n.name].value(FORWARDED, node=n.name) + 50
                ),
            )
        for n in nodes:
            forwarded = first[n.name].value(FORWARDED, node=n.name)
            await n.wait_for(
                "forwarded packets growing between two scrapes",
                lambda s, n=n, forwarded=forwarded: s.value(FORWARDED, node=n.name) > forwarded + 100,
            )
        await wait_for(
            lambda: all(decoded_in_order(r, 10) for r in recorders.values()),
            "the test pattern decoded on both nodes",
            timeout=60,
        )
    for n in nodes:
        await n.wait_for(
            "the call's connections gone", lambda s, n=n: s.value("salon_connections", node=n.name) == 0
        )
