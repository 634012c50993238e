"""The seam between salon's media plane and aiortc / aioice / pylibsrtp.

This is the ONLY module of :mod:`salon.media` allowed to touch private members of aiortc,
aioice or pylibsrtp (``tests/unit/media/test_webrtc_seam.py`` greps the others and fails on
any). Everything here is written against the pinned versions: **aiortc 1.16.0, aioice 0.13.0,
pylibsrtp 1.0.0**; an upgrade starts by re-reading this module against theirs.

The rest of the media plane sees a small typed interface:

* :class:`SrtpContexts`: protect / unprotect for RTP and RTCP, one call per packet
  (:func:`srtp_call`). (Nothing in the packet path batches today: each datagram is protected
  and sent, or received and unprotected, on its own.)
* :class:`DatagramPort`: where media goes out, the nominated candidate pair of component 1
  (``sendto`` and ``remote_addr``, both ``None`` while no pair is nominated); it is updated
  when aioice nominates a pair or closes, never polled per packet.
* :class:`DatagramReceiver`: what a link calls with incoming datagrams (implemented by
  :class:`~salon.media.transport.WebRtcTransport`); the hot path is
  :meth:`DatagramReceiver.srtp_received`.
* :class:`MediaLink`: ICE + DTLS-SRTP setup for one bundled, rtcp-mux transport: gather,
  local parameters, remote candidates, connect (giving the :class:`SrtpContexts`), close.
  :class:`AiortcLink` is the real one; :class:`salon.media.memory.MemoryLink` is the
  in-memory one for tests.

Private members used (and why):

* ``RTCIceGatherer._connection`` (the ``aioice.Connection``): its sockets, pairs and
  candidates; aiortc exposes none of them.
* ``aioice.Connection._nominated`` is **replaced** by :class:`_NominatedPairs`, a dict that
  tells the :class:`DatagramPort` when a pair is nominated or dropped (aioice only assigns
  items and clears it), so the send path costs no per-packet lookup.
* ``Connection._protocols`` (its ``StunProtocol`` sockets): each one's
  ``datagram_received`` is **replaced per instance** (:meth:`AiortcLink._guard`): SRTP/SRTCP
  from an address ICE validated goes straight to :meth:`DatagramReceiver.srtp_received`
  (no aioice STUN parse, no ``Connection.data_received`` hop, no ``asyncio.Queue`` and no
  task wake-up per packet); everything else to :meth:`DatagramReceiver.datagram_received`.
* ``Connection.data_received`` (**replaced per instance**; the original, kept, feeds aiortc's
  DTLS reader: :meth:`AiortcLink.deliver_to_dtls`), ``Connection._check_list`` (pair
  states: :meth:`AiortcLink.validated`), ``Connection._remote_candidates`` and
  ``Candidate._network_host`` (the peer-reflexive cap), ``Connection.get_component_candidates``
  (**replaced per instance** by :func:`bind_host_candidates`) and ``aioice.ice.CandidatePair``.
* ``RTCDtlsTransport._handle_rtp_data`` / ``_handle_rtcp_data`` (**replaced per instance**:
  SRTP that reaches aiortc's reader between its handshake and ours goes to the receiver),
  ``_tx_srtp`` / ``_rx_srtp`` (the DTLS-derived SRTP sessions), ``_send_rtp`` (the send
  fallback while no pair is nominated) and ``_task`` (its reader, cancelled on close).
* pylibsrtp ``Session._srtp``, ``_cdata``, ``_buffer`` and its cffi ``pylibsrtp._binding``
  (:func:`srtp_call`; falls back to the public methods if they change).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aioice.ice
import pylibsrtp
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aioice.ice import CandidatePair
from aiortc import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCIceCandidate,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceTransport,
)
from aiortc.sdp import candidate_from_sdp

from salon.media.demux import MAX_DATAGRAM
from salon.media.loopback import RECV_SIZE, bind_udp_socket
from salon.media.sdp import HostCandidate, LocalTransportParameters, RemoteTransportParameters

__all__ = [
    "AiortcLink",
    "DatagramPort",
    "DatagramReceiver",
    "LinkFailure",
    "LinkFailureKind",
    "MediaLink",
    "SrtpCall",
    "SrtpContexts",
    "bind_host_candidates",
    "parse_candidate",
    "srtp_call",
    "srtp_contexts",
]

logger = logging.getLogger(__name__)

SrtpCall = Callable[[bytes], "bytes | None"]
"""Protect or unprotect one packet: the result, or None where pylibsrtp would raise."""

SRTP_BUFFER = 1500
"""pylibsrtp's buffer: aiortc's reader raises (and ends DTLS) on a longer SRTP packet."""


# ------------------------------------------------------------------------------------------
# SRTP


def srtp_call(session: pylibsrtp.Session, name: str) -> SrtpCall:
    """A lean per-packet ``session.<name>`` (protect, unprotect, protect_rtcp, unprotect_rtcp).

    Returns a function giving the processed bytes, or None where pylibsrtp would raise
    (authentication or replay failure, packet too long for the buffer). It calls the libsrtp
    function directly on the session's context and reuses the session's buffer and one
    preallocated length cell, which is what ``Session.__process`` does minus its per-call
    allocations and checks (measured on a 1200-byte packet with AEAD_AES_256_GCM: 1.8
    instead of 2.5 µs per protect). The function keeps the session referenced.
    """
    trailer = {"protect": 144, "protect_rtcp": 148}.get(name, 0)  # SRTP_MAX_(SRTCP_)TRAILER_LEN
    try:
        from pylibsrtp._binding import ffi, lib

        function = getattr(lib, f"srtp_{name}")
        context = session._srtp[0]
        cdata = session._cdata
        buffer = session._buffer
        limit = len(cdata) - trailer
        length = ffi.new("int *")
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other pylibsrtp
        method = getattr(session, name)

        def fallback(packet: bytes) -> bytes | None:
            try:
                result: bytes = method(packet)
            except (pylibsrtp.Error, ValueError, TypeError):
                return None
            return result

        return fallback

    def call(packet: bytes, _keep: Any = session) -> bytes | None:
        size = len(packet)
        if size > limit:
            return None
        buffer[0:size] = packet
        length[0] = size
        if function(context, cdata, length):
            return None
        result: bytes = buffer[0 : length[0]]
        return result

    return call


@dataclass(frozen=True, slots=True)
class SrtpContexts:
    """The SRTP sessions of one DTLS association, as per-packet calls."""

    protect: SrtpCall
    protect_rtcp: SrtpCall
    unprotect: SrtpCall
    unprotect_rtcp: SrtpCall


def srtp_contexts(tx: pylibsrtp.Session, rx: pylibsrtp.Session) -> SrtpContexts:
    """:class:`SrtpContexts` over an outbound (``tx``) and an inbound (``rx``) session."""
    return SrtpContexts(
        protect=srtp_call(tx, "protect"),
        protect_rtcp=srtp_call(tx, "protect_rtcp"),
        unprotect=srtp_call(rx, "unprotect"),
        unprotect_rtcp=srtp_call(rx, "unprotect_rtcp"),
    )


# ------------------------------------------------------------------------------------------
# The typed interface


class DatagramPort:
    """Where media goes out: the nominated pair's ``sendto`` and remote address.

    Both are ``None`` while no pair is nominated (the sender then falls back to
    :meth:`MediaLink.send_fallback`). ``sendto(data, remote_addr)`` may raise ``OSError``
    (socket buffer full, socket closed). Updated by the link, read per packet.
    """

    __slots__ = ("remote_addr", "sendto")

    def __init__(self) -> None:
        self.sendto: Callable[[bytes, Any], None] | None = None
        self.remote_addr: Any = None


class DatagramReceiver(Protocol):
    """What a :class:`MediaLink` hands incoming datagrams to (the transport)."""

    def srtp_received(self, data: bytes) -> None:
        """SRTP or SRTCP (first byte 128..191, ≥ 12 bytes) from a validated address: the hot
        path. Looked up on the receiver per datagram (tests wrap it to inject loss)."""

    def datagram_received(self, data: bytes, addr: Any, stun: Callable[[bytes, Any], None]) -> None:
        """Any other datagram; ``stun`` hands one to ICE (checks, consent freshness)."""

    def unparsed_received(self, data: bytes) -> None:
        """A datagram ICE could not parse as STUN."""

    def receive_rtp(self, data: bytes, now: float) -> None:
        """Decrypted RTP the DTLS layer unprotected (before :class:`SrtpContexts` were handed
        over)."""

    def receive_rtcp(self, data: bytes, now: float) -> None:
        """Decrypted RTCP, likewise."""

    def link_lost(self, message: str) -> None:
        """DTLS closed or failed (close_notify from the peer, ICE consent expiry)."""


class LinkFailureKind(enum.Enum):
    ICE = "ice"
    DTLS = "dtls"


class LinkFailure(Exception):
    """:meth:`MediaLink.connect` failed: ICE checks or the DTLS handshake."""

    def __init__(self, kind: LinkFailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class MediaLink(Protocol):
    """ICE + DTLS-SRTP for one bundled, rtcp-mux transport, as the transport drives it."""

    port: DatagramPort

    def attach(self, receiver: DatagramReceiver, trusted: set[Any]) -> None:
        """Deliver incoming datagrams to ``receiver``; ``trusted`` holds the source addresses
        (as the socket reports them) SRTP is taken from on the hot path."""

    async def gather(self) -> None:
        """Bind the sockets and gather host candidates."""

    def local_parameters(self, announced_address: str | None) -> LocalTransportParameters:
        """ICE credentials, DTLS fingerprint (sha-256) and host candidates for the answer."""

    @property
    def local_ports(self) -> list[int]: ...

    @property
    def remote_candidate_count(self) -> int: ...

    def knows_remote_candidate(self, addr: Any) -> bool:
        """Whether ``addr`` is one of the remote candidates (signalled or learnt)."""

    def validated(self, addr: Any) -> bool:
        """Whether ``addr`` is the remote address of a pair ICE validated."""

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        """A remote candidate the transport's policy accepted; ``None`` ends them."""

    async def connect(self, remote: RemoteTransportParameters) -> SrtpContexts:
        """ICE checks then the DTLS handshake (client role); raises :class:`LinkFailure`
        (or ``ConnectionError``)."""

    def deliver_to_dtls(self, data: bytes) -> None:
        """A DTLS record (or SRTP before the handshake completed) for the DTLS reader."""

    async def send_fallback(self, packet: bytes) -> None:
        """Protect and send ``packet`` without a nominated pair; raises ConnectionError."""

    def describe(self) -> str:
        """ICE and DTLS states, for messages."""

    async def close(self, connected: bool) -> None:
        """Send DTLS close_notify (if ``connected`` or handshaking), close sockets and
        tasks; idempotent."""


