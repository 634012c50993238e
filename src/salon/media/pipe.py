"""Pipe transports: a stream's producers on one router consumed on another (mediasoup's
``pipeToRouter``, as salon objects).

A session spread over two media workers has a router on each. A stream published on router A
(worker 1) reaches a subscriber whose subscribe transport is on router B (worker 2) through a
**pipe**: one pair of :class:`PipeTransport`\\s, one per side, one pair per (stream, receiving
router). Each side binds a UDP socket on ``127.0.0.1`` port 0; the main process exchanges
the two ports through the workers' control channels (:mod:`salon.media.channel`):

1. on A, :meth:`PipeTransport.sender` taps the stream's producers (like a
   :class:`~salon.media.recording.Recorder`: after the consumers on the packet path) and reports
   their parameters (:class:`PipedProducer`) and its port;
2. on B, :meth:`PipeTransport.receiver` creates one :class:`~salon.media.producer.Producer` per
   piped producer, with the same codec, payload types, SSRCs and header-extension ids, and
   learns A's address; the router adds them as a stream of its own, so B's consumers attach to
   them unchanged (``Router.pipe_in``);
3. on A, :meth:`PipeTransport.connect` learns B's address; the video producer is asked for a key
   frame.

Datagrams, plain RTP and RTCP over UDP (RFC 5761 multiplexing, no prefix, no encryption):

* A → B: each RTP packet of the tapped producers exactly as the producer handed it on
  (decrypted, RTX unwrapped: the publisher's SSRCs, sequence numbers and extensions), by one
  non-blocking ``sendto``. Every encoding of a simulcast producer is carried: B's producer has
  the same encodings (RIDs, SSRCs, layer order: :class:`PipedProducer`), so B's consumers switch
  layers as A's do. Before the first packet of an SSRC (and again with each of its sender
  reports, in case a datagram was lost), A sends a *layer announcement*: an RTCP APP packet
  (name ``SLYR``) giving the SSRC's producer kind and encoding index, so B binds an SSRC the
  publisher started after the pipe opened (:meth:`Producer.learn_ssrc
  <salon.media.producer.Producer.learn_ssrc>`) to the right encoding even when its packets no
  longer carry a RID.
* A → B also: the publisher's sender reports, as they came (B's consumers rewrite them for
  their subscribers, so lip sync survives the pipe).
* B → A: what B's producers send upstream, each naming an encoding by its SSRC: PLI / FIR (a
  consumer on B wants a key frame of that encoding: A's producer asks its publisher, throttled
  per encoding), NACK (a hole on the pipe or a B consumer's cache miss: answered from that
  encoding's retransmission buffer on A, else NACKed upstream by A's producer), and
  the receiver reports + REMB (B's producer's estimate: the lowest of B's consumers'),
  which A's producer counts with its own consumers' estimates in the REMB to its publisher.

A datagram from any address but the peer's (or any before the peer is known) is dropped and
counted (:attr:`PipeStats.foreign_dropped`). A send the kernel does not take at once is dropped
and counted (the receiver NACKs the hole). :meth:`PipeTransport.close` is idempotent: on A it
removes the taps, on B it closes the piped producers (so their consumers, ``producer_closed``).

Inside one machine a pipe carries plain RTP on the loopback. Between nodes (machines) it is
SRTP-protected (:class:`PipeKeys`: a fresh master key per pipe and direction, handed to both
ends through the cluster's control channel, :mod:`salon.cluster.pipes`): every datagram is
protected before it leaves and must authenticate on arrival, else it is dropped and counted
(:attr:`PipeStats.auth_failed`); a plain-RTP pipe's peer must be a loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pylibsrtp

from salon.media.errors import MediaStateError
from salon.media.events import EventEmitter
from salon.media.loopback import bind_udp_socket
from salon.media.producer import Producer
from salon.media.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    SenderReport,
    build_sender_report,
    parse_rtcp,
)
from salon.media.rtp import is_rtcp, parse_rtp_header
from salon.media.sdp import EncodingParameters, HeaderExtensionIds, MediaKind, PublishTrack, RtpCodec
from salon.media.totals import retire_pipe
from salon.media.transport import DROPPED
from salon.media.webrtc import SrtpContexts, srtp_contexts

if TYPE_CHECKING:
    from salon.media.consumer import Consumer
    from salon.media.producer import Encoding

__all__ = ["PIPE_HOST", "PipeClosed", "PipeKeys", "PipeStats", "PipeTransport", "PipedProducer"]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

#: Where pipes listen: the loopback (plain RTP never leaves the machine).
PIPE_HOST = "127.0.0.1"
#: Socket buffers of a pipe: a key frame burst at high bit rate fits.
BUFFER_SIZE = 1 << 20
#: Sequence numbers of one NACK answered (beyond: ignored).
MAX_NACK = 512
#: RTCP APP packet type, and the name of a layer announcement (see the module docstring).
_APP = 204
_LAYER_NAME = b"SLYR"
_KINDS: tuple[MediaKind, ...] = ("audio", "video")
#: The pipes' SRTP profile: AEAD_AES_128_GCM (RFC 7714), about half the CPU per packet of
#: AES_CM_128_HMAC_SHA1_80 here (AES-NI), and a 16-byte tag.
PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM
#: Its master key + salt length.
KEY_LENGTH = 28
#: The receiving replay window (packets): a NACK answer up to that many packets late is taken.
REPLAY_WINDOW = 4096


@dataclass(frozen=True, slots=True)
class PipeKeys:
    """The SRTP master keys (key + salt, :data:`KEY_LENGTH` bytes) of one end of a node-to-node
    pipe: ``send`` protects what this end sends, ``receive`` authenticates what it receives
    (the other end's ``send``). Never logged: :meth:`__repr__` hides them."""

    send: bytes
    receive: bytes

    def __post_init__(self) -> None:
        if len(self.send) != KEY_LENGTH or len(self.receive) != KEY_LENGTH:
            raise ValueError(f"a pipe key is {KEY_LENGTH} bytes")

    def __repr__(self) -> str:
        return "PipeKeys(<hidden>)"

    @staticmethod
    def generate() -> bytes:
        """A fresh random master key + salt."""
        return secrets.token_bytes(KEY_LENGTH)

    @classmethod
    def pair(cls) -> tuple[PipeKeys, PipeKeys]:
        """Both ends' keys of a new pipe: (sending end's, receiving end's)."""
        forward, back = cls.generate(), cls.generate()
        return cls(send=forward, receive=back), cls(send=back, receive=forward)

    def to_hex(self) -> tuple[str, str]:
        return self.send.hex(), self.receive.hex()

    @classmethod
    def from_hex(cls, send: str, receive: str) -> PipeKeys:
        return cls(bytes.fromhex(send), bytes.fromhex(receive))

    def contexts(self) -> SrtpContexts:
        """Per-packet protect / unprotect calls (:mod:`salon.media.webrtc`) over two fresh
        sessions. The sending one may protect a packet again (a NACK answer); the receiving
        one has a wide replay window (late retransmissions)."""
        tx = pylibsrtp.Policy(
            key=self.send, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILE
        )
        tx.allow_repeat_tx = True
        rx = pylibsrtp.Policy(
            key=self.receive, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILE
        )
        rx.window_size = REPLAY_WINDOW
        return srtp_contexts(pylibsrtp.Session(tx), pylibsrtp.Session(rx))


def _layer_announcement(ssrc: bytes, kind: MediaKind, layer: int) -> bytes:
    """RTCP APP (RFC 3550 6.7), 16 bytes: header, SSRC, name, then kind index + encoding index."""
    return b"\x80\xcc\x00\x03" + ssrc + _LAYER_NAME + bytes((_KINDS.index(kind), layer & 0xFF, 0, 0))


@dataclass(frozen=True, slots=True)
class PipedProducer:
    """What the receiving side needs to mirror one sending-side producer."""

    id: str
    kind: MediaKind
    mid: str
    codec: RtpCodec
    extensions: HeaderExtensionIds
    ssrc: int | None
    rtx_ssrc: int | None
    cname: str | None
    encodings: tuple[EncodingParameters, ...] = ()
    """A simulcast producer's encodings (RID, SSRCs if known yet), lowest first; else empty."""
    screen: bool = False
    """A screen share (allocated before camera video on the far side too)."""

    @classmethod
    def of(cls, producer: Producer) -> PipedProducer:
        encodings = (
            tuple(EncodingParameters(rid=e.rid, ssrc=e.ssrc, rtx_ssrc=e.rtx_ssrc) for e in producer.encodings)
            if producer.simulcast
            else ()
        )
        return cls(
            id=producer.id,
            kind=producer.kind,
            mid=producer.mid,
            codec=producer.codec,
            extensions=producer.extensions,
            ssrc=producer.ssrc,
            rtx_ssrc=producer.rtx_ssrc,
            cname=producer.cname,
            encodings=encodings,
            screen=producer.screen,
        )

    def to_dict(self) -> dict[str, Any]:
        codec = asdict(self.codec)
        codec["parameters"] = dict(self.codec.parameters)
        codec["rtcp_feedback"] = [list(fb) for fb in self.codec.rtcp_feedback]
        return {
            "id": self.id,
            "kind": self.kind,
            "mid": self.mid,
            "codec": codec,
            "extensions": asdict(self.extensions),
            "ssrc": self.ssrc,
            "rtx_ssrc": self.rtx_ssrc,
            "cname": self.cname,
            "encodings": [asdict(e) for e in self.encodings],
            "screen": self.screen,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipedProducer:
        codec = dict(data["codec"])
        codec["rtcp_feedback"] = tuple((t, p) for t, p in codec.get("rtcp_feedback", ()))
        return cls(
            id=str(data["id"]),
            kind=data["kind"],
            mid=str(data["mid"]),
            codec=RtpCodec(**codec),
            extensions=HeaderExtensionIds(**data["extensions"]),
            ssrc=data.get("ssrc"),
            rtx_ssrc=data.get("rtx_ssrc"),
            cname=data.get("cname"),
            encodings=tuple(
                EncodingParameters(rid=e.get("rid"), ssrc=e.get("ssrc"), rtx_ssrc=e.get("rtx_ssrc"))
                for e in data.get("encodings", ())
            ),
            screen=bool(data.get("screen", False)),
        )


@dataclass(slots=True)
class PipeStats:
    packets_sent: int = 0
    bytes_sent: int = 0
    send_dropped: int = 0
    """Packets not sent because the socket did not take them at once."""
    packets_received: int = 0
    bytes_received: int = 0
    rtcp_sent: int = 0
    rtcp_received: int = 0
    foreign_dropped: int = 0
    """Datagrams from another address than the peer's (or before the peer was known)."""
    auth_failed: int = 0
    """SRTP pipes: datagrams from the peer's address that failed authentication (or replays)."""
    malformed: int = 0
    unknown_ssrc: int = 0
    layer_announcements: int = 0
    """Sent (sending side) or received (receiving side)."""
    nacks_received: int = 0
    retransmitted: int = 0
    cache_misses: int = 0
    key_frame_requests: int = 0
    remb_bitrate: int = 0
    """The last REMB estimate from the receiving side (b/s)."""


class _PipeProtocol(asyncio.DatagramProtocol):
    """The loop's protocol of a pipe's socket: hands each datagram to its pipe, timed."""

    __slots__ = ("_received",)

    def __init__(self, received: Callable[[bytes, tuple[str, int], float], None]) -> None:
        self._received = received

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._received(data, addr, time.monotonic())


@dataclass(frozen=True, slots=True)
class PipeClosed:
    pipe: PipeTransport


class PipeTransport:
    """One end of a pipe between two routers, for one stream. Create with :meth:`sender`
    or :meth:`receiver` (a running event loop is needed: the socket is watched by it)."""

    def __init__(
        self,
        stream_id: str,
        *,
        sending: bool,
        pipe_id: str | None = None,
        host: str = PIPE_HOST,
        keys: PipeKeys | None = None,
        port_range: tuple[int, int] | None = None,
    ) -> None:
        self.id = pipe_id or f"pi-{next(_ids)}-{secrets.token_hex(3)}"
        self.stream_id = stream_id
        self.sending = sending
        self.stats = PipeStats()
        self.closed = False
        self.events: EventEmitter[PipeClosed] = EventEmitter(self)
        self.peer: tuple[str, int] | None = None
        #: Sending side: the tapped producers; receiving side: the piped producers (by kind).
        self.producers: dict[str, Producer] = {}
        self._by_ssrc: dict[int, Producer] = {}
        self._by_pt: dict[int, Producer | None] = {}
        self._remb: dict[str, int] = {}
        #: Sending side: the SSRCs (4 bytes, as in the packets) whose layer was announced.
        self._announced: set[bytes] = set()
        """Sending side: the far side's last REMB per tapped producer (its consumers' lowest)."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        #: SRTP (a pipe between nodes): per-packet protect / unprotect; None: plain RTP.
        self.srtp: SrtpContexts | None = None if keys is None else keys.contexts()
        if keys is None and not ipaddress.ip_address(host).is_loopback:
            raise MediaStateError(f"a plain-RTP pipe listens on the loopback, not {host}")
        self._sock = bind_udp_socket(host, port_range)  # a free port (of the range)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_SIZE)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_SIZE)
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        self._transport: asyncio.DatagramTransport | None = None
        self._starting = False
        self._sendto: Any = None
        self._send_rtcp_raw: Any = None

    async def _start(self) -> None:
        """Read the socket through the loop's datagram transport: uvloop calls back once per
        datagram from C, cheaper than a Python ``recvfrom`` loop (docs/benchmarks.md)."""
        loop = asyncio.get_running_loop()
        protocol = _PipeProtocol(self.datagram_received)
        self._starting = True
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=self._sock)
        except BaseException:
            self._sock.close()
            raise
        finally:
            self._starting = False
        self._transport = transport
        self._sendto = self._send_rtcp_raw = transport.sendto
        srtp = self.srtp
        if srtp is not None:
            raw = transport.sendto
            protect, protect_rtcp = srtp.protect, srtp.protect_rtcp

            def send_srtp(data: bytes, addr: Any) -> None:
                packet = protect(data)
                if packet is None:
                    raise OSError("SRTP protect failed")
                raw(packet, addr)

            def send_srtcp(data: bytes, addr: Any) -> None:
                packet = protect_rtcp(data)
                if packet is None:
                    raise OSError("SRTCP protect failed")
                raw(packet, addr)

            self._sendto, self._send_rtcp_raw = send_srtp, send_srtcp
        if self.closed:
            transport.close()

    def __repr__(self) -> str:
        side = "→" if self.sending else "←"
        peer = f"{self.peer[1]}" if self.peer else "?"
        return f"PipeTransport({self.id} {self.stream_id[:8]} :{self.port} {side} :{peer})"

    # ----------------------------------------------------------------------------------------
    # Construction

    @classmethod
    async def sender(
        cls,
        stream_id: str,
        producers: Iterable[Producer],
        *,
        pipe_id: str | None = None,
        host: str = PIPE_HOST,
        keys: PipeKeys | None = None,
        port_range: tuple[int, int] | None = None,
    ) -> PipeTransport:
        """The sending end: taps ``producers`` (a stream's live producers); bound on ``host``
        (a free port of ``port_range``), SRTP with ``keys`` (a pipe to another node)."""
        live = [p for p in producers if not p.closed]
        if not live:
            raise MediaStateError(f"stream {stream_id} has no live producer to pipe")
        pipe = cls(stream_id, sending=True, pipe_id=pipe_id, host=host, keys=keys, port_range=port_range)
        await pipe._start()
        live = [p for p in live if not p.closed]
        if not live:
            pipe.close()
            raise MediaStateError(f"stream {stream_id} closed while its pipe opened")
        for producer in live:
            pipe.producers[producer.kind] = producer
            for ssrc in producer.ssrcs():
                pipe._by_ssrc[ssrc] = producer
            producer.add_pipe(pipe)
        return pipe

    @classmethod
    async def receiver(
        cls,
        stream_id: str,
        piped: Iterable[PipedProducer],
        peer: tuple[str, int],
        *,
        pipe_id: str | None = None,
        host: str = PIPE_HOST,
        keys: PipeKeys | None = None,
        port_range: tuple[int, int] | None = None,
    ) -> PipeTransport:
        """The receiving end: one local producer per piped one, fed from ``peer``; bound on
        ``host`` (a free port of ``port_range``), SRTP with ``keys`` (a pipe from another node)."""
        pipe = cls(stream_id, sending=False, pipe_id=pipe_id, host=host, keys=keys, port_range=port_range)
        await pipe._start()
        try:
            pipe.connect(peer)
            for info in piped:
                track = PublishTrack(
                    mid=info.mid,
                    kind=info.kind,
                    codec=info.codec,
                    extensions=info.extensions,
                    ssrc=info.ssrc,
                    rtx_ssrc=info.rtx_ssrc,
                    cname=info.cname,
                    simulcast_offered=bool(info.encodings),
                    encodings=info.encodings,
                )
                producer = Producer(pipe, track, stream_id=stream_id, screen=info.screen)
                pipe.producers[info.kind] = producer
                for ssrc in producer.ssrcs():
                    pipe._by_ssrc[ssrc] = producer
                for pt in producer.payload_types():
                    pipe._by_pt[pt] = None if pt in pipe._by_pt else producer
        except BaseException:
            pipe.close()
            raise
        return pipe

    def connect(self, peer: tuple[str, int]) -> None:
        """Learn the other end's address (a loopback address unless the pipe is SRTP); packets
        flow from now on."""
        host, port = peer
        if host == "localhost":
            host = "127.0.0.1"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise MediaStateError(f"a pipe peer is an IP address, not {host!r}") from None
        if not 0 < port < 65536 or (self.srtp is None and not address.is_loopback):
            raise MediaStateError(f"a plain-RTP pipe's peer must be on the loopback, not {host}:{port}")
        self.peer = (address.compressed, port)
        if self.sending:
            video = self.producers.get("video")
            if video is not None:
                now = time.monotonic()
                for encoding in video.encodings:
                    video.request_key_frame(now, encoding.index)

    # ----------------------------------------------------------------------------------------
    # Sending side: the packet path (called by the tapped producers, synchronously)

    def send_rtp(self, producer: Producer, data: bytes, layer: int) -> None:
        peer = self.peer
        if peer is None or self._sendto is None:
            return
        ssrc = data[8:12]
        if ssrc not in self._announced:
            self._announce(producer, ssrc, layer)
        try:
            self._sendto(data, peer)
        except OSError:  # BlockingIOError (buffer full), ConnectionRefusedError (peer gone)
            self.stats.send_dropped += 1
            return
        self.stats.packets_sent += 1
        self.stats.bytes_sent += len(data)

    def _announce(self, producer: Producer, ssrc: bytes, layer: int) -> None:
        """Tell the receiving side which encoding of which producer ``ssrc`` is."""
        self._announced.add(ssrc)
        self._by_ssrc[int.from_bytes(ssrc, "big")] = producer
        try:
            self._send_rtcp_raw(_layer_announcement(ssrc, producer.kind, layer), self.peer)
        except OSError:
            self.stats.send_dropped += 1
            self._announced.discard(ssrc)  # again with the next packet
            return
        self.stats.layer_announcements += 1

    def send_sender_report(self, producer: Producer, report: SenderReport, layer: int) -> None:
        """A publisher SR of encoding ``layer``, passed on as it came (the receiving side's
        consumers rewrite it for their subscribers: lip sync survives the pipe), after the
        encoding's layer announcement again (in case the first was lost)."""
        peer = self.peer
        if peer is None or self._sendto is None:
            return
        self._announce(producer, report.ssrc.to_bytes(4, "big"), layer)
        packet = build_sender_report(
            report.ssrc, report.ntp_timestamp, report.rtp_timestamp, report.packet_count, report.octet_count
        )
        try:
            self._send_rtcp_raw(packet, peer)
        except OSError:
            self.stats.send_dropped += 1
            return
        self.stats.rtcp_sent += 1

    def remb_bitrate(self, producer: Producer) -> int | None:
        """The last REMB the far side sent for ``producer``: the mirrored producer's measure of
        the pipe (for the dump and tests; the publisher's REMB is its own uplink)."""
        return self._remb.get(producer.id)

    def producer_closed(self, producer: Producer) -> None:
        """A tapped producer closed; the sending end closes with the last one."""
        if self.producers.get(producer.kind) is producer:
            del self.producers[producer.kind]
        if not self.producers:
            self.close()

    # ----------------------------------------------------------------------------------------
    # Receiving side: what its producers need of a transport

    def schedule(self, at: float) -> None:
        """Make sure the producers' timers (NACK retries, PLI throttle, reports) run by ``at``."""
        if self.closed or at >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        if self.closed:
            return
        now = time.monotonic()
        next_at = min((p.on_timer(now) for p in list(self.producers.values())), default=float("inf"))
        if next_at != float("inf"):
            self.schedule(next_at)

    def send_rtcp(self, packet: bytes) -> None:
        """Upstream RTCP of a piped producer (PLI, FIR, NACK, RR + REMB) back to the sender."""
        peer = self.peer
        if peer is None or self.closed or self._sendto is None:
            return
        try:
            self._send_rtcp_raw(packet, peer)
        except OSError:
            self.stats.send_dropped += 1
            return
        self.stats.rtcp_sent += 1

    def remove_producer(self, producer: Producer) -> None:
        """A piped producer closed: route nothing more to it."""
        if self.producers.get(producer.kind) is producer:
            del self.producers[producer.kind]
        for key in [k for k, v in self._by_ssrc.items() if v is producer]:
            del self._by_ssrc[key]

    @property
    def consumers(self) -> list[Consumer]:
        return [c for p in self.producers.values() for c in p.consumers] if not self.sending else []

    # ----------------------------------------------------------------------------------------
    # Both sides: datagrams from the peer

    def datagram_received(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        """Handle one datagram from ``addr`` (public for tests)."""
        peer = self.peer
        if self.closed:
            return
        if peer is None or addr[1] != peer[1] or addr[0] != peer[0]:
            self.stats.foreign_dropped += 1
            DROPPED["pipe_foreign"] += 1
            return
        srtp = self.srtp
        if srtp is not None:
            clear = srtp.unprotect_rtcp(data) if is_rtcp(data) else srtp.unprotect(data)
            if clear is None:
                self.stats.auth_failed += 1
                DROPPED["pipe_unauthenticated"] += 1
                return
            data = clear
        if is_rtcp(data):
            self.stats.rtcp_received += 1
            if data[1] == _APP and data[8:12] == _LAYER_NAME and len(data) >= 16:
                if not self.sending:
                    self._receive_layer_announcement(data)
                return
            self._receive_rtcp(data, now)
        elif self.sending:
            self.stats.malformed += 1  # the receiving side sends no RTP
        else:
            self._receive_rtp(data, now)

    def _receive_layer_announcement(self, data: bytes) -> None:
        ssrc = int.from_bytes(data[4:8], "big")
        kind, layer = data[12], data[13]
        producer = self.producers.get(_KINDS[kind]) if kind < len(_KINDS) else None
        if producer is None or layer >= len(producer.encodings):
            self.stats.malformed += 1
            return
        self.stats.layer_announcements += 1
        if self._by_ssrc.get(ssrc) is producer:
            return
        encoding = producer.encodings[layer]
        if producer.learn_ssrc(ssrc, producer.codec.payload_type, rid=encoding.rid):
            self._by_ssrc[ssrc] = producer
        else:
            self.stats.unknown_ssrc += 1

    def _receive_rtp(self, data: bytes, now: float) -> None:
        try:
            header = parse_rtp_header(data)
        except ValueError:
            self.stats.malformed += 1
            return
        producer = self._by_ssrc.get(header.ssrc)
        if producer is None:
            # Not announced (yet): only a producer with one encoding can take it.
            producer = self._by_pt.get(header.payload_type)
            if (
                producer is None
                or producer.simulcast
                or not producer.learn_ssrc(header.ssrc, header.payload_type)
            ):
                self.stats.unknown_ssrc += 1
                return
            self._by_ssrc[header.ssrc] = producer
        self.stats.packets_received += 1
        self.stats.bytes_received += len(data)
        producer.receive_rtp(data, header, now)

    def _receive_rtcp(self, data: bytes, now: float) -> None:
        try:
            packets = parse_rtcp(data)
        except ValueError:
            self.stats.malformed += 1
            return
        if not self.sending:
            for packet in packets:
                if isinstance(packet, SenderReport):
                    producer = self._by_ssrc.get(packet.ssrc)
                    if producer is not None:
                        producer.receive_sender_report(packet, now)
            return
        for packet in packets:
            if isinstance(packet, Nack):
                self._answer_nack(packet.media_ssrc, packet.seqs, now)
            elif isinstance(packet, Pli):
                self._key_frame(packet.media_ssrc, now)
            elif isinstance(packet, Fir):
                for entry in packet.entries:
                    self._key_frame(entry.ssrc, now)
            elif isinstance(packet, Remb):
                self.stats.remb_bitrate = packet.bitrate
                for ssrc in packet.ssrcs:
                    producer = self._by_ssrc.get(ssrc)
                    if producer is not None:
                        self._remb[producer.id] = packet.bitrate
            elif isinstance(packet, ReceiverReport):
                pass  # counted in rtcp_received; the publisher gets its RR from the producer

    def _encoding(self, ssrc: int) -> tuple[Producer, Encoding] | None:
        """The tapped producer and encoding whose media SSRC is ``ssrc``."""
        producer = self._by_ssrc.get(ssrc)
        if producer is None or producer.closed:
            return None
        encoding = producer.encoding_of(ssrc)
        if encoding is None or encoding.ssrc != ssrc:
            return None
        return producer, encoding

    def _key_frame(self, ssrc: int, now: float) -> None:
        found = self._encoding(ssrc)
        if found is not None:
            self.stats.key_frame_requests += 1
            found[0].request_key_frame(now, found[1].index)

    def _answer_nack(self, ssrc: int, seqs: tuple[int, ...], now: float) -> None:
        found = self._encoding(ssrc)
        if found is None:
            return
        producer, layer = found[0], found[1].index
        self.stats.nacks_received += 1
        misses: list[int] = []
        for seq in seqs[:MAX_NACK]:
            cached = producer.get_cached(seq, layer)
            if cached is None:
                misses.append(seq)
            else:
                self.stats.retransmitted += 1
                self.send_rtp(producer, cached, layer)
        if misses:
            self.stats.cache_misses += len(misses)
            producer.request_retransmission(misses, now, layer)

    # ----------------------------------------------------------------------------------------
    # Closing

    def close(self) -> None:
        """Close this end (idempotent): the sender stops tapping its producers; the receiver
        closes its producers, so their consumers close with ``producer_closed``."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        producers = list(self.producers.values())
        if self.sending:
            for producer in producers:
                producer.remove_pipe(self)
            self.producers.clear()
        else:
            for producer in producers:
                producer.transport_closed()
        self._by_ssrc.clear()
        self._by_pt.clear()
        self._sendto = self._send_rtcp_raw = None
        if self._transport is not None:
            self._transport.close()
        elif self._sock.fileno() >= 0 and not self._starting:
            self._sock.close()
        retire_pipe(self)  # its counts stay in the worker's totals (metrics)
        logger.info("%r: closed (%s)", self, self.stats)
        self.events.emit(PipeClosed(self))
        self.events.clear()

    def dump(self) -> dict[str, object]:
        return {
            "id": self.id,
            "stream_id": self.stream_id,
            "sending": self.sending,
            "port": self.port,
            "peer": list(self.peer) if self.peer else None,
            "srtp": self.srtp is not None,
            "producers": {k: p.id for k, p in self.producers.items()},
            "closed": self.closed,
            "stats": asdict(self.stats),
        }
