"""Layer switching for a simulcast consumer: one encoding out of several, one continuous stream.

A simulcast producer receives several encodings (spatial layers, lowest first) of the same
video, each its own RTP stream with unrelated sequence numbers, timestamps and (VP8) picture
IDs. A subscriber must see one RTP stream whose decoder never notices a switch.
:class:`LayerSwitcher` decides, per packet, whether to forward it and with which numbers:

* **One layer at a time.** Packets of other encodings are not forwarded. A new target layer
  (:meth:`LayerSwitcher.set_target`, called by the allocator or the subscriber's preferences)
  takes effect only at the first packet of a key frame *of the target layer*; until then the
  current layer keeps flowing (the caller asks the publisher for that key frame:
  :attr:`LayerSwitcher.waiting`). Before the first start nothing is forwarded.
* **Cutting the old layer** (:meth:`LayerSwitcher.cut`): when the subscriber's link has
  collapsed, going on with the old (higher) layer until the target's key frame arrives keeps
  the link's queue full, and that key frame (and the request for it) waits behind it for
  seconds. A cut stops the current layer at the end of the frame being forwarded (its first
  packet with a new timestamp is not forwarded, so the subscriber gets no half frame), and
  nothing is forwarded until the target's key frame: a short gap instead of a long stall.
  Retransmissions of the cut layer stop with it (:meth:`rewrite_retransmission` refuses them),
  and the output sequence numbers jump by :data:`CUT_SEQUENCE_GAP` at the cut, so that the
  subscriber's jitter buffer gives up on the cut layer's lost packets instead of waiting for
  them (picture IDs and TL0PICIDX stay continuous: the decoder sees no gap).
* **Sequence numbers and timestamps** go through one
  :class:`~salon.media.seq.SequenceRewriter`, re-based at each switch (the key frame gets
  ``last + 1`` and a timestamp advanced by the wall-clock time since the last packet).
* **VP8 picture ID and TL0PICIDX** are offset the same way: at a switch the key frame gets the
  last output picture ID + 1 and the last output TL0PICIDX + 1, so the decoder sees neither a
  gap nor a repeat (a gap in picture IDs would make it wait for a missing frame).
* **VP8 temporal layers**: packets whose TID is above the maximum temporal layer are dropped,
  and the sequence numbers and picture IDs of what is forwarded close up over them (no gap: the
  subscriber does not NACK what was dropped on purpose). Lowering the maximum takes effect at
  the next frame; raising it waits for a frame that does not depend on the frames dropped so
  far (TID 0, or the layer-sync bit Y), or for the next switch.

H.264 simulcast works the same way without the picture-ID part (key frame: IDR/SPS, as
detected by the producer) and without temporal layers (no TID in the payload).

Nothing here does I/O; ``now`` is passed in (seconds, monotonic clock).
"""

from __future__ import annotations

from salon.media.seq import SequenceRewriter
from salon.media.vp8 import Vp8Descriptor, parse_vp8_descriptor

__all__ = ["CUT_SEQUENCE_GAP", "Forward", "LayerSwitcher"]

#: (sequence number, timestamp, rewritten payload descriptor or None): the caller writes the
#: descriptor bytes over the start of the payload (VP8); None leaves the payload as it is.
Forward = tuple[int, int, bytes | None]

#: Output sequence numbers left unused at a cut: the packets of the cut layer lost on the
#: collapsed link will not be retransmitted, and a receiver whose jitter buffer waits for the
#: oldest missing packet until it is that many packets behind (aiortc 1.16's: 512 for video)
#: would stall seconds on them; a jump past its whole buffer makes it drop them at once and
#: take the key frame that follows. (It was 300, from aiortc's older 128: with 512, an aiortc
#: subscriber froze 10-16 s after a cut, until 212 more packets of the low layer came.)
#: Browsers count the gap as loss and clear their NACK list at the key frame; the NACKs they
#: send for it map to nothing and are ignored. The loss reports that cover it leave it out
#: (:meth:`salon.media.bandwidth.TransportBandwidth.skipped`).
CUT_SEQUENCE_GAP = 600

