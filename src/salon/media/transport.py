"""WebRtcTransport: one client's ICE + DTLS-SRTP association, bundled, rtcp-mux.

Built on aiortc's ORTC objects (``RTCIceGatherer`` → ``RTCIceTransport`` →
``RTCDtlsTransport``) with no ``RTCPeerConnection``, ``RTCRtpSender`` or ``RTCRtpReceiver``
(``docs/architecture.md``, "Media plane"). The SFU always answers, so its gatherer is
ICE-controlled and the DTLS role is *client* (``a=setup:active``).

Packet path (no per-packet asyncio queue or task once connected). Everything aiortc, aioice
and pylibsrtp is behind :mod:`salon.media.webrtc` (the only module that touches their private
members); the transport drives a :class:`~salon.media.webrtc.MediaLink` (the real
:class:`~salon.media.webrtc.AiortcLink`, or :class:`~salon.media.memory.MemoryLink` in unit
tests) and is its :class:`~salon.media.webrtc.DatagramReceiver`:

* **in**: the link hands SRTP/SRTCP (first byte 128..191, never STUN or DTLS, RFC 7983) of at
  least 12 bytes from an address ICE validated straight to :meth:`WebRtcTransport.srtp_received`,
  in the loop's datagram callback, which unprotects with the DTLS-derived
  :class:`~salon.media.webrtc.SrtpContexts` and routes right there: no aioice STUN parse
  attempt, no ``asyncio.Queue`` put/get and no task wake-up per packet (that chain dominated the
  prototype's fan-out-1 cost). Everything else goes through
  :meth:`WebRtcTransport.datagram_received`, which classifies it (:mod:`salon.media.demux`) and
  drops what cannot be STUN, DTLS, RTP or RTCP (empty, truncated, oversized, unknown first
  byte) and DTLS/SRTP from an address ICE has not validated: counted in
  :class:`TransportStats` and :data:`DROPPED`, logged at most once a minute per process, never
  per packet. This matters: aiortc's DTLS reader ends the association on any exception (an
  empty datagram raised ``IndexError`` there), and a forged DTLS alert could end a handshake.
  STUN goes to ICE (checks, consent freshness; peer-reflexive candidates within the
  per-transport cap); DTLS records go to the DTLS reader. ``srtp_received`` is the seam tests
  wrap to inject loss. (Draining the socket ourselves with ``loop.add_reader`` + a
  ``recvfrom`` loop per wake-up was tried and measured *dearer* than uvloop's per-datagram
  callback: docs/benchmarks.md, "SFU forwarding".)
  Until DTLS is connected, SRTP goes to the DTLS reader (which ignores it before the
  handshake, and hands what it decrypts after its handshake but before ours to
  :meth:`receive_rtp` / :meth:`receive_rtcp`). Routing is :class:`~salon.media.routing.RtpRoutes`
  (pure): RTP goes to the :class:`~salon.media.producer.Producer` that owns its SSRC (learnt
  from the mid header extension or a unique payload type when the offer announced none); RTCP
  is parsed once and routed by SSRC to producers (SR, BYE) and consumers (NACK, PLI, FIR, RR,
  REMB).
* **out**: :meth:`WebRtcTransport.send_rtp` / :meth:`send_rtcp` are synchronous: SRTP protect
  then the nominated pair's ``sendto`` (the link's :class:`~salon.media.webrtc.DatagramPort`,
  updated when ICE nominates, not looked up per packet), skipping aiortc's three awaited
  coroutines. Before ICE has nominated a pair (or if it lost it) they fall back to
  :meth:`~salon.media.webrtc.MediaLink.send_fallback` in an owned task.

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

Producers and consumers see their transport through the small interfaces
:class:`~salon.media.producer.ProducerTransport` and
:class:`~salon.media.consumer.ConsumerTransport` (public methods only).
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

from salon.media.allocation import TransportAllocation
from salon.media.bandwidth import TransportBandwidth
from salon.media.demux import Datagram, classify_datagram
from salon.media.errors import CandidateRefusedError, InvalidSdpError, MediaStateError
from salon.media.events import EventEmitter
from salon.media.ice_policy import MAX_REMOTE_CANDIDATES, IcePolicy
from salon.media.pacer import PacedPacket, Pacer
from salon.media.routing import RouteReason, RtpRoutes
from salon.media.rtcp import Bye, Fir, Nack, Pli, ReceiverReport, Remb, SenderReport, parse_rtcp
from salon.media.rtp import RtpHeader, abs_send_time, find_header_extension, parse_rtp_header
from salon.media.sdp import AnswerMedia, LocalTransportParameters, RemoteTransportParameters
from salon.media.twcc import FEEDBACK_INTERVAL, FeedbackGenerator, TransportFeedback
from salon.media.webrtc import (
    SRTP_BUFFER,
    AiortcLink,
    LinkFailure,
    LinkFailureKind,
    MediaLink,
    SrtpCall,
    parse_candidate,
)

if TYPE_CHECKING:
    from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceTransport

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

DROPPED: collections.Counter[str] = collections.Counter()
"""Datagrams and candidates dropped by every transport of this process, by kind: a
:class:`~salon.media.demux.Datagram` value (``empty``, ``malformed``, ``oversized``,
``unknown``), ``foreign`` (DTLS or SRTP from an address ICE has not validated) or
``candidate`` (a remote candidate refused by the ICE policy or the cap). Reported in the
worker dump."""

DROP_LOG_INTERVAL = 60.0
"""Seconds between two log lines about dropped datagrams (one process-wide line at most)."""


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
        link: MediaLink | None = None,
    ) -> None:
        """``link`` defaults to an :class:`~salon.media.webrtc.AiortcLink` on
        ``options.listen_addresses`` (with ``certificate``, generated when None)."""
        self.id = transport_id or f"tr-{next(_ids)}-{secrets.token_hex(3)}"
        self.options = options
        self.events: EventEmitter[TransportEvent] = EventEmitter(self)
        self.stats = TransportStats()
        self.state = TransportState.NEW
        self.close_reason: TransportCloseReason | None = None

        self._policy = options.ice_policy()
        if link is None:
            link = AiortcLink(certificate, options.listen_addresses, options.port_range, name=self.id)
        self.link: MediaLink = link
        #: Source addresses (as the socket reports them) of ICE-validated pairs: the only
        #: ones DTLS and SRTP are accepted from.
        self._trusted: set[Any] = set()
        link.attach(self, self._trusted)
        self._port = link.port
        self._protect: SrtpCall | None = None
        self._protect_rtcp: SrtpCall | None = None
        self._unprotect: SrtpCall | None = None
        self._unprotect_rtcp: SrtpCall | None = None

        self._connect_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._fallback_tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

        self.producers: dict[str, Producer] = {}
        self.consumers: dict[str, Consumer] = {}
        #: Where incoming packets go (:mod:`salon.media.routing`).
        self.routes: RtpRoutes[Producer, Consumer] = RtpRoutes()
        self._producers_by_ssrc = self.routes.producers  # the hot path's table
        #: The client's ICE and DTLS parameters, once :meth:`start` got them.
        self.remote: RemoteTransportParameters | None = None
        self._bandwidth: TransportBandwidth | None = None
        self._pacer: Pacer | None = None
        #: The pacer's drain timer (:meth:`_drain`), its own handle: it fires every few
        #: milliseconds while packets are queued, :meth:`_on_timer` is far dearer.
        self._pace_timer: asyncio.TimerHandle | None = None
        self._pace_log_at = 0.0  # the next log line about pacer drops, at most every 5 s
        #: Transport-cc toward the publisher (its offer negotiated it): the arrival times of
        #: the transport-wide sequence numbers it stamps, reported every FEEDBACK_INTERVAL.
        self.feedback: FeedbackGenerator | None = None
        self._twcc_id = 0  # the extension's id, 0: not negotiated
        self._twcc_record: Callable[[int, float], None] | None = None
        self._feedback_armed = False  # a packet arrived since the last feedback round
        self._feedback_due = 0.0  # when the next round goes out, while armed
        #: The allocator at work (:mod:`salon.media.allocation`), made when a simulcast video
        #: consumer is added.
        self.allocation: TransportAllocation | None = None
        #: Every m-line this (subscribe) transport answered, by mid, kept after its consumer
        #: closed: a renegotiation answers them again, as negotiated (see Router.subscribe).
        self.answered: dict[str, AnswerMedia] = {}

    def __repr__(self) -> str:
        return f"WebRtcTransport({self.id})"

    @property
    def bandwidth(self) -> TransportBandwidth:
        """Transport-wide sequence numbers, bandwidth estimate and allocator toward this
        transport's client (:mod:`salon.media.bandwidth`); made on first use, i.e. for
        transports that send media (subscriber transports)."""
        bandwidth = self._bandwidth
        if bandwidth is None:
            bandwidth = self._bandwidth = TransportBandwidth()
        return bandwidth

    @property
    def pacer(self) -> Pacer:
        """What paces the media toward this transport's client (:mod:`salon.media.pacer`);
        made on first use (by consumers, i.e. subscriber transports). Paced only once the
        client sent bandwidth feedback (REMB or transport-cc): until then its rate is 0."""
        pacer = self._pacer
        if pacer is None:
            pacer = self._pacer = Pacer()
        return pacer

    # ----------------------------------------------------------------------------------------
    # Lifecycle

    @classmethod
    async def create(
        cls,
        options: WebRtcTransportOptions | None = None,
        *,
        certificate: RTCCertificate | None = None,
        transport_id: str | None = None,
        link: MediaLink | None = None,
    ) -> WebRtcTransport:
        """Create a transport and gather its host candidates (binds the UDP sockets)."""
        transport = cls(
            options or WebRtcTransportOptions(), certificate=certificate, transport_id=transport_id, link=link
        )
        try:
            await transport.link.gather()
        except BaseException:
            await transport.close()
            raise
        logger.debug("%r: gathered %s", transport, transport.local_parameters().candidates)
        return transport

    @property
    def closed(self) -> bool:
        return self.state is TransportState.CLOSED

    def local_parameters(self) -> LocalTransportParameters:
        """ICE credentials, DTLS fingerprint (sha-256) and host candidates for the answer."""
        return self.link.local_parameters(self.options.announced_address)

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
            await self.link.add_remote_candidate(None)
            return
        value = candidate.strip()
        if value.startswith("a="):
            value = value[2:]
        if value.startswith("candidate:"):
            value = value[len("candidate:") :]
        try:
            parsed = parse_candidate(value)
        except ValueError as exc:
            if not trickled:  # the offer parsed it once: never raise from the connect task
                self._dropped("candidate")
                return
            raise InvalidSdpError(f"{self!r}: malformed ICE candidate {candidate!r}") from exc
        if parsed.protocol.lower() != "udp":
            logger.debug("%r: ignoring non-UDP candidate %s", self, value)
            return
        why = self._policy.refusal(parsed.ip, parsed.port)
        if why is None and self.link.remote_candidate_count >= self.options.max_remote_candidates:
            why = f"the transport has {self.options.max_remote_candidates} remote candidates already"
        if why is not None:
            self._dropped("candidate")
            logger.debug("%r: refused remote candidate %s: %s", self, value, why)
            if trickled:
                raise CandidateRefusedError(f"ICE candidate refused: {why}")
            return
        await self.link.add_remote_candidate(parsed)

    async def _connect(self, remote: RemoteTransportParameters) -> None:
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                for value in remote.candidates:
                    await self.add_remote_candidate(value, trickled=False)
                if remote.candidates_complete:
                    await self.link.add_remote_candidate(None)
                srtp = await self.link.connect(remote)
        except TimeoutError:
            self.close_soon(
                TransportCloseReason.CONNECT_TIMEOUT,
                f"not connected after {self.options.connect_timeout:.0f} s ({self.link.describe()})",
            )
            return
        except LinkFailure as exc:
            reason = (
                TransportCloseReason.ICE_FAILED
                if exc.kind is LinkFailureKind.ICE
                else TransportCloseReason.DTLS_FAILED
            )
            self.close_soon(reason, exc.message)
            return
        except ConnectionError as exc:
            self.close_soon(TransportCloseReason.ICE_FAILED, f"connection error: {exc}")
            return
        self._protect = srtp.protect
        self._protect_rtcp = srtp.protect_rtcp
        self._unprotect = srtp.unprotect
        self._unprotect_rtcp = srtp.unprotect_rtcp
        self._set_state(TransportState.CONNECTED)
        self.events.emit(TransportConnected(self))
        for consumer in list(self.consumers.values()):
            consumer.transport_connected()
        self.schedule(time.monotonic())

    def link_lost(self, message: str) -> None:
        """The link's DTLS closed or failed (:class:`~salon.media.webrtc.DatagramReceiver`)."""
        if self.state is TransportState.CONNECTED:
            self.close_soon(TransportCloseReason.DISCONNECTED, message)

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
        if self._pace_timer is not None:
            self._pace_timer.cancel()
            self._pace_timer = None
        if self._pacer is not None:
            self._pacer.clear()
        # Children first, so they stop sending through us.
        for producer in list(self.producers.values()):
            producer.transport_closed()
        for consumer in list(self.consumers.values()):
            consumer.transport_closed()
        self._protect = self._protect_rtcp = self._unprotect = self._unprotect_rtcp = None

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
        await self.link.close(previous is TransportState.CONNECTED)
        self.events.emit(TransportClosed(self, reason, message))
        self.events.clear()

    def _set_state(self, state: TransportState) -> None:
        if state is not self.state:
            logger.debug("%r: %s -> %s", self, self.state.value, state.value)
            self.state = state

    # ----------------------------------------------------------------------------------------
    # Children (called by Router / Producer / Consumer)

    def add_producer(self, producer: Producer) -> None:
        """Route ``producer``'s SSRCs, mid and payload types to it."""
        self.producers[producer.id] = producer
        self.routes.add_producer(
            producer, mid=producer.mid, ssrcs=producer.ssrcs(), payload_types=producer.payload_types()
        )
        ext = producer.extensions
        if ext.transport_cc is not None and self.feedback is None:
            self.feedback = FeedbackGenerator(secrets.randbits(32) or 1)
            self._twcc_id = ext.transport_cc
            self._twcc_record = self.feedback.recorder()
        if ext.mid is not None:
            self.routes.set_extensions(mid=ext.mid)
        if ext.rid is not None or ext.repaired_rid is not None:
            # Simulcast by RID: the encodings' SSRCs are learnt from these extensions.
            self.routes.set_extensions(rid=ext.rid, repaired_rid=ext.repaired_rid)
            for encoding in producer.encodings:
                if encoding.rid is not None:
                    self.routes.add_rid(producer, mid=producer.mid, rid=encoding.rid)

    def remove_producer(self, producer: Producer) -> None:
        """Forget ``producer`` (it closed)."""
        self.producers.pop(producer.id, None)
        self.routes.remove_producer(producer)

    def add_consumer(self, consumer: Consumer) -> None:
        """Route feedback about ``consumer``'s SSRCs (media and RTX) to it."""
        self.consumers[consumer.id] = consumer
        self.routes.add_consumer(consumer, [s for s in (consumer.ssrc, consumer.rtx_ssrc) if s is not None])
        if self.allocation is None and consumer.simulcast:
            self.allocation = TransportAllocation(self.bandwidth, self.id)

    def remove_consumer(self, consumer: Consumer) -> None:
        """Forget ``consumer`` (it closed)."""
        self.consumers.pop(consumer.id, None)
        self.routes.remove_consumer(consumer)

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
        if self.feedback is not None:
            next_at = min(next_at, self._send_feedback(now))
        simulcast = False
        for consumer in list(self.consumers.values()):
            next_at = min(next_at, consumer.on_timer(now))
            simulcast = simulcast or consumer.simulcast
        if self.allocation is None and simulcast:
            self.allocation = TransportAllocation(self.bandwidth, self.id)
        allocation = self.allocation
        if allocation is not None and self.consumers and self.state is TransportState.CONNECTED:
            next_at = min(next_at, allocation.run(self.consumers, now))
        pacer = self._pacer
        bandwidth = self._bandwidth
        if (
            pacer is not None
            and bandwidth is not None
            and (bandwidth.remb_packets or bandwidth.feedback_packets)
        ):
            # Paced only under an allocation (simulcast video): a single-layer stream cannot
            # follow the estimate, pacing it below its rate would only queue and drop it.
            pacer.set_budget(allocation.last_budget if allocation is not None else 0, now)
        if next_at != float("inf"):
            self.schedule(next_at)

    # ----------------------------------------------------------------------------------------
    # Receive path

    def datagram_received(self, data: bytes, addr: Any, stun: Callable[[bytes, Any], None]) -> None:
        """Every datagram off the hot path (:class:`~salon.media.webrtc.DatagramReceiver`):
        classify it (:func:`~salon.media.demux.classify_datagram`), drop what cannot be
        STUN/DTLS/RTP/RTCP, hand STUN to ICE (peer-reflexive candidates within the cap),
        and accept DTLS and SRTP only from addresses ICE validated: a forged DTLS alert from
        elsewhere cannot end the handshake, and garbage never reaches aiortc's DTLS reader
        (which ends the association on an exception)."""
        kind = classify_datagram(data)
        if kind is Datagram.STUN:
            if (data[0] & 0x01) == 0 and (data[1] & 0x10) == 0 and not self._may_learn(addr):
                self._dropped("candidate")  # a request that would add one candidate too many
                return
            stun(data, addr)
        elif not kind.valid:
            self._dropped(kind.value)
        elif addr not in self._trusted and not self._trust(addr):
            self._dropped("foreign")
        elif kind is Datagram.DTLS:
            self.link.deliver_to_dtls(data)
        else:
            self.srtp_received(data)

    def _may_learn(self, addr: Any) -> bool:
        """Whether a STUN request from ``addr`` may add a peer-reflexive remote candidate:
        it comes from a known candidate, or the transport is under its candidate cap."""
        link = self.link
        return (
            link.remote_candidate_count < self.options.max_remote_candidates
            or link.knows_remote_candidate(addr)
        )

    def _trust(self, addr: Any) -> bool:
        """Whether ``addr`` is the remote address of a pair ICE validated; remembered if so."""
        if self.link.validated(addr):
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

    def unparsed_received(self, data: bytes) -> None:
        """A datagram ICE could not parse as STUN (:meth:`datagram_received` hands it only
        what looks like STUN): dropped as malformed."""
        self._dropped(Datagram.MALFORMED.value)

    def srtp_received(self, data: bytes) -> None:
        """One SRTP or SRTCP datagram (first byte 128..191) from the client.

        This is the media receive seam: the routed protocols look it up on the instance per
        datagram, so tests may wrap it (loss injection) and see every media datagram, before
        SRTP unprotect. Callers pass at least 12 bytes (:mod:`salon.media.demux`).
        :meth:`receive_rtp` is inlined here (it runs once per received packet)."""
        unprotect = self._unprotect
        if unprotect is None:  # DTLS not up yet: aiortc's path decides (it ignores SRTP until
            if len(data) <= SRTP_BUFFER:  # then, and raises on a packet over its buffer)
                self.link.deliver_to_dtls(data)
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
        now = time.monotonic()
        if self._twcc_record is not None and header.extension_length:
            self._record_arrival(clear, header, now)
        producer = self._producers_by_ssrc.get(header.ssrc)
        if producer is None:
            producer = self._learn_ssrc(clear, header)
            if producer is None:
                stats.rtp_unknown += 1
                return
        producer.receive_rtp(clear, header, now)

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
        if self._twcc_record is not None and header.extension_length:
            self._record_arrival(data, header, now)
        producer = self._producers_by_ssrc.get(header.ssrc)
        if producer is None:
            producer = self._learn_ssrc(data, header)
            if producer is None:
                stats.rtp_unknown += 1
                return
        producer.receive_rtp(data, header, now)

    def _record_arrival(self, data: bytes, header: RtpHeader, now: float) -> None:
        """Note when a packet stamped with a transport-wide sequence number arrived (every
        packet the publisher sends: media, RTX, padding probes, also of SSRCs not routed);
        the first one after a feedback round arms the next round."""
        try:
            value = find_header_extension(data, header, self._twcc_id)
        except ValueError:
            return
        if value is None or len(value) != 2:
            return
        self._twcc_record((value[0] << 8) | value[1], now)  # type: ignore[misc]
        if not self._feedback_armed:
            self._feedback_armed = True
            self._feedback_due = now + FEEDBACK_INTERVAL
            self.schedule(self._feedback_due)

    def _send_feedback(self, now: float) -> float:
        """Send the transport-cc feedback due (compound packets up to about an MTU); returns
        when to come back (inf: nothing pending until a packet arrives)."""
        feedback = self.feedback
        due = self._feedback_due
        if feedback is None or not self._feedback_armed:
            return float("inf")
        if now < due - 0.002:
            return due
        self._feedback_armed = False
        media_ssrc = next(iter(self.routes.producers), 0)
        batch = b""
        for message in feedback.build(media_ssrc):
            if batch and len(batch) + len(message) > 1200:
                self.send_rtcp(batch)
                batch = b""
            batch += message
        if batch:
            self.send_rtcp(batch)
        return float("inf")

    def _learn_ssrc(self, data: bytes, header: RtpHeader) -> Producer | None:
        """A packet of an SSRC not routed yet: the producer it belongs to, if any accepts it."""
        route = self.routes.route_unknown(data, header)
        if route is None:
            return None
        producer = route.sink
        # Simulcast: the RID (media) or repaired RID (RTX) names the encoding.
        rid = route.rid if route.reason is RouteReason.RID else None
        repaired_rid = route.rid if route.repaired else None
        if not producer.learn_ssrc(header.ssrc, header.payload_type, rid, repaired_rid):
            return None
        self.routes.bind_ssrc(header.ssrc, producer)
        logger.info("%r: SSRC %d bound to %r (by %s)", self, header.ssrc, producer, route.reason.value)
        return producer

    def receive_rtcp(self, data: bytes, now: float) -> None:
        """Route one decrypted compound RTCP packet (synchronous)."""
        self.stats.rtcp_received += 1
        try:
            packets = parse_rtcp(data)
        except ValueError:
            self.stats.rtcp_malformed += 1
            return
        producers = self.routes.producers
        consumers = self.routes.consumers
        for packet in packets:
            if isinstance(packet, SenderReport):
                producer = producers.get(packet.ssrc)
                if producer is not None:
                    producer.receive_sender_report(packet, now)
                for block in packet.reports:
                    consumer = consumers.get(block.ssrc)
                    if consumer is not None:
                        consumer.receive_report_block(block, now)
                        self.bandwidth.on_report_block(block, now)
            elif isinstance(packet, ReceiverReport):
                for block in packet.reports:
                    consumer = consumers.get(block.ssrc)
                    if consumer is not None:
                        consumer.receive_report_block(block, now)
                        self.bandwidth.on_report_block(block, now)
            elif isinstance(packet, TransportFeedback):
                self.bandwidth.on_transport_feedback(packet, now)
            elif isinstance(packet, Nack):
                consumer = consumers.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.receive_nack(packet.seqs, now)
            elif isinstance(packet, Pli):
                consumer = consumers.get(packet.media_ssrc)
                if consumer is not None:
                    consumer.receive_key_frame_request(now)
            elif isinstance(packet, Fir):
                for entry in packet.entries:
                    consumer = consumers.get(entry.ssrc)
                    if consumer is not None:
                        consumer.receive_key_frame_request(now)
            elif isinstance(packet, Remb):
                if any(ssrc in consumers for ssrc in packet.ssrcs):
                    self.bandwidth.on_remb(packet.bitrate, now)
                for ssrc in packet.ssrcs:
                    consumer = consumers.get(ssrc)
                    if consumer is not None:
                        consumer.receive_remb(packet.bitrate, now)
            elif isinstance(packet, Bye):
                for ssrc in packet.ssrcs:
                    producer = producers.get(ssrc)
                    if producer is not None:
                        logger.info("%r: RTCP BYE for SSRC %d of %r", self, ssrc, producer)

    # ----------------------------------------------------------------------------------------
    # Send path

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet now (synchronous); dropped if not connected."""
        protect = self._protect
        if protect is None:
            return
        port = self._port
        sendto = port.sendto
        if sendto is None:
            self._send_fallback(packet)
            return
        protected = protect(packet)
        stats = self.stats
        if protected is None:
            stats.send_errors += 1
            return
        try:
            sendto(protected, port.remote_addr)
        except OSError:  # EAGAIN (socket buffer full) or the socket went away: drop it
            stats.send_errors += 1
            return
        stats.rtp_sent += 1
        stats.rtp_bytes_sent += len(protected)

    def pace(self, item: PacedPacket, now: float, *, retransmission: bool = False) -> None:
        """Queue one RTP packet the pacer did not admit (:meth:`Pacer.admit`); it leaves
        from :meth:`_drain`, numbered and time-stamped then. The owners of video the queue
        bound dropped are told (``paced_video_dropped``)."""
        pacer = self.pacer
        if self.closed:
            return
        dropped = pacer.enqueue(item, retransmission=retransmission)
        if dropped:
            for owner in dropped:
                owner.paced_video_dropped(now)  # type: ignore[attr-defined]
            if now >= self._pace_log_at:
                self._pace_log_at = now + 5.0
                logger.info("%r: pacer queue over its bound, video dropped: %s", self, pacer.dump())
        if self._pace_timer is None:
            self._arm_drain(now)

    def _arm_drain(self, now: float) -> None:
        at = self.pacer.next_send(now)
        if at != float("inf"):
            self._pace_timer = asyncio.get_running_loop().call_later(max(0.0, at - now), self._drain)

    def _drain(self) -> None:
        """Send what the pacer lets go now, writing each packet's transport-wide sequence
        number and abs-send-time as it leaves; come back when the bucket allows the next."""
        self._pace_timer = None
        pacer = self._pacer
        if self.closed or pacer is None:
            return
        now = time.monotonic()
        stamp = self.bandwidth.stamp
        while (item := pacer.pop(now)) is not None:
            packet = item.packet
            if item.twcc_at or item.abs_at:
                buffer = bytearray(packet)
                if item.abs_at:
                    buffer[item.abs_at : item.abs_at + 3] = abs_send_time(now)
                if item.twcc_at:
                    buffer[item.twcc_at : item.twcc_at + 2] = stamp(now, item.size)
                packet = bytes(buffer)
            self.send_rtp(packet)
        self._arm_drain(now)

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet now (synchronous)."""
        protect_rtcp = self._protect_rtcp
        if protect_rtcp is None:
            return
        port = self._port
        sendto = port.sendto
        if sendto is None:
            self._send_fallback(packet)
            return
        protected = protect_rtcp(packet)
        if protected is None:
            self.stats.send_errors += 1
            return
        try:
            sendto(protected, port.remote_addr)
        except OSError:
            self.stats.send_errors += 1
            return
        self.stats.rtcp_sent += 1

    def _send_fallback(self, packet: bytes) -> None:
        """No nominated pair (yet): let the link's path raise/queue; owned, bounded tasks."""
        if self.closed or len(self._fallback_tasks) > 64:
            self.stats.send_errors += 1
            return
        self.stats.fallback_sends += 1
        task = asyncio.get_running_loop().create_task(self._fallback_send(packet))
        self._fallback_tasks.add(task)
        task.add_done_callback(self._fallback_tasks.discard)

    async def _fallback_send(self, packet: bytes) -> None:
        try:
            await self.link.send_fallback(packet)
        except ConnectionError:
            self.stats.send_errors += 1

    # ----------------------------------------------------------------------------------------
    # Introspection (tests, stats)

    @property
    def local_ports(self) -> list[int]:
        return self.link.local_ports

    @property
    def dtls_transport(self) -> RTCDtlsTransport:
        """aiortc's DTLS transport (tests, introspection); an :class:`AiortcLink` only."""
        assert isinstance(self.link, AiortcLink), f"{self!r} has no aiortc link"
        return self.link.dtls

    @property
    def ice_transport(self) -> RTCIceTransport:
        """aiortc's ICE transport (tests, introspection); an :class:`AiortcLink` only."""
        assert isinstance(self.link, AiortcLink), f"{self!r} has no aiortc link"
        return self.link.ice

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "ports": self.local_ports,
            "producers": sorted(self.producers),
            "consumers": sorted(self.consumers),
            "stats": dataclasses.asdict(self.stats),
            "bandwidth": None if self._bandwidth is None else self._bandwidth.dump(time.monotonic()),
            "feedback_sent": None if self.feedback is None else self.feedback.messages,
            "allocation": None if self.allocation is None else self.allocation.dump(),
            "pacer": None if self._pacer is None else self._pacer.dump(),
        }
