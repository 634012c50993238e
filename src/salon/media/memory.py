"""An in-memory transport pair: a :class:`~salon.media.webrtc.MediaLink` without sockets.

:class:`MemoryLink` is the SFU end, given to a
:class:`~salon.media.transport.WebRtcTransport` in place of the aiortc link; its
:class:`MemoryPeer` is the client end, in the same process. Nothing is negotiated: ICE
"nominates" at once and the "DTLS handshake" hands both ends SRTP sessions keyed with fresh
random master keys (real libsrtp, AES128_CM_SHA1_80, one key per direction), so the
transport's whole packet path runs as in production (the datagram gate, SRTP, routing,
producers, consumers, RTCP, timers) and only the sockets are missing. Delivery is
synchronous both ways: what the transport sends is in the peer's lists when ``send_rtp``
returns, and :meth:`MemoryPeer.send_rtp` returns after the transport handled the packet.

Product-agnostic and cheap (no certificate, no socket): unit tests of transports, producers,
consumers and routers use it (``tests/unit/media/test_memory_transport.py``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from aiortc import RTCIceCandidate
from pylibsrtp import Policy, Session

from salon.media.demux import MAX_DATAGRAM
from salon.media.rtcp import RtcpPacket, parse_rtcp
from salon.media.sdp import HostCandidate, LocalTransportParameters, RemoteTransportParameters
from salon.media.webrtc import (
    DatagramPort,
    DatagramReceiver,
    LinkFailure,
    SrtpCall,
    SrtpContexts,
    srtp_call,
    srtp_contexts,
)

__all__ = ["LOCAL_ADDR", "PEER_ADDR", "PEER_REMOTE", "MemoryLink", "MemoryPeer"]

LOCAL_ADDR = ("192.0.2.1", 40000)
"""The SFU end's (fictitious, TEST-NET-1) address, in its answer."""
PEER_ADDR = ("192.0.2.2", 50000)
"""The client end's address, as the SFU end sees it: the one "ICE" validates."""
PEER_REMOTE = RemoteTransportParameters(
    ice_ufrag="peer",
    ice_pwd="peerpeerpeerpeerpeerpeer",
    ice_lite=False,
    fingerprints=(("sha-256", ":".join(["00"] * 32)),),
    candidates=(),
    candidates_complete=True,
)
"""Remote parameters to ``start`` a transport on a memory link with (nothing checks them)."""

_KEY_LENGTH = 30  # AES-128 key + 112-bit salt


def _session(key: bytes, direction: int) -> Session:
    return Session(Policy(key=key, ssrc_type=direction, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))


class MemoryLink:
    """The SFU end of an in-memory pair (a :class:`~salon.media.webrtc.MediaLink`).

    ``failure``: when set, :meth:`connect` raises it (ICE or DTLS failure paths).
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.port = DatagramPort()
        self.peer = MemoryPeer(self)
        self.failure: LinkFailure | None = None
        self.remote_candidates: list[RTCIceCandidate] = []
        self.candidates_complete = False
        #: DTLS records (and SRTP before "DTLS") the transport handed to the DTLS layer.
        self.dtls_datagrams: list[bytes] = []
        self.connected = False
        self.closed = False
        self._receiver: DatagramReceiver | None = None
        self._trusted: set[Any] = set()
        down, up = secrets.token_bytes(_KEY_LENGTH), secrets.token_bytes(_KEY_LENGTH)
        self._contexts = srtp_contexts(
            _session(down, Policy.SSRC_ANY_OUTBOUND), _session(up, Policy.SSRC_ANY_INBOUND)
        )
        self.peer._keys(
            protect=_session(up, Policy.SSRC_ANY_OUTBOUND), unprotect=_session(down, Policy.SSRC_ANY_INBOUND)
        )

    def __repr__(self) -> str:
        return f"MemoryLink({self.name})"

    # MediaLink ------------------------------------------------------------------------------

    def attach(self, receiver: DatagramReceiver, trusted: set[Any]) -> None:
        self._receiver = receiver
        self._trusted = trusted

    async def gather(self) -> None:
        return None

    def local_parameters(self, announced_address: str | None) -> LocalTransportParameters:
        return LocalTransportParameters(
            ice_ufrag="memory",
            ice_pwd="memorymemorymemorymemory",
            fingerprints=(("sha-256", ":".join(["11"] * 32)),),
            candidates=(
                HostCandidate(
                    foundation="1",
                    priority=2130706431,
                    ip=announced_address or LOCAL_ADDR[0],
                    port=LOCAL_ADDR[1],
                ),
            ),
        )

    @property
    def local_ports(self) -> list[int]:
        return [LOCAL_ADDR[1]]

    @property
    def remote_candidate_count(self) -> int:
        return len(self.remote_candidates)

    def knows_remote_candidate(self, addr: Any) -> bool:
        return any((c.ip, c.port) == (addr[0], addr[1]) for c in self.remote_candidates)

    def validated(self, addr: Any) -> bool:
        return self.connected and (addr[0], addr[1]) == PEER_ADDR

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        if candidate is None:
            self.candidates_complete = True
        else:
            self.remote_candidates.append(candidate)

    async def connect(self, remote: RemoteTransportParameters) -> SrtpContexts:
        if self.failure is not None:
            raise self.failure
        self.connected = True
        self._trusted.add(PEER_ADDR)
        self.port.sendto = self.peer.datagram_received
        self.port.remote_addr = PEER_ADDR
        return self._contexts

    def deliver_to_dtls(self, data: bytes) -> None:
        self.dtls_datagrams.append(data)

    async def send_fallback(self, packet: bytes) -> None:
        raise ConnectionError("memory link: not connected")

    def describe(self) -> str:
        return f"memory link ({'connected' if self.connected else 'not connected'})"

    async def close(self, connected: bool) -> None:
        self.closed = True
        self.connected = False
        self.port.sendto = None
        self.port.remote_addr = None

    # From the peer --------------------------------------------------------------------------

    def datagram(self, data: bytes, addr: Any = PEER_ADDR) -> None:
        """One datagram from ``addr`` on the SFU end's "socket": what
        :class:`~salon.media.webrtc.AiortcLink`'s socket callback does with it."""
        receiver = self._receiver
        if receiver is None or self.closed:
            return
        if addr in self._trusted and 11 < len(data) <= MAX_DATAGRAM and 127 < data[0] < 192:
            receiver.srtp_received(data)
        else:
            receiver.datagram_received(data, addr, self.peer.stun_received)


