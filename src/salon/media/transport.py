"""WebRtcTransport: one client's ICE + DTLS-SRTP association, bundled, rtcp-mux.

Built on aiortc's ORTC objects (``RTCIceGatherer`` → ``RTCIceTransport`` →
``RTCDtlsTransport``) with no ``RTCPeerConnection``, ``RTCRtpSender`` or ``RTCRtpReceiver``
(``docs/architecture.md``, "Media plane"). The SFU always answers, so its gatherer is
ICE-controlled and the DTLS role is *client* (``a=setup:active``).

Packet path (no per-packet asyncio queue or task once connected):

* **in**: from gathering on, each of the connection's ``StunProtocol`` instances gets its
  ``datagram_received`` replaced (:meth:`WebRtcTransport._guard`). SRTP/SRTCP (first byte
  128..191, never STUN or DTLS, RFC 7983) of at least 12 bytes from an address ICE validated
  goes straight to :meth:`WebRtcTransport.srtp_received`, which unprotects with the
  DTLS-derived SRTP session and demultiplexes right there, in the loop's datagram callback:
  no aioice STUN parse attempt, no ``Connection.data_received`` hop, no ``asyncio.Queue``
  put/get and no task wake-up per packet (that chain dominated the prototype's fan-out-1
  cost). Everything else goes through :meth:`WebRtcTransport._gate`, which classifies it
  (:mod:`salon.media.demux`) and drops what cannot be STUN, DTLS, RTP or RTCP (empty,
  truncated, oversized, unknown first byte) and DTLS/SRTP from an address ICE has not
  validated: counted in :class:`TransportStats` and :data:`DROPPED`, logged at most once a
  minute per process, never per packet. This matters: aiortc's DTLS reader ends the
  association on any exception (an empty datagram raised ``IndexError`` there), and a forged
  DTLS alert could end a handshake. STUN keeps aioice's path (checks, consent freshness;
  peer-reflexive candidates within the per-transport cap); DTLS records go to aiortc's DTLS
  queue (aioice's ``Connection.data_received`` is replaced on *this connection instance* by
  :meth:`WebRtcTransport._datagram_received`, which now only sees what aioice failed to
  parse as STUN, and drops it). ``srtp_received`` is the seam tests wrap to inject loss.
  (Draining the socket ourselves with ``loop.add_reader`` + a ``recvfrom`` loop per wake-up
  was tried and measured *dearer* than uvloop's per-datagram callback: docs/benchmarks.md,
  "SFU forwarding".)
  Until DTLS is connected, SRTP goes to aiortc's reader (which ignores it before the
  handshake), with ``dtls._handle_rtp_data`` / ``dtls._handle_rtcp_data`` replaced on this
  instance by coroutines that call the same demultiplexer. RTP goes to the
  :class:`~salon.media.producer.Producer` that owns its SSRC (learnt from the mid header
  extension or a unique payload type when the offer announced none); RTCP is parsed once and
  routed by SSRC to producers (SR, BYE) and consumers (NACK, PLI, FIR, RR, REMB).
* **out**: :meth:`WebRtcTransport.send_rtp` / :meth:`send_rtcp` are synchronous: SRTP protect
  then the nominated candidate pair's ``DatagramTransport.sendto``, skipping aiortc's three
  awaited coroutines. Before ICE has nominated a pair (or if it lost it) they fall back to
  ``dtls._send_rtp`` in an owned task.
* **SRTP calls**: pylibsrtp's ``Session.protect``/``unprotect`` allocate an ``int *`` with cffi,
  type-check and go through two Python frames per packet; :func:`_srtp_call` binds the same
  libsrtp function to the session's own context and 1500-byte buffer once, so each packet
  costs one buffer copy in, the C call and one copy out (measured on a 1200-byte packet with
  AEAD_AES_256_GCM: 1.8 instead of 2.5 µs per protect). The length check that keeps libsrtp
  inside the buffer is kept.

Timers (NACK retries, key-frame request retries, the 1 s RTCP report) share one
``loop.call_at`` handle per transport, rescheduled to the earliest deadline any producer or
consumer asks for: no task per timer.

Lifecycle: ``await WebRtcTransport.create(options)`` gathers host candidates on the configured
``listen_addresses`` (see :mod:`salon.media.loopback`), :meth:`local_parameters` goes into the
SDP answer, :meth:`start` launches the owned connect task (ICE checks, then DTLS handshake)
with the client's parameters, :meth:`add_remote_candidate` feeds trickled candidates (those the
ICE policy refuses, :mod:`salon.media.ice_policy`, or over the cap never are). Events:
:class:`TransportConnected`, then :class:`TransportClosed` with a
:class:`TransportCloseReason` (``failed`` reasons included). :meth:`close` is idempotent: it
closes the producers and consumers (``transport_closed()``), the DTLS association (sending a
close_notify), the ICE connection and its sockets, and awaits every task it started.

Private aiortc/aioice attributes used (pinned aiortc 1.16.0 / aioice 0.13.0):
``RTCDtlsTransport._handle_rtp_data``, ``_handle_rtcp_data``, ``_send_rtp``, ``_tx_srtp``,
``_rx_srtp``, ``_task``; ``RTCIceTransport._connection``; ``aioice.Connection._nominated``,
``_protocols``, ``_check_list`` (pair states), ``_remote_candidates``, ``data_received``
(replaced per instance), ``aioice.ice.CandidatePair.State``; ``StunProtocol.datagram_received``
(replaced per instance); pylibsrtp 1.0 ``Session._srtp``, ``_cdata``, ``_buffer`` and its cffi
``_binding`` (:func:`_srtp_call` falls back to the public methods if they change).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pylibsrtp
from aioice.ice import CandidatePair
from aiortc import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceParameters,
    RTCIceTransport,
)
from aiortc.sdp import candidate_from_sdp

from salon.media.demux import MAX_DATAGRAM, Datagram, classify_datagram
from salon.media.errors import CandidateRefusedError, InvalidSdpError, MediaStateError
from salon.media.events import EventEmitter
from salon.media.ice_policy import MAX_REMOTE_CANDIDATES, IcePolicy
from salon.media.loopback import bind_host_candidates
from salon.media.rtcp import Bye, Fir, Nack, Pli, ReceiverReport, Remb, SenderReport, parse_rtcp
from salon.media.rtp import find_header_extension, parse_rtp_header
from salon.media.sdp import AnswerMedia, HostCandidate, LocalTransportParameters, RemoteTransportParameters

if TYPE_CHECKING:
    from salon.media.consumer import Consumer
    from salon.media.producer import Producer

__all__ = [
    "DROPPED",
    "DROP_LOG_INTERVAL",
    "TransportCloseReason",
    "TransportClosed",
    "TransportConnected",
    "TransportEvent",
    "TransportState",
    "TransportStats",
    "WebRtcTransport",
    "WebRtcTransportOptions",
]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

_SrtpCall = Callable[[bytes], "bytes | None"]

DROPPED: collections.Counter[str] = collections.Counter()
"""Datagrams and candidates dropped by every transport of this process, by kind: a
:class:`~salon.media.demux.Datagram` value (``empty``, ``malformed``, ``oversized``,
``unknown``), ``foreign`` (DTLS or SRTP from an address ICE has not validated) or
``candidate`` (a remote candidate refused by the ICE policy or the cap). Reported in the
worker dump."""

DROP_LOG_INTERVAL = 60.0
"""Seconds between two log lines about dropped datagrams (one process-wide line at most)."""

_SRTP_BUFFER = 1500
"""pylibsrtp's buffer: aiortc's reader raises (and ends DTLS) on a longer SRTP packet."""


class _DropReport:
    """At most one INFO line per :data:`DROP_LOG_INTERVAL` about dropped network garbage."""

    def __init__(self) -> None:
        self.next_at = 0.0
        self.since = 0

    def note(self, kind: str, transport: WebRtcTransport) -> None:
        self.since += 1
        now = time.monotonic()
        if now < self.next_at:
            return
        logger.info(
            "dropped %d datagrams or candidates (latest: %s on %r) since the last report; totals %s",
            self.since,
            kind,
            transport,
            dict(DROPPED),
        )
        self.since = 0
        self.next_at = now + DROP_LOG_INTERVAL


_drop_report = _DropReport()


def _srtp_call(session: Any, name: str) -> _SrtpCall:
    """A lean per-packet ``session.<name>`` (protect, unprotect, protect_rtcp, unprotect_rtcp).

    Returns a function giving the processed bytes, or None where pylibsrtp would raise
    (authentication or replay failure, packet too long for the buffer). It calls the libsrtp
    function directly on the session's context and reuses the session's buffer and one
    preallocated length cell, which is what ``Session.__process`` does minus its per-call
    allocations and checks. The session must stay referenced (the transport keeps it).
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


