"""RTP depacketisers for recording: RTP payloads back into coded frames (sans-I/O).

A recording writes each stream without re-encoding, so the archiver turns the RTP packets the
media worker forwards (:mod:`salon.media.recording`) back into the frames the publisher's
encoder produced:

* **VP8** (RFC 7741): each packet starts with a payload descriptor (§4.2: X, N, S, PID, and
  with X the I/L/T/K byte, a 7- or 15-bit PictureID, TL0PICIDX, TID/KEYIDX) that is stripped;
  the rest is a piece of the frame. A frame starts at S=1 with PID=0 and ends at the packet with
  the marker bit; it is a key frame when the first byte of its VP8 payload header has P=0. Its
  width and height are in the key frame's header (RFC 6386 §9.1).
* **H.264** (RFC 6184, packetization-mode 1): a packet carries a single NAL unit (types
  1-23), a STAP-A (24: several NAL units, each with a 16-bit size) or an FU-A fragment (28:
  S/E bits, the NAL header rebuilt from the FU indicator and header). Frames are written in
  AVC (length-prefixed) form, with the SPS/PPS kept for the container's ``avcC`` record. A key
  frame holds an IDR slice (type 5).
* **Opus** (RFC 7587): one packet is one frame, as is.

:class:`FrameAssembler` groups the packets of one track, in sequence order, into frames: the
packets with one RTP timestamp, complete when their sequence numbers run without a hole from a
start-of-frame packet to the marker packet. A frame with a hole (a packet truly lost) is
reported incomplete and not written; the writer then waits for a key frame.

Malformed input raises :class:`DepacketizeError` (a :class:`ValueError`) naming the problem,
and nothing else: the archiver counts and drops such packets.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from salon.media.h264 import sps_dimensions

__all__ = [
    "DepacketizeError",
    "Frame",
    "FrameAssembler",
    "H264Depacketizer",
    "OpusDepacketizer",
    "PayloadPart",
    "RtpPacket",
    "Vp8Depacketizer",
    "avcc_record",
    "depacketizer_for",
    "h264_dimensions",
    "parse_rtp",
    "vp8_dimensions",
]


class DepacketizeError(ValueError):
    """An RTP packet or payload that cannot be depacketised (what is wrong is in the message)."""


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """The fields of one RTP packet a recording needs (padding removed from ``payload``)."""

    sequence_number: int
    timestamp: int
    marker: bool
    payload_type: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse an RTP packet (RFC 3550 §5.1): CSRCs and the extension block skipped, padding
    removed. Raises :class:`DepacketizeError`."""
    length = len(data)
    if length < 12:
        raise DepacketizeError(f"RTP packet is {length} bytes, shorter than the 12-byte fixed header")
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    if b0 >> 6 != 2:
        raise DepacketizeError(f"RTP packet has version {b0 >> 6}, expected 2")
    pos = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if pos + 4 > length:
            raise DepacketizeError("RTP packet is truncated inside its extension header")
        pos += 4 + 4 * struct.unpack_from("!H", data, pos + 2)[0]
    if pos > length:
        raise DepacketizeError(f"RTP header runs to byte {pos}, past the {length}-byte packet")
    end = length
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0 or padding > length - pos:
            raise DepacketizeError(f"RTP padding length {padding} is invalid")
        end -= padding
    return RtpPacket(seq, ts, bool(b1 & 0x80), b1 & 0x7F, ssrc, bytes(data[pos:end]))


@dataclass(frozen=True, slots=True)
class PayloadPart:
    """What one RTP payload contributes to its frame."""

    data: bytes
    """The frame bytes this packet carries (for H.264: AVC length-prefixed NAL units)."""
    frame_start: bool
    """The packet starts a frame (VP8: S=1 and PID=0; H.264: not an FU-A continuation)."""
    key_frame: bool = False
    """The frame this packet starts is a key frame (only meaningful with ``frame_start``)."""
    parameter_sets: tuple[bytes, ...] = ()
    """H.264 SPS and PPS NAL units found in this packet (for the container's codec record)."""


class Vp8Depacketizer:
    """RFC 7741 payload descriptor parsing."""

    codec = "vp8"

    def parse(self, payload: bytes) -> PayloadPart:
        length = len(payload)
        if length < 2:
            raise DepacketizeError(f"VP8 payload is {length} bytes, too short for a descriptor and data")
        first = payload[0]
        pos = 1
        if first & 0x80:  # X
            ext = payload[1]
            pos = 2
            if ext & 0x80:  # I: PictureID, 7 or 15 bits (M)
                if pos >= length:
                    raise DepacketizeError("VP8 descriptor truncated before its PictureID")
                pos += 2 if payload[pos] & 0x80 else 1
            if ext & 0x40:  # L: TL0PICIDX
                pos += 1
            if ext & 0x30:  # T or K: TID/Y/KEYIDX
                pos += 1
        if pos >= length:
            raise DepacketizeError(f"VP8 descriptor of {pos} bytes leaves no payload in {length} bytes")
        start = bool(first & 0x10) and first & 0x07 == 0
        key = start and not payload[pos] & 0x01
        return PayloadPart(bytes(payload[pos:]), start, key)


