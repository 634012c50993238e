"""Which remote ICE candidates a media transport may send connectivity checks to (pure).

A client names its candidates (in its offer, or trickled with ``ice_candidate``) and the
SFU sends STUN binding requests to each: without a policy, anyone with a token could make a
media worker send datagrams to any address, e.g. a cloud metadata service
(169.254.169.254), a broadcast or multicast group, or a service on the server's own
loopback. :class:`IcePolicy` decides per candidate address:

1. A name instead of an IP (an mDNS ``….local`` name, a DNS name) is refused: the server
   cannot resolve mDNS names (they only mean something on the client's own link) and will
   not resolve DNS names a client hands it.
2. The configured networks (``salon serve --ice-allow CIDR`` / ``--ice-deny CIDR``): the most
   specific network containing the address decides; deny wins a tie.
3. Otherwise the defaults: refused are unspecified (``0.0.0.0/8``, ``::``), multicast
   (``224.0.0.0/4``, ``ff00::/8``), broadcast and reserved (``240.0.0.0/4``, which holds
   255.255.255.255), link-local (``169.254.0.0/16``, ``fe80::/10``) and loopback
   (``127.0.0.0/8``, ``::1``) unless the server itself listens on a loopback address (a
   development or test server, whose clients then are local too). Everything else is
   allowed.

IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are judged as the IPv4 address they carry.
Ports must be 1..65535. Besides the address, a transport accepts at most
:data:`MAX_REMOTE_CANDIDATES` remote candidates (:class:`~salon.media.transport.WebRtcTransport`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_DENIED", "MAX_REMOTE_CANDIDATES", "IcePolicy", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REMOTE_CANDIDATES = 32
"""Remote candidates one transport accepts (signalled and peer-reflexive ones together)."""

DEFAULT_DENIED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("240.0.0.0/4", "broadcast or reserved"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
)
"""Networks refused unless an ``--ice-allow`` network covers the address, with the reason."""

_LOOPBACK: tuple[tuple[str, str], ...] = (("127.0.0.0/8", "loopback"), ("::1/128", "loopback"))


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings (or single addresses) as networks; :class:`ValueError` names a bad one."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP network (CIDR) or address: {value!r}") from None
    return tuple(networks)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class IcePolicy:
    """The remote candidate addresses a transport may send checks to.

    :param allow: networks allowed even if a default refuses them.
    :param deny: networks refused even if the defaults allow them.
    :param allow_loopback: whether loopback candidates are allowed by default (the server
        listens on a loopback address: see :meth:`for_listen_addresses`).
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    allow_loopback: bool = False
    _configured: tuple[tuple[Network, bool], ...] = field(init=False, repr=False, compare=False)
    _defaults: tuple[tuple[Network, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        configured = [(n, True) for n in parse_networks(self.allow)]
        configured += [(n, False) for n in parse_networks(self.deny)]
        # Most specific first; on equal prefixes deny (False) before allow.
        configured.sort(key=lambda item: (-item[0].prefixlen, item[1]))
        defaults = DEFAULT_DENIED if self.allow_loopback else DEFAULT_DENIED + _LOOPBACK
        object.__setattr__(self, "_configured", tuple(configured))
        object.__setattr__(self, "_defaults", tuple((ipaddress.ip_network(n), why) for n, why in defaults))

    @classmethod
    def for_listen_addresses(
        cls, listen_addresses: Sequence[str], *, allow: Sequence[str] = (), deny: Sequence[str] = ()
    ) -> IcePolicy:
        """The policy of a server listening on ``listen_addresses`` (loopback allowed iff one is)."""
        return cls(
            allow=tuple(allow),
            deny=tuple(deny),
            allow_loopback=any(_is_loopback(a) for a in listen_addresses),
        )

    def refusal(self, host: str, port: int) -> str | None:
        """Why a candidate at ``host``:``port`` is refused, or None when it is allowed."""
        if not 0 < port < 65536:
            return f"port {port} is out of range"
        try:
            address: Address = ipaddress.ip_address(host)
        except ValueError:
            if host.lower().rstrip(".").endswith(".local"):
                return f"{host!r} is an mDNS name, which the server cannot resolve"
            return f"{host!r} is not an IP address"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for network, allowed in self._configured:
            if address.version == network.version and address in network:
                return None if allowed else f"{address} is in the denied network {network}"
        for network, why in self._defaults:
            if address.version == network.version and address in network:
                return f"{address} is refused by default ({why})"
        return None

    def allows(self, host: str, port: int) -> bool:
        return self.refusal(host, port) is None