class TransportState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class TransportCloseReason(enum.Enum):
    """Why a transport closed: ours (``CLOSED``, ``ROUTER_CLOSED``) or the peer/network's."""

    CLOSED = "closed"
    """:meth:`WebRtcTransport.close` was called by its owner."""
    ROUTER_CLOSED = "router_closed"
    """The router (session) closed."""
    ICE_FAILED = "ice_failed"
    """ICE connectivity checks failed."""
    DTLS_FAILED = "dtls_failed"
    """The DTLS handshake failed (bad fingerprint, no SRTP profile, handshake error)."""
    CONNECT_TIMEOUT = "connect_timeout"
    """ICE + DTLS did not complete within ``connect_timeout``."""
    DISCONNECTED = "disconnected"
    """The peer sent a DTLS close_notify, or ICE consent expired after connecting."""


_SUCCEEDED = CandidatePair.State.SUCCEEDED

_FAILURES = frozenset(
    {TransportCloseReason.ICE_FAILED, TransportCloseReason.DTLS_FAILED, TransportCloseReason.CONNECT_TIMEOUT}
)


@dataclass(frozen=True, slots=True)
class TransportEvent:
    transport: WebRtcTransport


@dataclass(frozen=True, slots=True)
class TransportConnected(TransportEvent):
    """ICE nominated a pair and the DTLS handshake completed: media can flow."""


