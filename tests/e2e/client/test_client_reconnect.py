"""A broken signalling link is reconnected: a new connection, the publisher re-published,
the subscriber re-subscribed, and media flows again both ways."""

from __future__ import annotations

import pytest
from sdk_helpers import EventLog, Recorder, auto_subscribe, session_for, wait_for

from salon.client import (
    ConnectionDropped,
    Publisher,
    Reconnected,
    Reconnecting,
    SessionState,
    StreamDropped,
    StreamReason,
    StreamReceived,
)
from tests.conftest import RunningServer

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
