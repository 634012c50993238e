"""The STUN/TURN servers handed to clients, and their TURN credentials. Pure functions.

Each connection gets, in ``connected.ice_servers``, the servers its peer connections should
use, in the shape ``RTCPeerConnection({iceServers})`` takes: STUN URLs without credentials,
TURN URLs with a username and a credential. TURN credentials are one of two kinds:

**A shared secret** (coturn ``use-auth-secret`` with ``static-auth-secret``; the "TURN REST
API", draft-uberti-behave-turn-rest-00). The server mints a credential for each connection,
valid for ``ttl`` seconds (24 h by default)::

    username   = f"{expiry}:{connection_id}"    # expiry: Unix time in seconds, now + ttl
    credential = base64(HMAC-SHA1(secret, username))

The TURN server recomputes the HMAC with the same secret, and refuses a wrong one or a
username whose expiry has passed. Nothing but the secret is shared; the TURN server keeps
no per-user state. A credential is checked by the TURN server at every allocation and
refresh, so a call that outlives ``ttl`` loses its relay at its next refresh: pick a
``ttl`` longer than your longest call.

**A static username and password** (coturn ``lt-cred-mech`` with a ``user=``), the same for
every connection: simpler, but whoever reads it from a browser can relay through the TURN
server for as long as it is configured.

The secret and the static password are never logged (they are left out of ``repr``) and
never put in error messages.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from salon.protocol import IceServer

__all__ = [
    "DEFAULT_TURN_TTL",
    "IceSettings",
    "IceUrl",
    "parse_ice_url",
    "turn_rest_credentials",
]

#: The default lifetime of a minted TURN credential: 24 hours.
DEFAULT_TURN_TTL = 24 * 3600

IceScheme = Literal["stun", "stuns", "turn", "turns"]

_DEFAULT_PORTS: dict[str, int] = {"stun": 3478, "turn": 3478, "stuns": 5349, "turns": 5349}
_REG_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class IceUrl:
    """A parsed ``stun:`` / ``turn:`` URL (RFC 7064, RFC 7065)."""

    scheme: IceScheme
    host: str
    port: int
    transport: Literal["udp", "tcp"] | None = None

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")


def parse_ice_url(url: str) -> IceUrl:
    """Parse ``scheme:host[:port][?transport=udp|tcp]`` (the query for ``turn``/``turns``
    only; IPv6 hosts in brackets). Raises :class:`ValueError` saying what is wrong."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in _DEFAULT_PORTS:
        raise ValueError(f"ICE server URL {url!r} must start with stun:, stuns:, turn: or turns:")
    if rest.startswith("//"):
        raise ValueError(f"ICE server URL {url!r} has no '//': write {scheme}:host[:port]")
    hostport, qsep, query = rest.partition("?")
    transport: Literal["udp", "tcp"] | None = None
    if qsep:
        if scheme in ("stun", "stuns"):
            raise ValueError(f"ICE server URL {url!r}: a {scheme}: URL takes no query")
        if query == "transport=udp":
            transport = "udp"
        elif query == "transport=tcp":
            transport = "tcp"
        else:
            raise ValueError(f"ICE server URL {url!r}: the only query is ?transport=udp or ?transport=tcp")
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket:
            raise ValueError(f"ICE server URL {url!r}: unclosed '[' around the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"ICE server URL {url!r}: {host!r} is not an IPv6 address") from None
        port_text = after
        if port_text and not port_text.startswith(":"):
            raise ValueError(f"ICE server URL {url!r}: expected ':port' after ']'")
        port_text = port_text[1:] if port_text else ""
        has_port = bool(after)
    else:
        host, colon, port_text = hostport.partition(":")
        has_port = bool(colon)
        if not host or not _REG_NAME.match(host):
            raise ValueError(f"ICE server URL {url!r}: {host!r} is not a host name or IPv4 address")
    port = _DEFAULT_PORTS[scheme]
    if has_port:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"ICE server URL {url!r}: the port must be a number within 1-65535")
        port = int(port_text)
    return IceUrl(scheme, host, port, transport)  # type: ignore[arg-type]


def turn_rest_credentials(secret: str, user: str, *, now: float, ttl: int) -> tuple[str, str]:
    """A TURN username and credential for the shared-secret scheme (coturn
    ``use-auth-secret``): ``(f"{expiry}:{user}", base64(HMAC-SHA1(secret, username)))`` with
    ``expiry = int(now) + ttl``, Unix seconds."""
    if not secret:
        raise ValueError("the TURN secret is empty")
    if ttl <= 0:
        raise ValueError("the TURN credential lifetime must be a positive number of seconds")
    username = f"{int(now) + ttl}:{user}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True, slots=True)
class IceSettings:
    """The ICE servers to hand out, with either a TURN shared secret or a static TURN
    username and password for the ``turn:``/``turns:`` URLs. Checked at construction
    (:class:`ValueError` with a message that never contains a secret)."""

    urls: tuple[str, ...] = ()
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl: int = DEFAULT_TURN_TTL
    turn_username: str | None = None
    turn_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parsed = [parse_ice_url(url) for url in self.urls]
        has_turn = any(p.is_turn for p in parsed)
        if self.turn_secret is not None and not self.turn_secret:
            raise ValueError("the TURN secret is empty")
        if (self.turn_username is None) != (self.turn_password is None):
            raise ValueError("a static TURN username and password go together")
        if self.turn_secret is not None and self.turn_username is not None:
            raise ValueError("use a TURN shared secret or a static TURN username and password, not both")
        has_credentials = self.turn_secret is not None or self.turn_username is not None
        if has_turn and not has_credentials:
            raise ValueError(
                "turn: URLs need credentials: a TURN shared secret (--turn-secret-file or "
                "SALON_TURN_SECRET) or a static SALON_TURN_USERNAME and SALON_TURN_PASSWORD"
            )
        if has_credentials and not has_turn:
            raise ValueError("TURN credentials are configured but no turn: or turns: ICE server URL")
        if isinstance(self.turn_ttl, bool) or not isinstance(self.turn_ttl, int) or self.turn_ttl <= 0:
            raise ValueError("the TURN credential lifetime must be a positive number of seconds")

    def for_connection(self, connection_id: str, *, now: float) -> list[IceServer]:
        """The ``iceServers`` for one connection at Unix time ``now``: one entry for the STUN
        URLs, one for the TURN URLs with their credentials (either absent when not configured)."""
        stun = [url for url in self.urls if not url.startswith("turn")]
        turn = [url for url in self.urls if url.startswith("turn")]
        servers: list[IceServer] = []
        if stun:
            servers.append(IceServer(urls=stun))
        if turn:
            if self.turn_secret is not None:
                username, credential = turn_rest_credentials(
                    self.turn_secret, connection_id, now=now, ttl=self.turn_ttl
                )
            else:
                assert self.turn_username is not None and self.turn_password is not None
                username, credential = self.turn_username, self.turn_password
            servers.append(IceServer(urls=turn, username=username, credential=credential))
        return servers