@dataclass(frozen=True, slots=True)
class TransportClosed(TransportEvent):
    """The transport closed; its producers and consumers are closed too."""

    reason: TransportCloseReason
    message: str = ""
    """Human-readable detail (which check failed...)."""


@dataclass(frozen=True, slots=True)
class WebRtcTransportOptions:
    listen_addresses: Sequence[str] = ("127.0.0.1",)
    """IPs to gather host candidates on, one UDP socket each. Default loopback only."""
    announced_address: str | None = None
    """Public IP written into the SDP candidates instead of the bound one (NAT/1:1). Default none."""
    port_range: tuple[int, int] | None = None
    """Inclusive UDP port range for the sockets; default: kernel-chosen ephemeral ports."""
    connect_timeout: float = 30.0
    """Seconds allowed from :meth:`WebRtcTransport.start` to DTLS connected."""
    ice_allow: Sequence[str] = ()
    """Networks (CIDR) remote candidates may be in even if the defaults refuse them
    (:class:`~salon.media.ice_policy.IcePolicy`)."""
    ice_deny: Sequence[str] = ()
    """Networks (CIDR) remote candidates may not be in."""
    max_remote_candidates: int = MAX_REMOTE_CANDIDATES
    """Remote candidates accepted per transport (signalled and peer-reflexive)."""

    def ice_policy(self) -> IcePolicy:
        return IcePolicy.for_listen_addresses(self.listen_addresses, allow=self.ice_allow, deny=self.ice_deny)


@dataclass(slots=True)
class TransportStats:
    """Counters, read by tests and stats endpoints (not thread-safe, not per-packet logged)."""

    rtp_received: int = 0
    rtp_bytes_received: int = 0
    rtp_unknown: int = 0
    rtp_malformed: int = 0
    rtcp_received: int = 0
    rtcp_malformed: int = 0
    rtp_sent: int = 0
    rtp_bytes_sent: int = 0
    rtcp_sent: int = 0
    send_errors: int = 0
    srtp_errors: int = 0
    """Datagrams that failed SRTP/SRTCP unprotect (replays, garbage, wrong keys)."""
    fallback_sends: int = 0
    garbage_dropped: int = 0
    """Datagrams that cannot be STUN, DTLS, RTP or RTCP (empty, malformed, oversized, unknown)."""
    foreign_dropped: int = 0
    """DTLS or SRTP datagrams from an address ICE has not validated."""
    candidates_refused: int = 0
    """Remote candidates refused: by the ICE policy, over the cap, or not UDP."""


