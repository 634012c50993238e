"""The Python SDK's failure paths, against the real server (or no server at all).

* nothing listens at the URL: ``connect`` raises :class:`ConnectionFailed`;
* the server stops answering (the network in between swallows everything): a request raises
  :class:`ConnectionLost` when its reply does not come;
* the token expired while the link was down: reconnecting ends the session with
  ``Disconnected(tokenRefused)``;
* the media worker crash-loops: the pool gives up restarting for its window and says so in
  the log, and a client's ``publish`` fails with :class:`MediaUnavailable` (not a hang), while
  signalling carries on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time

import pytest
from sdk_helpers import LOOPBACK, EventLog, session_for, wait_for

from salon.client import (
    ConnectionFailed,
    ConnectionLost,
    Disconnected,
    InvalidToken,
    MediaUnavailable,
    Publisher,
    Reconnecting,
    Session,
    SessionEndReason,
    SessionNotFound,
    SessionState,
)
from salon.client._link import SignallingLink
from salon.media import workers as workers_module
from salon.media.plane import SfuMediaPlane
from tests.conftest import RunningServer
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_server_fails_connect_with_connection_failed(
    media_server: RunningServer,
) -> None:
    sid = media_server.session()
    session = Session(sid, media_server.token(sid), f"http://127.0.0.1:{closed_port()}", connect_timeout=5)
    log = EventLog(session)
    with pytest.raises(ConnectionFailed, match="cannot open") as info:
        await session.connect()
    assert not isinstance(info.value, InvalidToken | SessionNotFound | ConnectionLost)
    assert session.state is SessionState.DISCONNECTED
    async with asyncio.timeout(1):
        await session.wait_disconnected()  # ended: nothing to wait for
    assert log.events == []


async def test_a_server_that_stops_answering_fails_the_request_with_connection_lost(
    media_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Requests give up after 2 s instead of 20 (a keyword-only default of SignallingLink.request).
    monkeypatch.setattr(SignallingLink.request, "__kwdefaults__", {"timeout": 2.0})
    sid = media_server.session()
    async with TcpProxy(media_server.url) as proxy:
        session = Session(sid, media_server.token(sid), proxy.url, reconnect=False)
        async with session:
            await session.signal("before", "answered")  # the link works
            proxy.freeze()
            started = time.monotonic()
            with pytest.raises(ConnectionLost, match="no reply to signal"):
                await session.signal("during", "swallowed")
            assert time.monotonic() - started >= 1.5, "gave up before its timeout"


async def test_a_token_that_expired_while_the_link_was_down_ends_the_session(
    media_server: RunningServer,
) -> None:
    sid = media_server.session()
    expires = int(time.time()) + 4
    session = Session(
        sid,
        media_server.token(sid, expire_time=expires),
        media_server.url,
        ice_addresses=LOOPBACK,
        reconnect_timeout=20,
    )
    log = EventLog(session)
    await session.connect()
    try:
        await asyncio.sleep(max(0.0, expires + 1.5 - time.time()))  # expired now (no leeway)
        assert session.state is SessionState.CONNECTED  # a live link outlives its token
        assert session._link is not None
        session._link.abort()  # the network breaks: the SDK reconnects with its token
        async with asyncio.timeout(15):
            reason = await session.wait_disconnected()
    finally:
        await session.disconnect()
    assert reason is SessionEndReason.TOKEN_REFUSED
    assert log.of(Reconnecting)
    (end,) = log.of(Disconnected)
    assert isinstance(end, Disconnected) and "expired" in end.detail, end
    assert log.events[-1] is end


async def test_a_worker_crash_loop_stops_restarts_and_publishing_fails_cleanly(
    media_server: RunningServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="salon.media.workers")
    plane = media_server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)
    pool = plane.pool
    pool.max_restarts, pool.restart_window, pool.start_timeout = 2, 60.0, 3.0
    attempts: list[int] = []

    def dies_at_start(name: str, log_level: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.close()
        process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], stdin=subprocess.DEVNULL)
        attempts.append(process.pid)
        return process, ours

    monkeypatch.setattr(workers_module, "_spawn_process", dies_at_start)
    (worker,) = pool.workers.values()
    worker.process.kill()
    await wait_for(lambda: "restarts too often" in caplog.text, "the pool to stop restarting", timeout=20)
    assert len(attempts) == 2 and caplog.text.count("restarting worker-0 failed") == 2

    sid = media_server.session()
    async with session_for(media_server, sid) as alice, session_for(media_server, sid) as bob:
        with pytest.raises(MediaUnavailable, match="no media worker is running"):
            async with asyncio.timeout(20):
                await alice.publish(Publisher("alice"))
        assert alice.publishers == [] and alice.state is SessionState.CONNECTED
        await bob.signal("still", "here")  # signalling is unaffected
    assert len(attempts) == 2, "restarted within the window after the limit"
