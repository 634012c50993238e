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
RTP timestamps without it; capped at ``max_bitrate``), never the subscribers' estimates. A publisher SR is
rewritten into one SR per consumer so lip sync survives the timestamp offsets.

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

from salon.media.estimator import ReceiveSideEstimator
from salon.media.events import EventEmitter
from salon.media.keyframe import KeyFrameRequestThrottle
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
    unwrap_rtx,
)
from salon.media.sdp import HeaderExtensionIds, MediaKind, PublishTrack, RtpCodec

if TYPE_CHECKING:
    from salon.media.consumer import Consumer
    from salon.media.recording import Recorder

__all__ = [
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
#: RFC 6464 value for "no voice, -127 dBov", until the publisher's packets carry a level.
_SILENCE = b"\x7f"


class ProducerTransport(Protocol):
    """What a producer uses of its (publisher's) transport."""

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet to the publisher now."""

    def schedule(self, at: float) -> None:
        """Call ``on_timer`` of the producers and consumers no later than ``at``."""

    def remove_producer(self, producer: Producer) -> None:
        """The producer closed: route nothing more to it."""


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
    ) -> None:
        self.id = producer_id or f"pr-{next(_ids)}-{secrets.token_hex(3)}"
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

        self.ssrc: int | None = track.ssrc
        self.rtx_ssrc: int | None = track.rtx_ssrc
        self._rtx_pt = track.codec.rtx_payload_type
        self._pt = track.codec.payload_type
        self._rtcp_ssrc = secrets.randbits(32) or 1
        self._consumers: list[Consumer] = []
        #: The consumers that forward (not paused, transport connected): what the packet path
        #: iterates, so paused or not-yet-connected subscribers cost nothing per packet.
        self._forwarding: tuple[Consumer, ...] = ()
        #: Recorders copying this track to an archiver (:mod:`salon.media.recording`): after the
        #: consumers on the packet path, and not part of the bandwidth estimate.
        self._recorders: tuple[Recorder, ...] = ()
        self._cache = RetransmissionBuffer(RETRANSMISSION_CAPACITY)
        self._nack: NackGenerator | None = NackGenerator() if track.codec.supports_feedback("nack") else None
        self._use_fir = not track.codec.supports_feedback("nack", "pli") and track.codec.supports_feedback(
            "ccm", "fir"
        )
        self._fir_seq = 0
        self._key_frames = KeyFrameRequestThrottle(KEY_FRAME_REQUEST_INTERVAL)
        self._is_key_frame = KEYFRAME_DETECTORS.get(track.codec.name) if self.kind == "video" else None
        self._audio_level_id = track.extensions.audio_level
        #: The publisher's uplink, measured on what arrives (video): the REMB sent to it.
        self._uplink = ReceiveSideEstimator(max_bitrate) if self.kind == "video" else None
        self._abs_send_time_id = track.extensions.abs_send_time
        self._next_report = 0.0
        # Receive statistics for receiver reports (RFC 3550 A.3).
        self._base_seq = -1
        self._max_seq = 0
        self._cycles = 0
        self._received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._last_sr = 0
        self._last_sr_at = 0.0

    def __repr__(self) -> str:
        return f"Producer({self.id} {self.kind} {self.codec.name} stream={self.stream_id})"

    # ----------------------------------------------------------------------------------------
    # Wiring

    def ssrcs(self) -> list[int]:
        return [s for s in (self.ssrc, self.rtx_ssrc) if s is not None]

    def payload_types(self) -> list[int]:
        return [p for p in (self._pt, self._rtx_pt) if p is not None]

    def learn_ssrc(self, ssrc: int, payload_type: int) -> bool:
        """Accept an SSRC the offer did not announce (first packet seen with our mid/PT)."""
        if payload_type == self._pt and self.ssrc is None:
            self.ssrc = ssrc
            return True
        if payload_type == self._rtx_pt and self.rtx_ssrc is None:
            self.rtx_ssrc = ssrc
            return True
        return False

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
        if header.payload_type == self._rtx_pt:
            try:
                osn, payload = unwrap_rtx(data, header)
            except ValueError:
                return  # padding-only probe on the RTX stream
            if self.ssrc is None:
                return
            self.stats.rtx_received += 1
            # Rebuild the original packet (no extensions needed downstream: consumers add theirs).
            data = (
                bytes([0x80, (data[1] & 0x80) | self._pt])
                + osn.to_bytes(2, "big")
                + header.timestamp.to_bytes(4, "big")
                + self.ssrc.to_bytes(4, "big")
                + payload
            )
            header = RtpHeader(header.marker, self._pt, osn, header.timestamp, self.ssrc, 12, 0, 0)
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
        seq = header.sequence_number
        # _update_receive_stats, inlined for the in-order case (one call less per packet).
        delta = (seq - self._max_seq) & 0xFFFF
        if delta == 1 and self._base_seq >= 0:
            if seq == 0:
                self._cycles += 0x10000
            self._max_seq = seq
            self._received += 1
        else:
            self._update_receive_stats(seq)

        nack = self._nack
        if nack is not None:
            missing = nack.on_packet(seq, now)
            if missing:
                self._send_nack(missing)
                deadline = nack.next_deadline()
                if deadline is not None:
                    self.transport.schedule(deadline)
        self._cache.store(seq, data, now)

        key_frame = True
        detector = self._is_key_frame
        if detector is not None:
            key_frame = detector(memoryview(data)[header.payload_offset :])
            if key_frame:
                stats.key_frames += 1
                self._key_frames.on_key_frame(now)
        elif self._audio_level_id is not None and header.extension_length:
            value = find_header_extension(data, header, self._audio_level_id)
            if value:
                self.audio_level_value = value[:1]  # the value itself when 1 byte, as sent
                self.voice_activity, self.audio_level = parse_audio_level(value)
                if self.on_audio_level is not None:
                    self.on_audio_level(self, self.audio_level, self.voice_activity, now)

        for consumer in self._forwarding:
            consumer.send_rtp(data, header, key_frame, now)
        for recorder in self._recorders:
            recorder.send_rtp(self, data)

    def _measure_uplink(self, data: bytes, header: RtpHeader, now: float) -> None:
        """Feed the publisher's uplink estimator with one (non-RTX) video packet."""
        uplink = self._uplink
        assert uplink is not None
        abs_id = self._abs_send_time_id
        if abs_id is None:
            uplink.on_packet(header.timestamp, 1 << 32, float(self.codec.clock_rate), now, len(data))
            return
        value = find_header_extension(data, header, abs_id) if header.extension_length else None
        if value is not None and len(value) == 3:
            uplink.on_packet((value[0] << 16) | (value[1] << 8) | value[2], 1 << 24, 262144.0, now, len(data))

    def _update_receive_stats(self, seq: int) -> None:
        if self._base_seq < 0:
            self._base_seq = seq
            self._max_seq = seq
        else:
            delta = (seq - self._max_seq) & 0xFFFF
            if 0 < delta < 0x8000:
                if seq < self._max_seq:
                    self._cycles += 0x10000
                self._max_seq = seq
        self._received += 1

    @property
    def uplink_estimate(self) -> int:
        """The REMB value sent to the publisher: its uplink as measured here, capped at
        ``max_bitrate`` (0 for audio)."""
        uplink = self._uplink
        return 0 if uplink is None else uplink.estimate(self.max_bitrate)

    def get_cached(self, seq: int) -> bytes | None:
        """The packet with publisher sequence number ``seq`` if still cached."""
        return self._cache.get(seq)

    # ----------------------------------------------------------------------------------------
    # Upstream RTCP

    def request_key_frame(self, now: float) -> None:
        """Ask the publisher for a key frame (throttled; a throttled request is sent later)."""
        if self.closed or self.kind != "video":
            return
        if self._key_frames.request(now):
            self._send_key_frame_request()
        deadline = self._key_frames.next_deadline()
        if deadline is not None:
            self.transport.schedule(deadline)

    def _send_key_frame_request(self) -> None:
        if self.ssrc is None:
            return
        self.stats.key_frame_requests_sent += 1
        if self._use_fir:
            self._fir_seq = (self._fir_seq + 1) & 0xFF
            self.transport.send_rtcp(build_fir(self._rtcp_ssrc, self.ssrc, self._fir_seq))
        else:
            self.transport.send_rtcp(build_pli(self._rtcp_ssrc, self.ssrc))

    def request_retransmission(self, seqs: list[int], now: float) -> None:
        """A consumer's NACK missed the cache: NACK upstream now, then retry like a detected gap.

        The packets join the :class:`~salon.media.nack.NackGenerator`'s list, so they are
        re-NACKed every retry interval and given up (then a key frame is asked for) on its
        schedule. Packets it is already chasing, or has given up, are left to it.
        """
        nack = self._nack
        if self.closed or not seqs or nack is None:
            return
        wanted = nack.request(seqs, now)
        if wanted:
            self.stats.upstream_nacks += len(wanted)
            self._send_nack(wanted)
            deadline = nack.next_deadline()
            if deadline is not None:
                self.transport.schedule(deadline)

    def _send_nack(self, seqs: list[int]) -> None:
        if self.ssrc is None:
            return
        self.stats.nack_packets_sent += 1
        self.stats.nacked_sequence_numbers += len(seqs)
        self.transport.send_rtcp(build_nack(self._rtcp_ssrc, self.ssrc, seqs))

    def receive_sender_report(self, report: SenderReport, now: float) -> None:
        """A publisher SR: remember it for our RR (LSR/DLSR) and rewrite it for each consumer."""
        if self.closed or report.ssrc != self.ssrc:
            return
        self._last_sr = (report.ntp_timestamp >> 16) & 0xFFFFFFFF
        self._last_sr_at = now
        for consumer in self._consumers:
            consumer.send_sender_report(report.ntp_timestamp, report.rtp_timestamp, now)

    def on_timer(self, now: float) -> float:
        """Called by the transport timer: NACK retries, throttled PLIs, periodic RR + REMB.
        Returns when it wants to be called next."""
        if self.closed:
            return float("inf")
        next_at = float("inf")
        nack = self._nack
        if nack is not None:
            self.stats.recovered = nack.recovered
            self.stats.given_up = nack.given_up
            poll = nack.poll(now)
            if poll.seqs:
                self._send_nack(list(poll.seqs))
            if poll.key_frame_needed:
                self.request_key_frame(now)
            deadline = nack.next_deadline()
            if deadline is not None:
                next_at = deadline
        if self._key_frames.poll(now):
            self._send_key_frame_request()
        deadline = self._key_frames.next_deadline()
        if deadline is not None:
            next_at = min(next_at, deadline)
        if now >= self._next_report:
            self._send_report(now)
            self._next_report = now + REPORT_INTERVAL
        return min(next_at, self._next_report)

    def _send_report(self, now: float) -> None:
        if self.ssrc is None or self._base_seq < 0:
            return
        extended_max = self._cycles + self._max_seq
        expected = extended_max - self._base_seq + 1
        lost = max(0, expected - self._received)
        expected_interval = expected - self._expected_prior
        received_interval = self._received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        fraction = (
            0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        )
        dlsr = int((now - self._last_sr_at) * 65536) if self._last_sr else 0
        block = ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=min(fraction, 255),
            packets_lost=min(lost, 0x7FFFFF),
            highest_sequence=extended_max & 0xFFFFFFFF,
            jitter=0,
            lsr=self._last_sr,
            dlsr=dlsr & 0xFFFFFFFF,
        )
        packet = build_receiver_report(self._rtcp_ssrc, [block])
        if self._uplink is not None:
            # The publisher's own uplink, not its subscribers' downlinks (each subscriber gets
            # the layer its link carries).
            packet += build_remb(self._rtcp_ssrc, self.uplink_estimate, [self.ssrc])
        self.stats.reports_sent += 1
        self.transport.send_rtcp(packet)

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
        self.transport.remove_producer(self)
        self.events.emit(ProducerClosed(self, reason))
        self.events.clear()

    def dump(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "codec": self.codec.mime_type,
            "ssrc": self.ssrc,
            "rtx_ssrc": self.rtx_ssrc,
            "consumers": [c.id for c in self._consumers],
            "recorders": [r.id for r in self._recorders],
            "stats": dataclasses.asdict(self.stats),
            "uplink_estimate": self.uplink_estimate if self._uplink is not None else None,
        }