class WebRtcTransport:
    """One client's bundled ICE + DTLS-SRTP association. Create with :meth:`create`."""

    def __init__(
        self,
        options: WebRtcTransportOptions,
        *,
        certificate: RTCCertificate | None = None,
        transport_id: str | None = None,
    ) -> None:
        self.id = transport_id or f"tr-{next(_ids)}-{secrets.token_hex(3)}"
        self.options = options
        self.events: EventEmitter[TransportEvent] = EventEmitter(self)
        self.stats = TransportStats()
        self.state = TransportState.NEW
        self.close_reason: TransportCloseReason | None = None

        self._certificate = certificate or RTCCertificate.generateCertificate()
        self._policy = options.ice_policy()
        self._gatherer = RTCIceGatherer(iceServers=[])
        bind_host_candidates(self._gatherer._connection, options.listen_addresses, options.port_range)
        self._ice = RTCIceTransport(self._gatherer)
        self._dtls = RTCDtlsTransport(self._ice, [self._certificate])
        self._dtls._handle_rtp_data = self._handle_rtp_data  # type: ignore[method-assign]
        self._dtls._handle_rtcp_data = self._handle_rtcp_data  # type: ignore[method-assign]
        self._dtls.on("statechange", self._on_dtls_state)

        connection = self._gatherer._connection
        self._nominated: dict[int, Any] = connection._nominated
        self._queue_datagram = connection.data_received
        connection.data_received = self._datagram_received  # type: ignore[method-assign]
        self._rx_srtp: Any = None
        self._tx_srtp: Any = None
        self._protect: _SrtpCall | None = None
        self._protect_rtcp: _SrtpCall | None = None
        self._unprotect: _SrtpCall | None = None
        self._unprotect_rtcp: _SrtpCall | None = None
        self._pair: Any = None
        self._sendto: Any = None
        self._remote_addr: tuple[str, int] | None = None
        #: Source addresses (as the socket reports them) of ICE-validated pairs: the only
        #: ones DTLS and SRTP are accepted from.
        self._trusted: set[Any] = set()
        self._remote_candidates: list[Any] = connection._remote_candidates

        self._connect_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._fallback_tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

        # Demultiplexing tables (the mediasoup "RtpListener").
        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        self._producers_by_ssrc: dict[int, Producer] = {}
        self._producers_by_mid: dict[str, Producer] = {}
        self._producers_by_pt: dict[int, Producer | None] = {}
        self._mid_extension_id: int | None = None
        self._consumers_by_ssrc: dict[int, Consumer] = {}
        #: The client's ICE and DTLS parameters, once :meth:`start` got them.
        self.remote: RemoteTransportParameters | None = None
        #: Every m-line this (subscribe) transport answered, by mid, kept after its consumer
        #: closed: a renegotiation answers them again, as negotiated (see Router.subscribe).
        self.answered: dict[str, AnswerMedia] = {}

    def __repr__(self) -> str:
        return f"WebRtcTransport({self.id})"

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    @classmethod
    async def create(
        cls,
        options: WebRtcTransportOptions | None = None,
        *,
        certificate: RTCCertificate | None = None,
        transport_id: str | None = None,
    ) -> WebRtcTransport:
        """Create a transport and gather its host candidates (binds the UDP sockets)."""
        transport = cls(
            options or WebRtcTransportOptions(), certificate=certificate, transport_id=transport_id
        )
        try:
            await transport._gatherer.gather()
        except BaseException:
            await transport.close()
            raise
        for protocol in transport._gatherer._connection._protocols:
            transport._guard(protocol)
        logger.debug("%r: gathered %s", transport, transport.local_parameters().candidates)
        return transport

    @property
    def closed(self) -> bool:
        return self.state is TransportState.CLOSED

    def local_parameters(self) -> LocalTransportParameters:
        """ICE credentials, DTLS fingerprint (sha-256) and host candidates for the answer."""
        ice = self._gatherer.getLocalParameters()
        fingerprints = tuple(
            (f.algorithm, f.value) for f in self._certificate.getFingerprints() if f.algorithm == "sha-256"
        )
        announced = self.options.announced_address
        candidates = tuple(
            HostCandidate(foundation=c.foundation, priority=c.priority, ip=announced or c.ip, port=c.port)
            for c in self._gatherer.getLocalCandidates()
        )
        return LocalTransportParameters(
            ice_ufrag=ice.usernameFragment or "",
            ice_pwd=ice.password or "",
            fingerprints=fingerprints,
            candidates=candidates,
        )

    def start(self, remote: RemoteTransportParameters) -> None:
        """Start ICE checks and then the DTLS handshake with the client's parameters."""
        if self.closed:
            raise MediaStateError(f"{self!r} is closed")
        if self._connect_task is not None:
            raise MediaStateError(f"{self!r} is already started")
        self._set_state(TransportState.CONNECTING)
        self.remote = remote
        self._connect_task = asyncio.get_running_loop().create_task(
            self._connect(remote), name=f"{self!r} connect"
        )

    def same_peer(self, remote: RemoteTransportParameters) -> bool:
        """Whether ``remote`` (from a new offer) is the peer connection this transport serves:
        the same ICE credentials and DTLS fingerprints, i.e. a renegotiation, no ICE restart."""
        return (
            not self.closed
            and self.remote is not None
            and (remote.ice_ufrag, remote.ice_pwd) == (self.remote.ice_ufrag, self.remote.ice_pwd)
            and set(remote.fingerprints) == set(self.remote.fingerprints)
        )

    async def add_remote_candidate(self, candidate: str | None, *, trickled: bool = True) -> None:
        """Add a client candidate (``candidate:...`` or its value); ``None`` ends them.

        A malformed trickled candidate raises :class:`~salon.media.errors.InvalidSdpError`.
        A candidate the ICE policy refuses (:mod:`salon.media.ice_policy`), one over the
        per-transport cap, or a non-UDP one is never contacted: a trickled one raises
        :class:`~salon.media.errors.CandidateRefusedError` (non-UDP ones are ignored, as
        browsers trickle TCP candidates), one from an offer (``trickled=False``) is dropped.
        A refused one is counted in :attr:`stats` (``candidates_refused``).
        """
        if self.closed:
            return
        if candidate is None:
            await self._ice.addRemoteCandidate(None)
            return
        value = candidate.strip()
        if value.startswith("a="):
            value = value[2:]
        if value.startswith("candidate:"):
            value = value[len("candidate:") :]
        try:
            parsed = candidate_from_sdp(value)
        except (AssertionError, ValueError, IndexError) as exc:
            if not trickled:  # the offer parsed it once: never raise from the connect task
                self._dropped("candidate")
                return
            raise InvalidSdpError(f"{self!r}: malformed ICE candidate {candidate!r}") from exc
        if parsed.protocol.lower() != "udp":
            logger.debug("%r: ignoring non-UDP candidate %s", self, value)
            return
        why = self._policy.refusal(parsed.ip, parsed.port)
        if why is None and len(self._remote_candidates) >= self.options.max_remote_candidates:
            why = f"the transport has {self.options.max_remote_candidates} remote candidates already"
        if why is not None:
            self._dropped("candidate")
            logger.debug("%r: refused remote candidate %s: %s", self, value, why)
            if trickled:
                raise CandidateRefusedError(f"ICE candidate refused: {why}")
            return
        await self._ice.addRemoteCandidate(parsed)

    async def _connect(self, remote: RemoteTransportParameters) -> None:
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                for value in remote.candidates:
                    await self.add_remote_candidate(value, trickled=False)
                if remote.candidates_complete:
                    await self._ice.addRemoteCandidate(None)
                await self._ice.start(
                    RTCIceParameters(
                        usernameFragment=remote.ice_ufrag, password=remote.ice_pwd, iceLite=remote.ice_lite
                    )
                )
                if self._ice.state != "completed":
                    self.close_soon(TransportCloseReason.ICE_FAILED, "ICE connectivity checks failed")
                    return
                await self._dtls.start(
                    RTCDtlsParameters(
                        fingerprints=[
                            RTCDtlsFingerprint(algorithm=a, value=v) for a, v in remote.fingerprints
                        ],
                        role="server",
                    )
                )
        except TimeoutError:
            self.close_soon(
                TransportCloseReason.CONNECT_TIMEOUT,
                f"not connected after {self.options.connect_timeout:.0f} s (ICE {self._ice.state}, "
                f"DTLS {self._dtls.state})",
            )
            return
        except ConnectionError as exc:
            self.close_soon(TransportCloseReason.ICE_FAILED, f"connection error: {exc}")
            return
        if self._dtls.state != "connected":
            self.close_soon(
                TransportCloseReason.DTLS_FAILED, f"DTLS handshake ended in state {self._dtls.state}"
            )
            return
        self._tx_srtp = self._dtls._tx_srtp
        self._rx_srtp = self._dtls._rx_srtp
        self._protect = _srtp_call(self._tx_srtp, "protect")
        self._protect_rtcp = _srtp_call(self._tx_srtp, "protect_rtcp")
        self._unprotect = _srtp_call(self._rx_srtp, "unprotect")
        self._unprotect_rtcp = _srtp_call(self._rx_srtp, "unprotect_rtcp")
        self._set_state(TransportState.CONNECTED)
        self.events.emit(TransportConnected(self))
        for consumer in list(self.consumers.values()):
            consumer.transport_connected()
        self.schedule(time.monotonic())

    def _on_dtls_state(self) -> None:
        state = self._dtls.state
        if state in ("closed", "failed") and self.state is TransportState.CONNECTED:
            self.close_soon(
                TransportCloseReason.DISCONNECTED, f"DTLS {state} by the peer or ICE consent expiry"
            )

    def close_soon(
        self, reason: TransportCloseReason = TransportCloseReason.CLOSED, message: str = ""
    ) -> None:
        """Start closing (synchronously marks the transport closed); idempotent."""
        if self._close_task is not None:
            return
        self._close_task = asyncio.get_running_loop().create_task(
            self._close(reason, message), name=f"{self!r} close"
        )

    async def close(
        self, reason: TransportCloseReason = TransportCloseReason.CLOSED, message: str = ""
    ) -> None:
        """Close the transport and wait until its sockets and tasks are gone; idempotent."""
        self.close_soon(reason, message)
        assert self._close_task is not None
        if self._close_task is not asyncio.current_task():
            await asyncio.shield(self._close_task)

    async def router_closed(self) -> None:
        """Called by the owning router when it closes."""
        await self.close(TransportCloseReason.ROUTER_CLOSED)

    async def _close(self, reason: TransportCloseReason, message: str) -> None:
        previous = self.state
        self.close_reason = reason
        self._set_state(TransportState.CLOSED)
        level = logging.WARNING if reason in _FAILURES else logging.INFO
        logger.log(level, "%r: closing (%s%s)", self, reason.value, f": {message}" if message else "")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Children first, so they stop sending through us.
        for producer in list(self.producers.values()):
            producer.transport_closed()
        for consumer in list(self.consumers.values()):
            consumer.transport_closed()
        self._tx_srtp = None
        self._rx_srtp = None
        self._protect = self._protect_rtcp = self._unprotect = self._unprotect_rtcp = None
        self._pair = None

        current = asyncio.current_task()
        if (
            self._connect_task is not None
            and self._connect_task is not current
            and not self._connect_task.done()
        ):
            self._connect_task.cancel()
            await asyncio.wait([self._connect_task])
        if self._fallback_tasks:
            for task in self._fallback_tasks:
                task.cancel()
            await asyncio.wait(list(self._fallback_tasks))
        dtls_task = self._dtls._task
        if previous is TransportState.CONNECTED or self._dtls.state in ("connecting", "connected"):
            try:
                await self._dtls.stop()
            except ConnectionError as exc:
                logger.debug("%r: DTLS stop: %s", self, exc)
        if dtls_task is not None and dtls_task is not current:
            dtls_task.cancel()
            await asyncio.wait([dtls_task])
        await self._ice.stop()
        self._dtls.remove_all_listeners()
        self.events.emit(TransportClosed(self, reason, message))
        self.events.clear()

    def _set_state(self, state: TransportState) -> None:
        if state is not self.state:
            logger.debug("%r: %s -> %s", self, self.state.value, state.value)
            self.state = state

    # ----------------------------------------------------------------------------------------
    # Children (called by Router / Producer / Consumer)

    def _add_producer(self, producer: Producer) -> None:
        self.producers[producer.id] = producer
        for ssrc in producer.ssrcs():
            self._producers_by_ssrc[ssrc] = producer
        self._producers_by_mid[producer.mid] = producer
        for pt in producer.payload_types():
            # A payload type shared by two producers cannot be used to learn SSRCs.
            self._producers_by_pt[pt] = None if pt in self._producers_by_pt else producer
        if producer.extensions.mid is not None:
            self._mid_extension_id = producer.extensions.mid

    def _remove_producer(self, producer: Producer) -> None:
        self.producers.pop(producer.id, None)
        for ssrc in [k for k, v in self._producers_by_ssrc.items() if v is producer]:
            del self._producers_by_ssrc[ssrc]
        for mid in [k for k, v in self._producers_by_mid.items() if v is producer]:
            del self._producers_by_mid[mid]
        for pt in [k for k, v in self._producers_by_pt.items() if v is producer]:
            del self._producers_by_pt[pt]

    def _bind_producer_ssrc(self, producer: Producer, ssrc: int) -> None:
        self._producers_by_ssrc[ssrc] = producer

    def _add_consumer(self, consumer: Consumer) -> None:
        self.consumers[consumer.id] = consumer
        self._consumers_by_ssrc[consumer.ssrc] = consumer
        if consumer.rtx_ssrc is not None:
            self._consumers_by_ssrc[consumer.rtx_ssrc] = consumer

    def _remove_consumer(self, consumer: Consumer) -> None:
        self.consumers.pop(consumer.id, None)
        for key in [k for k, v in self._consumers_by_ssrc.items() if v is consumer]:
            del self._consumers_by_ssrc[key]

    # ----------------------------------------------------------------------------------------
    # Timers

    def schedule(self, at: float) -> None:
        """Make sure :meth:`_on_timer` runs no later than monotonic time ``at``."""
        if self.closed or at >= self._timer_at:
            return
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self.closed:
            return
        now = time.monotonic()
        next_at = float("inf")
        for producer in list(self.producers.values()):
            next_at = min(next_at, producer.on_timer(now))
        for consumer in list(self.consumers.values()):
            next_at = min(next_at, consumer.on_timer(now))
        if next_at != float("inf"):
            self.schedule(next_at)

    # ----------------------------------------------------------------------------------------
    # Receive path

    def _guard(self, protocol: Any) -> None:
        """Put the datagram gate in front of aioice on ``protocol`` (one of our sockets).

        Replaces ``protocol.datagram_received`` on the instance (the loop looks the method up
        per datagram). SRTP/SRTCP from a validated address (the hot path: first byte 128..191,
        12 bytes or more, RFC 7983 §7) goes straight to :meth:`srtp_received`, skipping
        aioice's STUN parse attempt and ``Connection.data_received``; everything else goes
        through :meth:`_gate`. ``srtp_received`` is looked up on the transport per datagram:
        it is the seam tests wrap to inject loss.
        """
        original = protocol.datagram_received
        component = protocol.local_candidate.component
        trusted = self._trusted

        def datagram_received(data: bytes, addr: Any) -> None:
            if addr in trusted and 11 < len(data) <= MAX_DATAGRAM and 127 < data[0] < 192:
                self.srtp_received(data)
            else:
                self._gate(data, addr, original, component)

        protocol.datagram_received = datagram_received

    def _gate(
        self, data: bytes, addr: Any, stun_received: Callable[[bytes, Any], None], component: int
    ) -> None:
        """Every datagram off the hot path: classify it
        (:func:`~salon.media.demux.classify_datagram`), drop what cannot be
        STUN/DTLS/RTP/RTCP, hand STUN to aioice (peer-reflexive candidates within the
        cap), and accept DTLS and SRTP only from addresses ICE validated: a forged DTLS
        alert from elsewhere cannot end the handshake, and garbage never reaches aiortc's
        DTLS reader (which ends the association on an exception)."""
        kind = classify_datagram(data)
        if kind is Datagram.STUN:
            if (data[0] & 0x01) == 0 and (data[1] & 0x10) == 0 and not self._may_learn(addr):
                self._dropped("candidate")  # a request that would add one candidate too many
                return
            stun_received(data, addr)
        elif not kind.valid:
            self._dropped(kind.value)
        elif addr not in self._trusted and not self._trust(addr):
            self._dropped("foreign")
        elif kind is Datagram.DTLS:
            self._queue_datagram(data, component)
        else:
            self.srtp_received(data)

    def _may_learn(self, addr: Any) -> bool:
        """Whether a STUN request from ``addr`` may add a peer-reflexive remote candidate:
        it comes from a known candidate, or the transport is under its candidate cap."""
        if len(self._remote_candidates) < self.options.max_remote_candidates:
            return True
        host, port = addr[0], addr[1]
        return any(c._network_host == host and c.port == port for c in self._remote_candidates)

    def _trust(self, addr: Any) -> bool:
        """Whether ``addr`` is the remote address of a pair ICE validated; remembered if so."""
        remote = (addr[0], addr[1])
        for pair in self._gatherer._connection._check_list:
            if pair.state is _SUCCEEDED and pair.remote_addr == remote:
                self._trusted.add(addr)
                return True
        return False

    def _dropped(self, kind: str) -> None:
        """Count one dropped datagram or candidate; at most one log line per interval."""
        if kind == "candidate":
            self.stats.candidates_refused += 1
        elif kind == "foreign":
            self.stats.foreign_dropped += 1
        else:
            self.stats.garbage_dropped += 1
        DROPPED[kind] += 1
        _drop_report.note(kind, self)

    def _datagram_received(self, data: bytes, component: int) -> None:
        """aioice's non-STUN datagram callback (``Connection.data_received``, replaced on this
        instance). :meth:`_gate` hands aioice only datagrams that look like STUN, so what
        arrives here is one aioice could not parse: dropped as malformed."""
        self._dropped(Datagram.MALFORMED.value)

    def srtp_received(self, data: bytes) -> None:
        """One SRTP or SRTCP datagram (first byte 128..191) from the client.

        This is the media receive seam: the routed protocols look it up on the instance per
        datagram, so tests may wrap it (loss injection) and see every media datagram, before
        SRTP unprotect. Callers pass at least 12 bytes (:mod:`salon.media.demux`).
        :meth:`receive_rtp` is inlined here (it runs once per received packet)."""
        unprotect = self._unprotect
        if unprotect is None:  # DTLS not up yet: aiortc's path decides (it ignores SRTP until
            if len(data) <= _SRTP_BUFFER:  # then, and raises on a packet over its buffer)
                self._queue_datagram(data, 1)
            else:
                self._dropped(Datagram.OVERSIZED.value)
            return
        if 192 <= data[1] <= 223:
            clear = self._unprotect_rtcp(data)  # type: ignore[misc]
            if clear is None:
                self.stats.srtp_errors += 1
            else:
                self.receive_rtcp(clear, time.monotonic())
            return
        clear = unprotect(data)
        stats = self.stats
        if clear is None:
            stats.srtp_errors += 1
            return
        stats.rtp_received += 1
        stats.rtp_bytes_received += len(clear)
        try:
            header = parse_rtp_header(clear)
        except ValueError:
            stats.rtp_malformed += 1
            return
        producer = self._producers_by_ssrc.get(header.ssrc)
        if producer is None:
            producer = self._learn_ssrc(clear, header)
            if producer is None:
                stats.rtp_unknown += 1
                return
        producer.receive_rtp(clear, header, time.monotonic())

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        self.receive_rtp(data, time.monotonic())

    async def _handle_rtcp_data(self, data: bytes) -> None:
        self.receive_rtcp(data, time.monotonic())

    def receive_rtp(self, data: bytes, now: float) -> None:
        """Demultiplex one decrypted RTP packet to its producer (synchronous)."""
        stats = self.stats
        stats.rtp_received += 1
        stats.rtp_bytes_received += len(data)
        try:
            header = parse_rtp_header(data)
        except ValueError:
            stats.rtp_malformed += 1
            return
        producer = self._producers_by_ssrc.get(header.ssrc)
        if producer is None:
            producer = self._learn_ssrc(data, header)
            if producer is None:
                stats.rtp_unknown += 1
                return
        producer.receive_rtp(data, header, now)

    def _learn_ssrc(self, data: bytes, header: Any) -> Producer | None:
        producer: Producer | None = None
        if self._mid_extension_id is not None and header.extension_length:
            mid = find_header_extension(data, header, self._mid_extension_id)
            if mid:
                producer = self._producers_by_mid.get(bytes(mid).decode("ascii", "replace"))
        if producer is None:
            producer = self._producers_by_pt.get(header.payload_type)
        if producer is None:
            return None
        # Simulcast: the RID (media) or repaired RID (RTX) extension names the encoding.
        rid = repaired_rid = None
        ext = producer.extensions
        if header.extension_length and (ext.rid is not None or ext.repaired_rid is not None):
            if ext.rid is not None:
                value = find_header_extension(data, header, ext.rid)
                rid = bytes(value).decode("ascii", "replace") if value else None
            if ext.repaired_rid is not None:
                value = find_header_extension(data, header, ext.repaired_rid)
                repaired_rid = bytes(value).decode("ascii", "replace") if value else None
        if not producer.learn_ssrc(header.ssrc, header.payload_type, rid, repaired_rid):
            return None
        self._producers_by_ssrc[header.ssrc] = producer
        logger.info("%r: SSRC %d bound to %r", self, header.ssrc, producer)
        return producer

    def receive_rtcp(self, data: bytes, now: float) -> None:
        """Route one decrypted compound RTCP packet (synchronous)."""
        self.stats.rtcp_received += 1
        try:
            packets = parse_rtcp(data)
        except ValueError:
            self.stats.rtcp_malformed += 1
            return
        for packet in packets:
            if isinstance(packet, SenderReport):
                producer = self._producers_by_ssrc.get(packet.ssrc)
                if producer is not None:
                    producer.receive_sender_report(packet, now)
                for block in packet.reports:
                    consumer = self._consumers_by_ssrc.get(block.ssrc)
                    if consumer is not None:
                        consumer.receive_report_block(block, now)
            elif isinstance(packet, ReceiverReport):
                for block in packet.reports:
                    consumer = self._consumers_by_ssrc.get(block.ssrc)
                    if consumer is not None:
                        consumer.receive_report_block(block, now)
            elif isinstance(packet, Nack):
                consumer = self._consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.receive_nack(packet.seqs, now)
            elif isinstance(packet, Pli):
                consumer = self._consumers_by_ssrc.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.receive_key_frame_request(now)
            elif isinstance(packet, Fir):
                for entry in packet.entries:
                    consumer = self._consumers_by_ssrc.get(entry.ssrc)
                    if consumer is not None:
                        consumer.receive_key_frame_request(now)
            elif isinstance(packet, Remb):
                for ssrc in packet.ssrcs:
                    consumer = self._consumers_by_ssrc.get(ssrc)
                    if consumer is not None:
                        consumer.receive_remb(packet.bitrate, now)
            elif isinstance(packet, Bye):
                for ssrc in packet.ssrcs:
                    producer = self._producers_by_ssrc.get(ssrc)
                    if producer is not None:
                        logger.info("%r: RTCP BYE for SSRC %d of %r", self, ssrc, producer)

    # ----------------------------------------------------------------------------------------
    # Send path

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet now (synchronous); dropped if not connected."""
        protect = self._protect
        if protect is None:
            return
        pair = self._nominated.get(1)
        if pair is not self._pair:
            if not self._update_pair(pair):
                self._send_fallback(packet)
                return
        protected = protect(packet)
        stats = self.stats
        if protected is None:
            stats.send_errors += 1
            return
        try:
            self._sendto(protected, self._remote_addr)
        except OSError:  # EAGAIN (socket buffer full) or the socket went away: drop it
            stats.send_errors += 1
            return
        stats.rtp_sent += 1
        stats.rtp_bytes_sent += len(protected)

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet now (synchronous)."""
        protect_rtcp = self._protect_rtcp
        if protect_rtcp is None:
            return
        pair = self._nominated.get(1)
        if pair is not self._pair:
            if not self._update_pair(pair):
                self._send_fallback(packet)
                return
        protected = protect_rtcp(packet)
        if protected is None:
            self.stats.send_errors += 1
            return
        try:
            self._sendto(protected, self._remote_addr)
        except OSError:
            self.stats.send_errors += 1
            return
        self.stats.rtcp_sent += 1

    def _update_pair(self, pair: Any) -> bool:
        self._pair = pair
        if pair is None:
            self._sendto = None
            self._remote_addr = None
            return False
        self._sendto = pair.protocol.transport.sendto
        self._remote_addr = pair.remote_addr
        logger.debug("%r: sending to %s via %s", self, self._remote_addr, pair.local_addr)
        return True

    def _send_fallback(self, packet: bytes) -> None:
        """No nominated pair (yet): let aiortc's path raise/queue; owned, bounded tasks."""
        if self.closed or len(self._fallback_tasks) > 64:
            self.stats.send_errors += 1
            return
        self.stats.fallback_sends += 1
        task = asyncio.get_running_loop().create_task(self._fallback_send(packet))
        self._fallback_tasks.add(task)
        task.add_done_callback(self._fallback_tasks.discard)

    async def _fallback_send(self, packet: bytes) -> None:
        try:
            await self._dtls._send_rtp(packet)
        except ConnectionError:
            self.stats.send_errors += 1

    # ----------------------------------------------------------------------------------------
    # Introspection (tests, stats)

    @property
    def local_ports(self) -> list[int]:
        return [c.port for c in self._gatherer.getLocalCandidates()]

    @property
    def dtls_transport(self) -> RTCDtlsTransport:
        return self._dtls

    @property
    def ice_transport(self) -> RTCIceTransport:
        return self._ice

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "ports": self.local_ports,
            "producers": sorted(self.producers),
            "consumers": sorted(self.consumers),
            "stats": dataclasses.asdict(self.stats),
        }
