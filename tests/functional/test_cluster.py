"""A cluster of three ``salon serve`` nodes on one real Redis and one real PostgreSQL (issue 14).

Clients of one session on different nodes see each other's connections, streams and signals,
all in the same order; REST calls through one node act on clients of another; a node killed
with SIGKILL is noticed through its expired heartbeat and its connections are destroyed as
``networkDisconnected`` for the others; ``salon node drain`` makes a node refuse new
connections. Signalling only (``--no-media``): media across nodes needs node-to-node pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from salon.tokens import Role, generate_token
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess, start_all
from tests.wsclient import Message, WsClient

pytestmark = pytest.mark.timeout(300)

API_KEY = "cluster-test-key"
API_SECRET = "cluster-test-secret-0123456789abcdef"
#: A dead node is noticed within its record's TTL (3 s) plus a heartbeat (1 s); generous here
#: for a loaded 2-core machine.
DEATH_NOTICED_WITHIN = 15.0


def auth() -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": API_KEY, "ist": "project", "iat": now, "exp": now + 180, "jti": str(time.monotonic())}
    return {"X-OPENTOK-AUTH": jwt.encode(claims, API_SECRET, algorithm="HS256")}


def token(session_id: str) -> str:
    return generate_token(
        API_KEY, API_SECRET, session_id, role=Role.MODERATOR, expire_time=int(time.time()) + 600
    )


async def node_cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await salon_cli("node", *args, "--redis-url", redis_url)


async def salon_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``salon ARGS`` in a thread: the test's loop keeps answering its clients' pings meanwhile
    (a CLI start takes seconds on a loaded machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALON_")}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "salon", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    nodes = []
    for i in (1, 2, 3):
        args = ["--no-media", "--redis-url", redis_url, "--database-url", postgres_url]
        args += ["--node-name", f"n{i}", "--node-address", "127.0.0.1"]
        nodes.append(ServeProcess(tmp_path / f"n{i}", API_KEY, API_SECRET, args))
    with contextlib.ExitStack() as stack:
        yield start_all(stack, nodes)


async def create_session(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/session/create", headers=auth())
        assert r.status_code == 200, r.text
        return str(r.json()[0]["session_id"])


async def next_of(client: WsClient, kind: str, **fields: Any) -> Message:
    def match(m: Message) -> bool:
        return m["type"] == kind and all(m.get(k) == v for k, v in fields.items())

    return await client.next(match, timeout=15)


async def join_all(nodes: list[ServeProcess], session_id: str) -> list[WsClient]:
    """One client per node, in node order; each sees the later ones arrive."""
    clients: list[WsClient] = []
    for node in nodes:
        client = await WsClient.join(node.url, session_id, token(session_id))
        assert client.connected is not None
        seen = {c["connection_id"] for c in client.connected["connections"]}
        assert seen == {c.connection_id for c in clients}, "connected lists the other nodes' clients"
        for earlier in clients:
            created = await next_of(earlier, "connection_created")
            assert created["connection"]["connection_id"] == client.connection_id
        clients.append(client)
    return clients


async def test_clients_on_three_nodes_see_one_session_in_one_order(nodes: list[ServeProcess]) -> None:
    session_id = await create_session(nodes[0].url)
    c1, c2, c3 = await join_all(nodes, session_id)

    # A stream published on node 1 is known on nodes 2 and 3, and to the REST API of each.
    published = await c1.request({"type": "publish", "name": "cam", "has_audio": True, "has_video": True})
    assert published["type"] == "published", published
    stream_id = published["stream"]["stream_id"]
    for other in (c2, c3):
        created = await next_of(other, "stream_created")
        assert created["stream"]["stream_id"] == stream_id
        assert created["stream"]["connection_id"] == c1.connection_id
    async with httpx.AsyncClient(base_url=nodes[2].url) as http:
        r = await http.get(f"/v2/project/{API_KEY}/session/{session_id}/stream", headers=auth())
        assert r.status_code == 200, r.text
        assert [s["id"] for s in r.json()["items"]] == [stream_id]

    # A client joining a node while a client there publishes learns of the stream once: in
    # `connected` or as `stream_created`, never both, never neither.
    for attempt in range(5):
        request = c1.request({"type": "publish", "name": f"race{attempt}", "has_audio": True})
        reply, late = await asyncio.gather(
            request, WsClient.join(nodes[0].url, session_id, token(session_id))
        )
        raced = reply["stream"]["stream_id"]
        assert late.connected is not None
        told = [s for s in late.connected["streams"] if s["stream_id"] == raced]
        told += [m["stream"] for m in await late.quiet() if m["type"] == "stream_created"]
        assert [s["stream_id"] for s in told] == [raced], f"attempt {attempt}: {told}"
        await c1.request({"type": "unpublish", "stream_id": raced})
        await late.close()
        await next_of(c1, "stream_destroyed", stream_id=raced)
        for other in (c2, c3):
            assert (await next_of(other, "stream_created"))["stream"]["stream_id"] == raced
            await next_of(other, "stream_destroyed", stream_id=raced)
    for client in (c1, c2, c3):
        left = [m for m in await client.quiet() if m["type"] != "connection_created"]
        assert [m["type"] for m in left] == ["connection_destroyed"] * 5, left

    # Three senders on three nodes, at once: every client sees every signal, in one order,
    # and each sender's own signals in the order it sent them.
    per_sender = 15

    async def send_all(client: WsClient, name: str) -> None:
        for i in range(per_sender):
            reply = await client.request({"type": "signal", "signal_type": "seq", "data": f"{name}-{i}"})
            assert reply["type"] == "ack", reply

    await asyncio.gather(send_all(c1, "a"), send_all(c2, "b"), send_all(c3, "c"))
    orders = []
    for client in (c1, c2, c3):
        got = [(await next_of(client, "signal", signal_type="seq"))["data"] for _ in range(3 * per_sender)]
        for name in "abc":
            assert [d for d in got if d.startswith(name)] == [f"{name}-{i}" for i in range(per_sender)]
        orders.append(got)
    assert orders[0] == orders[1] == orders[2], "the three nodes' clients saw one order"

    # REST through node 1 signals the client on node 3.
    async with httpx.AsyncClient(base_url=nodes[0].url) as http:
        p = f"/v2/project/{API_KEY}/session/{session_id}"
        r = await http.post(
            f"{p}/connection/{c3.connection_id}/signal", headers=auth(), json={"type": "rest", "data": "hi"}
        )
        assert r.status_code == 204, r.text
        got = await next_of(c3, "signal", signal_type="rest")
        assert got["data"] == "hi" and got["from_connection_id"] is None
        r = await http.post(
            f"{p}/connection/no-such-connection/signal", headers=auth(), json={"type": "x", "data": ""}
        )
        assert r.status_code == 404, r.text

        # REST through node 2 mutes the stream published on node 1.
        async with httpx.AsyncClient(base_url=nodes[1].url) as http2:
            r = await http2.post(f"{p}/stream/{stream_id}/mute", headers=auth())
            assert r.status_code == 200, r.text
        assert (await next_of(c1, "mute_forced"))["stream_id"] == stream_id
        for other in (c2, c3):
            changed = await next_of(other, "stream_property_changed", stream_id=stream_id)
            assert (changed["property"], changed["new_value"]) == ("has_audio", False)

        # REST through node 1 forces the client on node 3 out.
        r = await http.delete(f"{p}/connection/{c3.connection_id}", headers=auth())
        assert r.status_code == 204, r.text
    assert (await next_of(c3, "session_disconnected"))["reason"] == "forceDisconnected"
    assert (await c3.closed(15))[0] == 4009
    for other in (c1, c2):
        gone = await next_of(other, "connection_destroyed", connection_id=c3.connection_id)
        assert gone["reason"] == "forceDisconnected"

    # Node 3 has no client in the session any more: its REST API still sees and reaches it.
    async with httpx.AsyncClient(base_url=nodes[2].url) as http:
        r = await http.get(f"{p}/stream/{stream_id}", headers=auth())
        assert r.status_code == 200, r.text
        assert (r.json()["id"], r.json()["hasAudio"]) == (stream_id, False)
        r = await http.post(f"{p}/signal", headers=auth(), json={"type": "from-n3", "data": "all"})
        assert r.status_code == 204, r.text
    for client in (c1, c2):
        assert (await next_of(client, "signal", signal_type="from-n3"))["data"] == "all"

    # A moderator on node 2 forces the stream of node 1's client off.
    reply = await c2.request({"type": "force_unpublish", "stream_id": stream_id})
    assert reply["type"] == "ack", reply
    for client in (c1, c2):
        ended = await next_of(client, "stream_destroyed", stream_id=stream_id)
        assert ended["reason"] == "forceUnpublished"
    assert await c1.quiet() == [] and await c2.quiet() == [], "nothing twice"

    # A moderator forces out a client of its own node: it is closed, the others are told.
    c4 = await WsClient.join(nodes[1].url, session_id, token(session_id))
    for client in (c1, c2):
        await next_of(client, "connection_created")
    reply = await c2.request({"type": "force_disconnect", "connection_id": c4.connection_id})
    assert reply["type"] == "ack", reply
    assert (await next_of(c4, "session_disconnected"))["reason"] == "forceDisconnected"
    assert (await c4.closed(15))[0] == 4009
    for client in (c1, c2):
        gone = await next_of(client, "connection_destroyed", connection_id=c4.connection_id)
        assert gone["reason"] == "forceDisconnected"
    assert await c1.quiet() == [] and await c2.quiet() == []
    await c1.close()
    assert (await next_of(c2, "connection_destroyed", connection_id=c1.connection_id))[
        "reason"
    ] == "clientDisconnected"
    await c2.close()


async def test_a_killed_node_s_connections_are_destroyed_for_the_others(nodes: list[ServeProcess]) -> None:
    session_id = await create_session(nodes[0].url)
    c1, c2, c3 = await join_all(nodes, session_id)
    published = await c3.request({"type": "publish", "name": "n3", "has_audio": True, "has_video": False})
    stream_id = published["stream"]["stream_id"]
    for other in (c1, c2):
        await next_of(other, "stream_created")

    os.kill(nodes[2].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for other in (c1, c2):
        ended = await other.next(
            lambda m: m["type"] == "stream_destroyed" and m["stream_id"] == stream_id,
            timeout=DEATH_NOTICED_WITHIN,
        )
        assert ended["reason"] == "networkDisconnected"
        gone = await other.next(
            lambda m: m["type"] == "connection_destroyed" and m["connection_id"] == c3.connection_id,
            timeout=DEATH_NOTICED_WITHIN,
        )
        assert gone["reason"] == "networkDisconnected"
    noticed = time.monotonic() - killed_at
    assert noticed < DEATH_NOTICED_WITHIN
    print(f"a killed node's connections destroyed for the others after {noticed:.1f} s")
    assert await c1.quiet() == [] and await c2.quiet() == [], "reported once, by one survivor"
    # The dead node's client comes back through another node, as a new connection.
    await c3.closed(15)
    back = await WsClient.join(nodes[0].url, session_id, token(session_id))
    assert back.connected is not None
    assert {c["connection_id"] for c in back.connected["connections"]} == {c1.connection_id, c2.connection_id}
    for other in (c1, c2):
        created = await next_of(other, "connection_created")
        assert created["connection"]["connection_id"] == back.connection_id
    await back.close()
    listing = await node_cli(_redis_url_of(nodes[0]), "list")
    assert listing.returncode == 0, listing.stderr
    names = [line.split("\t")[0] for line in listing.stdout.splitlines()]
    assert names == ["n1", "n2"], listing.stdout
    await c1.close()
    await c2.close()


def _redis_url_of(node: ServeProcess) -> str:
    return node.command[node.command.index("--redis-url") + 1]


async def test_a_drained_node_refuses_new_connections(nodes: list[ServeProcess]) -> None:
    redis_url = _redis_url_of(nodes[0])
    session_id = await create_session(nodes[0].url)
    before = await WsClient.join(nodes[1].url, session_id, token(session_id))

    done = await node_cli(redis_url, "drain", "n2")
    assert done.returncode == 0, done.stderr
    assert "n2 is draining" in done.stdout

    async def refused() -> bool:
        client = await WsClient.open(nodes[1].url)
        reply = await client.request(
            {"type": "connect", "session_id": session_id, "token": token(session_id)}
        )
        if reply["type"] == "connected":
            await client.close()
            return False
        assert reply["type"] == "error" and "draining" in reply["message"], reply
        assert (await client.closed(15))[0] == 1001
        return True

    deadline = time.monotonic() + 10
    while not await refused():
        assert time.monotonic() < deadline, "the drained node still takes new connections after 10 s"
        await asyncio.sleep(0.2)
    listing = await node_cli(redis_url, "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.stdout.splitlines()}
    assert rows["n2"][3] == "draining" and rows["n1"][3] == "up", listing.stdout

    # Its clients stay, and see newcomers on the other nodes.
    other = await WsClient.join(nodes[0].url, session_id, token(session_id))
    await before.next(
        lambda m: (
            m["type"] == "connection_created" and m["connection"]["connection_id"] == other.connection_id
        ),
        timeout=15,
    )  # (after those of the connections made while the drain was not yet seen)
    reply = await before.request({"type": "signal", "signal_type": "still", "data": "here"})
    assert reply["type"] == "ack", reply
    assert (await next_of(other, "signal", signal_type="still"))["data"] == "here"

    # Mute-all through node 3, which has no client in the session, reaches both nodes' clients,
    # and a stream published later on node 1 starts muted.
    published = await before.request({"type": "publish", "name": "b", "has_audio": True, "has_video": False})
    muted_id = published["stream"]["stream_id"]
    await next_of(other, "stream_created")
    async with httpx.AsyncClient(base_url=nodes[2].url) as http:
        r = await http.post(
            f"/v2/project/{API_KEY}/session/{session_id}/mute", headers=auth(), json={"active": True}
        )
        assert r.status_code == 200, r.text
    for client in (before, other):
        assert (await next_of(client, "mute_all_changed"))["active"] is True
    assert (await next_of(before, "mute_forced"))["stream_id"] == muted_id
    assert (await next_of(other, "stream_property_changed", stream_id=muted_id))["new_value"] is False
    later = await other.request({"type": "publish", "name": "o", "has_audio": True, "has_video": False})
    assert later["stream"]["has_audio"] is False, "published after mute-all: muted"
    assert (await next_of(other, "mute_forced"))["stream_id"] == later["stream"]["stream_id"]

    undone = await node_cli(redis_url, "drain", "n2", "--undo")
    assert undone.returncode == 0, undone.stderr
    deadline = time.monotonic() + 10
    while await refused():
        assert time.monotonic() < deadline, "the node still refuses connections 10 s after --undo"
        await asyncio.sleep(0.2)
    await before.close()
    await other.close()


async def test_a_rotated_secret_takes_effect_on_every_node(nodes: list[ServeProcess]) -> None:
    for node in nodes:
        async with httpx.AsyncClient(base_url=node.url) as http:
            assert (await http.post("/session/create", headers=auth())).status_code == 200
    database_url = nodes[0].command[nodes[0].command.index("--database-url") + 1]
    done = await salon_cli(
        *("project", "rotate-secret", API_KEY, "--grace", "0"),
        *("--database-url", database_url, "--redis-url", _redis_url_of(nodes[0])),
    )
    assert done.returncode == 0, done.stderr
    for node in nodes:
        deadline = time.monotonic() + 10
        while "changed elsewhere: its cached copy dropped" not in node.output:
            assert time.monotonic() < deadline, f"no node-wide invalidation: {node.output[-2000:]}"
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=node.url) as http:
            refused = await http.post("/session/create", headers=auth())
            assert refused.status_code in (401, 403), refused.text
