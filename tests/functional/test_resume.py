"""Resuming a connection whose link broke (docs/protocol.md §5.4), with raw WebSocket clients
against the real server: same connection and stream IDs, nothing seen by the others, signals
held; a wrong secret or an expired grace period refused; the grace period's end destroying the
connection as ``networkDisconnected``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.wsclient import WsClient


@pytest.fixture
def grace_server(tmp_path: Any) -> Iterator[RunningServer]:
    with start_server(tmp_path, heartbeat_interval=0.5, heartbeat_timeout=2.0, reconnect_grace=30) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


async def _break(server: RunningServer, client: WsClient) -> None:
    """Reset the client's TCP connection (no close frame, as a network failure) and wait until
    the server has noticed: its connection is suspended. (Nothing tells the others; what is
    sent to the old link before the server notices is lost with it.)"""
    client.ws.transport.abort()
    service = server.thread.server.config.app.state.signalling

    async def suspended() -> bool:
        for session in service.sessions.values():
            conn = session.connections.get(client.connection_id)
            if conn is not None:
                return bool(conn.suspended)
        return False

    deadline = time.monotonic() + 10
    while not await asyncio.wrap_future(server.thread.run_coroutine(suspended())):
        assert time.monotonic() < deadline, "the server did not notice the broken link in 10 s"
        await asyncio.sleep(0.02)


async def _open_when_room(url: str) -> WsClient:
    """Open a socket, retrying while the address is at its limit (HTTP 429): a socket that just
    closed gives its place back once the server has finished with it."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await WsClient.open(url)
        except Exception as exc:
            assert "429" in str(exc), exc
            assert time.monotonic() < deadline, "no room at the address in 10 s"
            await asyncio.sleep(0.05)


async def _resume(
    url: str, sid: str, token: str, connection_id: str, secret: str
) -> tuple[WsClient, dict[str, Any]]:
    client = await _open_when_room(url)
    reply = await client.request(
        {
            "type": "connect",
            "session_id": sid,
            "token": token,
            "resume": {"connection_id": connection_id, "secret": secret},
        }
    )
    return client, reply


async def test_a_resumed_connection_keeps_its_ids_and_the_others_see_nothing(
    grace_server: RunningServer,
) -> None:
    server = grace_server
    sid = server.session()
    token = server.token(sid, data="alice")
    alice = await WsClient.join(server.url, sid, token)
    assert alice.connected is not None
    assert alice.connected["reconnect_grace"] == 30
    secret = alice.connected["resume_secret"]
    assert isinstance(secret, str) and len(secret) > 30
    stream = (await alice.request({"type": "publish", "name": "cam"}))["stream"]
    bob = await WsClient.join(server.url, sid, server.token(sid, data="bob"))

    await _break(server, alice)
    # While alice is away: bob's signals to her (and to everyone) are held for her, in order.
    for n in range(3):
        reply = await bob.request(
            {"type": "signal", "signal_type": "chat", "data": f"to-alice-{n}", "to": alice.connection_id}
        )
        assert reply["type"] == "ack", reply
    assert (await bob.request({"type": "signal", "signal_type": "all", "data": "everyone"}))["type"] == "ack"

    alice2, reply = await _resume(server.url, sid, token, alice.connection_id or "", secret)
    assert reply["type"] == "connected", reply
    assert reply["resumed"] is True
    assert reply["connection"]["connection_id"] == alice.connection_id
    assert [s["stream_id"] for s in reply["streams"]] == [stream["stream_id"]]
    assert [c["data"] for c in reply["connections"]] == ["bob"]
    assert reply["resume_secret"] not in (None, secret)  # a new secret for the next time
    held = [await alice2.next("signal") for _ in range(4)]
    assert [m["data"] for m in held] == ["to-alice-0", "to-alice-1", "to-alice-2", "everyone"]
    assert all(m["from_connection_id"] == bob.connection_id for m in held)

    # The others saw nothing: no destroyed, no created (bob's own signal aside).
    alice2.connection_id = alice.connection_id
    seen = await bob.quiet()
    assert [m["type"] for m in seen] == ["signal"], seen
    # The stream is still alice's and works as before.
    reply = await alice2.request({"type": "update_stream", "stream_id": stream["stream_id"], "name": "cam2"})
    assert reply["type"] == "ack", reply
    changed = await bob.next("stream_property_changed")
    assert changed["stream_id"] == stream["stream_id"] and changed["new_value"] == "cam2"
    # A signal from bob reaches her new link directly.
    await bob.request({"type": "signal", "signal_type": "hi", "data": "again", "to": alice.connection_id})
    assert (await alice2.next("signal"))["data"] == "again"
    await alice2.close()
    gone = await bob.next("connection_destroyed")
    assert (gone["connection_id"], gone["reason"]) == (alice.connection_id, "clientDisconnected")
    await bob.close()


