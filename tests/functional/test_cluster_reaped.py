"""A cluster node taken for dead while alive (issue 14): stopped (SIGSTOP) for longer than its
``--node-timeout``, it is reaped by the others, who report its connections destroyed as
``networkDisconnected``. Resumed (SIGCONT), it finds its registry record gone at its next
heartbeat, registers again and agrees with the others: it closes its clients' sockets with
1001 (reconnect), and they come back as new connections, to it or to another node.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import time
from collections.abc import Iterator

import pytest

from salon.signalling.service import TAKEN_FOR_DEAD
from tests.functional.test_cluster import (
    API_KEY,
    API_SECRET,
    create_session,
    node_cli,
    salon_cli,
    token,
)
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess
from tests.wsclient import Message, WsClient

pytestmark = pytest.mark.timeout(300)

#: The nodes' --node-timeout (seconds): the stopped node is taken for dead within it plus a
#: heartbeat (a third of it); bounds below are generous for a loaded 2-core machine.
NODE_TIMEOUT = 2.0
NOTICED_WITHIN = 20.0


def _created(m: Message, connection_id: str | None) -> bool:
    return m["type"] == "connection_created" and m["connection"]["connection_id"] == connection_id


@pytest.fixture
def two_nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    with contextlib.ExitStack() as stack:
        started = []
        for i in (1, 2):
            args = ["--no-media", "--redis-url", redis_url, "--database-url", postgres_url]
            args += ["--node-name", f"r{i}", "--node-address", "127.0.0.1"]
            args += ["--node-timeout", str(NODE_TIMEOUT)]
            started.append(stack.enter_context(ServeProcess(tmp_path / f"r{i}", API_KEY, API_SECRET, args)))
        yield started


async def test_a_node_taken_for_dead_registers_again_and_its_clients_reconnect(
    two_nodes: list[ServeProcess], redis_url: str
) -> None:
    first, second = two_nodes
    session_id = await create_session(first.url)
    watcher = await WsClient.join(first.url, session_id, token(session_id))
    victim = await WsClient.join(second.url, session_id, token(session_id))
    await watcher.next(lambda m: _created(m, victim.connection_id), timeout=15)

    os.kill(second.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        gone = await watcher.next(
            lambda m: m["type"] == "connection_destroyed" and m["connection_id"] == victim.connection_id,
            timeout=NOTICED_WITHIN,
        )
        noticed = time.monotonic() - stopped_at
    finally:
        os.kill(second.pid, signal.SIGCONT)
    assert gone["reason"] == "networkDisconnected"
    print(f"a stopped node taken for dead after {noticed:.1f} s (--node-timeout {NODE_TIMEOUT:g})")

    # Resumed, it agrees: its client is told to reconnect (1001), not forced out (4009).
    code, reason = await victim.closed(NOTICED_WITHIN)
    assert (code, reason) == (1001, TAKEN_FOR_DEAD)
    # It is registered again and takes the client back, as a new connection.
    back = await WsClient.join(second.url, session_id, token(session_id))
    assert back.connection_id != victim.connection_id
    assert {c["connection_id"] for c in back.connected["connections"]} == {watcher.connection_id}
    await watcher.next(lambda m: _created(m, back.connection_id), timeout=15)
    # The watcher heard of the old connection's end once (the node taken for dead reported it
    # too: the others' view deduplicates it), and nothing else.
    assert await watcher.quiet() == []
    listing = await node_cli(redis_url, "list")  # the clients answer pings meanwhile
    assert listing.returncode == 0, listing.stderr
    names = [line.split("\t")[0] for line in listing.stdout.splitlines()]
    assert names == ["r1", "r2"], listing.stdout
    assert "\tgone" not in listing.stdout, listing.stdout
    await back.close()
    await watcher.close()


async def test_node_timeout_out_of_range_is_refused(redis_url: str) -> None:
    for value in ("0.5", "301"):
        result = await salon_cli(
            "serve",
            "--no-media",
            "--redis-url",
            redis_url,
            "--database-url",
            "postgresql://localhost/none",
            "--node-timeout",
            value,
        )
        assert result.returncode != 0
        assert "--node-timeout must be 1 to 300 seconds" in result.stderr, result.stderr
