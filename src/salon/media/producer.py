"""Producer: one incoming audio or video track of a publishing client.

A producer belongs to the publisher's :class:`~salon.media.transport.WebRtcTransport`, which
demultiplexes RTP to it by SSRC (announced in the offer, or learnt from the mid header
extension / payload type). Per packet, synchronously, it:

1. unwraps RTX retransmissions (RFC 4588) back into the original packet;
2. feeds the :class:`~salon.media.nack.NackGenerator` (an upstream NACK goes out at once for a
   new gap, or for a packet a subscriber NACKed that the cache no longer holds; retries and
   the give-up-then-PLI are driven by the transport timer);
3. stores the packet in its :class:`~salon.media.retransmission.RetransmissionBuffer` so that
   subscriber NACKs are answered locally;
4. detects key frames (VP8 / H.264 start-of-key-frame) and reads the audio level (RFC 6464),
   kept as :attr:`Producer.audio_level_value` for consumers that forward it;
5. hands the unchanged bytes to each :class:`~salon.media.consumer.Consumer`, which rewrites and
   sends them: fan-out costs one header rewrite + protect + sendto per consumer.

Upstream RTCP: key-frame requests from consumers are throttled
(:class:`~salon.media.keyframe.KeyFrameRequestThrottle`) into PLIs (or FIRs when the publisher
only offered ``ccm fir``); every ~1 s the producer sends a receiver report plus (video) a REMB
carrying the publisher's own uplink as measured on the packets that arrive
(:class:`~salon.media.estimator.ReceiveSideEstimator`: delay-based on abs-send-time, or on the
RTP timestamps without it; capped at ``max_bitrate``), never the subscribers' estimates. A
publisher that negotiated transport-cc (Chromium) gets no REMB: the transport sends it
transport-cc feedback instead (:class:`~salon.media.twcc.FeedbackGenerator`) and its own
congestion control sets its rate. A publisher SR is
rewritten into one SR per consumer so lip sync survives the timestamp offsets.

Simulcast: a producer has one :class:`Encoding` per simulcast encoding (lowest quality first;
a non-simulcast producer has one). Each has its SSRC (announced by a legacy ``SIM`` group, or
learnt from the RID header extension of its first packet) and RTX SSRC (learnt from the
repaired-RID extension), its own NACK generator, retransmission cache, key-frame request
throttle and receive statistics, since each is its own RTP stream. Consumers get every packet
with its encoding's index and forward one encoding
(:class:`~salon.media.layers.LayerSwitcher`). Recorders get one stream too: the top encoding,
or the best one still flowing when the publisher stopped sending it (checked every second),
through the producer's own switcher, so the archiver sees one continuous RTP stream (its
NACKs and key-frame requests go through :meth:`Producer.get_cached` /
:meth:`Producer.request_retransmission` / :meth:`Producer.request_key_frame` with no layer). Pipes
to other workers' routers (:mod:`salon.media.pipe`) get every packet of every encoding as it
came (and the publisher's SRs), so the producer mirrored on the far side is simulcast too;
their NACKs and key-frame requests name an encoding by its SSRC (:meth:`Producer.encoding_of`). The REMB
sent to a simulcast publisher is its measured uplink capped at :data:`SIMULCAST_MAX_BITRATE`
(room for every encoding), never its subscribers' minimum: subscribers on weak links take a
lower encoding instead of lowering everyone's.

Closing: :meth:`Producer.close` (unpublish) and :meth:`Producer.transport_closed` both close
every consumer with :attr:`~salon.media.consumer.ConsumerCloseReason.PRODUCER_CLOSED`, then emit
:class:`ProducerClosed` with the matching reason. Both are idempotent.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from salon.media.allocator import Layer
from salon.media.estimator import ReceiveSideEstimator
from salon.media.events import EventEmitter
from salon.media.keyframe import KeyFrameRequestThrottle
from salon.media.layer_meter import EncodingMeter
from salon.media.layers import LayerSwitcher
from salon.media.nack import NackGenerator
from salon.media.retransmission import RetransmissionBuffer
from salon.media.rtcp import (
    ReportBlock,
    SenderReport,
    build_fir,
    build_nack,
    build_pli,
    build_receiver_report,
    build_remb,
)
from salon.media.rtp import (
    KEYFRAME_DETECTORS,
    RtpHeader,
    find_header_extension,
    parse_audio_level,
    parse_rtp_header,
    rewrite_rtp,
    unwrap_rtx,
)
from salon.media.sdp import EncodingParameters, HeaderExtensionIds, MediaKind, PublishTrack, RtpCodec
from salon.media.totals import retire_producer

if TYPE_CHECKING:
    from salon.media.consumer import Consumer
    from salon.media.recording import Recorder

__all__ = [
    "Encoding",
    "PacketTap",
    "Producer",
    "ProducerCloseReason",
    "ProducerClosed",
    "ProducerEvent",
    "ProducerStats",
    "ProducerTransport",
]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

#: Packets kept for retransmission to subscribers (about 1.5 s of 5 Mb/s video).
RETRANSMISSION_CAPACITY = 1024
#: Minimum interval between two key-frame requests sent to the publisher.
KEY_FRAME_REQUEST_INTERVAL = 0.3
#: Interval between receiver reports + REMB sent to the publisher.
REPORT_INTERVAL = 1.0
#: REMB cap sent upstream (aiortc clamps its encoder to 250 kb/s - 1.5 Mb/s anyway).
DEFAULT_MAX_BITRATE = 1_500_000
#: REMB sent to a simulcast publisher: room for all its encodings (Chromium's three layers of
#: 720p video take about 2.5 Mb/s).
SIMULCAST_MAX_BITRATE = 4_000_000
#: RFC 6464 value for "no voice, -127 dBov", until the publisher's packets carry a level.
_SILENCE = b"\x7f"


class ProducerTransport(Protocol):
    """What a producer uses of the transport it receives on: a publisher's
    :class:`~salon.media.transport.WebRtcTransport`, or the receiving end of a
    :class:`~salon.media.pipe.PipeTransport` (a stream piped from another worker)."""

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet to the publisher now."""

    def schedule(self, at: float) -> None:
        """Call ``on_timer`` of the producers and consumers no later than ``at``."""

    def remove_producer(self, producer: Producer) -> None:
        """The producer closed: route nothing more to it."""


