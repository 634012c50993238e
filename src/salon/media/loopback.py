"""Gather ICE host candidates on exactly the addresses we are told to, including 127.0.0.1.

aioice (0.13.0) gathers host candidates on every interface address *except* 127.0.0.1 and
``::1`` (``aioice.ice.get_host_addresses``), binds each socket on port 0, and has no port
range option. An SFU wants the opposite: exactly its configured listen addresses (loopback in
tests, a private address behind an announced public one in production), on ports from a
configured range. Two tools live here:

* :func:`bind_host_candidates` (used by :class:`~salon.media.transport.WebRtcTransport`)
  replaces ``get_component_candidates`` on **one** ``aioice.Connection`` instance, so that its
  ``gather_candidates()`` binds one UDP socket per listen address, inside ``port_range`` when
  given, and nothing else (no STUN/TURN: the SFU has none). It touches no global state, so
  transports with different addresses can gather concurrently. It relies on aioice internals
  that are stable in the pinned 0.13.0: ``Connection.get_component_candidates`` (the method
  replaced), ``Connection._protocols`` (where aioice keeps its sockets; ``close()`` closes
  them) and ``StunProtocol``/``Candidate``.
* :func:`host_addresses` is a reversible, process-wide patch of
  ``aioice.ice.get_host_addresses`` for code that drives stock aioice, e.g. the aiortc
  ``RTCPeerConnection`` clients of the end-to-end tests. It is a context manager; nesting
  restores the previous value on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import socket
from collections.abc import Iterator, Sequence

import aioice.ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from salon.media.errors import MediaResourceError

__all__ = ["bind_host_candidates", "bind_udp_socket", "host_addresses"]

logger = logging.getLogger(__name__)

#: Per-datagram read size on the default asyncio loop (see :func:`bind_host_candidates`).
RECV_SIZE = 4096
#: Receive buffer asked for on each media socket (the kernel may clamp it).
SOCKET_RECV_BUFFER = 1024 * 1024


@contextlib.contextmanager
def host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Make stock aioice gather on exactly ``addresses`` while the context is active.

    Process-wide (it patches the module attribute aioice looks up), so meant for tests and
    tools. IPv4/IPv6 filtering by aioice's ``use_ipv4``/``use_ipv6`` flags still applies.
    """
    chosen = list(addresses)
    previous = aioice.ice.get_host_addresses

    def patched(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        out = []
        for address in chosen:
            version = ipaddress.ip_address(address).version
            if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
                out.append(address)
        return out

    aioice.ice.get_host_addresses = patched
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = previous


def bind_udp_socket(address: str, port_range: tuple[int, int] | None = None) -> socket.socket:
    """Bind a non-blocking UDP socket on ``address``, on a free port of ``port_range``.

    Ports of the range are tried in random order; raise :class:`MediaResourceError` when every
    one is taken. Without a range the kernel picks an ephemeral port.
    """
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    if port_range is None:
        candidates: Sequence[int] = [0]
    else:
        low, high = port_range
        if not (0 < low <= high <= 65535):
            raise ValueError(f"invalid UDP port range {port_range!r}")
        candidates = random.sample(range(low, high + 1), high - low + 1)
    for port in candidates:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RECV_BUFFER)
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and port != 0:
                continue
            raise MediaResourceError(f"cannot bind a UDP socket on {address}:{port}: {exc}") from exc
        return sock
    raise MediaResourceError(f"no free UDP port on {address} in the range {port_range[0]}-{port_range[1]}")  # type: ignore[index]


def bind_host_candidates(
    connection: aioice.ice.Connection,
    listen_addresses: Sequence[str],
    port_range: tuple[int, int] | None = None,
) -> None:
    """Make ``connection.gather_candidates()`` bind exactly ``listen_addresses``.

    Call before ``gather_candidates()`` (``RTCIceGatherer.gather()``). Sockets bound here are
    registered with the connection and closed by ``connection.close()``. If binding one
    address fails, the sockets already bound for this call are closed and the error
    propagates out of ``gather_candidates()``.
    """
    listen = list(listen_addresses)

    async def get_component_candidates(
        component: int,
        addresses: list[str] | None = None,
        timeout: int = 5,
    ) -> list[Candidate]:
        # ``addresses`` is what aioice found on the interfaces: ignored on purpose.
        loop = asyncio.get_running_loop()
        protocols: list[aioice.ice.StunProtocol] = []
        try:
            for address in listen:
                sock = bind_udp_socket(address, port_range)
                try:
                    _transport, protocol = await loop.create_datagram_endpoint(
                        lambda: aioice.ice.StunProtocol(connection), sock=sock
                    )
                except OSError:
                    sock.close()
                    raise
                # asyncio's selector loop calls recvfrom(max_size=256 KiB) per datagram, which
                # costs ~3x more than a small buffer (media-plane.md §4.1); uvloop has no such
                # attribute. 4 KiB is far above any RTP/DTLS datagram on a 1500-byte MTU.
                if hasattr(_transport, "max_size"):
                    _transport.max_size = RECV_SIZE
                host, port = sock.getsockname()[:2]
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", host),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=host,
                    port=port,
                    type="host",
                )
                protocols.append(protocol)
        except BaseException:
            for protocol in protocols:
                await protocol.close()
            raise
        connection._protocols += protocols
        return [p.local_candidate for p in protocols]

    # The instance attribute shadows the class method for this connection only.
    connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