#: Recent picture IDs remembered (input -> output), for late and retransmitted packets.
_PICTURE_MAP_SIZE = 256


class LayerSwitcher:
    """Forward one of ``layers`` encodings (0 lowest) as one continuous RTP stream.

    :param codec: lower-case codec name (``"vp8"``, ``"h264"``); VP8 gets picture-ID rewriting
        and temporal-layer dropping.
    :param clock_rate: RTP clock rate (timestamp advance across switches).
    :param layers: number of encodings.
    :param initial_seq, initial_ts: first output numbers (random if None).
    :param sequence: continue this rewriter's output instead (a consumer that changes producer).
    """

    __slots__ = (
        "_clock_rate",
        "_current",
        "_cutting",
        "_layers",
        "_max_temporal",
        "_pending_temporal",
        "_pid_last_in",
        "_pid_last_out",
        "_pid_map",
        "_pid_offset",
        "_prefix_key",
        "_prefix_middle",
        "_seq",
        "_target",
        "_tl0_last_out",
        "_tl0_offset",
        "_vp8",
        "cuts",
        "switches",
        "temporal_dropped",
    )

    def __init__(
        self,
        codec: str,
        clock_rate: int,
        *,
        layers: int,
        initial_seq: int | None = None,
        initial_ts: int | None = None,
        sequence: SequenceRewriter | None = None,
    ) -> None:
        if layers < 1:
            raise ValueError(f"a layer switcher needs at least one layer, got {layers}")
        self._vp8 = codec.lower() == "vp8"
        self._clock_rate = clock_rate
        self._layers = layers
        self._seq = sequence if sequence is not None else SequenceRewriter(initial_seq, initial_ts)
        self._current: int | None = None
        self._cutting = False
        self._target = layers - 1
        self._max_temporal = 0xFF
        self._pending_temporal = 0xFF
        self._pid_offset = 0
        self._pid_last_in: int | None = None
        self._pid_last_out: int | None = None
        self._pid_map: dict[int, int] = {}
        self._tl0_offset = 0
        self._tl0_last_out: int | None = None
        self._prefix_key: tuple[int, int] | None = None
        self._prefix_middle = b""
        #: Switches (and starts) made so far.
        self.switches = 0
        #: Layers stopped before the target's key frame (:meth:`cut`).
        self.cuts = 0
        #: Packets dropped for being above the maximum temporal layer.
        self.temporal_dropped = 0

    # ------------------------------------------------------------------------------------
    # State

    @property
    def sequence(self) -> SequenceRewriter:
        """The sequence/timestamp rewriter (NACK mapping, sender-report timestamps)."""
        return self._seq

    @property
    def layers(self) -> int:
        return self._layers

    @property
    def current_layer(self) -> int | None:
        """The layer being forwarded, None before the first start (or after :meth:`reset`)."""
        return self._current

    @property
    def target_layer(self) -> int:
        return self._target

    @property
    def max_temporal_layer(self) -> int:
        """The maximum VP8 temporal layer asked for (255: all)."""
        return self._pending_temporal

    @property
    def waiting(self) -> bool:
        """Waiting for a key frame of the target layer (to start or to switch)."""
        return self._current != self._target

    def set_target(self, spatial: int, temporal: int | None = None) -> None:
        """Forward ``spatial`` (clamped to the layers there are) from its next key frame, and
        VP8 temporal layers up to ``temporal`` (None: all)."""
        self._target = max(0, min(int(spatial), self._layers - 1))
        if self._target == self._current:
            self._cutting = False  # back to the layer being forwarded: nothing to cut
        wanted = 0xFF if temporal is None else max(0, min(int(temporal), 0xFF))
        # Dropping more takes effect at the next frame; adding back waits for a sync point.
        self._pending_temporal = wanted

    @property
    def cutting(self) -> bool:
        """A cut is pending: the current layer stops at the end of its current frame."""
        return self._cutting

    def cut(self) -> bool:
        """Stop forwarding the current layer at the end of the frame being forwarded, without
        waiting for the target's key frame (the switch then happens at that key frame, as
        usual). Only when the target differs from the current layer; returns whether a cut
        was made (or was already pending)."""
        if self._current is None or self._current == self._target:
            return False
        self._cutting = True
        return True

    def continue_from(self, other: LayerSwitcher) -> None:
        """Carry on ``other``'s output picture IDs and TL0PICIDX (a consumer moved to another
        producer): the first key frame here continues them. The sequence numbers continue when
        both share a :class:`~salon.media.seq.SequenceRewriter`."""
        self._pid_last_out = other._pid_last_out
        self._tl0_last_out = other._tl0_last_out

    def reset(self) -> None:
        """Forward nothing until the next key frame of the target layer (pause/resume,
        producer change); the output stays continuous across it."""
        self._current = None
        self._cutting = False

    # ------------------------------------------------------------------------------------
    # Packet path

    def forward(
        self,
        layer: int,
        sequence_number: int,
        timestamp: int,
        payload: bytes | memoryview,
        key_frame: bool,
        now: float,
    ) -> Forward | None:
        """Decide about one packet of encoding ``layer``: None (not forwarded) or its output
        sequence number, timestamp and rewritten VP8 descriptor.

        ``key_frame``: the packet is the first of a key frame (the producer's detection).
        The VP8 descriptor is read inline (no :class:`~salon.media.vp8.Vp8Descriptor` per
        packet: this runs per packet and subscriber).
        """
        if layer != self._current:
            if layer != self._target or not key_frame:
                return None
            desc: Vp8Descriptor | None = None
            if self._vp8:
                try:
                    desc = parse_vp8_descriptor(payload)
                except ValueError:
                    return None
            self._switch(layer, sequence_number, timestamp, desc, now)
        elif self._cutting:
            seq = self._seq
            if 0 < ((timestamp + seq.ts_offset - seq.last_timestamp) & 0xFFFFFFFF) < 0x80000000:
                # A newer frame of the layer being cut: the cut takes effect here.
                self._current = None
                self._cutting = False
                self.cuts += 1
                seq.skip(CUT_SEQUENCE_GAP)
                return None
        if not self._vp8 or len(payload) < 2 or not payload[0] & 0x80:
            out = self._seq.rewrite(sequence_number, timestamp, now)
            return None if out is None else (out[0], out[1], None)
        # VP8 with the extension byte: picture ID, TL0PICIDX, TID (RFC 7741 §4.2).
        length = len(payload)
        ext = payload[1]
        pos = 2
        pid = -1
        bits = 0
        if ext & 0x80:
            if length < 3:
                return None
            byte = payload[2]
            if byte & 0x80:
                if length < 4:
                    return None
                pid = ((byte & 0x7F) << 8) | payload[3]
                bits = 15
                pos = 4
            else:
                pid = byte
                bits = 7
                pos = 3
        tl0 = -1
        if ext & 0x40:
            if pos >= length:
                return None
            tl0 = payload[pos]
            pos += 1
        if ext & 0x20:
            if pos >= length:
                return None
            byte = payload[pos]
            tid = byte >> 6
            if self._pending_temporal != self._max_temporal and payload[0] & 0x17 == 0x10:
                # A frame starts: a lower maximum applies now, a higher one at a frame that
                # needs none of the frames dropped so far (TID 0, or Y with a TID allowed).
                pending = self._pending_temporal
                if pending < self._max_temporal or tid == 0 or (byte & 0x20 and tid <= pending):
                    self._max_temporal = pending
            if tid > self._max_temporal:
                self._seq.drop(sequence_number)
                if pid >= 0:
                    self._drop_picture(pid, bits)
                self.temporal_dropped += 1
                return None
        out = self._seq.rewrite(sequence_number, timestamp, now)
        if out is None:
            return None
        if pid < 0 and tl0 < 0:
            return out[0], out[1], None
        return out[0], out[1], self._prefix(payload, pid, bits, tl0, True)

    def rewrite_retransmission(self, layer: int, payload: bytes | memoryview) -> tuple[bool, bytes | None]:
        """For a cached packet asked for again (subscriber NACK): whether it may be sent
        (it is of the current layer and not of a dropped temporal layer) and its rewritten VP8
        descriptor."""
        if layer != self._current:
            return False, None
        if not self._vp8:
            return True, None
        try:
            desc = parse_vp8_descriptor(payload)
        except ValueError:
            return False, None
        if desc.tid is not None and desc.tid > self._max_temporal:
            return False, None
        if desc.picture_id is None and desc.tl0_pic_idx is None:
            return True, None
        pid = -1 if desc.picture_id is None else desc.picture_id
        tl0 = -1 if desc.tl0_pic_idx is None else desc.tl0_pic_idx
        return True, self._prefix(payload, pid, desc.picture_id_bits, tl0, False)

    # ------------------------------------------------------------------------------------
    # Internals

    def _switch(
        self, layer: int, sequence_number: int, timestamp: int, desc: Vp8Descriptor | None, now: float
    ) -> None:
        self._seq.start(sequence_number, timestamp, now, self._clock_rate)
        self._current = layer
        self._cutting = False
        self._max_temporal = self._pending_temporal
        self.switches += 1
        self._pid_map.clear()
        self._prefix_key = None
        if desc is None:
            return
        if desc.picture_id is not None:
            if self._pid_last_out is None:
                self._pid_offset = 0
            else:
                self._pid_offset = (self._pid_last_out + 1 - desc.picture_id) & 0x7FFF
            self._pid_last_in = None
        if desc.tl0_pic_idx is not None:
            if self._tl0_last_out is None:
                self._tl0_offset = 0
            else:
                self._tl0_offset = (self._tl0_last_out + 1 - desc.tl0_pic_idx) & 0xFF

    def _is_new_picture(self, pid: int, bits: int) -> bool:
        last = self._pid_last_in
        if last is None:
            return True
        modulus = 1 << bits
        diff = (pid - last) % modulus
        return 0 < diff < modulus // 2

    def _drop_picture(self, pid: int, bits: int) -> None:
        # A dropped picture takes no output picture ID: later ones close up over it.
        if self._is_new_picture(pid, bits):
            self._pid_last_in = pid
            self._pid_offset = (self._pid_offset - 1) & 0x7FFF
            self._prefix_key = None

    def _prefix(self, payload: bytes | memoryview, pid: int, bits: int, tl0: int, learn: bool) -> bytes:
        """The descriptor's first bytes with the output picture ID and TL0PICIDX (what the
        caller writes over the start of the payload). Packets of one picture share the same
        rewritten fields: computed once per picture."""
        key = (pid, tl0)
        middle = self._prefix_middle
        if key != self._prefix_key or not learn:
            middle = b""
            if pid >= 0:
                mapped = self._pid_map.get(pid)
                if mapped is not None:
                    out_pid = mapped
                else:
                    out_pid = (pid + self._pid_offset) & 0x7FFF
                    if learn and self._is_new_picture(pid, bits):
                        self._pid_last_in = pid
                        self._pid_last_out = out_pid
                        pid_map = self._pid_map
                        pid_map[pid] = out_pid
                        if len(pid_map) > _PICTURE_MAP_SIZE:
                            del pid_map[next(iter(pid_map))]
                middle = (
                    bytes((0x80 | (out_pid >> 8), out_pid & 0xFF)) if bits == 15 else bytes((out_pid & 0x7F,))
                )
            if tl0 >= 0:
                out_tl0 = (tl0 + self._tl0_offset) & 0xFF
                if learn:
                    last = self._tl0_last_out
                    if last is None or 0 < ((out_tl0 - last) & 0xFF) < 0x80:
                        self._tl0_last_out = out_tl0
                middle += bytes((out_tl0,))
            if learn:
                self._prefix_key = key
                self._prefix_middle = middle
        return bytes(payload[:2]) + middle
