"""Consumer: one subscriber's outgoing copy of a producer.

A consumer belongs to the subscriber's :class:`~salon.media.transport.WebRtcTransport` and is
fed synchronously by its :class:`~salon.media.producer.Producer`. Per forwarded packet it does
exactly one header rewrite (:func:`~salon.media.rtp.rewrite_rtp`: its own SSRC, the
subscriber's payload type, continuous sequence numbers and timestamps from the
:class:`~salon.media.seq.SequenceRewriter`, its own extension block, see below) and hands the
bytes to ``transport.send_rtp`` (SRTP protect + sendto).

* **Key-frame start.** A video consumer forwards nothing until the first packet of a key
  frame; when created, when its transport connects, on resume, and every second while still
  waiting, it asks the producer for one (the producer throttles PLIs for all its consumers).
  Sequence numbers and timestamps stay continuous across pauses and restarts (the rewriter
  re-bases them at the key frame).
* **Pause / resume** (subscribe to audio or video only): paused consumers send nothing.
  :meth:`set_paused` with :attr:`PauseReason.QUALITY` pauses for quality instead (the
  allocator: the subscriber's link cannot carry even the lowest layer), independently of the
  subscriber's own choice; a change emits :class:`ConsumerQualityChanged` (the worker reports
  it, and signalling tells the subscriber ``video_disabled`` / ``video_enabled``, reason
  ``quality``).
* **Preferences.** :meth:`set_preferences` stores the subscriber's preferred maximum
  resolution and frame rate (:attr:`max_width`, :attr:`max_height`, :attr:`max_frame_rate`;
  None: no preference) for layer selection to read.
* **Subscriber RTCP.** NACKs are mapped back to publisher sequence numbers and answered from
  the producer's cache (RTX-wrapped when RTX was negotiated); cache misses become an upstream
  NACK, retried on the producer's NACK schedule. PLI/FIR become a (throttled) producer
  key-frame request. REMB is remembered (:attr:`Consumer.remb_bitrate`) and feeds the
  transport's estimate (:mod:`salon.media.bandwidth`), not the publisher's REMB. Publisher
  SRs are rewritten into per-subscriber SRs (RTP timestamp + this consumer's offset, its own
  packet/octet counts) for A/V sync.

* **Simulcast.** A video consumer of a simulcast producer forwards one encoding at a time
  through a :class:`~salon.media.layers.LayerSwitcher`: it switches only at a key frame of the
  target encoding (asked for, and asked again while waiting), rewriting sequence numbers,
  timestamps and the VP8 picture ID / TL0PICIDX so the subscriber sees one continuous stream;
  VP8 temporal layers above the target are dropped without a gap. The target is set with
  :meth:`Consumer.set_layer` (the allocator and the subscriber's preferences call it; until
  then the top encoding). An encoding the publisher stopped sending (no packet for
  :data:`LAYER_INACTIVE_AFTER` seconds: a capture too small for it, or a constrained uplink) is
  skipped for the highest one still flowing below the wanted one, checked every
  :data:`LAYER_CHECK_INTERVAL` seconds.

Closing: :meth:`close` (the subscriber unsubscribed), :meth:`producer_closed` (the publisher
unpublished: the server turns the :class:`ConsumerClosed` event with reason
``producer_closed`` into signalling) and :meth:`transport_closed` are idempotent.

Header extensions are the subscriber's, under the subscriber's IDs: mid, abs-send-time (video,
stamped per packet) and, for audio when both the publisher and the subscriber negotiated
``ssrc-audio-level``, the publisher's RFC 6464 byte of each packet (browsers report it in
``getSynchronizationSources()``) and, when the subscriber negotiated transport-wide congestion
control, a transport-wide sequence number per packet (forwarded and retransmitted), numbered by
the transport's :class:`~salon.media.bandwidth.TransportBandwidth`. Other publisher extensions
are not forwarded.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import secrets
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from salon.media.events import EventEmitter
from salon.media.layers import CUT_SEQUENCE_GAP, LayerSwitcher
from salon.media.pacer import PacedPacket, Pacer
from salon.media.rtcp import ReportBlock, build_sender_report
from salon.media.rtp import (
    RtpHeader,
    abs_send_time,
    encode_one_byte_extensions,
    extension_value_offset,
    find_header_extension,
    parse_rtp_header,
    patch_extension,
    rewrite_rtp,
    wrap_rtx,
)
from salon.media.sdp import HeaderExtensionIds, MediaKind, RtpCodec, SubscribeTrack
from salon.media.seq import SequenceRewriter
from salon.media.totals import retire_consumer
from salon.media.transport import TransportState

if TYPE_CHECKING:
    from salon.media.bandwidth import TransportBandwidth
    from salon.media.producer import Producer

__all__ = [
    "Consumer",
    "ConsumerCloseReason",
    "ConsumerClosed",
    "ConsumerEvent",
    "ConsumerQualityChanged",
    "ConsumerStats",
    "ConsumerTransport",
    "PauseReason",
]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)

_FIXED_PACK = struct.Struct("!BBHII").pack
_JOIN = b"".join
#: The transport-wide sequence number of a packet queued in the pacer: written when it leaves.
_NOT_STAMPED = b"\x00\x00"
_abs_cache: list[Any] = [None, b""]


def _abs_send_time_once(now: float) -> bytes:
    """:func:`~salon.media.rtp.abs_send_time` of ``now``, cached for the last ``now`` seen:
    a producer passes the same ``now`` to all its consumers for one packet."""
    cache = _abs_cache
    if cache[0] != now:
        cache[0] = now
        cache[1] = abs_send_time(now)
    value: bytes = cache[1]
    return value


#: While waiting for a key frame, ask again this often.
KEY_FRAME_RETRY_INTERVAL = 0.5
#: A simulcast encoding without a packet for this long is not a target (seconds).
LAYER_INACTIVE_AFTER = 1.0
#: How often a simulcast consumer re-checks which encodings flow (seconds).
LAYER_CHECK_INTERVAL = 0.5


class ConsumerTransport(Protocol):
    """What a consumer uses of its (subscriber's) transport."""

    @property
    def id(self) -> str: ...

    @property
    def state(self) -> TransportState: ...

    @property
    def bandwidth(self) -> TransportBandwidth:
        """Transport-wide sequence numbers and the subscriber's bandwidth estimate."""
        ...

    @property
    def pacer(self) -> Pacer:
        """The pacer of what is sent to the subscriber (:mod:`salon.media.pacer`)."""
        ...

    def pace(self, item: PacedPacket, now: float, *, retransmission: bool = False) -> None:
        """Queue a packet the pacer did not admit; numbered and sent when it leaves."""

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet to the subscriber now (the hot path)."""

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet to the subscriber now."""

    def schedule(self, at: float) -> None:
        """Call ``on_timer`` of the producers and consumers no later than ``at``."""

    def remove_consumer(self, consumer: Consumer) -> None:
        """The consumer closed: route no more feedback to it."""


class ConsumerCloseReason(enum.Enum):
    CLOSED = "closed"
    """:meth:`Consumer.close` was called (unsubscribe)."""
    PRODUCER_CLOSED = "producer_closed"
    """The producer closed (the publisher unpublished or left)."""
    TRANSPORT_CLOSED = "transport_closed"
    """The subscriber's transport closed."""


class PauseReason(enum.Enum):
    SUBSCRIBER = "subscriber"
    """The subscriber turned this kind off (``set_subscription``)."""
    QUALITY = "quality"
    """The subscriber's link cannot carry the stream (the allocator's decision)."""


@dataclass(frozen=True, slots=True)
class ConsumerEvent:
    consumer: Consumer


@dataclass(frozen=True, slots=True)
class ConsumerQualityChanged(ConsumerEvent):
    """The consumer was paused for quality (``paused`` True) or resumed from it."""

    paused: bool


@dataclass(frozen=True, slots=True)
class ConsumerClosed(ConsumerEvent):
    """The consumer closed and sends nothing more."""

    reason: ConsumerCloseReason


@dataclass(slots=True)
class ConsumerStats:
    packets_sent: int = 0
    octets_sent: int = 0
    """Payload octets, as reported in our sender reports."""
    key_frame_starts: int = 0
    nacks_received: int = 0
    retransmitted_from_cache: int = 0
    cache_misses: int = 0
    key_frame_requests_received: int = 0
    sender_reports_sent: int = 0
    fraction_lost: int = 0
    """Last fraction lost (/256) reported by the subscriber."""
    layer_switches: int = 0
    """Simulcast: starts and switches between encodings."""
    temporal_dropped: int = 0
    """Simulcast VP8: packets not forwarded for being above the wanted temporal layer."""
    paced_dropped: int = 0
    """Times the transport's pacer dropped video of this consumer (its queue over its bound)."""


class Consumer:
    """One subscriber's copy of one producer, sent on the subscriber's transport."""

    def __init__(
        self,
        transport: ConsumerTransport,
        producer: Producer,
        track: SubscribeTrack,
        *,
        ssrc: int,
        rtx_ssrc: int | None,
        paused: bool = False,
        consumer_id: str | None = None,
    ) -> None:
        self.id = consumer_id or f"co-{next(_ids)}-{secrets.token_hex(3)}"
        self.transport = transport
        self.producer = producer
        self.kind: MediaKind = track.kind
        self.mid = track.mid
        self.codec: RtpCodec = track.codec
        self.extensions: HeaderExtensionIds = track.extensions
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc if track.codec.rtx_payload_type is not None else None
        self.events: EventEmitter[ConsumerEvent] = EventEmitter(self)
        self.stats = ConsumerStats()
        self.closed = False
        self.close_reason: ConsumerCloseReason | None = None
        self.paused = paused
        #: Paused for quality (:meth:`set_paused` with :attr:`PauseReason.QUALITY`).
        self.quality_paused = False
        #: The subscriber's preferences (:meth:`set_preferences`); None: no preference.
        self.max_width: int | None = None
        self.max_height: int | None = None
        self.max_frame_rate: float | None = None
        #: Last REMB estimate from the subscriber in bit/s (0: none yet).
        self.remb_bitrate = 0
        #: Whether the transport's allocator picks this consumer's layer and quality pause
        #: (False once an operator or test set either by hand: ``set_consumer_layer``,
        #: ``set_quality_paused``).
        self.allocated = True
        #: Padding bytes sent to probe the subscriber's link (:meth:`send_padding`).
        self.padding_bytes = 0

        self._pt = track.codec.payload_type
        self._rtx_pt = track.codec.rtx_payload_type
        self._clock_rate = track.codec.clock_rate
        self._seq = SequenceRewriter()
        #: Cuts of the switcher already reported to the bandwidth (:meth:`_cut_made`).
        self._cuts = 0
        #: Simulcast (producer with several video encodings): the switcher, else None.
        self._switcher: LayerSwitcher | None = None
        #: Wanted (spatial, temporal) layer; (None, None): the top one, all temporal layers.
        self._wanted: tuple[int | None, int | None] = (None, None)
        self._setup_switcher()
        self._started = False
        self._rtx_seq = secrets.randbits(16)
        self._waiting_since = 0.0
        self._active = False  # not paused, not closed, transport connected

        ext = track.extensions
        items: list[tuple[int, bytes]] = []
        if ext.mid is not None:
            items.append((ext.mid, track.mid.encode("ascii")))
        if ext.abs_send_time is not None:
            items.append((ext.abs_send_time, b"\x00\x00\x00"))
        # The audio level is forwarded for audio only, and only if the publisher sends one.
        level_id = (
            ext.audio_level
            if self.kind == "audio"
            and ext.abs_send_time is None
            and producer.extensions.audio_level is not None
            else None
        )
        if level_id is not None:
            items.append((level_id, producer.audio_level_value))
        # The transport-wide sequence number goes last: numbered per packet by the transport.
        if ext.transport_cc is not None:
            items.append((ext.transport_cc, b"\x00\x00"))
        self._ext_block = encode_one_byte_extensions(items)
        self._abs_offset = (
            extension_value_offset(self._ext_block, ext.abs_send_time) if ext.abs_send_time is not None else 0
        )
        self._level_offset = extension_value_offset(self._ext_block, level_id) if level_id is not None else 0
        self._twcc_offset = (
            extension_value_offset(self._ext_block, ext.transport_cc) if ext.transport_cc is not None else 0
        )
        #: The transport's numbering call (:meth:`~salon.media.bandwidth.TransportBandwidth.stamp`)
        #: when the subscriber negotiated transport-cc, else None.
        self._stamp = transport.bandwidth.stamp if self._twcc_offset else None
        #: The transport's pacer: video and retransmissions wait in its queue when it does not
        #: admit them; audio is only charged to it (never waits).
        self._pacer = transport.pacer
        self._paced_video = self.kind == "video"
        # The forwarding hot path builds each packet as header + block head + per-packet value +
        # block tail + transport-wide sequence number + block end + payload in one join: split
        # the block around the values that change per packet (3 abs-send-time bytes for video,
        # the 1-byte audio level for audio; 2 bytes of transport-wide sequence number).
        block = self._ext_block
        twcc_at = self._twcc_offset or len(block)
        if self._abs_offset:
            self._ext_head = block[: self._abs_offset]
            self._ext_tail = block[self._abs_offset + 3 : twcc_at]
        elif self._level_offset:
            self._ext_head = block[: self._level_offset]
            self._ext_tail = block[self._level_offset + 1 : twcc_at]
        else:
            self._ext_head = block[:twcc_at]
            self._ext_tail = b""
        self._ext_end = block[twcc_at + 2 :] if self._twcc_offset else b""
        #: RTP header + extension block bytes in front of the payload (sizes for the estimator).
        self._overhead = 12 + len(block)
        self._first_byte = 0x90 if self._ext_block else 0x80

    def __repr__(self) -> str:
        return f"Consumer({self.id} {self.kind} of {self.producer.id} ssrc={self.ssrc})"

    # ----------------------------------------------------------------------------------------
    # State

    @property
    def forwarding(self) -> bool:
        """Not paused, not closed, transport connected: the producer sends us packets."""
        return self._active

    @property
    def can_pad(self) -> bool:
        """Padding and probes may go out on this consumer's RTX stream: it forwards, or it is
        paused for quality only (a paused video's probes are how its subscriber's estimate
        grows back past its lowest layer; without them a transport-cc subscriber stayed paused
        after its limit lifted)."""
        return (
            self._started
            and not self.closed
            and not self.paused
            and self.transport.state is TransportState.CONNECTED
        )

    def _update_active(self) -> None:
        active = (
            not self.closed
            and not self.paused
            and not self.quality_paused
            and self.transport.state is TransportState.CONNECTED
        )
        if active is not self._active:
            self._active = active
            self.producer.consumers_changed()

    # ----------------------------------------------------------------------------------------
    # Simulcast layers

    @property
    def simulcast(self) -> bool:
        """Whether this consumer forwards one of several encodings."""
        return self._switcher is not None

    @property
    def current_layer(self) -> int | None:
        """The encoding being forwarded (simulcast), None before the first key frame or when
        not simulcast."""
        return self._switcher.current_layer if self._switcher is not None else None

    @property
    def target_layer(self) -> int | None:
        """The encoding being switched to (or forwarded); None when not simulcast."""
        return self._switcher.target_layer if self._switcher is not None else None

    @property
    def wanted_layer(self) -> tuple[int | None, int | None]:
        """The (spatial, temporal) layer last asked for with :meth:`set_layer`."""
        return self._wanted

    def _setup_switcher(self) -> None:
        producer = self.producer
        previous = getattr(self, "_switcher", None)
        if self.kind == "video" and producer.simulcast:
            self._cuts = 0
            self._switcher = LayerSwitcher(
                self.codec.name, self._clock_rate, layers=len(producer.encodings), sequence=self._seq
            )
            if previous is not None:
                self._switcher.continue_from(previous)
        else:
            self._switcher = None

    def set_layer(self, spatial: int | None, temporal: int | None = None, *, cut: bool = False) -> None:
        """Forward simulcast encoding ``spatial`` (0 lowest; None or above the top: the top
        one) with VP8 temporal layers up to ``temporal`` (None: all), switching at its next key
        frame (asked for now). ``cut`` (the allocator, when the subscriber's link collapsed):
        a switch down stops the current encoding at the end of its current frame instead of
        forwarding it until that key frame (:meth:`~salon.media.layers.LayerSwitcher.cut`).
        No effect on a consumer that is not simulcast."""
        if spatial is not None and spatial < 0:
            raise ValueError(f"spatial layer must be >= 0, got {spatial}")
        if temporal is not None and temporal < 0:
            raise ValueError(f"temporal layer must be >= 0, got {temporal}")
        self._wanted = (spatial, temporal)
        switcher = self._switcher
        if switcher is not None:
            self._retarget(self._now())
            current = switcher.current_layer
            if cut and current is not None and switcher.target_layer < current and switcher.cut():
                logger.info(
                    "%r: layer %d cut for %d (the link collapsed)", self, current, switcher.target_layer
                )
                # What of the cut layer still waits in the pacer would only delay the new one.
                # It had the newest sequence numbers of the media and RTX streams: the
                # subscriber's next report counts them as lost, as it does the cut's gap
                # (:meth:`_cut_made`).
                video, retransmissions = self._pacer.discard(self)
                last = self._seq.last_sequence_number
                bandwidth = self.transport.bandwidth
                if video and last is not None:
                    bandwidth.skipped(self.ssrc, last, video)
                if retransmissions and self.rtx_ssrc is not None:
                    bandwidth.skipped(self.rtx_ssrc, (self._rtx_seq - 1) & 0xFFFF, retransmissions)

    def _retarget(self, now: float, *, ask: bool = True) -> None:
        """Point the switcher at the wanted encoding, or the best one flowing below it; ask
        for a key frame of a new target (``ask``)."""
        switcher = self._switcher
        if switcher is None:
            return
        top = switcher.layers - 1
        spatial, temporal = self._wanted
        wanted = top if spatial is None else min(spatial, top)
        active = self.producer.active_layers(now, LAYER_INACTIVE_AFTER)
        if active and wanted not in active:
            below = [i for i in active if i <= wanted]
            wanted = below[-1] if below else active[0]
        before = switcher.target_layer
        switcher.set_target(wanted, temporal)
        if ask and self._active and switcher.waiting and before != wanted:
            self._request_start(now)

    def transport_connected(self) -> None:
        """Called by the transport once ICE + DTLS are up."""
        self._update_active()
        if self._active and not self._started:
            self._request_start(self._now())

    def can_switch_to(self, producer: Producer) -> bool:
        """Whether this consumer can carry ``producer`` instead (same kind and codec)."""
        return (
            not self.closed
            and producer.kind == self.kind
            and producer.codec.name.lower() == self.codec.name.lower()
            and producer.codec.clock_rate == self.codec.clock_rate
        )

    def switch_producer(self, producer: Producer) -> None:
        """Carry ``producer`` from now on (its stream was published again): the outgoing
        stream stays continuous (:class:`~salon.media.seq.SequenceRewriter` re-bases on the
        new producer's first key frame, asked for now)."""
        if self.closed or producer is self.producer:
            return
        self.producer.remove_consumer(self)
        self.producer = producer
        self._started = False
        self._setup_switcher()
        producer.add_consumer(self)
        logger.info("%r: switched to %r", self, producer)
        if self._active:
            self._request_start(self._now())

    def pause(self) -> None:
        """Stop forwarding (e.g. the subscriber turned this kind off)."""
        if self.closed or self.paused:
            return
        self.paused = True
        self._update_active()
        logger.debug("%r: paused", self)

    def resume(self) -> None:
        """Forward again, from the next key frame (asked for now)."""
        if self.closed or not self.paused:
            return
        self.paused = False
        self._started = False
        if self._switcher is not None:
            self._switcher.reset()
        self._update_active()
        logger.debug("%r: resumed", self)
        if self._active:
            self._request_start(self._now())

    def set_paused(self, paused: bool, reason: PauseReason) -> None:
        """Pause or resume for ``reason``: the consumer forwards only when paused for
        neither. A change of the quality pause emits :class:`ConsumerQualityChanged`."""
        if reason is PauseReason.SUBSCRIBER:
            if paused:
                self.pause()
            else:
                self.resume()
            return
        if self.closed or self.quality_paused == paused:
            return
        self.quality_paused = paused
        if not paused:
            self._started = False
            if self._switcher is not None:
                # Start again at a key frame of the target layer, as after a subscriber pause.
                self._switcher.reset()
        self._update_active()
        logger.info("%r: %s for quality", self, "paused" if paused else "resumed")
        if self._active:
            self._request_start(self._now())
        self.events.emit(ConsumerQualityChanged(self, paused))

    def set_preferences(
        self, max_width: int | None, max_height: int | None, max_frame_rate: float | None
    ) -> None:
        """Store the subscriber's preferred maximum resolution and frame rate (None: no
        preference), for layer selection to honour."""
        self.max_width = max_width
        self.max_height = max_height
        self.max_frame_rate = max_frame_rate

    def _request_start(self, now: float) -> None:
        self._waiting_since = now
        if self.kind == "video":
            switcher = self._switcher
            if switcher is not None:
                self._retarget(now, ask=False)
                self.producer.request_key_frame(now, switcher.target_layer)
            else:
                self.producer.request_key_frame(now)
            self.transport.schedule(now + KEY_FRAME_RETRY_INTERVAL)

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    # ----------------------------------------------------------------------------------------
    # Packet path

    def send_rtp(self, data: bytes, header: RtpHeader, key_frame: bool, now: float, layer: int = 0) -> None:
        """Rewrite and send one producer packet (synchronous, the per-consumer hot path).

        Same result as :func:`~salon.media.rtp.rewrite_rtp` with this consumer's extension
        block (abs-send-time or audio level patched), built with one ``struct.pack`` and one
        join of prebuilt pieces plus a view of the payload (one copy of the payload, no
        keyword call); the abs-send-time bytes are computed once per packet for all
        consumers, the audio level is the producer's byte of this packet. ``layer``: the
        packet's encoding (simulcast).
        """
        if not self._active:
            return
        offset = header.payload_offset
        prefix = b""
        switcher = self._switcher
        if switcher is not None:
            forward = switcher.forward(
                layer, header.sequence_number, header.timestamp, memoryview(data)[offset:], key_frame, now
            )
            if forward is None:
                if switcher.cuts != self._cuts:
                    self._cut_made(switcher.cuts)
                return
            out: tuple[int, int] = (forward[0], forward[1])
            if forward[2] is not None:
                prefix = forward[2]
            if switcher.switches != self.stats.layer_switches:
                self.stats.layer_switches = switcher.switches
                self.stats.key_frame_starts += 1
                self._started = True
        elif not self._started:
            if not key_frame:
                return
            self._seq.start(header.sequence_number, header.timestamp, now, self._clock_rate)
            rewritten = self._seq.rewrite(header.sequence_number, header.timestamp)
            if rewritten is None:
                return
            out = rewritten
            self._started = True
            self.stats.key_frame_starts += 1
        else:
            rewritten = self._seq.rewrite(header.sequence_number, header.timestamp)
            if rewritten is None:
                return
            out = rewritten
        stamp = self._stamp
        size = self._overhead + len(data) - offset
        pacer = self._pacer
        queue = False
        if pacer.rate:
            if self._paced_video:
                queue = not pacer.admit(now, size)
            else:
                pacer.charge(now, size)
        packet = _JOIN(
            (
                _FIXED_PACK(
                    self._first_byte | (data[0] & 0x20),
                    (data[1] & 0x80) | self._pt,
                    out[0],
                    out[1],
                    self.ssrc,
                ),
                self._ext_head,
                _abs_send_time_once(now)
                if self._abs_offset
                else self.producer.audio_level_value
                if self._level_offset
                else b"",
                self._ext_tail,
                b"" if stamp is None else _NOT_STAMPED if queue else stamp(now, size),
                self._ext_end,
                prefix,
                memoryview(data)[offset + len(prefix) :],
            )
        )
        if queue:
            self.transport.pace(
                PacedPacket(
                    packet,
                    size,
                    12 + self._twcc_offset if stamp is not None else 0,
                    12 + self._abs_offset if self._abs_offset else 0,
                    self,
                    now,
                ),
                now,
            )
        else:
            self.transport.send_rtp(packet)
        stats = self.stats
        stats.packets_sent += 1
        stats.octets_sent += len(data) - offset

    # ----------------------------------------------------------------------------------------
    # Subscriber RTCP

    def receive_nack(self, lost: Sequence[int], now: float) -> None:
        """Answer a subscriber NACK from the producer cache; NACK upstream on a miss."""
        if self.closed:
            return
        self.stats.nacks_received += 1
        misses: list[int] = []
        pacer = self._pacer
        switcher = self._switcher
        layer = switcher.current_layer if switcher is not None else None
        if switcher is not None and layer is None:
            return
        for out_seq in lost:
            in_seq = self._seq.to_input(out_seq)
            if in_seq is None:
                continue
            cached = self.producer.get_cached(in_seq, layer)
            if cached is None:
                misses.append(in_seq)
                continue
            header = parse_rtp_header(cached)
            if switcher is not None and layer is not None:
                ok, prefix = switcher.rewrite_retransmission(
                    layer, memoryview(cached)[header.payload_offset :]
                )
                if not ok:
                    continue
                if prefix is not None:
                    start = header.payload_offset
                    cached = cached[:start] + prefix + cached[start + len(prefix) :]
            out_ts = self._seq.rewrite_timestamp(header.timestamp)
            ext = self._ext_block
            if self._abs_offset:
                ext = patch_extension(ext, self._abs_offset, abs_send_time(now))
            elif self._level_offset:
                ext = patch_extension(ext, self._level_offset, self._cached_audio_level(cached, header))
            size = self._overhead + len(cached) - header.payload_offset + 2  # + RTX OSN
            queue = bool(pacer.rate) and not pacer.admit(now, size)
            if self._stamp is not None and not queue:
                ext = patch_extension(ext, self._twcc_offset, self._stamp(now, size))
            if self.rtx_ssrc is not None and self._rtx_pt is not None:
                packet = wrap_rtx(
                    cached,
                    header,
                    ssrc=self.rtx_ssrc,
                    payload_type=self._rtx_pt,
                    sequence_number=self._rtx_seq,
                    timestamp=out_ts,
                    original_sequence_number=out_seq,
                    extensions=ext,
                )
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            else:
                packet = rewrite_rtp(
                    cached,
                    header,
                    ssrc=self.ssrc,
                    payload_type=self._pt,
                    sequence_number=out_seq,
                    timestamp=out_ts,
                    extensions=ext,
                )
            if queue:
                self.transport.pace(
                    PacedPacket(
                        packet,
                        size,
                        12 + self._twcc_offset if self._stamp is not None else 0,
                        12 + self._abs_offset if self._abs_offset else 0,
                        self,
                        now,
                    ),
                    now,
                    retransmission=True,
                )
            else:
                self.transport.send_rtp(packet)
            self.stats.retransmitted_from_cache += 1
        if misses:
            self.stats.cache_misses += len(misses)
            self.producer.request_retransmission(misses, now, layer)

    def send_padding(
        self, now: float, count: int, *, spacing: float = 0.0, sequences: list[int] | None = None
    ) -> int:
        """Send ``count`` padding-only packets (255 bytes of RTP padding each) on the RTX
        stream, stamped like media (abs-send-time, transport-wide sequence number), so the
        subscriber's estimate can grow while layers are held back. Returns the bytes sent (0
        without RTX, or before media flowed). A probe cluster passes ``spacing`` (the send
        times recorded for the transport-wide feedback are ``now + i * spacing``: the burst
        leaves at once, its dispersion at the bottleneck is what the feedback measures) and
        ``sequences`` (filled with the packets' unwrapped transport-wide sequence numbers)."""
        if not self.can_pad or self.rtx_ssrc is None or self._rtx_pt is None:
            return 0
        pacer = self._pacer
        if not pacer.can_pad(now):  # media waits in the pacer's queue: no room for padding
            return 0
        if pacer.rate and sequences is None:
            # Plain padding (not a probe cluster, whose burst is the measurement): at most what
            # the bucket holds, the rest on a later tick (the allocation keeps the credit).
            count = min(count, 1 + int(pacer.tokens) // (12 + len(self._ext_block) + 255))
        ext = self._ext_block
        if self._abs_offset:
            ext = patch_extension(ext, self._abs_offset, abs_send_time(now))
        timestamp = self._seq.last_timestamp
        sent = 0
        padding = bytes(254) + b"\xff"
        for _ in range(count):
            block = ext
            size = 12 + len(ext) + 255
            if self._stamp is not None:
                if sequences is not None:
                    sequences.append(self.transport.bandwidth.history.sent)
                block = patch_extension(
                    ext, self._twcc_offset, self._stamp(now + len(sequences or ()) * spacing, size)
                )
            header = _FIXED_PACK(
                self._first_byte | 0x20, self._rtx_pt, self._rtx_seq, timestamp, self.rtx_ssrc
            )
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            pacer.charge(now, size)
            self.transport.send_rtp(header + block + padding)
            sent += size
        self.padding_bytes += sent
        return sent

    def _cached_audio_level(self, packet: bytes, header: RtpHeader) -> bytes:
        """The RFC 6464 byte of a cached publisher packet (silence if it carries none)."""
        ext_id = self.producer.extensions.audio_level
        value = find_header_extension(packet, header, ext_id) if ext_id is not None else None
        return value[:1] if value else b"\x7f"

    def paced_video_dropped(self, now: float) -> None:
        """The transport's pacer dropped some of this consumer's video (its queue was over
        its bound): the subscriber cannot decode until the next key frame, ask for one."""
        self.stats.paced_dropped += 1
        if self.closed or not self._active:
            return
        self._request_key_frame(now)

    def receive_key_frame_request(self, now: float) -> None:
        """Subscriber PLI/FIR: forwarded to the producer, which throttles (not while paused:
        nothing is sent to this subscriber, and resuming asks for a key frame anyway)."""
        if self.closed:
            return
        self.stats.key_frame_requests_received += 1
        if self._active:
            self._request_key_frame(now)

    def _cut_made(self, cuts: int) -> None:
        """The switcher cut the current layer and left output sequence numbers unused: the
        subscriber's loss reports must not count them (:meth:`TransportBandwidth.skipped`)."""
        self._cuts = cuts
        last = self._seq.last_sequence_number
        if last is not None:
            self.transport.bandwidth.skipped(self.ssrc, last, CUT_SEQUENCE_GAP)

    def _request_key_frame(self, now: float) -> None:
        """Ask the producer for a key frame of the layer this subscriber decodes (the one being
        forwarded, or while none is yet, the one it switches to)."""
        switcher = self._switcher
        if switcher is None:
            self.producer.request_key_frame(now)
        else:
            layer = switcher.current_layer
            self.producer.request_key_frame(now, switcher.target_layer if layer is None else layer)

    def receive_remb(self, bitrate: int, now: float) -> None:
        self.remb_bitrate = int(bitrate)

    def receive_report_block(self, block: ReportBlock, now: float) -> None:
        self.stats.fraction_lost = block.fraction_lost

    def send_sender_report(self, ntp_timestamp: int, rtp_timestamp: int, now: float, layer: int = 0) -> None:
        """Rewrite a publisher SR for this subscriber: same NTP time, our RTP timeline/counts
        (simulcast: only the SR of the encoding being forwarded)."""
        if not self._active or not self._started:
            return
        if self._switcher is not None and layer != self._switcher.current_layer:
            return
        self.stats.sender_reports_sent += 1
        self.transport.send_rtcp(
            build_sender_report(
                self.ssrc,
                ntp_timestamp,
                self._seq.rewrite_timestamp(rtp_timestamp),
                self.stats.packets_sent,
                self.stats.octets_sent,
            )
        )

    def on_timer(self, now: float) -> float:
        """Transport timer: re-ask for a key frame while waiting for one; simulcast: follow
        the encodings that flow."""
        if not self._active or self.kind != "video":
            return float("inf")
        switcher = self._switcher
        if switcher is not None:
            self._retarget(now, ask=False)
            self.stats.temporal_dropped = switcher.temporal_dropped
            next_check = now + LAYER_CHECK_INTERVAL
            if not switcher.waiting:
                self._waiting_since = 0.0
                return next_check
            if not self._waiting_since or now - self._waiting_since >= KEY_FRAME_RETRY_INTERVAL:
                self._request_start(now)
            return min(next_check, self._waiting_since + KEY_FRAME_RETRY_INTERVAL)
        if self._started:
            return float("inf")
        if now - self._waiting_since >= KEY_FRAME_RETRY_INTERVAL:
            self._request_start(now)
        return self._waiting_since + KEY_FRAME_RETRY_INTERVAL

    # ----------------------------------------------------------------------------------------
    # Closing

    def close(self) -> None:
        """Unsubscribe; idempotent."""
        self._close(ConsumerCloseReason.CLOSED)

    def producer_closed(self) -> None:
        """Called by the producer when it closes."""
        self._close(ConsumerCloseReason.PRODUCER_CLOSED)

    def transport_closed(self) -> None:
        """Called by the owning transport when it closes."""
        self._close(ConsumerCloseReason.TRANSPORT_CLOSED)

    def _close(self, reason: ConsumerCloseReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._active = False
        logger.info("%r: closed (%s)", self, reason.value)
        self.producer.remove_consumer(self)
        retire_consumer(self)  # its counts stay in the worker's totals (metrics)
        self.transport.remove_consumer(self)
        self.events.emit(ConsumerClosed(self, reason))
        self.events.clear()

    def dump(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "producer": self.producer.id,
            "ssrc": self.ssrc,
            "rtx_ssrc": self.rtx_ssrc,
            "payload_type": self._pt,
            "paused": self.paused,
            "quality_paused": self.quality_paused,
            "preferences": {
                "max_width": self.max_width,
                "max_height": self.max_height,
                "max_frame_rate": self.max_frame_rate,
            },
            "started": self._started,
            "simulcast": self._switcher is not None,
            "current_layer": self.current_layer,
            "target_layer": self.target_layer,
            "stats": dataclasses.asdict(self.stats),
        }
