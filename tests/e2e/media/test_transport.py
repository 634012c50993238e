"""WebRtcTransport lifecycle on 127.0.0.1: gathering options, failure events, no leftovers."""

from __future__ import annotations

import asyncio

import pytest
from peers import process_udp_sockets, wait_for

from salon.media.errors import MediaResourceError
from salon.media.sdp import RemoteTransportParameters
from salon.media.transport import (
    TransportClosed,
    TransportCloseReason,
    TransportEvent,
    TransportState,
    WebRtcTransport,
    WebRtcTransportOptions,
)

pytestmark = pytest.mark.timeout(30)

FREE_RANGE = (47100, 47119)


async def test_gathers_on_the_listen_address_within_the_port_range_and_announces() -> None:
    sockets_before = process_udp_sockets()
    options = WebRtcTransportOptions(port_range=FREE_RANGE, announced_address="203.0.113.7")
    transport = await WebRtcTransport.create(options)
    try:
        (port,) = transport.local_ports
        assert FREE_RANGE[0] <= port <= FREE_RANGE[1]
        (candidate,) = transport.local_parameters().candidates
        assert (candidate.ip, candidate.port) == ("203.0.113.7", port)
        assert len(process_udp_sockets() - sockets_before) == 1
    finally:
        await transport.close()
    assert transport.state is TransportState.CLOSED
    assert process_udp_sockets() <= sockets_before


async def test_an_exhausted_port_range_is_our_error_and_leaks_nothing() -> None:
    sockets_before = process_udp_sockets()
    first = await WebRtcTransport.create(WebRtcTransportOptions(port_range=(47130, 47130)))
    try:
        with pytest.raises(MediaResourceError, match="no free UDP port"):
            await WebRtcTransport.create(WebRtcTransportOptions(port_range=(47130, 47130)))
    finally:
        await first.close()
    assert process_udp_sockets() <= sockets_before


async def test_connect_timeout_closes_with_a_reason_and_no_tasks_left() -> None:
    tasks_before = asyncio.all_tasks()
    transport = await WebRtcTransport.create(WebRtcTransportOptions(connect_timeout=0.5))
    events: list[TransportEvent] = []
    transport.events.add_listener(events.append)
    transport.start(
        RemoteTransportParameters(
            ice_ufrag="abcd",
            ice_pwd="abcdefghijklmnopqrstuv",
            ice_lite=False,
            fingerprints=(("sha-256", ":".join(["AB"] * 32)),),
            candidates=(),
            candidates_complete=False,
        )
    )
    await wait_for(lambda: transport.closed, 5, "the connect timeout")
    await transport.close()  # idempotent: waits for the close in progress
    assert [type(e) for e in events] == [TransportClosed]
    closed = events[0]
    assert isinstance(closed, TransportClosed) and closed.reason is TransportCloseReason.CONNECT_TIMEOUT
    assert [t for t in asyncio.all_tasks() - tasks_before if not t.done()] == []


async def test_close_is_idempotent_and_concurrent_closes_wait_for_the_same_teardown() -> None:
    transport = await WebRtcTransport.create()
    await asyncio.gather(transport.close(), transport.close(), transport.router_closed())
    assert transport.close_reason is TransportCloseReason.CLOSED
    await transport.close()
