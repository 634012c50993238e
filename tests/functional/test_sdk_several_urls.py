"""Both client SDKs accept several server URLs (the nodes of a cluster): they connect to the
first that answers, and when the link drops and its server cannot be reached, they reconnect
through the next URL (docs/deployment.md, "Clients and several nodes").

A :class:`~tests.tcpproxy.TcpProxy` in front of the server plays the first node: refused and
dropped, it is a node that died; the server's own URL is the next one. (The real thing, three
nodes and ``kill -9``: tests/e2e/cluster/test_cluster_failover.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import shutil
import socket
import subprocess

import pytest

from salon.client import ConnectionFailed, Reconnected, Session, SessionState
from tests.conftest import RunningServer
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(60)

ROOT = pathlib.Path(__file__).resolve().parents[2]
SALON_JS = ROOT / "src" / "salon" / "web" / "sdk" / "salon.js"
DRIVER = ROOT / "tests" / "sdk" / "salon_js_urls.mjs"


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def wait_for(predicate: object, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_python_sdk_connects_to_the_first_url_that_answers(server: RunningServer) -> None:
    sid = server.session()
    token = server.token(sid)
    urls = [dead_url(), server.url]
    async with Session(sid, token, urls) as session:
        assert session.urls == tuple(urls)
        assert session.url == server.url and session.state is SessionState.CONNECTED
    # None answers: the last failure is raised.
    with pytest.raises(ConnectionFailed):
        await Session(sid, token, [dead_url(), dead_url()], connect_timeout=5).connect()
    with pytest.raises(ValueError, match="at least one server URL"):
        Session(sid, token, [])


async def test_python_sdk_moves_to_the_next_url_when_its_server_is_gone(server: RunningServer) -> None:
    sid = server.session()
    async with (
        TcpProxy(server.url) as first,
        Session(sid, server.token(sid), [first.url, server.url]) as session,
    ):
        reconnected: list[Reconnected] = []
        session.on(Reconnected, reconnected.append)
        assert session.url == first.url
        old = session.connection_id
        first.refuse()
        first.drop()  # the first "node" died: its links reset, new ones refused
        await wait_for(lambda: reconnected, "the reconnection through the next URL")
        assert session.url == server.url
        assert not reconnected[0].resumed and session.connection_id not in (None, old)
        assert session.state is SessionState.CONNECTED


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
async def test_salon_js_connects_to_the_first_url_that_answers_and_moves_on(server: RunningServer) -> None:
    sid = server.session()
    async with TcpProxy(server.url) as first:
        urls = [dead_url(), first.url, server.url]
        proc = await asyncio.create_subprocess_exec(
            "node", "--experimental-websocket", "--no-warnings", str(DRIVER), str(SALON_JS),
            sid, server.token(sid), json.dumps(urls),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdin is not None
        try:

            async def step() -> dict[str, object]:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line, f"the driver ended: {await proc.stderr.read() if proc.stderr else b''!r}"
                return dict(json.loads(line))

            connected = await step()
            assert connected["step"] == "connected" and connected["urls"] == urls
            assert connected["url"] == first.url, "the dead first URL is skipped"
            first.refuse()
            first.drop()
            reconnected = await step()
            assert reconnected["step"] == "reconnected", reconnected
            assert reconnected["url"] == server.url and reconnected["resumed"] is False
            assert reconnected["connectionId"] != connected["connectionId"]
            proc.stdin.write(b"bye\n")
            await proc.stdin.drain()
            assert (await step())["reason"] == "clientDisconnected"
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
