"""A broken signalling link is reconnected: a new connection, the publisher re-published,
the subscriber re-subscribed, and media flows again both ways."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest
from sdk_helpers import (
    LOOPBACK,
    EventLog,
    Recorder,
    auto_subscribe,
    cut_media,
    session_for,
    wait_for,
)

from salon.client import (
    ConnectionDropped,
    Disconnected,
    Publisher,
    Reconnected,
    Reconnecting,
    Session,
    SessionEndReason,
    SessionState,
    StreamDropped,
    StreamReason,
    StreamReceived,
)
from tests.conftest import API_KEY, API_SECRET, RunningServer, start_server
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


async def test_a_broken_link_is_reconnected_and_media_resumes(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    seen = {"alice": Recorder(), "bob": Recorder()}
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        alice_log, bob_log = EventLog(alice), EventLog(bob)
        auto_subscribe(alice, seen["alice"])
        auto_subscribe(bob, seen["bob"])
        alice_publisher = Publisher("alice")
        first = await alice.publish(alice_publisher)
        await bob.publish(Publisher("bob"))
        await wait_for(
            lambda: all(len(r.indices) >= 10 for r in seen.values()), "video both ways", timeout=15
        )
        old_connection = alice.connection_id

        # Break alice's socket without a closing handshake, as a network failure would.
        assert alice._link is not None
        alice._link.abort()
        await wait_for(lambda: alice_log.of(Reconnected), "alice to reconnect", timeout=15)
        assert alice_log.of(Reconnecting) and alice.state is SessionState.CONNECTED
        assert alice.connection_id != old_connection
        assert alice_publisher.stream is not None and alice_publisher.stream_id != first.stream_id
        assert len(alice.subscribers) == 1 and alice.subscribers[0].subscription_id is not None

        # Bob saw alice leave and come back with a new stream, and subscribed to it.
        await wait_for(
            lambda: bob_log.of(StreamDropped) and bob_log.of(ConnectionDropped), "alice's old stream"
        )
        dropped = bob_log.of(StreamDropped)[0]
        assert isinstance(dropped, StreamDropped) and dropped.stream.stream_id == first.stream_id
        assert dropped.reason in (StreamReason.CLIENT_DISCONNECTED, StreamReason.NETWORK_DISCONNECTED)
        await wait_for(lambda: len(bob_log.of(StreamReceived)) == 2, "alice's new stream at bob")

        # Media resumes both ways (the test pattern keeps counting across the reconnection).
        counts = {name: len(r.indices) for name, r in seen.items()}
        await wait_for(
            lambda: all(len(r.indices) >= counts[name] + 15 for name, r in seen.items()),
            "15 more frames both ways",
            timeout=15,
        )
    for name, recorder in seen.items():
        tail = recorder.indices[counts[name] :]
        assert tail == sorted(tail), f"{name}: frames out of order after reconnecting: {tail}"


@pytest.fixture
def quick_heartbeat_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """A server that gives up on a silent connection after 15 s (the client must reconnect
    before that, even on a loaded machine; short enough to watch it happen)."""
    with start_server(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=15.0) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


@pytest.mark.timeout(120)
async def test_after_a_drop_the_server_has_not_noticed_the_client_never_subscribes_to_itself(
    quick_heartbeat_server: RunningServer,
) -> None:
    server = quick_heartbeat_server
    sid = server.session()
    seen = {"alice": Recorder(), "bob": Recorder()}
    async with TcpProxy(server.url) as proxy:
        alice = Session(sid, server.token(sid), proxy.url, ice_addresses=LOOPBACK)
        alice_log = EventLog(alice)
        auto_subscribe(alice, seen["alice"])
        bob = session_for(server, sid)
        bob_log = EventLog(bob)
        auto_subscribe(bob, seen["bob"])
        async with alice, bob:
            await alice.publish(Publisher("alice"))
            bob_stream = await bob.publish(Publisher("bob"))
            await wait_for(lambda: all(len(r.indices) >= 10 for r in seen.values()), "video both ways", 20)
            old_connection = alice.connection_id

            # Alice's network goes: her side of the link breaks and her media sockets close,
            # while the server's side stays open and silent (it notices only on its heartbeat).
            cut_media(alice)
            proxy.cut()
            await wait_for(lambda: alice_log.of(Reconnected), "alice to reconnect", timeout=20)
            # The server still lists alice's old connection and stream: the case under test.
            current = {alice.publishers[0].stream_id, bob_stream.stream_id}
            stale = [s.id for s in server.sdk.list_streams(sid).items if s.id not in current]
            assert len(stale) == 1, "the server noticed the drop too early to test this"

            assert [s.stream.stream_id for s in alice.subscribers] == [bob_stream.stream_id]
            assert list(alice.streams) == [bob_stream.stream_id]
            assert old_connection not in alice.connections
            received = [e.stream for e in alice_log.of(StreamReceived) if isinstance(e, StreamReceived)]
            assert [s.stream_id for s in received] == [bob_stream.stream_id], received

            # The server times the old connection out: bob sees it go; alice reports nothing.
            # (Not "two streams listed": alice's new stream is listed only once its media flows.)
            await wait_for(
                lambda: not set(stale) & {s.id for s in server.sdk.list_streams(sid).items},
                "the stale stream to end",
                40,
            )

            def dropped_at_bob() -> set[str]:
                return {e.stream.stream_id for e in bob_log.of(StreamDropped) if isinstance(e, StreamDropped)}

            await wait_for(lambda: set(stale) <= dropped_at_bob(), "bob to see alice's old stream end")
            assert not alice_log.of(StreamDropped) and not alice_log.of(ConnectionDropped)
            counts = len(seen["alice"].indices)
            await wait_for(lambda: len(seen["alice"].indices) > counts + 10, "bob's video at alice", 15)
            assert len(alice.subscribers) == 1


async def test_when_reconnecting_fails_the_session_ends_as_network_disconnected(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    async with TcpProxy(server.url) as proxy:
        session = Session(sid, server.token(sid), proxy.url, ice_addresses=LOOPBACK, reconnect_timeout=2.0)
        log = EventLog(session)
        await session.connect()
        publisher = Publisher("doomed", video=False)
        await session.publish(publisher)
        proxy.refuse()
        proxy.cut()
        reason = await asyncio.wait_for(session.wait_disconnected(), 30)
        assert reason == SessionEndReason.NETWORK_DISCONNECTED
    kinds = [type(e) for e in log.events]
    assert Reconnecting in kinds and kinds[-1] is Disconnected, kinds
    end = log.events[-1]
    assert isinstance(end, Disconnected) and end.reason == SessionEndReason.NETWORK_DISCONNECTED
    assert "gave up reconnecting" in end.detail
    assert not log.of(Reconnected) and session.state is SessionState.DISCONNECTED
    assert session.publishers == [] and publisher.session is None


async def test_without_reconnect_a_broken_link_ends_the_session_at_once(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    async with TcpProxy(server.url) as proxy:
        session = Session(sid, server.token(sid), proxy.url, ice_addresses=LOOPBACK, reconnect=False)
        log = EventLog(session)
        await session.connect()
        proxy.cut()
        reason = await asyncio.wait_for(session.wait_disconnected(), 20)
        assert reason == SessionEndReason.NETWORK_DISCONNECTED
    assert not log.of(Reconnecting)
    end = log.events[-1]
    assert isinstance(end, Disconnected) and end.reason == SessionEndReason.NETWORK_DISCONNECTED