def vp8_dimensions(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame's header (RFC 6386 §9.1), None if not one."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    return width & 0x3FFF, height & 0x3FFF


class H264Depacketizer:
    """RFC 6184 single NAL unit, STAP-A and FU-A packets (packetization-mode 1)."""

    codec = "h264"

    def __init__(self) -> None:
        self._fu_open = False

    def parse(self, payload: bytes) -> PayloadPart:
        length = len(payload)
        if length < 1:
            raise DepacketizeError("H.264 payload is empty")
        nal_type = payload[0] & 0x1F
        if 1 <= nal_type <= 23:
            return self._part([bytes(payload)], start=True)
        if nal_type == 24:  # STAP-A
            units: list[bytes] = []
            pos = 1
            while pos < length:
                if pos + 2 > length:
                    raise DepacketizeError("H.264 STAP-A truncated inside a NAL unit size")
                size = (payload[pos] << 8) | payload[pos + 1]
                pos += 2
                if size == 0 or pos + size > length:
                    raise DepacketizeError(f"H.264 STAP-A NAL unit of {size} bytes overruns the packet")
                units.append(bytes(payload[pos : pos + size]))
                pos += size
            if not units:
                raise DepacketizeError("H.264 STAP-A carries no NAL unit")
            return self._part(units, start=True)
        if nal_type == 28:  # FU-A
            if length < 3:
                raise DepacketizeError(f"H.264 FU-A of {length} bytes carries no data")
            header = payload[1]
            if header & 0x80:  # S: the first fragment carries the rebuilt NAL header + its length
                nal = bytes([(payload[0] & 0xE0) | (header & 0x1F)])
                # The NAL unit's length is unknown until its last fragment: the fragments are
                # tagged and joined with their length prefix once the frame is in (_join_h264).
                unit_type = header & 0x1F
                return PayloadPart(
                    _FU_START + nal + bytes(payload[2:]),
                    frame_start=True,
                    key_frame=unit_type == 5,
                )
            marker = _FU_END if header & 0x40 else _FU_MIDDLE
            return PayloadPart(marker + bytes(payload[2:]), frame_start=False)
        raise DepacketizeError(f"H.264 NAL unit type {nal_type} is not supported in packetization-mode 1")

    @staticmethod
    def _part(units: list[bytes], *, start: bool) -> PayloadPart:
        data = b"".join(struct.pack("!I", len(u)) + u for u in units)
        key = any(u[0] & 0x1F == 5 for u in units)
        sets = tuple(u for u in units if u[0] & 0x1F in (7, 8))
        return PayloadPart(data, start, key, sets)


# FU-A fragments are tagged with one byte so that the assembler can rebuild the length prefix
# once all of a NAL unit's fragments are in (AVC form needs the length first).
_FU_START = b"\x01"
_FU_MIDDLE = b"\x02"
_FU_END = b"\x03"


class OpusDepacketizer:
    """RFC 7587: the payload is one Opus packet."""

    codec = "opus"

    def parse(self, payload: bytes) -> PayloadPart:
        if not payload:
            raise DepacketizeError("Opus payload is empty")
        return PayloadPart(bytes(payload), frame_start=True, key_frame=True)


Depacketizer = Vp8Depacketizer | H264Depacketizer | OpusDepacketizer


def depacketizer_for(codec: str) -> Depacketizer:
    """The depacketiser of a codec name (``vp8``, ``h264``, ``opus``, any case)."""
    name = codec.lower()
    if name == "vp8":
        return Vp8Depacketizer()
    if name == "h264":
        return H264Depacketizer()
    if name == "opus":
        return OpusDepacketizer()
    raise DepacketizeError(f"codec {codec!r} cannot be recorded without re-encoding")


@dataclass(slots=True)
class Frame:
    """One coded frame rebuilt from its packets."""

    timestamp: int
    """RTP timestamp (the track's clock)."""
    data: bytes
    key_frame: bool
    complete: bool
    """All its packets arrived (a frame with a hole is not written)."""
    parameter_sets: tuple[bytes, ...] = ()
    first_seq: int = 0


@dataclass(slots=True)
class _Pending:
    timestamp: int
    first_seq: int
    last_seq: int
    parts: list[PayloadPart] = field(default_factory=list)
    started: bool = False
    holes: bool = False


class FrameAssembler:
    """Packets of one track, in sequence order (with holes where packets were lost), into frames.

    :meth:`push` takes the next packet (its ``lost_before`` packets before it were given up)
    and returns the frames it completed; :meth:`flush` returns the frame in progress at the end.
    For audio every packet is a frame.
    """

    def __init__(self, codec: str) -> None:
        self.depacketizer = depacketizer_for(codec)
        self.audio = isinstance(self.depacketizer, OpusDepacketizer)
        self._pending: _Pending | None = None
        self.malformed = 0

    def push(self, packet: RtpPacket, lost_before: int = 0) -> list[Frame]:
        try:
            part = self.depacketizer.parse(packet.payload)
        except DepacketizeError:
            self.malformed += 1
            lost_before += 1  # counts as a hole in its frame
            part = None
        if self.audio:
            if part is None:
                return []
            return [Frame(packet.timestamp, part.data, True, True, (), packet.sequence_number)]
        out: list[Frame] = []
        pending = self._pending
        if pending is not None and pending.timestamp != packet.timestamp:
            out.append(self._finish(pending, ended=False))
            pending = self._pending = None
        if pending is None:
            pending = self._pending = _Pending(
                packet.timestamp, packet.sequence_number, packet.sequence_number
            )
            # Packets lost just before a new frame may have been its first ones.
            pending.holes = part is None or not part.frame_start or lost_before > 0
            if part is not None and part.frame_start:
                pending.started = True
        elif lost_before:
            pending.holes = True
        if part is not None:
            pending.parts.append(part)
        pending.last_seq = packet.sequence_number
        if packet.marker:
            out.append(self._finish(pending, ended=True))
            self._pending = None
        return out

    def flush(self) -> list[Frame]:
        pending, self._pending = self._pending, None
        return [] if pending is None else [self._finish(pending, ended=False)]

    def _finish(self, pending: _Pending, *, ended: bool) -> Frame:
        complete = pending.started and ended and not pending.holes and bool(pending.parts)
        key = bool(pending.parts) and pending.parts[0].key_frame
        sets = tuple(s for p in pending.parts for s in p.parameter_sets)
        data = b""
        if complete:
            if isinstance(self.depacketizer, H264Depacketizer):
                try:
                    data = _join_h264(pending.parts)
                except DepacketizeError:
                    complete = False
            else:
                data = b"".join(p.data for p in pending.parts)
            if isinstance(self.depacketizer, H264Depacketizer):
                key = complete and _has_idr(data)
        return Frame(pending.timestamp, data, key and complete, complete, sets, pending.first_seq)


def _join_h264(parts: Iterable[PayloadPart]) -> bytes:
    """Join H.264 parts into AVC form, rebuilding each FU-A NAL unit with its length prefix.

    A part is either AVC data (a 4-byte length whose first byte is 0: no NAL unit in one
    packet reaches 16 MiB) or an FU-A fragment tagged 1 (start), 2 (middle) or 3 (end)."""
    out: list[bytes] = []
    fragments: list[bytes] | None = None
    for part in parts:
        tag = part.data[:1]
        if tag == _FU_START:
            if fragments is not None:
                raise DepacketizeError("H.264 FU-A started before the previous one ended")
            fragments = [part.data[1:]]
        elif tag in (_FU_MIDDLE, _FU_END):
            if fragments is None:
                raise DepacketizeError("H.264 FU-A continuation without its start")
            fragments.append(part.data[1:])
            if tag == _FU_END:
                unit = b"".join(fragments)
                out.append(struct.pack("!I", len(unit)) + unit)
                fragments = None
        else:
            if fragments is not None:
                raise DepacketizeError("H.264 FU-A interrupted before its end fragment")
            out.append(part.data)
    if fragments is not None:
        raise DepacketizeError("H.264 FU-A without its end fragment")
    return b"".join(out)


def _has_idr(avc: bytes) -> bool:
    pos = 0
    while pos + 4 < len(avc):
        size = struct.unpack_from("!I", avc, pos)[0]
        if avc[pos + 4] & 0x1F == 5:
            return True
        pos += 4 + size
    return False


def h264_dimensions(sps: bytes) -> tuple[int, int]:
    """Width and height coded in an H.264 sequence parameter set, cropping applied
    (:func:`salon.media.h264.sps_dimensions`). Raises :class:`DepacketizeError` on a malformed
    SPS."""
    try:
        return sps_dimensions(sps)
    except ValueError as exc:
        raise DepacketizeError(str(exc)) from None


def avcc_record(parameter_sets: Iterable[bytes]) -> bytes | None:
    """The ``avcC`` record (ISO/IEC 14496-15 §5.2.4.1) of the last SPS and PPS seen, or None."""
    sps = pps = None
    for unit in parameter_sets:
        if unit and unit[0] & 0x1F == 7 and len(unit) >= 4:
            sps = unit
        elif unit and unit[0] & 0x1F == 8:
            pps = unit
    if sps is None or pps is None:
        return None
    return (
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1])
        + struct.pack("!H", len(sps))
        + sps
        + b"\x01"
        + struct.pack("!H", len(pps))
        + pps
    )
