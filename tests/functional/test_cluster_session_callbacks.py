"""``sessionCreated`` and ``sessionDestroyed`` once per session per cluster (issue 14): a session
is created when its first connection on any node connects and destroyed when its last
connection on any node leaves, whichever nodes its clients are on, decided in Redis (the
session's hosts set, :mod:`salon.cluster.placement`); a dead node's last connections end the
session through the node that reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
from collections.abc import Iterator

import pytest

from tests.functional.test_callbacks import Receiver, summary
from tests.functional.test_cluster import API_KEY, API_SECRET, create_session, token
from tests.functional.test_cluster_callbacks import wait_for
from tests.postgres import PostgresCluster, postgres_cluster_fixture  # noqa: F401
from tests.redis import running_redis
from tests.serveproc import ServeProcess
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Cluster:
    """Two nodes shared by the module's tests (each test uses sessions of its own); a node a
    test killed is started anew for the next. Started one after the other, as before: the first
    test's rounds see a session's callbacks out of order now and then (on main too), more often
    in the runs that started the nodes at once; until that is understood, not at once."""

    def __init__(self, stack: contextlib.ExitStack, data_dir: pathlib.Path, args: list[str]) -> None:
        self._stack = stack
        self._data_dir = data_dir
        self._args = args
        self._starts = 0
        self.nodes = [stack.enter_context(self._node(i)) for i in (1, 2)]

    def _node(self, i: int) -> ServeProcess:
        self._starts += 1
        data_dir = self._data_dir / f"n{i}-{self._starts}"
        return ServeProcess(data_dir, API_KEY, API_SECRET, [*self._args, "--node-name", f"n{i}"])

    def alive(self) -> list[ServeProcess]:
        for i, node in enumerate(self.nodes):
            if node.proc is not None and node.proc.poll() is not None:
                self.nodes[i] = self._stack.enter_context(self._node(i + 1))
        return list(self.nodes)


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_cluster: PostgresCluster, receiver: Receiver
) -> Iterator[Cluster]:
    postgres_cluster.reset_database()
    postgres_url = postgres_cluster.url
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(running_redis())
        args = ["--no-media", "--redis-url", redis.url, "--database-url", postgres_url]
        args += ["--node-address", "127.0.0.1", "--callback-url", receiver.url]
        yield Cluster(stack, tmp_path_factory.mktemp("nodes"), args)


@pytest.fixture
def nodes(cluster: Cluster) -> list[ServeProcess]:
    return cluster.alive()


def events_of(receiver: Receiver, session_id: str) -> list[tuple[str, ...]]:
    return [summary(b) for b in receiver.delivered() if b["sessionId"] == session_id]


def session_events(receiver: Receiver, session_id: str) -> list[str]:
    return [e[0] for e in events_of(receiver, session_id) if e[0].startswith("session")]


async def test_one_session_on_two_nodes_is_created_and_destroyed_once(
    nodes: list[ServeProcess], receiver: Receiver
) -> None:
    n1, n2 = nodes
    session_id = await create_session(n1.url)
    first = await WsClient.join(n1.url, session_id, token(session_id))
    await wait_for("sessionCreated", lambda: session_events(receiver, session_id) == ["sessionCreated"])
    # Clients join on both nodes, the second node's first one among them, some at once.
    more = await asyncio.gather(
        *(WsClient.join(url, session_id, token(session_id)) for url in (n2.url, n2.url, n1.url))
    )
    clients = [first, *more]
    ids = {str(c.connection_id) for c in clients}

    def created() -> set[str]:
        return {e[2] for e in events_of(receiver, session_id) if e[0] == "connectionCreated"}

    await wait_for("every connectionCreated", lambda: created() == ids)
    # The first node's clients leave: the session lives on on the second node.
    for client in (clients[0], clients[3]):
        await client.close()
    gone = {str(clients[0].connection_id), str(clients[3].connection_id)}

    def destroyed() -> set[str]:
        return {e[2] for e in events_of(receiver, session_id) if e[0] == "connectionDestroyed"}

    await wait_for("the first node's connectionDestroyed", lambda: destroyed() == gone)
    # Its last client back on the first node, then the second node's two leave at once.
    back = await WsClient.join(n1.url, session_id, token(session_id))
    await wait_for("the newcomer's connectionCreated", lambda: str(back.connection_id) in created())
    await asyncio.gather(clients[1].close(), clients[2].close())
    await back.close()
    await wait_for("sessionDestroyed", lambda: "sessionDestroyed" in session_events(receiver, session_id))
    events = events_of(receiver, session_id)
    assert [e[0] for e in events] == [
        "sessionCreated",
        *["connectionCreated"] * 4,
        *["connectionDestroyed"] * 2,
        "connectionCreated",
        *["connectionDestroyed"] * 3,
        "sessionDestroyed",
    ], events

    # Two clients of a new session connect at once, one on each node, and leave at once:
    # one node reports the session's creation, one its end, in order around the connections.
    for round_ in range(3):
        session_id = await create_session(n2.url)
        pair = await asyncio.gather(*(WsClient.join(n.url, session_id, token(session_id)) for n in nodes))
        await wait_for(f"round {round_}: connectionCreated twice", lambda: len(created()) == 2)
        await asyncio.gather(*(c.close() for c in pair))
        await wait_for(
            f"round {round_}: ended", lambda sid=session_id: len(session_events(receiver, sid)) >= 2
        )
        names = [e[0] for e in events_of(receiver, session_id)]
        assert names == [
            "sessionCreated",
            *["connectionCreated"] * 2,
            *["connectionDestroyed"] * 2,
            "sessionDestroyed",
        ], f"round {round_}: {names}"


async def test_a_session_whose_last_clients_die_with_their_node_is_destroyed_once(
    nodes: list[ServeProcess], receiver: Receiver
) -> None:
    n1, n2 = nodes
    session_id = await create_session(n1.url)
    staying = await WsClient.join(n1.url, session_id, token(session_id))
    doomed = await WsClient.join(n2.url, session_id, token(session_id))
    await staying.close()
    await wait_for(
        "the first client's connectionDestroyed",
        lambda: (
            ("connectionDestroyed", "clientDisconnected", str(staying.connection_id))
            in events_of(receiver, session_id)
        ),
    )
    assert session_events(receiver, session_id) == ["sessionCreated"], "n2 still hosts the session"
    os.kill(n2.pid, signal.SIGKILL)
    await wait_for("sessionDestroyed from the reaper", lambda: len(session_events(receiver, session_id)) >= 2)
    events = events_of(receiver, session_id)
    assert events[-2:] == [
        ("connectionDestroyed", "networkDisconnected", str(doomed.connection_id)),
        ("sessionDestroyed", "", ""),
    ], events
    assert session_events(receiver, session_id) == ["sessionCreated", "sessionDestroyed"], events