class PacketTap(Protocol):
    """A non-forwarding receiver of every packet of every encoding of a producer, after its
    consumers: the sending end of a :class:`~salon.media.pipe.PipeTransport`. (A
    :class:`~salon.media.recording.Recorder` gets one stream only: the top encoding.)"""

    id: str

    def send_rtp(self, producer: Producer, data: bytes, layer: int) -> None:
        """One packet of encoding ``layer``, as the producer handed it on (RTX unwrapped)."""

    def send_sender_report(self, producer: Producer, report: SenderReport, layer: int) -> None:
        """A publisher SR of encoding ``layer``, as it came."""

    def producer_closed(self, producer: Producer) -> None:
        """The producer closed: the tap is already removed."""


class ProducerCloseReason(enum.Enum):
    CLOSED = "closed"
    """:meth:`Producer.close` was called (unpublish)."""
    TRANSPORT_CLOSED = "transport_closed"
    """The publisher's transport closed (left, failed, or the router closed)."""


@dataclass(frozen=True, slots=True)
class ProducerEvent:
    producer: Producer


@dataclass(frozen=True, slots=True)
class ProducerClosed(ProducerEvent):
    """The producer closed; its consumers are already closed with ``producer_closed``."""

    reason: ProducerCloseReason


@dataclass(slots=True)
class ProducerStats:
    packets_received: int = 0
    bytes_received: int = 0
    rtx_received: int = 0
    key_frames: int = 0
    nack_packets_sent: int = 0
    """RTCP NACK packets sent upstream (gap detection, retries, consumer cache misses)."""
    nacked_sequence_numbers: int = 0
    upstream_nacks: int = 0
    """Consumer cache misses turned into an upstream NACK (then retried like a detected gap)."""
    recovered: int = 0
    """Packets that arrived after having been NACKed (via RTX or plain retransmission)."""
    given_up: int = 0
    """Missing packets the NACK generator stopped asking for."""
    key_frame_requests_sent: int = 0
    reports_sent: int = 0