async def test_a_wrong_secret_another_token_or_an_unknown_connection_is_refused(
    grace_server: RunningServer,
) -> None:
    server = grace_server
    sid = server.session()
    token = server.token(sid)
    alice = await WsClient.join(server.url, sid, token)
    assert alice.connected is not None
    secret, cid = alice.connected["resume_secret"], alice.connection_id or ""
    bob = await WsClient.join(server.url, sid, server.token(sid))
    await _break(server, alice)
    attempts = [
        (token, cid, secret[:-2] + ("AA" if not secret.endswith("AA") else "BB")),
        (server.token(sid), cid, secret),  # a valid token, but not the connection's
        (token, "no-such-connection", secret),
    ]
    for attempt_token, attempt_cid, attempt_secret in attempts:
        client, reply = await _resume(server.url, sid, attempt_token, attempt_cid, attempt_secret)
        assert (reply["type"], reply["code"]) == ("error", "resume_refused"), reply
        assert await client.closed() == (4011, "resume refused")
    # Refusals changed nothing: the right secret still resumes.
    alice2, reply = await _resume(server.url, sid, token, cid, secret)
    assert reply["type"] == "connected" and reply["connection"]["connection_id"] == cid, reply
    alice2.connection_id = cid
    assert await bob.quiet() == []
    await alice2.close()
    await bob.close()


async def test_the_grace_period_ends_with_network_disconnected(tmp_path: Any) -> None:
    with start_server(
        tmp_path, heartbeat_interval=0.25, heartbeat_timeout=2.0, reconnect_grace=1.5
    ) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        token = server.token(sid)
        alice = await WsClient.join(server.url, sid, token)
        assert alice.connected is not None
        stream_id = (await alice.request({"type": "publish", "name": "cam"}))["stream"]["stream_id"]
        bob = await WsClient.join(server.url, sid, server.token(sid))
        await _break(server, alice)
        broke = time.monotonic()
        destroyed = await bob.next("stream_destroyed", timeout=10)
        gone = await bob.next("connection_destroyed", timeout=10)
        elapsed = time.monotonic() - broke
        assert (destroyed["stream_id"], destroyed["reason"]) == (stream_id, "networkDisconnected")
        assert (gone["connection_id"], gone["reason"]) == (alice.connection_id, "networkDisconnected")
        assert 1.4 <= elapsed < 6, elapsed  # the grace period, checked every heartbeat interval
        client, reply = await _resume(
            server.url, sid, token, alice.connection_id or "", alice.connected["resume_secret"]
        )
        assert (reply["type"], reply["code"]) == ("error", "resume_refused"), reply
        await client.close()
        await bob.close()


async def test_a_clean_close_destroys_at_once_and_cannot_be_resumed(grace_server: RunningServer) -> None:
    server = grace_server
    sid = server.session()
    token = server.token(sid)
    alice = await WsClient.join(server.url, sid, token)
    assert alice.connected is not None
    bob = await WsClient.join(server.url, sid, server.token(sid))
    await alice.close()
    gone = await bob.next("connection_destroyed", timeout=5)
    assert (gone["connection_id"], gone["reason"]) == (alice.connection_id, "clientDisconnected")
    client, reply = await _resume(
        server.url, sid, token, alice.connection_id or "", alice.connected["resume_secret"]
    )
    assert (reply["type"], reply["code"]) == ("error", "resume_refused"), reply
    await client.close()
    await bob.close()


