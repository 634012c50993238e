"""Two cluster nodes with media: a stream published with real WebRTC media on node 1 is
announced to a client on node 2 once its media flows, and its end too.

(Its media is not playable on node 2 yet: node-to-node pipes are not built; docs/deployment.md,
"Cluster".)
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

import pytest

from salon.client import Publisher, Session
from tests.functional.test_cluster import API_KEY, API_SECRET, create_session, next_of, token
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def media_nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    with contextlib.ExitStack() as stack:
        started = []
        for i in (1, 2):
            args = ["--workers", "1", "--redis-url", redis_url, "--database-url", postgres_url]
            args += ["--node-name", f"m{i}"]
            started.append(stack.enter_context(ServeProcess(tmp_path / f"m{i}", API_KEY, API_SECRET, args)))
        yield started


async def test_a_stream_with_media_on_one_node_is_announced_on_the_other(
    media_nodes: list[ServeProcess],
) -> None:
    session_id = await create_session(media_nodes[0].url)
    watcher = await WsClient.join(media_nodes[1].url, session_id, token(session_id))
    sender = Session(session_id, token(session_id), media_nodes[0].url, ice_addresses=["127.0.0.1"])
    await sender.connect()
    try:
        publisher = Publisher("cam")
        stream = await sender.publish(publisher)
        created = await watcher.next(
            lambda m: m["type"] == "stream_created" and m["stream"]["stream_id"] == stream.stream_id,
            timeout=60,
        )
        assert created["stream"]["name"] == "cam" and created["stream"]["has_video"]
        await sender.unpublish(publisher)
        ended = await next_of(watcher, "stream_destroyed", stream_id=stream.stream_id)
        assert ended["reason"] == "unpublished"
    finally:
        await sender.disconnect()
    await watcher.close()
