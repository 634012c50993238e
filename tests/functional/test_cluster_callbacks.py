"""Session-monitoring callbacks of a cluster: three nodes share one PostgreSQL outbox, and each
callback is delivered once, whichever node sends it (each attempt is claimed with an atomic
compare-and-set on the outbox row, docs/deployment.md, "Cluster").

The callbacks are made on node 1 while the receiver refuses them (503), so they wait in the
outbox for their retries; nodes 2 and 3 then start, find them pending, and all three nodes go
for the same rows when the receiver is back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pathlib
import signal
from collections.abc import Iterator

import pytest

from tests.functional.test_callbacks import Receiver, summary
from tests.functional.test_cluster import API_KEY, API_SECRET, create_session, token
from tests.metrics import Node
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def wait_for(what: str, predicate: object, timeout: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_three_nodes_deliver_each_callback_once(
    tmp_path: pathlib.Path, redis_url: str, postgres_url: str, receiver: Receiver
) -> None:
    refusing = True
    receiver.answer = lambda n: 503 if refusing else 200
    args = ["--no-media", "--redis-url", redis_url, "--database-url", postgres_url]
    args += ["--node-address", "127.0.0.1", "--callback-url", receiver.url]
    with contextlib.ExitStack() as stack:

        def start(i: int) -> ServeProcess:
            process = ServeProcess(tmp_path / f"n{i}", API_KEY, API_SECRET, [*args, "--node-name", f"n{i}"])
            return stack.enter_context(process)

        first = start(1)
        expected: list[tuple[str, ...]] = []
        for _ in range(3):
            session_id = await create_session(first.url)
            clients = [await WsClient.join(first.url, session_id, token(session_id)) for _ in range(2)]
            for client in clients:
                expected.append(("connectionCreated", "", str(client.connection_id)))
            for client in clients:
                await client.close()
                expected.append(("connectionDestroyed", "clientDisconnected", str(client.connection_id)))
        await wait_for("the receiver refusing callbacks", lambda: len(receiver.requests) >= 3)
        nodes = [first, start(2), start(3)]  # they find the pending callbacks at start
        refusing = False

        def delivered() -> collections.Counter[tuple[str, ...]]:
            return collections.Counter(
                summary(body) for body in receiver.delivered() if body["event"].startswith("connection")
            )

        await wait_for("every callback delivered", lambda: set(expected) <= set(delivered()))
        # Until every node's outbox view is empty: nothing more is on its way.
        for i, node in enumerate(nodes, 1):
            await Node(node.url, node.metrics_url, f"n{i}").wait_for(
                "no pending callback", lambda s, i=i: s.value("salon_callbacks_pending", node=f"n{i}") == 0
            )
        counts = delivered()
        assert set(counts) == set(expected), counts
        assert all(n == 1 for n in counts.values()), f"delivered more than once: {counts}"
        sessions = collections.Counter(
            (body["event"], body["sessionId"])
            for body in receiver.delivered()
            if body["event"].startswith("session")
        )
        assert all(n == 1 for n in sessions.values()), sessions


async def test_a_dead_node_s_connections_get_their_callbacks_from_the_reaper(
    tmp_path: pathlib.Path, redis_url: str, postgres_url: str, receiver: Receiver
) -> None:
    args = ["--no-media", "--redis-url", redis_url, "--database-url", postgres_url]
    args += ["--node-address", "127.0.0.1", "--callback-url", receiver.url]
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                ServeProcess(tmp_path / f"n{i}", API_KEY, API_SECRET, [*args, "--node-name", f"n{i}"])
            )
            for i in (1, 2, 3)
        ]
        session_id = await create_session(nodes[0].url)
        staying = await WsClient.join(nodes[0].url, session_id, token(session_id))
        doomed = await WsClient.join(nodes[2].url, session_id, token(session_id))
        published = await doomed.request(
            {"type": "publish", "name": "cam", "has_audio": True, "has_video": False}
        )
        stream_id = published["stream"]["stream_id"]
        await staying.next(lambda m: m["type"] == "stream_created", timeout=15)
        await wait_for(
            "the stream's callback",
            lambda: ("streamCreated", "", stream_id) in map(summary, receiver.delivered()),
        )

        os.kill(nodes[2].pid, signal.SIGKILL)
        gone = [
            ("streamDestroyed", "networkDisconnected", stream_id),
            ("connectionDestroyed", "networkDisconnected", str(doomed.connection_id)),
        ]
        await wait_for(
            "the dead node's callbacks", lambda: set(gone) <= set(map(summary, receiver.delivered()))
        )
        for i, node in enumerate(nodes[:2], 1):
            await Node(node.url, node.metrics_url, f"n{i}").wait_for(
                "no pending callback", lambda s, i=i: s.value("salon_callbacks_pending", node=f"n{i}") == 0
            )
        bodies = [b for b in receiver.delivered() if summary(b) in gone]
        assert [summary(b) for b in bodies] == gone, "once each, the stream first"
        assert bodies[1]["connection"]["createdAt"] == doomed.connected["connection"]["created_at"]  # type: ignore[index]
        assert all(b["sessionId"] == session_id and b["projectId"] == API_KEY for b in bodies)
        await staying.close()
