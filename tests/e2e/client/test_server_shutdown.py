"""The server shuts down with clients connected and media flowing.

Raw WebSocket clients get close code 1001 (going away: the server closes every signalling
socket itself, after what is queued for it, before uvicorn's own shutdown; docs/protocol.md
§10); the SDK's sessions end cleanly, one without reconnection at once (``networkDisconnected``, the close
code in the detail), one with reconnection after trying for its ``reconnect_timeout``
(``Reconnecting``, then ``networkDisconnected``): no hang, no task left behind, no
exception nobody retrieved. No media worker process outlives the server.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

import pytest
from sdk_helpers import LOOPBACK, EventLog, Recorder, auto_subscribe, wait_for

from salon.client import (
    Disconnected,
    Publisher,
    Reconnecting,
    Session,
    SessionEndReason,
    SessionState,
)
from salon.media.plane import SfuMediaPlane
from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(60)


def process_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


async def test_clients_connected_at_shutdown_are_told_and_end_cleanly(tmp_path: pathlib.Path) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    tasks_before = asyncio.all_tasks()

    thread = start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0).__enter__()
    stopped = False
    try:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        plane = server.thread.server.config.app.state.media
        assert isinstance(plane, SfuMediaPlane)
        sid = server.session()

        def session(**kwargs: Any) -> Session:
            return Session(sid, server.token(sid), server.url, ice_addresses=LOOPBACK, **kwargs)

        alice = session(reconnect=False)
        bob = session(reconnect=True, reconnect_timeout=2.0)
        alice_log, bob_log = EventLog(alice), EventLog(bob)
        seen = Recorder()
        auto_subscribe(bob, seen)
        await alice.connect()
        await bob.connect()
        await alice.publish(Publisher("alice"))
        await wait_for(lambda: len(seen.indices) >= 5, "alice's video at bob", timeout=20)
        raw = await WsClient.join(server.url, sid, server.token(sid))
        workers = [w.pid for w in plane.pool.workers.values()]
        assert workers and all(process_exists(pid) for pid in workers)

        stopped = True
        await asyncio.to_thread(thread.__exit__, None, None, None)

        assert await raw.closed(timeout=10) == (1001, "server shutting down")
        async with asyncio.timeout(10):
            assert await alice.wait_disconnected() is SessionEndReason.NETWORK_DISCONNECTED
        async with asyncio.timeout(20):
            assert await bob.wait_disconnected() is SessionEndReason.NETWORK_DISCONNECTED
    finally:
        if not stopped:
            thread.__exit__(None, None, None)

    (alice_end,) = alice_log.of(Disconnected)
    assert isinstance(alice_end, Disconnected) and "1001" in alice_end.detail, alice_end
    assert not alice_log.of(Reconnecting)
    assert bob_log.of(Reconnecting), "bob did not try to reconnect"
    (bob_end,) = bob_log.of(Disconnected)
    assert isinstance(bob_end, Disconnected) and "gave up reconnecting" in bob_end.detail, bob_end
    assert alice_log.events[-1] is alice_end and bob_log.events[-1] is bob_end
    for client in (alice, bob):
        assert client.state is SessionState.DISCONNECTED
        assert client.publishers == [] and client.subscribers == []

    await wait_for(lambda: not any(process_exists(pid) for pid in workers), "the workers to exit")
    await asyncio.sleep(0.1)  # let finished tasks be collected
    left = [t for t in asyncio.all_tasks() - tasks_before if t is not asyncio.current_task()]
    assert not left, f"tasks left behind: {left}"
    assert not unhandled, unhandled
