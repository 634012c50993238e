"""WebRtcTransport lifecycle on 127.0.0.1: gathering options, failure events, no leftovers."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

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


def free_udp_ports(count: int) -> tuple[int, int]:
    """A range of ``count`` consecutive UDP ports free right now (checked by binding each),
    so the tests neither collide with each other nor with whatever else runs here."""
    for _ in range(200):
        first = random.randrange(20000, 60000 - count)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("0.0.0.0", port))
            except OSError:
                continue
        return first, first + count - 1
    raise AssertionError(f"no {count} consecutive free UDP ports found")


async def test_gathers_on_the_listen_address_within_the_port_range_and_announces() -> None:
    sockets_before = process_udp_sockets()
    free_range = free_udp_ports(20)
    options = WebRtcTransportOptions(port_range=free_range, announced_address="203.0.113.7")
    transport = await WebRtcTransport.create(options)
    try:
        (port,) = transport.local_ports
        assert free_range[0] <= port <= free_range[1]
        (candidate,) = transport.local_parameters().candidates
        assert (candidate.ip, candidate.port) == ("203.0.113.7", port)
        assert len(process_udp_sockets() - sockets_before) == 1
    finally:
        await transport.close()
    assert transport.state is TransportState.CLOSED
    assert process_udp_sockets() <= sockets_before


async def test_an_exhausted_port_range_is_our_error_and_leaks_nothing() -> None:
    sockets_before = process_udp_sockets()
    one_port = free_udp_ports(1)
    first = await WebRtcTransport.create(WebRtcTransportOptions(port_range=one_port))
    try:
        assert first.local_ports == [one_port[0]]
        with pytest.raises(MediaResourceError, match="no free UDP port"):
            await WebRtcTransport.create(WebRtcTransportOptions(port_range=one_port))
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