async def test_a_resume_takes_the_connection_from_a_link_not_yet_seen_dead(
    grace_server: RunningServer,
) -> None:
    server = grace_server
    sid = server.session()
    token = server.token(sid)
    alice = await WsClient.join(server.url, sid, token)
    assert alice.connected is not None
    bob = await WsClient.join(server.url, sid, server.token(sid))
    alice2, reply = await _resume(
        server.url, sid, token, alice.connection_id or "", alice.connected["resume_secret"]
    )
    assert reply["type"] == "connected" and reply["resumed"] is True, reply
    assert await alice.closed() == (4012, "resumed on another link")
    alice2.connection_id = alice.connection_id
    assert await bob.quiet() == []
    await alice2.close()
    assert (await bob.next("connection_destroyed"))["connection_id"] == alice.connection_id
    await bob.close()


async def test_a_suspended_connection_counts_toward_its_address_limit(tmp_path: Any) -> None:
    with start_server(
        tmp_path, heartbeat_interval=0.5, heartbeat_timeout=2.0, reconnect_grace=30, max_per_address=2
    ) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        token = server.token(sid)
        alice = await WsClient.join(server.url, sid, token)
        assert alice.connected is not None
        bob = await WsClient.join(server.url, sid, server.token(sid))
        await _break(server, alice)
        # Alice's connection, suspended, still holds one of the address's two places.
        with pytest.raises(Exception, match="429"):
            await WsClient.open(server.url)
        await bob.close()  # frees a place: the resume gets in, and takes its own place over
        alice2, reply = await _resume(
            server.url, sid, token, alice.connection_id or "", alice.connected["resume_secret"]
        )
        assert reply["type"] == "connected", reply
        other = await _open_when_room(server.url)  # alice's suspended place was released
        await other.close()
        await alice2.close()


async def test_the_resume_secret_is_never_logged(
    grace_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = grace_server
    caplog.set_level(logging.DEBUG)
    sid = server.session()
    token = server.token(sid)
    alice = await WsClient.join(server.url, sid, token)
    assert alice.connected is not None
    secret = alice.connected["resume_secret"]
    await _break(server, alice)
    alice2, reply = await _resume(server.url, sid, token, alice.connection_id or "", secret)
    assert reply["type"] == "connected"
    logging.getLogger("salon.test").info("client sent resume secret %s", secret)
    await alice2.close()
    await asyncio.sleep(0)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in text and reply["resume_secret"] not in text
    assert "resume secret [redacted]" in text


async def test_a_suspended_connection_can_be_forced_out(tmp_path: Any) -> None:
    limits = {
        "heartbeat_interval": 0.5,
        "heartbeat_timeout": 2.0,
        "reconnect_grace": 30,
        "max_per_address": 2,
    }
    with start_server(tmp_path, **limits) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        sid = server.session()
        token = server.token(sid)
        alice = await WsClient.join(server.url, sid, token)
        assert alice.connected is not None
        bob = await WsClient.join(server.url, sid, server.token(sid, "moderator"))
        await _break(server, alice)
        reply = await bob.request({"type": "force_disconnect", "connection_id": alice.connection_id})
        assert reply["type"] == "ack", reply
        gone = await bob.next("connection_destroyed")
        assert (gone["connection_id"], gone["reason"]) == (alice.connection_id, "forceDisconnected")
        client, reply = await _resume(
            server.url, sid, token, alice.connection_id or "", alice.connected["resume_secret"]
        )
        assert (reply["type"], reply["code"]) == ("error", "resume_refused"), reply
        await client.close()
        # Alice's place at the address was given back: bob and one more fit in the two.
        other = await _open_when_room(server.url)
        await other.close()
        await bob.close()


async def test_stopping_the_service_destroys_the_suspended_connections(grace_server: RunningServer) -> None:
    server = grace_server
    sid = server.session()
    alice = await WsClient.join(server.url, sid, server.token(sid))
    await _break(server, alice)
    service = server.thread.server.config.app.state.signalling
    assert alice.connection_id in service.sessions[sid].connections
    await asyncio.wrap_future(server.thread.run_coroutine(service.stop()))
    assert sid not in service.sessions  # alice destroyed, and with her the session
    assert service._suspended_addresses == {} and service._per_address == {}