class MemoryPeer:
    """The client end of a :class:`MemoryLink`: sends SRTP to the transport and keeps what
    it receives, decrypted (``rtp``, ``rtcp``), in order."""

    def __init__(self, link: MemoryLink) -> None:
        self.link = link
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        #: STUN the transport handed to "ICE" (from any address).
        self.stun: list[tuple[bytes, Any]] = []
        #: Datagrams that failed SRTP unprotect on the way in.
        self.srtp_errors = 0
        #: Called with each decrypted RTP packet the peer receives, if set.
        self.on_rtp: Callable[[bytes], None] | None = None
        self._protect: SrtpCall | None = None
        self._protect_rtcp: SrtpCall | None = None
        self._unprotect: SrtpCall | None = None
        self._unprotect_rtcp: SrtpCall | None = None

    def _keys(self, *, protect: Session, unprotect: Session) -> None:
        self._protect = srtp_call(protect, "protect")
        self._protect_rtcp = srtp_call(protect, "protect_rtcp")
        self._unprotect = srtp_call(unprotect, "unprotect")
        self._unprotect_rtcp = srtp_call(unprotect, "unprotect_rtcp")

    def send_rtp(self, packet: bytes, addr: Any = PEER_ADDR) -> None:
        """Protect ``packet`` and send it to the transport (handled when this returns)."""
        assert self._protect is not None
        protected = self._protect(packet)
        assert protected is not None, "SRTP protect failed"
        self.link.datagram(protected, addr)

    def send_rtcp(self, packet: bytes, addr: Any = PEER_ADDR) -> None:
        assert self._protect_rtcp is not None
        protected = self._protect_rtcp(packet)
        assert protected is not None, "SRTCP protect failed"
        self.link.datagram(protected, addr)

    def send_datagram(self, data: bytes, addr: Any = PEER_ADDR) -> None:
        """Send raw bytes (garbage, STUN, DTLS...) from ``addr``."""
        self.link.datagram(data, addr)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """The transport's ``sendto``: unprotect and keep."""
        assert self._unprotect is not None and self._unprotect_rtcp is not None
        if 192 <= data[1] <= 223:
            clear = self._unprotect_rtcp(data)
            if clear is None:
                self.srtp_errors += 1
            else:
                self.rtcp.append(clear)
            return
        clear = self._unprotect(data)
        if clear is None:
            self.srtp_errors += 1
            return
        self.rtp.append(clear)
        if self.on_rtp is not None:
            self.on_rtp(clear)

    def stun_received(self, data: bytes, addr: Any) -> None:
        self.stun.append((data, addr))

    def received_rtcp(self, kind: type[Any] | None = None) -> list[RtcpPacket]:
        """Every RTCP packet received so far (of type ``kind``), in order."""
        return [p for raw in self.rtcp for p in parse_rtcp(raw) if kind is None or isinstance(p, kind)]
