"""Fast RTP helpers for the forwarding path: parse, rewrite and inspect packets with :mod:`struct`.

The SFU never decodes media. Per packet and per subscriber it only needs the fixed header
(RFC 3550 §5.1), the header-extension block (RFC 8285), a glance at the first payload bytes (is
this a key frame?) and a new header in front of the unchanged payload. aiortc's
``RtpPacket.parse`` + ``serialize`` costs about 10 µs per packet because it builds objects for
everything; the functions here cost about 1 µs because they work on offsets into the received
``bytes`` and build the output with one ``struct.pack`` and one concatenation.

The model is "parse once, rewrite many": :func:`parse_rtp_header` returns an :class:`RtpHeader`
(a ``NamedTuple`` of the fixed fields plus offsets), and :func:`rewrite_rtp` takes the original
bytes and that header and produces the packet for one subscriber::

    header = parse_rtp_header(data)
    out = rewrite_rtp(data, header, ssrc=..., payload_type=..., sequence_number=...,
                      timestamp=..., extensions=consumer_block)

Layout reminders (RFC 3550 §5.1, RFC 8285 §4)::

     0                   1                   2                   3
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |                             SSRC                              |
    |                  CSRC list (CC x 32 bits)                     |
    |  profile (0xBEDE or 0x100X)   |   length (32-bit words)       |   <- only if X
    |                  extension elements + padding                 |
    |                  payload ...          | padding | pad count   |   <- padding only if P

Also here: RFC 5761 RTP/RTCP demultiplexing (:func:`is_rtcp`), key-frame detection for VP8
(RFC 7741 §4.2-4.3) and H.264 (RFC 6184 §5.6-5.8), the client-to-mixer audio level (RFC 6464),
abs-send-time (webrtc.org "abs-send-time" extension, 6.18 fixed point seconds) and RTX
retransmission packets (RFC 4588 §4).

Nothing on the per-packet path allocates beyond its result, logs or builds dataclasses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

__all__ = [
    "KEYFRAME_DETECTORS",
    "RTP_HEADER_SIZE",
    "RtpHeader",
    "abs_send_time",
    "build_rtp",
    "encode_one_byte_extensions",
    "extension_value_offset",
    "find_header_extension",
    "is_h264_keyframe",
    "is_rtcp",
    "is_vp8_keyframe",
    "iter_header_extensions",
    "parse_audio_level",
    "parse_rtp_header",
    "patch_extension",
    "rewrite_rtp",
    "rtp_payload",
    "unwrap_rtx",
    "wrap_rtx",
]

RTP_HEADER_SIZE = 12
"""Size in bytes of the fixed RTP header (no CSRCs, no extension)."""

_FIXED = struct.Struct("!BBHII")
_FIXED_PACK = _FIXED.pack
_FIXED_UNPACK_FROM = _FIXED.unpack_from
_FIXED_EXT_UNPACK_FROM = struct.Struct("!BBHIIxxH").unpack_from  # fixed header + extension length
_EXT_HEADER = struct.Struct("!HH")
_EXT_HEADER_UNPACK_FROM = _EXT_HEADER.unpack_from
_OSN = struct.Struct("!H")
_OSN_PACK = _OSN.pack

_ONE_BYTE_PROFILE = 0xBEDE
_TWO_BYTE_PROFILE = 0x1000  # 0x100X: the low 4 "appbits" are application-defined (RFC 8285 §4.3)


_new_tuple = tuple.__new__  # builds a NamedTuple without its keyword-handling __new__


class RtpHeader(NamedTuple):
    """The parsed header of one RTP packet, as offsets into the original bytes.

    ``payload_offset`` is where the payload starts (after CSRCs and the extension block); the
    payload runs to the end of the packet, including padding when the P bit is set.
    ``extension_offset`` is where the extension *elements* start (just after the 4-byte
    profile/length word, so the profile is at ``extension_offset - 4``) and
    ``extension_length`` is their length in bytes (a multiple of 4). Both are 0 when the packet
    has no header extension block.
    """

    marker: bool
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload_offset: int
    extension_offset: int
    extension_length: int


def is_rtcp(data: bytes) -> bool:
    """Tell RTCP from RTP on a multiplexed port (RFC 5761 §4).

    RTCP packet types 192..223 occupy the second byte where RTP has marker + payload type, and
    RTP payload types 64..95 (which would collide) are not used.
    """
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp_header(data: bytes) -> RtpHeader:
    """Parse the fixed header of an RTP packet and locate its extension block and payload.

    Raises :class:`ValueError` naming the problem when the packet is shorter than 12 bytes,
    is not version 2, or its CSRC list, extension block or padding run past its end.
    """
    length = len(data)
    if length >= 16:
        # Fast path for what browsers send: no padding, no CSRCs, with or without an extension.
        b0, b1, sequence_number, timestamp, ssrc, words = _FIXED_EXT_UNPACK_FROM(data)
        if b0 == 0x90:
            pos = 16 + (words << 2)
            if pos <= length:
                return _new_tuple(
                    RtpHeader, (b1 > 127, b1 & 0x7F, sequence_number, timestamp, ssrc, pos, 16, words << 2)
                )
        elif b0 == 0x80:
            return _new_tuple(RtpHeader, (b1 > 127, b1 & 0x7F, sequence_number, timestamp, ssrc, 12, 0, 0))
    elif length < 12:
        raise ValueError(f"RTP packet is {length} bytes, shorter than the 12-byte fixed header")
    b0, b1, sequence_number, timestamp, ssrc = _FIXED_UNPACK_FROM(data)
    if b0 >> 6 != 2:
        raise ValueError(f"RTP packet has version {b0 >> 6}, expected 2")
    pos = 12 + ((b0 & 0x0F) << 2)
    if pos > length:
        raise ValueError(
            f"RTP packet is truncated: {b0 & 0x0F} CSRCs need {pos} header bytes, packet has {length}"
        )
    extension_offset = 0
    extension_length = 0
    if b0 & 0x10:
        if pos + 4 > length:
            raise ValueError(
                f"RTP packet is truncated: extension header needs {pos + 4} bytes, packet has {length}"
            )
        extension_length = _EXT_HEADER_UNPACK_FROM(data, pos)[1] << 2
        extension_offset = pos + 4
        pos = extension_offset + extension_length
        if pos > length:
            raise ValueError(
                f"RTP packet is truncated: {extension_length}-byte header extension ends at {pos}, "
                f"packet has {length} bytes"
            )
    if b0 & 0x20:
        padding = data[-1]
        if padding == 0 or padding > length - pos:
            raise ValueError(
                f"RTP packet padding length {padding} is invalid for a {length - pos}-byte payload"
            )
    return _new_tuple(
        RtpHeader,
        (b1 > 127, b1 & 0x7F, sequence_number, timestamp, ssrc, pos, extension_offset, extension_length),
    )


def rtp_payload(data: bytes, header: RtpHeader) -> bytes:
    """Return the payload of a parsed packet without its padding (RFC 3550 §5.1, P bit)."""
    if data[0] & 0x20:
        return data[header.payload_offset : len(data) - data[-1]]
    return data[header.payload_offset :]


# --- Header extensions (RFC 8285) -------------------------------------------------------------


def iter_header_extensions(data: bytes, header: RtpHeader) -> Iterator[tuple[int, bytes]]:
    """Yield ``(id, value)`` for each element of the packet's header-extension block.

    Handles the one-byte (profile 0xBEDE, RFC 8285 §4.2) and two-byte (profile 0x100X, §4.3)
    forms; padding bytes are skipped, and in the one-byte form ID 15 ends the walk as the RFC
    requires. A block with another profile yields nothing. A truncated element raises
    :class:`ValueError`.
    """
    start = header.extension_offset
    if not start:
        return
    end = start + header.extension_length
    profile = _EXT_HEADER_UNPACK_FROM(data, start - 4)[0]
    pos = start
    if profile == _ONE_BYTE_PROFILE:
        while pos < end:
            byte = data[pos]
            if byte == 0:
                pos += 1
                continue
            ext_id = byte >> 4
            if ext_id == 15:
                return
            value_end = pos + 1 + (byte & 0x0F) + 1
            if value_end > end:
                raise ValueError(
                    f"RTP one-byte header extension {ext_id} is truncated: needs {value_end - start} "
                    f"bytes, block has {end - start}"
                )
            yield ext_id, data[pos + 1 : value_end]
            pos = value_end
    elif profile & 0xFFF0 == _TWO_BYTE_PROFILE:
        while pos < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise ValueError(f"RTP two-byte header extension {ext_id} is truncated: no length byte")
            value_end = pos + 2 + data[pos + 1]
            if value_end > end:
                raise ValueError(
                    f"RTP two-byte header extension {ext_id} is truncated: needs {value_end - start} "
                    f"bytes, block has {end - start}"
                )
            yield ext_id, data[pos + 2 : value_end]
            pos = value_end


def find_header_extension(data: bytes, header: RtpHeader, ext_id: int) -> bytes | None:
    """Return the value of header extension ``ext_id``, or None if the packet does not carry it.

    The one-byte form (what browsers send) is walked inline, without a generator.
    """
    start = header.extension_offset
    if not start:
        return None
    if data[start - 4] != 0xBE or data[start - 3] != 0xDE:
        for found_id, value in iter_header_extensions(data, header):
            if found_id == ext_id:
                return value
        return None
    end = start + header.extension_length
    pos = start
    while pos < end:
        byte = data[pos]
        if byte == 0:
            pos += 1
            continue
        found = byte >> 4
        if found == 15:
            return None
        value_end = pos + (byte & 0x0F) + 2
        if value_end > end:
            raise ValueError(f"RTP one-byte header extension {found} is truncated")
        if found == ext_id:
            return data[pos + 1 : value_end]
        pos = value_end
    return None


def encode_one_byte_extensions(items: Sequence[tuple[int, bytes]]) -> bytes:
    """Encode a complete one-byte header-extension block: 0xBEDE profile, length, elements, padding.

    Meant to be built once per subscriber (mid, and a placeholder for abs-send-time or the
    audio level that :func:`patch_extension` fills per packet) and passed to
    :func:`rewrite_rtp`. An empty
    ``items`` gives ``b""`` (no extension block). IDs must be 1..14 and values 1..16 bytes
    (RFC 8285 §4.2), otherwise :class:`ValueError`.
    """
    if not items:
        return b""
    body = bytearray()
    for ext_id, value in items:
        if not 1 <= ext_id <= 14:
            raise ValueError(f"one-byte header extension ID must be 1..14, got {ext_id}")
        if not 1 <= len(value) <= 16:
            raise ValueError(
                f"one-byte header extension {ext_id} value must be 1..16 bytes, got {len(value)}"
            )
        body.append((ext_id << 4) | (len(value) - 1))
        body += value
    body += b"\x00" * (-len(body) % 4)
    return _EXT_HEADER.pack(_ONE_BYTE_PROFILE, len(body) >> 2) + bytes(body)


def extension_value_offset(block: bytes, ext_id: int) -> int:
    """Return the offset of extension ``ext_id``'s value inside a block from
    :func:`encode_one_byte_extensions`, for :func:`patch_extension`. Raises :class:`KeyError`
    if the block does not contain it."""
    pos = 4
    end = len(block)
    while pos < end:
        byte = block[pos]
        if byte == 0:
            pos += 1
            continue
        if byte >> 4 == ext_id:
            return pos + 1
        pos += (byte & 0x0F) + 2
    raise KeyError(ext_id)


def patch_extension(block: bytes, offset: int, value: bytes) -> bytes:
    """Return ``block`` with ``value`` written at ``offset`` (from :func:`extension_value_offset`).

    Used to put a fresh :func:`abs_send_time` (or a packet's audio level) into a prebuilt block.
    """
    return block[:offset] + value + block[offset + len(value) :]


def abs_send_time(now: float) -> bytes:
    """Encode a time in seconds as the 3-byte abs-send-time value: 6.18 fixed point, wrapping
    every 64 s (http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time)."""
    return (int(now * 262144.0) & 0xFFFFFF).to_bytes(3, "big")


def parse_audio_level(ext_value: bytes | memoryview) -> tuple[bool, int]:
    """Decode the client-to-mixer audio level (RFC 6464 §3): ``(voice_activity, level)``.

    ``level`` is in -dBov, 0 (loudest) to 127 (silence). Raises :class:`ValueError` on an
    empty value.
    """
    if not ext_value:
        raise ValueError("ssrc-audio-level extension value is empty")
    byte = ext_value[0]
    return byte > 127, byte & 0x7F


# --- Building packets -------------------------------------------------------------------------


def rewrite_rtp(
    data: bytes,
    header: RtpHeader,
    *,
    ssrc: int,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    extensions: bytes = b"",
) -> bytes:
    """Build the packet for one subscriber from a received packet.

    The result has a fixed header with the given fields (marker and P bit kept from ``data``,
    no CSRCs), then ``extensions`` (a complete block including its profile word, as built by
    :func:`encode_one_byte_extensions`, or ``b""`` for none), then the original payload
    including any padding. The original extension block and CSRCs are dropped.
    """
    if extensions:
        first = 0x90 | (data[0] & 0x20)
    else:
        first = 0x80 | (data[0] & 0x20)
    return (
        _FIXED_PACK(first, (data[1] & 0x80) | payload_type, sequence_number, timestamp, ssrc)
        + extensions
        + data[header.payload_offset :]
    )


def build_rtp(
    *,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    payload: bytes,
    marker: bool = False,
    extensions: bytes = b"",
    padding: int = 0,
) -> bytes:
    """Build an RTP packet from scratch (no CSRCs). ``padding`` adds that many padding bytes
    (1..255, the last one holding the count) and sets the P bit. Used for tests and probes."""
    if not 0 <= padding <= 255:
        raise ValueError(f"RTP padding must be 0..255 bytes, got {padding}")
    first = 0x80 | (0x10 if extensions else 0) | (0x20 if padding else 0)
    pad = b"\x00" * (padding - 1) + bytes([padding]) if padding else b""
    return (
        _FIXED_PACK(first, (0x80 if marker else 0) | payload_type, sequence_number, timestamp, ssrc)
        + extensions
        + payload
        + pad
    )


# --- RTX (RFC 4588) ---------------------------------------------------------------------------


def unwrap_rtx(data: bytes, header: RtpHeader) -> tuple[int, bytes]:
    """Split an RTX packet's payload into the original sequence number and the original payload.

    RFC 4588 §4: the RTX payload is the 2-byte OSN followed by the original payload. The RTX
    packet's own padding is removed. Raises :class:`ValueError` when there is no OSN, which is
    the case for the padding-only packets browsers send on the RTX stream to probe bandwidth.
    """
    offset = header.payload_offset
    end = len(data) - data[-1] if data[0] & 0x20 else len(data)
    if end - offset < 2:
        raise ValueError(f"RTX packet has {max(end - offset, 0)} payload bytes, no original sequence number")
    return (data[offset] << 8) | data[offset + 1], data[offset + 2 : end]


def wrap_rtx(
    data: bytes,
    header: RtpHeader,
    *,
    ssrc: int,
    payload_type: int,
    sequence_number: int,
    timestamp: int,
    original_sequence_number: int,
    extensions: bytes = b"",
) -> bytes:
    """Build an RTX retransmission (RFC 4588 §4) of the packet ``data``.

    The RTX packet has the RTX stream's ``ssrc``, ``payload_type`` and ``sequence_number``, the
    ``timestamp`` and marker of the packet as the receiver knew it, then ``extensions``, then
    ``original_sequence_number`` (the sequence number the receiver NACKed) and the original
    payload. When retransmitting from the publisher's buffer to a subscriber, ``timestamp`` and
    ``original_sequence_number`` are the subscriber-side (rewritten) values. The P bit and
    padding of ``data`` are kept at the end.
    """
    first = (0x90 if extensions else 0x80) | (data[0] & 0x20)
    return (
        _FIXED_PACK(first, (data[1] & 0x80) | payload_type, sequence_number, timestamp, ssrc)
        + extensions
        + _OSN_PACK(original_sequence_number)
        + data[header.payload_offset :]
    )


# --- Key-frame detection ----------------------------------------------------------------------


def is_vp8_keyframe(payload: bytes | memoryview) -> bool:
    """Tell whether an RTP VP8 payload is the first packet of a key frame (RFC 7741).

    That is: the payload descriptor (§4.2) has S=1 (start of a partition) and PID=0 (first
    partition), and the VP8 payload header that follows (§4.3) has P=0 (inverse key frame
    flag). The optional descriptor extension bytes are skipped: X → I/L/T/K byte, I → 7- or
    15-bit PictureID (M bit), L → TL0PICIDX, T or K → TID/Y/KEYIDX.
    """
    length = len(payload)
    if length < 1:
        return False
    first = payload[0]
    if first & 0x17 != 0x10:  # S must be 1 and PID must be 0
        return False
    pos = 1
    if first & 0x80:  # X: extended control bits present
        if length < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: PictureID present
            if pos >= length:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX present
            pos += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX byte present
            pos += 1
    if pos >= length:
        return False
    return not payload[pos] & 0x01


_H264_KEY_NAL_TYPES = frozenset((5, 7))  # IDR slice, sequence parameter set


def is_h264_keyframe(payload: bytes | memoryview) -> bool:
    """Tell whether an RTP H.264 payload starts (or carries) a key frame (RFC 6184 §5.6-5.8).

    True for a single NAL unit of type 5 (IDR) or 7 (SPS), a STAP-A (type 24) aggregating one
    of those, and the first fragment (S=1) of an FU-A (type 28) of one of those.
    """
    length = len(payload)
    if length < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in _H264_KEY_NAL_TYPES:
        return True
    if nal_type == 28:
        return length >= 2 and payload[1] & 0x80 != 0 and (payload[1] & 0x1F) in _H264_KEY_NAL_TYPES
    if nal_type == 24:
        pos = 1
        while pos + 2 < length:
            size = (payload[pos] << 8) | payload[pos + 1]
            if size == 0:
                return False
            if (payload[pos + 2] & 0x1F) in _H264_KEY_NAL_TYPES:
                return True
            pos += 2 + size
    return False


KEYFRAME_DETECTORS: dict[str, Callable[[bytes | memoryview], bool]] = {
    "vp8": is_vp8_keyframe,
    "h264": is_h264_keyframe,
}
"""Key-frame detector by lower-case codec name (the MIME subtype, e.g. ``"vp8"``). Each takes the
RTP payload (``bytes`` or a ``memoryview`` slice, to avoid a copy) and tells whether it is the
first packet of a key frame."""