def parse_candidate(value: str) -> RTCIceCandidate:
    """An ``a=candidate`` value (without ``candidate:``); raises ValueError when malformed."""
    try:
        return candidate_from_sdp(value)
    except (AssertionError, ValueError, IndexError) as exc:
        raise ValueError(f"malformed ICE candidate {value!r}") from exc


# ------------------------------------------------------------------------------------------
# aioice: host candidates on exactly the configured addresses


def bind_host_candidates(
    connection: aioice.ice.Connection,
    listen_addresses: Sequence[str],
    port_range: tuple[int, int] | None = None,
) -> None:
    """Make ``connection.gather_candidates()`` bind exactly ``listen_addresses``.

    aioice gathers on every interface address except loopback, on port 0, with no port range;
    an SFU wants exactly its listen addresses on ports of a range. This replaces
    ``get_component_candidates`` on **one** ``aioice.Connection`` instance (no global state,
    so transports with different addresses can gather concurrently). Sockets bound here are
    registered with the connection (``Connection._protocols``) and closed by
    ``connection.close()``. If binding one address fails, the sockets already bound for this
    call are closed and the error propagates out of ``gather_candidates()``.
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


# ------------------------------------------------------------------------------------------
# aiortc / aioice


class _NominatedPairs(dict[int, Any]):
    """``aioice.Connection._nominated`` (component -> CandidatePair) that keeps a
    :class:`DatagramPort` on component 1's pair: aioice assigns items when it nominates and
    clears the dict when it closes; every mutator is covered anyway."""

    def __init__(self, port: DatagramPort, owner: str) -> None:
        super().__init__()
        self._port = port
        self._owner = owner

    def _changed(self) -> None:
        pair = self.get(1)
        port = self._port
        if pair is None:
            port.sendto = None
            port.remote_addr = None
            return
        port.sendto = pair.protocol.transport.sendto
        port.remote_addr = pair.remote_addr
        logger.debug("%s: sending to %s via %s", self._owner, pair.remote_addr, pair.local_addr)

    def __setitem__(self, key: int, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: int) -> None:
        super().__delitem__(key)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def pop(self, *args: Any) -> Any:
        result = super().pop(*args)
        self._changed()
        return result

    def popitem(self) -> tuple[int, Any]:
        result = super().popitem()
        self._changed()
        return result

    def setdefault(self, key: int, default: Any = None) -> Any:
        result = super().setdefault(key, default)
        self._changed()
        return result

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()


_SUCCEEDED = CandidatePair.State.SUCCEEDED


class AiortcLink:
    """aiortc's ORTC objects (``RTCIceGatherer`` → ``RTCIceTransport`` → ``RTCDtlsTransport``),
    ICE-controlled answerer, DTLS client role (``a=setup:active``); no ``RTCPeerConnection``,
    ``RTCRtpSender`` or ``RTCRtpReceiver``."""

    def __init__(
        self,
        certificate: RTCCertificate | None,
        listen_addresses: Sequence[str],
        port_range: tuple[int, int] | None = None,
        *,
        name: str = "link",
    ) -> None:
        self.name = name
        self.certificate = certificate = certificate or RTCCertificate.generateCertificate()
        self.port = DatagramPort()
        self.gatherer = RTCIceGatherer(iceServers=[])
        connection = self.gatherer._connection
        self._connection = connection
        bind_host_candidates(connection, listen_addresses, port_range)
        connection._nominated = _NominatedPairs(self.port, name)
        self._queue_datagram = connection.data_received
        self._remote_candidates: list[Candidate] = connection._remote_candidates
        self.ice = RTCIceTransport(self.gatherer)
        self.dtls = RTCDtlsTransport(self.ice, [certificate])
        self._receiver: DatagramReceiver | None = None
        self._trusted: set[Any] = set()

    def __repr__(self) -> str:
        return f"AiortcLink({self.name})"

    def attach(self, receiver: DatagramReceiver, trusted: set[Any]) -> None:
        self._receiver = receiver
        self._trusted = trusted

        async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            receiver.receive_rtp(data, time.monotonic())

        async def handle_rtcp_data(data: bytes) -> None:
            receiver.receive_rtcp(data, time.monotonic())

        def data_received(data: bytes, component: int) -> None:
            receiver.unparsed_received(data)

        def on_dtls_state() -> None:
            state = self.dtls.state
            if state in ("closed", "failed"):
                receiver.link_lost(f"DTLS {state} by the peer or ICE consent expiry")

        self.dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]
        self.dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]
        self._connection.data_received = data_received  # type: ignore[method-assign]
        self.dtls.on("statechange", on_dtls_state)

    async def gather(self) -> None:
        await self.gatherer.gather()
        for protocol in self._connection._protocols:
            self._guard(protocol)

    def _guard(self, protocol: Any) -> None:
        """Put the datagram gate in front of aioice on ``protocol`` (one of our sockets).

        Replaces ``protocol.datagram_received`` on the instance (the loop looks the method up
        per datagram). SRTP/SRTCP from a trusted address (first byte 128..191, 12 bytes or
        more, RFC 7983 §7) goes straight to ``receiver.srtp_received`` (looked up per
        datagram: the seam tests wrap); everything else to ``receiver.datagram_received``
        with aioice's own ``datagram_received`` for STUN.
        """
        receiver = self._receiver
        assert receiver is not None, "attach() before gather()"
        stun = protocol.datagram_received
        trusted = self._trusted

        def datagram_received(data: bytes, addr: Any) -> None:
            if addr in trusted and 11 < len(data) <= MAX_DATAGRAM and 127 < data[0] < 192:
                receiver.srtp_received(data)
            else:
                receiver.datagram_received(data, addr, stun)

        protocol.datagram_received = datagram_received

    def local_parameters(self, announced_address: str | None) -> LocalTransportParameters:
        ice = self.gatherer.getLocalParameters()
        fingerprints = tuple(
            (f.algorithm, f.value) for f in self.certificate.getFingerprints() if f.algorithm == "sha-256"
        )
        candidates = tuple(
            HostCandidate(
                foundation=c.foundation, priority=c.priority, ip=announced_address or c.ip, port=c.port
            )
            for c in self.gatherer.getLocalCandidates()
        )
        return LocalTransportParameters(
            ice_ufrag=ice.usernameFragment or "",
            ice_pwd=ice.password or "",
            fingerprints=fingerprints,
            candidates=candidates,
        )

    @property
    def local_ports(self) -> list[int]:
        return [c.port for c in self.gatherer.getLocalCandidates()]

    @property
    def remote_candidate_count(self) -> int:
        return len(self._remote_candidates)

    def knows_remote_candidate(self, addr: Any) -> bool:
        host, port = addr[0], addr[1]
        return any(c._network_host == host and c.port == port for c in self._remote_candidates)

    def validated(self, addr: Any) -> bool:
        remote = (addr[0], addr[1])
        return any(
            pair.state is _SUCCEEDED and pair.remote_addr == remote for pair in self._connection._check_list
        )

    async def add_remote_candidate(self, candidate: RTCIceCandidate | None) -> None:
        await self.ice.addRemoteCandidate(candidate)

    async def connect(self, remote: RemoteTransportParameters) -> SrtpContexts:
        await self.ice.start(
            RTCIceParameters(
                usernameFragment=remote.ice_ufrag, password=remote.ice_pwd, iceLite=remote.ice_lite
            )
        )
        if self.ice.state != "completed":
            raise LinkFailure(LinkFailureKind.ICE, "ICE connectivity checks failed")
        await self.dtls.start(
            RTCDtlsParameters(
                fingerprints=[RTCDtlsFingerprint(algorithm=a, value=v) for a, v in remote.fingerprints],
                role="server",
            )
        )
        if self.dtls.state != "connected":
            raise LinkFailure(LinkFailureKind.DTLS, f"DTLS handshake ended in state {self.dtls.state}")
        return srtp_contexts(self.dtls._tx_srtp, self.dtls._rx_srtp)

    def deliver_to_dtls(self, data: bytes) -> None:
        self._queue_datagram(data, 1)

    async def send_fallback(self, packet: bytes) -> None:
        await self.dtls._send_rtp(packet)

    def describe(self) -> str:
        return f"ICE {self.ice.state}, DTLS {self.dtls.state}"

    async def close(self, connected: bool) -> None:
        current = asyncio.current_task()
        dtls_task = self.dtls._task
        if connected or self.dtls.state in ("connecting", "connected"):
            try:
                await self.dtls.stop()
            except ConnectionError as exc:
                logger.debug("%r: DTLS stop: %s", self, exc)
        if dtls_task is not None and dtls_task is not current:
            dtls_task.cancel()
            await asyncio.wait([dtls_task])
        await self.ice.stop()
        self.dtls.remove_all_listeners()
