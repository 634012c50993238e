"""The server's own event loop stalling (a long callback, a saturated CPU, SIGSTOP) must not
time its clients out: their pongs wait unread in the sockets meanwhile, so their silence is the
server's. The heartbeat notices the stall and restarts the connections' timeouts."""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time

import pytest

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(120)

HEARTBEAT_TIMEOUT = 2.0


async def _freeze(seconds: float) -> None:
    time.sleep(seconds)  # blocks the server's loop on purpose


async def test_a_stalled_server_loop_does_not_time_its_clients_out(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="salon.signalling.service")
    with start_server(tmp_path, heartbeat_interval=0.5, heartbeat_timeout=HEARTBEAT_TIMEOUT) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        a = await WsClient.join(server.url, sid, server.token(sid))
        b = await WsClient.join(server.url, sid, server.token(sid))
        await a.next("connection_created")

        # Twice the heartbeat timeout without reading a socket.
        await asyncio.wrap_future(thread.run_coroutine(_freeze(2 * HEARTBEAT_TIMEOUT)))
        deadline = time.monotonic() + 30
        while "the event loop stalled" not in caplog.text:
            assert time.monotonic() < deadline, "the heartbeat did not notice the stall"
            await asyncio.sleep(0.05)

        # Both are still connected: a signal goes through, nobody was destroyed.
        reply = await a.request({"type": "signal", "signal_type": "after", "data": "stall"})
        assert reply["type"] == "ack", reply
        for client in (a, b):  # a signal to the session reaches its sender too
            assert (await client.next("signal"))["data"] == "stall"
        assert await a.quiet() == [] and await b.quiet() == []
        assert "timed out" not in caplog.text, caplog.text
        await a.close()
        await b.close()
