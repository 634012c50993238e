"""A link lost for 5 s is resumed, as OpenTok does it: the same connection ID and stream IDs
before and after, the other participant sees no destroyed or created events, and media flows
again both ways on the re-established transports (the old ones were cut with the link)."""

from __future__ import annotations

import asyncio

import pytest
from sdk_helpers import LOOPBACK, EventLog, Recorder, auto_subscribe, cut_media, session_for, wait_for

from salon.client import (
    ConnectionCreated,
    ConnectionDropped,
    Publisher,
    Reconnected,
    Reconnecting,
    Session,
    SessionState,
    SignalReceived,
    StreamDropped,
    StreamReceived,
)
from tests.conftest import RunningServer
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(120)


async def test_a_link_lost_for_5_s_is_resumed_with_the_same_ids_and_media_flows_again(
    grace_server: RunningServer,
) -> None:
    server = grace_server
    sid = server.session()
    seen = {"alice": Recorder(), "bob": Recorder()}
    async with TcpProxy(server.url) as proxy:
        alice = Session(sid, server.token(sid, data="alice"), proxy.url, ice_addresses=LOOPBACK)
        alice_log = EventLog(alice)
        auto_subscribe(alice, seen["alice"])
        bob = session_for(server, sid)
        async with alice, bob:
            bob_log = EventLog(bob)
            auto_subscribe(bob, seen["bob"])
            publisher = Publisher("alice")
            alice_stream = await alice.publish(publisher)
            bob_stream = await bob.publish(Publisher("bob"))
            await wait_for(lambda: all(len(r.indices) >= 10 for r in seen.values()), "video both ways", 20)
            connection_id = alice.connection_id
            old_pc = publisher._pc
            before = list(bob_log.events)

            # Alice's network goes for 5 s: her signalling link resets at both ends, her media
            # sockets close, and she cannot reach the server until it comes back.
            cut_media(alice)
            proxy.freeze()
            proxy.drop()
            await wait_for(lambda: alice_log.of(Reconnecting), "alice to notice", 10)
            await asyncio.sleep(5)  # the outage itself
            proxy.thaw()

            # Meanwhile bob signals her, waiting on nothing: the server holds it for her.
            await bob.signal("chat", "while you were away", to=connection_id)
            # And she signals bob while reconnecting: it waits and goes after the resume.
            sent = asyncio.ensure_future(alice.signal("chat", "back", retry_after_reconnect=True))

            await wait_for(lambda: alice_log.of(Reconnected), "alice to resume", 40)
            reconnected = alice_log.of(Reconnected)[0]
            assert isinstance(reconnected, Reconnected) and reconnected.resumed, reconnected
            assert alice.state is SessionState.CONNECTED
            assert alice.connection_id == connection_id
            errors = [e for e in alice_log.events if type(e).__name__ == "Error"]
            assert errors == []
            assert publisher.stream_id == alice_stream.stream_id
            assert publisher._pc is not None and publisher._pc is not old_pc  # media set up again
            assert [s.stream.stream_id for s in alice.subscribers] == [bob_stream.stream_id]
            assert list(alice.streams) == [bob_stream.stream_id]
            await asyncio.wait_for(sent, 10)

            # Media flows again, both ways, from the re-established transports.
            counts = {name: len(r.indices) for name, r in seen.items()}
            await wait_for(
                lambda: all(len(r.indices) >= counts[name] + 15 for name, r in seen.items()),
                "15 more decoded frames both ways",
                30,
            )
            for name, recorder in seen.items():
                tail = recorder.indices[counts[name] :]
                assert tail == sorted(tail), f"{name}: frames out of order after the resume: {tail}"

            def signals(log: EventLog) -> list[str]:
                return [e.data for e in log.of(SignalReceived) if isinstance(e, SignalReceived)]

            await wait_for(lambda: "while you were away" in signals(alice_log), "bob's held signal at alice")
            await wait_for(lambda: "back" in signals(bob_log), "alice's queued signal at bob")

            # Bob saw nothing of it: no connection or stream destroyed or created, and he
            # still has exactly his subscription to alice's same stream.
            after = bob_log.events[len(before) :]
            kinds = (ConnectionDropped, StreamDropped, ConnectionCreated, StreamReceived)
            assert [e for e in after if isinstance(e, kinds)] == []
            assert [s.stream.stream_id for s in bob.subscribers] == [alice_stream.stream_id]
            assert list(bob.connections) == [connection_id]


async def test_a_link_lost_past_the_grace_period_falls_back_to_a_new_connection(
    short_grace_server: RunningServer,
) -> None:
    server = short_grace_server
    sid = server.session()
    seen = Recorder()
    async with TcpProxy(server.url) as proxy:
        alice = Session(sid, server.token(sid), proxy.url, ice_addresses=LOOPBACK)
        alice_log = EventLog(alice)
        bob = session_for(server, sid)
        async with alice, bob:
            bob_log = EventLog(bob)
            auto_subscribe(bob, seen)
            publisher = Publisher("alice")
            first = await alice.publish(publisher)
            await wait_for(lambda: len(seen.indices) >= 10, "bob decoding alice", 20)
            connection_id = alice.connection_id

            proxy.freeze()
            proxy.drop()
            # The server gives up on alice after its 1 s grace: bob sees her go.
            await wait_for(lambda: bob_log.of(ConnectionDropped), "alice destroyed at bob", 15)
            dropped = bob_log.of(ConnectionDropped)[0]
            assert isinstance(dropped, ConnectionDropped) and dropped.reason == "networkDisconnected"
            proxy.thaw()

            # Alice's resume is refused; she connects afresh and publishes a new stream.
            await wait_for(lambda: alice_log.of(Reconnected), "alice to reconnect", 40)
            reconnected = alice_log.of(Reconnected)[0]
            assert isinstance(reconnected, Reconnected) and not reconnected.resumed
            assert alice.connection_id != connection_id
            assert publisher.stream_id is not None and publisher.stream_id != first.stream_id
            count = len(seen.indices)
            await wait_for(lambda: len(seen.indices) >= count + 15, "bob decoding alice's new stream", 30)
            assert [
                e.stream.stream_id for e in bob_log.of(StreamDropped) if isinstance(e, StreamDropped)
            ] == [first.stream_id]