class Encoding:
    """One RTP stream of a producer (its only one, or one simulcast encoding)."""

    __slots__ = (
        "base_seq",
        "cache",
        "cycles",
        "expected_prior",
        "fir_seq",
        "index",
        "key_frame_throttle",
        "key_frames",
        "last_packet_at",
        "last_sr",
        "last_sr_at",
        "max_seq",
        "meter",
        "nack",
        "packets_received",
        "received",
        "received_prior",
        "rid",
        "rtx_ssrc",
        "ssrc",
    )

    def __init__(self, index: int, params: EncodingParameters, *, nack: bool, codec: str = "") -> None:
        self.index = index
        #: Bitrate / frame rate per temporal layer and resolution (for the allocator).
        self.meter = EncodingMeter(codec)
        self.rid = params.rid
        self.ssrc: int | None = params.ssrc
        self.rtx_ssrc: int | None = params.rtx_ssrc
        self.packets_received = 0
        self.key_frames = 0
        #: When the last packet arrived (monotonic seconds; -inf: none yet).
        self.last_packet_at = float("-inf")
        self.cache = RetransmissionBuffer(RETRANSMISSION_CAPACITY)
        self.nack: NackGenerator | None = NackGenerator() if nack else None
        self.key_frame_throttle = KeyFrameRequestThrottle(KEY_FRAME_REQUEST_INTERVAL)
        self.fir_seq = 0
        # Receive statistics for receiver reports (RFC 3550 A.3).
        self.base_seq = -1
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.last_sr = 0
        self.last_sr_at = 0.0

    def __repr__(self) -> str:
        return f"Encoding({self.index} rid={self.rid} ssrc={self.ssrc} rtx={self.rtx_ssrc})"

    def dump(self) -> dict[str, object]:
        return {
            "index": self.index,
            "rid": self.rid,
            "ssrc": self.ssrc,
            "rtx_ssrc": self.rtx_ssrc,
            "packets_received": self.packets_received,
            "key_frames": self.key_frames,
        }


