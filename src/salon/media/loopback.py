"""Gather ICE host candidates on exactly the addresses we are told to, including 127.0.0.1.

aioice (0.13.0) gathers host candidates on every interface address *except* 127.0.0.1 and
``::1`` (``aioice.ice.get_host_addresses``), binds each socket on port 0, and has no port
range option. An SFU wants the opposite: exactly its configured listen addresses (loopback in
tests, a private address behind an announced public one in production), on ports from a
configured range. Two tools live here:

* :func:`bind_udp_socket` binds one media socket on a listen address, inside ``port_range``
  when given; :func:`salon.media.webrtc.bind_host_candidates` (which touches aioice internals,
  so it lives in the seam module) makes one ``aioice.Connection`` gather exactly the listen
  addresses with it, and nothing else (no STUN/TURN: the SFU has none).
* :func:`host_addresses` is a reversible, process-wide patch of
  ``aioice.ice.get_host_addresses`` for code that drives stock aioice, e.g. the aiortc
  ``RTCPeerConnection`` clients of the end-to-end tests. It is a context manager; nesting
  restores the previous value on exit.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import random
import socket
from collections.abc import Iterator, Sequence

import aioice.ice

from salon.media.errors import MediaResourceError

__all__ = ["bind_udp_socket", "host_addresses"]

logger = logging.getLogger(__name__)

#: Per-datagram read size on the default asyncio loop (see
#: :func:`salon.media.webrtc.bind_host_candidates`).
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
