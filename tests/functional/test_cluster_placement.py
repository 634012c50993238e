"""Placement by load in a cluster (issue 14): three real nodes on one Redis and one PostgreSQL,
each with its client URL (``--node-url``) and ``--placement-margin 3``.

A node loaded 3 connections or more above the least-loaded one sends a new client that accepts
a redirect (the Python SDK does) to another node: a new session's to the least-loaded node, a
hosted session's to a node that already hosts it (no new pipe) unless that one is overloaded
too. A client that does not accept redirects (an older client) is never sent away, and a node
that is not overloaded keeps its new clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from salon.client import Reconnected, Session, SessionState
from salon.cluster.node import list_nodes
from tests.functional.test_cluster import API_KEY, API_SECRET, create_session, token
from tests.metrics import Node
from tests.postgres import free_port, postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess, start_all
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(300)

MARGIN = 3
ROOT = pathlib.Path(__file__).resolve().parents[2]
SALON_JS = ROOT / "src" / "salon" / "web" / "sdk" / "salon.js"
DRIVER = ROOT / "tests" / "sdk" / "salon_js_urls.mjs"


@pytest.fixture
def nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    with contextlib.ExitStack() as stack:
        processes, urls = [], []
        for i in (1, 2, 3):
            port = free_port()
            args = ["--no-media", "--redis-url", redis_url, "--database-url", postgres_url]
            args += ["--node-name", f"n{i}", "--node-address", "127.0.0.1", "--port", str(port)]
            args += ["--node-url", f"http://127.0.0.1:{port}", "--placement-margin", str(MARGIN)]
            processes.append(ServeProcess(tmp_path / f"n{i}", API_KEY, API_SECRET, args))
            urls.append(f"http://127.0.0.1:{port}")
        started = start_all(stack, processes)
        assert [node.url for node in started] == urls
        yield started


async def loads_seen(redis_url: str, expected: dict[str, int]) -> None:
    """Wait until the registry shows these loads (each node's heartbeat publishes its own)."""
    deadline = time.monotonic() + 15
    while True:
        seen = {name: record.load for name, record in await list_nodes(redis_url) if record is not None}
        if all(seen.get(name) == load for name, load in expected.items()):
            return
        assert time.monotonic() < deadline, f"loads {seen}, expected {expected}"
        await asyncio.sleep(0.1)


async def redirected(url: str, session_id: str) -> str | None:
    """Connect with ``accept_redirect`` as an SDK would: the URL sent to, or None if the node
    took the client (then it leaves at once)."""
    client = await WsClient.open(url)
    reply = await client.request(
        {"type": "connect", "session_id": session_id, "token": token(session_id), "accept_redirect": True}
    )
    if reply["type"] == "connected":
        await client.close()
        return None
    assert reply["type"] == "redirect", reply
    assert (await client.closed(15))[0] == 4013
    await client.close()
    return str(reply["url"])


async def placed_on(url: str, session_id: str, expected: str | None) -> None:
    """Wait until a new client connecting to ``url`` is placed on ``expected`` (None: stays):
    the nodes read each other's loads at every heartbeat, so the first connects after a change
    may still be placed on the loads before."""
    deadline = time.monotonic() + 15
    while (placed := await redirected(url, session_id)) != expected:
        assert time.monotonic() < deadline, f"a client at {url} is placed on {placed}, not {expected}"
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def sdk(urls: list[str], session_id: str) -> AsyncIterator[Session]:
    async with Session(session_id, token(session_id), urls) as session:
        yield session


async def test_new_clients_are_placed_by_load_and_by_session(
    nodes: list[ServeProcess], redis_url: str
) -> None:
    n1, n2, n3 = nodes
    busy = await create_session(n1.url)
    # Node 1 loaded: clients that do not accept redirects stay where they connect.
    load = [await WsClient.join(n1.url, busy, token(busy)) for _ in range(MARGIN + 1)]
    await loads_seen(redis_url, {"n1": MARGIN + 1, "n2": 0, "n3": 0})

    # A new session's first client, given node 1's URL only, lands on the least-loaded node
    # (n2 and n3 tie at 0: the name decides, alike on every node).
    fresh = await create_session(n1.url)
    await placed_on(n1.url, fresh, n2.url)
    async with sdk([n1.url], fresh) as first:
        assert first.url == n2.url, "the SDK followed the redirect"
        assert first.urls == (n1.url,)
        # A later client of the session, connecting to node 3 (not loaded either), is sent
        # to node 2, which hosts the session already: no pipe between nodes for it.
        await placed_on(n3.url, fresh, n2.url)
        async with sdk([n3.url], fresh) as second:
            assert second.url == n2.url
            # ...and both see each other, as on one server.
            assert set(second.connections) >= {first.connection_id}

            # Another new session connecting to a node that is not overloaded stays there.
            other = await create_session(n3.url)
            await loads_seen(redis_url, {"n1": MARGIN + 1, "n2": 2})
            await placed_on(n3.url, other, None)
            async with sdk([n3.url], other) as stays:
                assert stays.url == n3.url

                # Node 2, hosting `fresh`, loaded too: a new client of `fresh` no longer goes
                # there but to the least-loaded node (n3: 1, against n1: 4 and n2: 5).
                more = [await WsClient.join(n2.url, busy, token(busy)) for _ in range(3)]
                await loads_seen(redis_url, {"n1": MARGIN + 1, "n2": 5, "n3": 1})
                await placed_on(n1.url, fresh, n3.url)
                async with sdk([n2.url], fresh) as third:
                    assert third.url == n3.url
                    assert set(third.connections) >= {
                        first.connection_id,
                        second.connection_id,
                    }
                for client in more:
                    await client.close()

    # salon.js follows the redirect too.
    await loads_seen(redis_url, {"n1": MARGIN + 1, "n2": 0, "n3": 0})
    js_session = await create_session(n1.url)
    await placed_on(n1.url, js_session, n2.url)
    assert await salon_js_lands_on([n1.url], js_session) == n2.url
    # Each redirect is counted (metrics): node 1 sent the first client, the JS one and probes.
    await Node(n1.url, n1.metrics_url, "n1").wait_for(
        "node 1's redirects counted",
        lambda s: s.value("salon_signalling_messages_sent_total", node="n1", type="redirect") >= 3,
    )
    for client in load:
        await client.close()


async def salon_js_lands_on(urls: list[str], session_id: str) -> str:
    """The URL salon.js (in Node) ends up connected to, given ``urls``; it then disconnects."""
    if shutil.which("node") is None:
        pytest.fail("Node.js is missing: scripts/test installs it")
    proc = await asyncio.create_subprocess_exec(
        "node", "--experimental-websocket", "--no-warnings", str(DRIVER), str(SALON_JS),
        session_id, token(session_id), json.dumps(urls),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, f"the driver ended: {await proc.stderr.read() if proc.stderr else b''!r}"
        connected = json.loads(line)
        assert connected["step"] == "connected" and connected["urls"] == urls, connected
        proc.stdin.write(b"bye\n")
        await proc.stdin.drain()
        ended = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert ended["reason"] == "clientDisconnected", ended
        return str(connected["url"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_a_client_sent_to_an_unreachable_node_comes_back(
    tmp_path: pathlib.Path, redis_url: str, postgres_url: str
) -> None:
    """A node whose client URL does not answer (a wrong --node-url, or dead since its last
    heartbeat): the SDK connects to the node that sent it there again, which keeps it."""
    with contextlib.ExitStack() as stack:
        common = ["--no-media", "--redis-url", redis_url, "--database-url", postgres_url]
        common += ["--node-address", "127.0.0.1", "--placement-margin", "1"]
        dead = f"http://127.0.0.1:{free_port()}"
        n1, _ = start_all(
            stack,
            [
                ServeProcess(tmp_path / "n1", API_KEY, API_SECRET, [*common, "--node-name", "n1"]),
                ServeProcess(
                    tmp_path / "n2", API_KEY, API_SECRET, [*common, "--node-name", "n2", "--node-url", dead]
                ),
            ],
        )
        session_id = await create_session(n1.url)
        loaded = await WsClient.join(n1.url, session_id, token(session_id))
        await placed_on(n1.url, session_id, dead)
        async with sdk([n1.url], session_id) as session:
            assert session.url == n1.url, "back on the node that sent it away"
            # (placed_on's probes that stayed on node 1 joined and left the session before.)
            await loaded.next(
                lambda m: (
                    m["type"] == "connection_created"
                    and m["connection"]["connection_id"] == session.connection_id
                ),
                timeout=15,
            )
        await loaded.close()


async def test_a_client_whose_node_dies_goes_back_to_the_url_it_was_given(
    tmp_path: pathlib.Path, redis_url: str, postgres_url: str
) -> None:
    """Sent to node 2, which then dies: the SDK reconnects through node 1's URL, the one it
    was given (node 1 takes it, or sends it on to a live node)."""
    with contextlib.ExitStack() as stack:
        common = ["--no-media", "--redis-url", redis_url, "--database-url", postgres_url]
        common += ["--node-address", "127.0.0.1", "--placement-margin", "1"]
        processes = []
        for i in (1, 2):
            port = free_port()
            args = [
                *common,
                "--node-name",
                f"n{i}",
                "--port",
                str(port),
                "--node-url",
                f"http://127.0.0.1:{port}",
            ]
            processes.append(ServeProcess(tmp_path / f"n{i}", API_KEY, API_SECRET, args))
        n1, n2 = start_all(stack, processes)
        busy = await create_session(n1.url)
        loaded = await WsClient.join(n1.url, busy, token(busy))
        session_id = await create_session(n1.url)
        await placed_on(n1.url, session_id, n2.url)
        async with sdk([n1.url], session_id) as session:
            assert session.url == n2.url
            reconnected: list[Reconnected] = []
            session.on(Reconnected, reconnected.append)
            old = session.connection_id
            os.kill(n2.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while not reconnected:
                assert time.monotonic() < deadline, "no reconnection after node 2 died"
                await asyncio.sleep(0.1)
            assert session.url == n1.url, "back on the URL it was given"
            assert session.state is SessionState.CONNECTED
            assert not reconnected[0].resumed and session.connection_id not in (None, old)
        await loaded.close()