class Producer:
    """One incoming track (audio or video) on a publisher's transport."""

    def __init__(
        self,
        transport: ProducerTransport,
        track: PublishTrack,
        *,
        stream_id: str,
        producer_id: str | None = None,
        max_bitrate: int = DEFAULT_MAX_BITRATE,
        screen: bool = False,
    ) -> None:
        self.id = producer_id or f"pr-{next(_ids)}-{secrets.token_hex(3)}"
        #: A screen share (the stream's ``videoType`` is ``screen``): subscribers' allocators
        #: serve it before camera video (:mod:`salon.media.allocator`).
        self.screen = screen
        self.transport = transport
        self.stream_id = stream_id
        self.kind: MediaKind = track.kind
        self.mid = track.mid
        self.codec: RtpCodec = track.codec
        self.extensions: HeaderExtensionIds = track.extensions
        self.cname = track.cname
        self.max_bitrate = max_bitrate
        self.events: EventEmitter[ProducerEvent] = EventEmitter(self)
        self.stats = ProducerStats()
        self.closed = False
        self.close_reason: ProducerCloseReason | None = None
        #: Last audio level from RFC 6464, in -dBov (0 loudest .. 127 silence); None if unknown.
        self.audio_level: int | None = None
        self.voice_activity = False
        #: The last packet's RFC 6464 byte as received (V flag + level), which consumers whose
        #: subscriber negotiated ``ssrc-audio-level`` write into their own extension block
        #: (silence until a packet carries one; a packet without one keeps the last value).
        self.audio_level_value = _SILENCE
        #: Called with (producer, level in -dBov, voice flag, now) for each audio packet that
        #: carries a level (the worker feeds its active-speaker detector); None: no call.
        self.on_audio_level: Callable[[Producer, int, bool, float], None] | None = None
        #: One-shot: called with the producer on its first media packet, then reset to None
        #: (the worker announces the stream once media flows, not when ICE + DTLS are up).
        self.on_first_packet: Callable[[Producer], None] | None = None

        self._rtx_pt = track.codec.rtx_payload_type
        self._pt = track.codec.payload_type
        self._rtcp_ssrc = secrets.randbits(32) or 1
        nack = track.codec.supports_feedback("nack")
        params = track.encodings or (EncodingParameters(rid=None, ssrc=track.ssrc, rtx_ssrc=track.rtx_ssrc),)
        #: The encodings, lowest quality first (one unless simulcast).
        self.encodings: tuple[Encoding, ...] = tuple(
            Encoding(i, e, nack=nack, codec=track.codec.name) for i, e in enumerate(params)
        )
        self._top = self.encodings[-1]
        #: The only encoding of a non-simulcast producer (the transport already routed the
        #: packet by SSRC), None for simulcast (the SSRC names the encoding).
        self._single: Encoding | None = self._top if len(self.encodings) == 1 else None
        #: Simulcast: what recorders get (one encoding, rewritten continuous), else None.
        self._recording: LayerSwitcher | None = (
            LayerSwitcher(track.codec.name, track.codec.clock_rate, layers=len(self.encodings))
            if len(self.encodings) > 1
            else None
        )
        self._recording_ssrc = secrets.randbits(32) or 1
        self._by_ssrc: dict[int, Encoding] = {}
        for encoding in self.encodings:
            for ssrc in (encoding.ssrc, encoding.rtx_ssrc):
                if ssrc is not None:
                    self._by_ssrc[ssrc] = encoding
        self._consumers: list[Consumer] = []
        #: The consumers that forward (not paused, transport connected): what the packet path
        #: iterates, so paused or not-yet-connected subscribers cost nothing per packet.
        self._forwarding: tuple[Consumer, ...] = ()
        #: Recorders copying this track to an archiver (:mod:`salon.media.recording`): after the
        #: consumers on the packet path, and not part of the bandwidth estimate.
        self._recorders: tuple[Recorder, ...] = ()
        #: Pipes to other workers' routers (:mod:`salon.media.pipe`): every packet of every
        #: encoding, after the recorders.
        self._pipes: tuple[PacketTap, ...] = ()
        self._use_fir = not track.codec.supports_feedback("nack", "pli") and track.codec.supports_feedback(
            "ccm", "fir"
        )
        self._is_key_frame = KEYFRAME_DETECTORS.get(track.codec.name) if self.kind == "video" else None
        self._audio_level_id = track.extensions.audio_level
        #: The publisher's uplink, measured on what arrives (video): the REMB sent to it.
        #: Capped at ``max_bitrate``, or for simulcast at :data:`SIMULCAST_MAX_BITRATE` (room for
        #: every encoding).
        self._uplink_cap = max(max_bitrate, SIMULCAST_MAX_BITRATE) if len(params) > 1 else max_bitrate
        self._uplink = (
            ReceiveSideEstimator(self._uplink_cap)
            if self.kind == "video" and track.extensions.transport_cc is None
            else None
        )
        self._abs_send_time_id = track.extensions.abs_send_time
        self._next_report = 0.0
        self._last_remb = 0

    def __repr__(self) -> str:
        return f"Producer({self.id} {self.kind} {self.codec.name} stream={self.stream_id})"

    # ----------------------------------------------------------------------------------------
    # Wiring

    @property
    def simulcast(self) -> bool:
        """Whether the producer has several encodings."""
        return len(self.encodings) > 1

    @property
    def ssrc(self) -> int | None:
        """The media SSRC of the top (or only) encoding."""
        return self._top.ssrc

    @property
    def rtx_ssrc(self) -> int | None:
        """The RTX SSRC of the top (or only) encoding."""
        return self._top.rtx_ssrc

    def ssrcs(self) -> list[int]:
        return list(self._by_ssrc)

    def payload_types(self) -> list[int]:
        return [p for p in (self._pt, self._rtx_pt) if p is not None]

    def learn_ssrc(
        self, ssrc: int, payload_type: int, rid: str | None = None, repaired_rid: str | None = None
    ) -> bool:
        """Accept an SSRC the offer did not announce (first packet seen with our mid/PT).

        A simulcast producer whose encodings have RIDs binds it to the encoding the packet's
        RID (media) or repaired RID (RTX) names; otherwise the first encoding without one
        takes it.
        """
        if ssrc in self._by_ssrc:
            return True
        by_rid = self.encodings[0].rid is not None
        encoding: Encoding | None = None
        if payload_type == self._pt:
            if by_rid:
                encoding = next((e for e in self.encodings if e.rid == rid and e.ssrc is None), None)
            else:
                encoding = next((e for e in self.encodings if e.ssrc is None), None)
            if encoding is None:
                return False
            encoding.ssrc = ssrc
        elif payload_type == self._rtx_pt and self._rtx_pt is not None:
            if by_rid:
                encoding = next(
                    (e for e in self.encodings if e.rid == repaired_rid and e.rtx_ssrc is None), None
                )
            else:
                encoding = next((e for e in self.encodings if e.rtx_ssrc is None), None)
            if encoding is None:
                return False
            encoding.rtx_ssrc = ssrc
        else:
            return False
        self._by_ssrc[ssrc] = encoding
        return True

    @property
    def consumers(self) -> list[Consumer]:
        return list(self._consumers)

    def add_consumer(self, consumer: Consumer) -> None:
        """Feed ``consumer`` (once it forwards: :meth:`consumers_changed`)."""
        if self.closed:
            return
        self._consumers.append(consumer)
        self.consumers_changed()

    def remove_consumer(self, consumer: Consumer) -> None:
        """Stop feeding ``consumer`` (it closed or switched to another producer)."""
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        self.consumers_changed()

    def consumers_changed(self) -> None:
        """A consumer was added, removed, paused, resumed, connected or closed."""
        self._forwarding = tuple(c for c in self._consumers if c.forwarding)

    @property
    def recorders(self) -> list[Recorder]:
        return list(self._recorders)

    @property
    def pipes(self) -> list[PacketTap]:
        return list(self._pipes)

    def add_pipe(self, pipe: PacketTap) -> None:
        """Hand every packet of every encoding (and the publisher's SRs) to ``pipe`` too."""
        if not self.closed and pipe not in self._pipes:
            self._pipes = (*self._pipes, pipe)

    def remove_pipe(self, pipe: PacketTap) -> None:
        self._pipes = tuple(p for p in self._pipes if p is not pipe)

    def encoding_of(self, ssrc: int) -> Encoding | None:
        """The encoding whose media (or RTX) SSRC is ``ssrc``, if known."""
        return self._by_ssrc.get(ssrc)

    def add_recorder(self, recorder: Recorder) -> None:
        if not self.closed and recorder not in self._recorders:
            self._recorders = (*self._recorders, recorder)

    def remove_recorder(self, recorder: Recorder) -> None:
        self._recorders = tuple(r for r in self._recorders if r is not recorder)

    # ----------------------------------------------------------------------------------------
    # Packet path

    def receive_rtp(self, data: bytes, header: RtpHeader, now: float) -> None:
        """Handle one decrypted packet from the publisher and fan it out (synchronous)."""
        if self.closed:
            return
        repaired = False
        encoding = self._by_ssrc.get(header.ssrc, self._single)
        if encoding is None:
            return
        if header.payload_type == self._rtx_pt:
            try:
                osn, payload = unwrap_rtx(data, header)
            except ValueError:
                return  # padding-only probe on the RTX stream
            ssrc = encoding.ssrc
            if ssrc is None:
                return
            self.stats.rtx_received += 1
            # Rebuild the original packet (no extensions needed downstream: consumers add theirs).
            data = (
                bytes([0x80, (data[1] & 0x80) | self._pt])
                + osn.to_bytes(2, "big")
                + header.timestamp.to_bytes(4, "big")
                + ssrc.to_bytes(4, "big")
                + payload
            )
            header = RtpHeader(header.marker, self._pt, osn, header.timestamp, ssrc, 12, 0, 0)
            repaired = True
        elif header.payload_type != self._pt:
            return
        elif self._uplink is not None:
            self._measure_uplink(data, header, now)
        if self.on_first_packet is not None:
            first, self.on_first_packet = self.on_first_packet, None
            first(self)
        stats = self.stats
        stats.packets_received += 1
        stats.bytes_received += len(data)
        encoding.packets_received += 1
        encoding.last_packet_at = now
        seq = header.sequence_number
        # _update_receive_stats, inlined for the in-order case (one call less per packet).
        delta = (seq - encoding.max_seq) & 0xFFFF
        if delta == 1 and encoding.base_seq >= 0:
            if seq == 0:
                encoding.cycles += 0x10000
            encoding.max_seq = seq
            encoding.received += 1
        else:
            self._update_receive_stats(encoding, seq)

        nack = encoding.nack
        if nack is not None:
            missing = nack.on_packet(seq, now)
            if missing:
                self._send_nack(encoding, missing)
                deadline = nack.next_deadline()
                if deadline is not None:
                    self.transport.schedule(deadline)
        encoding.cache.store(seq, data, now)

        key_frame = True
        detector = self._is_key_frame
        if detector is not None:
            view = memoryview(data)[header.payload_offset :]
            key_frame = detector(view)
            if key_frame:
                stats.key_frames += 1
                encoding.key_frames += 1
                encoding.key_frame_throttle.on_key_frame(now)
            # Retransmissions (and Chromium's probes: old packets again on RTX) are not what
            # the encoding carries.
            if repaired:
                pass
            elif self._single is None:
                encoding.meter.on_packet(view, len(data), key_frame, now)
            else:
                encoding.meter.on_bytes(len(data), now)
        elif self._audio_level_id is not None and header.extension_length:
            value = find_header_extension(data, header, self._audio_level_id)
            if value:
                self.audio_level_value = value[:1]  # the value itself when 1 byte, as sent
                self.voice_activity, self.audio_level = parse_audio_level(value)
                if self.on_audio_level is not None:
                    self.on_audio_level(self, self.audio_level, self.voice_activity, now)

        index = encoding.index
        # Pipes first: their packets have one more hop (another worker's wake-up) ahead of them,
        # which then overlaps this worker's own fan-out instead of following it.
        for pipe in self._pipes:
            pipe.send_rtp(self, data, index)
        for consumer in self._forwarding:
            consumer.send_rtp(data, header, key_frame, now, index)
        if self._recorders:
            recording = self._recording
            if recording is None:
                for recorder in self._recorders:
                    recorder.send_rtp(self, data)
            else:
                forward = recording.forward(
                    index, seq, header.timestamp, memoryview(data)[header.payload_offset :], key_frame, now
                )
                if forward is not None:
                    packet = self._recorded_packet(data, header, forward[0], forward[1], forward[2])
                    for recorder in self._recorders:
                        recorder.send_rtp(self, packet)

    def _recorded_packet(
        self, data: bytes, header: RtpHeader, seq: int, timestamp: int, prefix: bytes | None
    ) -> bytes:
        packet = rewrite_rtp(
            data,
            header,
            ssrc=self._recording_ssrc,
            payload_type=self._pt,
            sequence_number=seq,
            timestamp=timestamp,
        )
        if prefix:
            packet = packet[:12] + prefix + packet[12 + len(prefix) :]
        return packet

    def _measure_uplink(self, data: bytes, header: RtpHeader, now: float) -> None:
        """Feed the publisher's uplink estimator with one (non-RTX) video packet (without
        abs-send-time, a simulcast producer measures on its top encoding's RTP timestamps only:
        each encoding has its own timestamp base)."""
        uplink = self._uplink
        assert uplink is not None
        abs_id = self._abs_send_time_id
        if abs_id is None:
            if self._single is None and header.ssrc != self._top.ssrc:
                return
            uplink.on_packet(header.timestamp, 1 << 32, float(self.codec.clock_rate), now, len(data))
            return
        value = find_header_extension(data, header, abs_id) if header.extension_length else None
        if value is not None and len(value) == 3:
            uplink.on_packet((value[0] << 16) | (value[1] << 8) | value[2], 1 << 24, 262144.0, now, len(data))

    @staticmethod
    def _update_receive_stats(encoding: Encoding, seq: int) -> None:
        if encoding.base_seq < 0:
            encoding.base_seq = seq
            encoding.max_seq = seq
        else:
            delta = (seq - encoding.max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if seq < encoding.max_seq:
                    encoding.cycles += 0x10000
                encoding.max_seq = seq
        encoding.received += 1

    def nack_counts(self) -> tuple[int, int, int]:
        """(packets found missing, recovered after a NACK, given up) over every encoding: current
        counts (the stats' copies lag by a timer tick)."""
        lost = recovered = given_up = 0
        for encoding in self.encodings:
            nack = encoding.nack
            if nack is not None:
                lost += nack.nacked
                recovered += nack.recovered
                given_up += nack.given_up
        return lost, recovered, given_up

    def active_layers(self, now: float, within: float = 1.0) -> list[int]:
        """The encodings that received a packet in the last ``within`` seconds, lowest first
        (a publisher stops sending an encoding when its capture is too small or its uplink too
        weak)."""
        return [e.index for e in self.encodings if now - e.last_packet_at <= within]

    def layers(self, now: float) -> list[Layer]:
        """Every (encoding, temporal layer) this producer receives, with its measured bitrate
        (cumulative over the temporal layers below it), frame rate and resolution, for the
        allocator (:mod:`salon.media.allocator`). An encoding that stopped flowing has bitrate
        0. Resolutions not yet seen in a key frame are assumed from a known one, halving per
        encoding below it (Chromium's ¼, ½, full)."""
        meters = [e.meter for e in self.encodings]
        known = next((i for i in range(len(meters) - 1, -1, -1) if meters[i].width), None)
        out: list[Layer] = []
        for index, meter in enumerate(meters):
            width, height = meter.width, meter.height
            if not width and known is not None:
                scale = 2.0 ** (index - known)
                width = int(meters[known].width * scale)
                height = int(meters[known].height * scale)
            active = meter.active(now)
            bitrate = 0.0
            fps = 0.0
            for tid in range(meter.temporal_layers):
                bitrate += meter.bitrates[tid]
                fps += meter.frame_rates[tid]
                out.append(
                    Layer(
                        spatial=index,
                        temporal=tid,
                        bitrate=int(bitrate) if active else 0,
                        width=width,
                        height=height,
                        frame_rate=round(fps, 1),
                    )
                )
        return out

    def _encoding(self, layer: int | None) -> Encoding:
        if layer is None:
            recording = self._recording
            if recording is None:
                return self._top
            layer = recording.current_layer if recording.current_layer is not None else recording.target_layer
        return self.encodings[max(0, min(layer, len(self.encodings) - 1))]

    def get_cached(self, seq: int, layer: int | None = None) -> bytes | None:
        """The packet with publisher sequence number ``seq`` of encoding ``layer`` if still
        cached. ``layer`` None: of the recorded stream (``seq`` is then a recorded sequence
        number of a simulcast producer, and the packet comes back as recorded)."""
        recording = self._recording
        if layer is not None or recording is None:
            return self._encoding(layer).cache.get(seq)
        current = recording.current_layer
        in_seq = recording.sequence.to_input(seq) if current is not None else None
        if current is None or in_seq is None:
            return None
        data = self.encodings[current].cache.get(in_seq)
        if data is None:
            return None
        header = parse_rtp_header(data)
        ok, prefix = recording.rewrite_retransmission(current, memoryview(data)[header.payload_offset :])
        if not ok:
            return None
        return self._recorded_packet(
            data, header, seq, recording.sequence.rewrite_timestamp(header.timestamp), prefix
        )

    @property
    def uplink_estimate(self) -> int:
        """The REMB value sent to the publisher: its uplink as measured here, capped at
        ``max_bitrate`` (0 for audio, and with transport-cc, where no REMB is sent)."""
        uplink = self._uplink
        return 0 if uplink is None else uplink.estimate(self._uplink_cap)

    # ----------------------------------------------------------------------------------------
    # Upstream RTCP

    def request_key_frame(self, now: float, layer: int | None = None) -> None:
        """Ask the publisher for a key frame of encoding ``layer`` (None: the top one)
        (throttled per encoding; a throttled request is sent later)."""
        if self.closed or self.kind != "video":
            return
        encoding = self._encoding(layer)
        if encoding.key_frame_throttle.request(now):
            self._send_key_frame_request(encoding)
        deadline = encoding.key_frame_throttle.next_deadline()
        if deadline is not None:
            self.transport.schedule(deadline)

    def _send_key_frame_request(self, encoding: Encoding) -> None:
        ssrc = encoding.ssrc
        if ssrc is None:
            return
        self.stats.key_frame_requests_sent += 1
        if self._use_fir:
            encoding.fir_seq = (encoding.fir_seq + 1) & 0xFF
            self.transport.send_rtcp(build_fir(self._rtcp_ssrc, ssrc, encoding.fir_seq))
        else:
            self.transport.send_rtcp(build_pli(self._rtcp_ssrc, ssrc))

    def request_retransmission(self, seqs: list[int], now: float, layer: int | None = None) -> None:
        """A consumer's NACK missed the cache: NACK upstream now, then retry like a detected gap.

        The packets join the :class:`~salon.media.nack.NackGenerator`'s list, so they are
        re-NACKed every retry interval and given up (then a key frame is asked for) on its
        schedule. Packets it is already chasing, or has given up, are left to it.
        """
        encoding = self._encoding(layer)
        recording = self._recording
        if layer is None and recording is not None:
            # Recorded sequence numbers: back to the recorded encoding's own.
            mapped = (recording.sequence.to_input(s) for s in seqs)
            seqs = [s for s in mapped if s is not None]
        nack = encoding.nack
        if self.closed or not seqs or nack is None:
            return
        wanted = nack.request(seqs, now)
        if wanted:
            self.stats.upstream_nacks += len(wanted)
            self._send_nack(encoding, wanted)
            deadline = nack.next_deadline()
            if deadline is not None:
                self.transport.schedule(deadline)

    def _send_nack(self, encoding: Encoding, seqs: list[int]) -> None:
        ssrc = encoding.ssrc
        if ssrc is None:
            return
        self.stats.nack_packets_sent += 1
        self.stats.nacked_sequence_numbers += len(seqs)
        self.transport.send_rtcp(build_nack(self._rtcp_ssrc, ssrc, seqs))

    def receive_sender_report(self, report: SenderReport, now: float) -> None:
        """A publisher SR: remember it for our RR (LSR/DLSR) and rewrite it for each consumer
        (of that encoding)."""
        encoding = self._by_ssrc.get(report.ssrc)
        if self.closed or encoding is None or report.ssrc != encoding.ssrc:
            return
        encoding.last_sr = (report.ntp_timestamp >> 16) & 0xFFFFFFFF
        encoding.last_sr_at = now
        for consumer in self._consumers:
            consumer.send_sender_report(report.ntp_timestamp, report.rtp_timestamp, now, encoding.index)
        for pipe in self._pipes:
            pipe.send_sender_report(self, report, encoding.index)

    def on_timer(self, now: float) -> float:
        """Called by the transport timer: NACK retries, throttled PLIs, periodic RR + REMB.
        Returns when it wants to be called next."""
        if self.closed:
            return float("inf")
        next_at = float("inf")
        recovered = given_up = 0
        for encoding in self.encodings:
            nack = encoding.nack
            if nack is not None:
                recovered += nack.recovered
                given_up += nack.given_up
                poll = nack.poll(now)
                if poll.seqs:
                    self._send_nack(encoding, list(poll.seqs))
                if poll.key_frame_needed:
                    self.request_key_frame(now, encoding.index)
                deadline = nack.next_deadline()
                if deadline is not None:
                    next_at = min(next_at, deadline)
            if encoding.key_frame_throttle.poll(now):
                self._send_key_frame_request(encoding)
            deadline = encoding.key_frame_throttle.next_deadline()
            if deadline is not None:
                next_at = min(next_at, deadline)
        self.stats.recovered = recovered
        self.stats.given_up = given_up
        recording = self._recording
        if recording is not None and self._recorders:
            # Record the top encoding, or the best one still flowing.
            active = self.active_layers(now)
            target = active[-1] if active else len(self.encodings) - 1
            if target != recording.target_layer:
                recording.set_target(target)
                if recording.waiting:
                    self.request_key_frame(now, target)
            next_at = min(next_at, now + REPORT_INTERVAL)
        if now >= self._next_report:
            self._send_report(now)
            self._next_report = now + REPORT_INTERVAL
        return min(next_at, self._next_report)

    def _send_report(self, now: float) -> None:
        blocks = [b for b in (self._report_block(e, now) for e in self.encodings) if b is not None]
        if not blocks:
            return
        packet = build_receiver_report(self._rtcp_ssrc, blocks)
        if self.kind == "video" and self.extensions.transport_cc is None:
            # The publisher's own uplink, not its subscribers' downlinks (each subscriber gets
            # the layer its link carries from the allocator). With transport-cc the transport's
            # feedback lets the publisher measure it itself: no REMB.
            remb = self.uplink_estimate
            if abs(remb - self._last_remb) > 0.25 * max(remb, self._last_remb):
                logger.info("%r: REMB to the publisher %d bit/s", self, remb)
            self._last_remb = remb
            packet += build_remb(self._rtcp_ssrc, remb, [b.ssrc for b in blocks])
        self.stats.reports_sent += 1
        self.transport.send_rtcp(packet)

    @staticmethod
    def _report_block(encoding: Encoding, now: float) -> ReportBlock | None:
        if encoding.ssrc is None or encoding.base_seq < 0:
            return None
        extended_max = encoding.cycles + encoding.max_seq
        expected = extended_max - encoding.base_seq + 1
        lost = max(0, expected - encoding.received)
        expected_interval = expected - encoding.expected_prior
        received_interval = encoding.received - encoding.received_prior
        encoding.expected_prior = expected
        encoding.received_prior = encoding.received
        lost_interval = expected_interval - received_interval
        fraction = (
            0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        )
        dlsr = int((now - encoding.last_sr_at) * 65536) if encoding.last_sr else 0
        return ReportBlock(
            ssrc=encoding.ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=min(lost, 0x7FFFFF),
            highest_sequence=extended_max & 0xFFFFFFFF,
            jitter=0,
            lsr=encoding.last_sr,
            dlsr=dlsr & 0xFFFFFFFF,
        )

    # ----------------------------------------------------------------------------------------
    # Closing

    def close(self) -> None:
        """Unpublish this track: close its consumers (``producer_closed``); idempotent."""
        self._close(ProducerCloseReason.CLOSED)

    def transport_closed(self) -> None:
        """Called by the owning transport when it closes."""
        self._close(ProducerCloseReason.TRANSPORT_CLOSED)

    def _close(self, reason: ProducerCloseReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        logger.info("%r: closed (%s)", self, reason.value)
        for consumer in list(self._consumers):
            consumer.producer_closed()
        self._consumers.clear()
        self._forwarding = ()
        recorders, self._recorders = self._recorders, ()
        for recorder in recorders:
            recorder.producer_closed(self)
        pipes, self._pipes = self._pipes, ()
        for pipe in pipes:
            pipe.producer_closed(self)
        retire_producer(self)  # its counts stay in the worker's totals (metrics)
        self.transport.remove_producer(self)
        self.events.emit(ProducerClosed(self, reason))
        self.events.clear()

    def dump(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "screen": self.screen,
            "codec": self.codec.mime_type,
            "ssrc": self.ssrc,
            "rtx_ssrc": self.rtx_ssrc,
            "encodings": [e.dump() for e in self.encodings],
            "consumers": [c.id for c in self._consumers],
            "recorders": [r.id for r in self._recorders],
            "pipes": [p.id for p in self._pipes],
            "stats": dataclasses.asdict(self.stats),
            "uplink_estimate": self.uplink_estimate if self._uplink is not None else None,
        }
