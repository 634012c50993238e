"""RTCP for the SFU: parse compound packets into small typed records and build the ones we send.

An RTCP datagram is a *compound* packet: several RTCP packets back to back, each starting
with a 4-byte common header (RFC 3550 §6.4)::

    |V=2|P|  count  |      PT       |     length (32-bit words - 1)   |

:func:`parse_rtcp` walks that chain and returns one frozen dataclass per packet it
understands:

* :class:`SenderReport` (PT 200) and :class:`ReceiverReport` (PT 201) with their
  :class:`ReportBlock` s (RFC 3550 §6.4.1-6.4.2);
* :class:`SourceDescription` (PT 202, RFC 3550 §6.5) with its items;
* :class:`Bye` (PT 203, RFC 3550 §6.6);
* :class:`Nack`, the generic NACK (RTPFB PT 205 FMT 1, RFC 4585 §6.2.1), with its PID+BLP
  pairs expanded into sequence numbers;
* :class:`Pli` (PSFB PT 206 FMT 1, RFC 4585 §6.3.1) and :class:`Fir` (PSFB FMT 4,
  RFC 5104 §4.3.1) with its FCI entries;
* :class:`Remb` (PSFB FMT 15 with the "REMB" identifier, draft-alvestrand-rmcat-remb-03);
* :class:`~salon.media.twcc.TransportFeedback`, transport-wide congestion control feedback
  (RTPFB FMT 15, draft-holmer-rmcat-transport-wide-cc-extensions-01), parsed by
  :mod:`salon.media.twcc`.

Everything else is skipped without an exception: XR, APP, other feedback formats. A header or
payload whose length does not add up raises :class:`ValueError` saying which packet and why.

The ``build_*`` functions return ready-to-send bytes; concatenate them for a compound packet.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from salon.media.twcc import TransportFeedback, parse_transport_feedback

__all__ = [
    "RTCP_BYE",
    "RTCP_PSFB",
    "RTCP_RR",
    "RTCP_RTPFB",
    "RTCP_SDES",
    "RTCP_SR",
    "Bye",
    "Fir",
    "FirEntry",
    "Nack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "build_bye",
    "build_fir",
    "build_nack",
    "build_pli",
    "build_receiver_report",
    "build_remb",
    "build_sdes",
    "build_sender_report",
    "compact_ntp",
    "ntp_from_unix",
    "ntp_now",
    "parse_rtcp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_RTPFB = 205
RTCP_PSFB = 206

_RTPFB_NACK = 1
_RTPFB_TRANSPORT_CC = 15
_PSFB_PLI = 1
_PSFB_FIR = 4
_PSFB_AFB = 15  # application layer feedback; REMB is one

_SDES_CNAME = 1
_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01

_HEADER = struct.Struct("!BBH")
_SSRC = struct.Struct("!I")
_TWO_SSRCS = struct.Struct("!II")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc + NTP, RTP timestamp, packet and octet counts
_REPORT_BLOCK = struct.Struct("!IIIIII")  # ssrc, fraction|lost, ext. highest seq, jitter, lsr, dlsr
_PID_BLP = struct.Struct("!HH")
_FIR_ENTRY = struct.Struct("!IB3x")
_REMB_HEADER = struct.Struct("!4sBBH")


# --- Parsed packets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block of an SR or RR (RFC 3550 §6.4.1)."""

    ssrc: int
    """The source this block reports on."""
    fraction_lost: int
    """Fraction of packets lost since the previous report, as an 8-bit fixed point (/256)."""
    packets_lost: int
    """Cumulative number of packets lost, a signed 24-bit value."""
    highest_sequence: int
    """Extended highest sequence number received (cycles << 16 | seq)."""
    jitter: int
    """Interarrival jitter in timestamp units."""
    lsr: int
    """Middle 32 bits of the NTP timestamp of the last SR received from this source, or 0."""
    dlsr: int
    """Delay since that SR, in 1/65536 seconds."""


@dataclass(frozen=True, slots=True)
class SenderReport:
    """A sender report, PT 200 (RFC 3550 §6.4.1)."""

    ssrc: int
    ntp_timestamp: int
    """64-bit NTP timestamp (seconds since 1900 << 32 | fraction) of :attr:`rtp_timestamp`."""
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """A receiver report, PT 201 (RFC 3550 §6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """The items describing one source in an SDES packet; ``items`` are ``(type, value)``."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> str | None:
        """The CNAME item (type 1) decoded as UTF-8, if present."""
        for item_type, value in self.items:
            if item_type == _SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """A source description, PT 202 (RFC 3550 §6.5)."""

    chunks: tuple[SdesChunk, ...] = ()


@dataclass(frozen=True, slots=True)
class Bye:
    """A goodbye, PT 203 (RFC 3550 §6.6)."""

    ssrcs: tuple[int, ...]
    reason: bytes = b""


@dataclass(frozen=True, slots=True)
class Nack:
    """A generic NACK, RTPFB FMT 1 (RFC 4585 §6.2.1), with PID+BLP expanded into ``seqs``."""

    sender_ssrc: int
    media_ssrc: int
    """The stream whose packets are missing."""
    seqs: tuple[int, ...]
    """The missing sequence numbers, in the order of the FCI entries (each PID then its BLP bits)."""


@dataclass(frozen=True, slots=True)
class Pli:
    """A picture loss indication, PSFB FMT 1 (RFC 4585 §6.3.1): please send a key frame."""

    sender_ssrc: int
    media_ssrc: int


@dataclass(frozen=True, slots=True)
class FirEntry:
    """One FCI entry of a FIR: the stream asked for a key frame and the request's sequence number."""

    ssrc: int
    seq_nr: int


@dataclass(frozen=True, slots=True)
class Fir:
    """A full intra request, PSFB FMT 4 (RFC 5104 §4.3.1).

    The header's ``media_ssrc`` is 0 per the RFC; the streams are in :attr:`entries`.
    """

    sender_ssrc: int
    media_ssrc: int
    entries: tuple[FirEntry, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Remb:
    """A receiver estimated maximum bitrate, PSFB FMT 15 "REMB" (draft-alvestrand-rmcat-remb-03)."""

    sender_ssrc: int
    bitrate: int
    """Estimated total bitrate in bits per second for the listed streams."""
    ssrcs: tuple[int, ...]


RtcpPacket = (
    SenderReport | ReceiverReport | SourceDescription | Bye | Nack | Pli | Fir | Remb | TransportFeedback
)
"""Any RTCP packet :func:`parse_rtcp` returns."""


# --- Parsing ----------------------------------------------------------------------------------


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (already decrypted) into typed packets, in order.

    Unknown packet types and feedback formats are skipped. Raises :class:`ValueError` if the
    data is not a well-formed chain of RTCP packets (bad version, a length running past the
    end, bad padding) or if a known packet's payload does not match its declared contents.
    """
    packets: list[RtcpPacket] = []
    total = len(data)
    pos = 0
    while pos < total:
        if total - pos < 4:
            raise ValueError(
                f"RTCP packet at offset {pos} has {total - pos} bytes, less than a 4-byte header"
            )
        first, packet_type, words = _HEADER.unpack_from(data, pos)
        if first >> 6 != 2:
            raise ValueError(f"RTCP packet at offset {pos} has version {first >> 6}, expected 2")
        start = pos + 4
        end = start + words * 4
        if end > total:
            raise ValueError(
                f"RTCP packet type {packet_type} at offset {pos} declares {end - pos} bytes, "
                f"only {total - pos} remain"
            )
        pos = end
        if first & 0x20:
            if end == start or data[end - 1] == 0 or data[end - 1] > end - start:
                raise ValueError(f"RTCP packet type {packet_type} has invalid padding")
            end -= data[end - 1]
        count = first & 0x1F
        if packet_type == RTCP_RTPFB:
            if count == _RTPFB_NACK:
                packets.append(_parse_nack(data, start, end))
            elif count == _RTPFB_TRANSPORT_CC:
                packets.append(parse_transport_feedback(data, start, end))
            # Other formats: skipped.
        elif packet_type == RTCP_PSFB:
            psfb = _parse_psfb(data, start, end, count)
            if psfb is not None:
                packets.append(psfb)
        elif packet_type == RTCP_RR:
            packets.append(_parse_rr(data, start, end, count))
        elif packet_type == RTCP_SR:
            packets.append(_parse_sr(data, start, end, count))
        elif packet_type == RTCP_SDES:
            packets.append(_parse_sdes(data, start, end, count))
        elif packet_type == RTCP_BYE:
            packets.append(_parse_bye(data, start, end, count))
    return packets


def _parse_report_blocks(data: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    blocks = []
    for _ in range(count):
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, pos)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr))
        pos += 24
    return tuple(blocks)


def _parse_sr(data: bytes, start: int, end: int, count: int) -> SenderReport:
    # Anything after the report blocks is a profile-specific extension (RFC 3550 §6.4.1): ignored.
    needed = 24 + 24 * count
    if end - start < needed:
        raise ValueError(
            f"RTCP sender report with {count} report blocks needs {needed} bytes, has {end - start}"
        )
    ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, start)
    return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _parse_report_blocks(data, start + 24, count))


def _parse_rr(data: bytes, start: int, end: int, count: int) -> ReceiverReport:
    needed = 4 + 24 * count
    if end - start < needed:
        raise ValueError(
            f"RTCP receiver report with {count} report blocks needs {needed} bytes, has {end - start}"
        )
    ssrc = _SSRC.unpack_from(data, start)[0]
    return ReceiverReport(ssrc, _parse_report_blocks(data, start + 4, count))


def _parse_sdes(data: bytes, start: int, end: int, count: int) -> SourceDescription:
    chunks = []
    pos = start
    for _ in range(count):
        if end - pos < 4:
            raise ValueError(f"RTCP SDES chunk at offset {pos} is truncated before its SSRC")
        ssrc = _SSRC.unpack_from(data, pos)[0]
        pos += 4
        items = []
        while True:
            if pos >= end:
                raise ValueError(f"RTCP SDES chunk for SSRC {ssrc} has no terminating null item")
            item_type = data[pos]
            if item_type == 0:
                pos += 4 - (pos - start) % 4  # the null item and padding up to a 32-bit boundary
                break
            if pos + 2 > end or pos + 2 + data[pos + 1] > end:
                raise ValueError(f"RTCP SDES item type {item_type} for SSRC {ssrc} is truncated")
            item_end = pos + 2 + data[pos + 1]
            items.append((item_type, bytes(data[pos + 2 : item_end])))
            pos = item_end
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return SourceDescription(tuple(chunks))


def _parse_bye(data: bytes, start: int, end: int, count: int) -> Bye:
    needed = 4 * count
    if end - start < needed:
        raise ValueError(f"RTCP BYE with {count} SSRCs needs {needed} bytes, has {end - start}")
    ssrcs = struct.unpack_from(f"!{count}I", data, start)
    reason = b""
    pos = start + needed
    if pos < end:
        reason_end = pos + 1 + data[pos]
        if reason_end > end:
            raise ValueError(f"RTCP BYE reason of {data[pos]} bytes runs past the packet")
        reason = bytes(data[pos + 1 : reason_end])
    return Bye(tuple(ssrcs), reason)


def _parse_nack(data: bytes, start: int, end: int) -> Nack:
    length = end - start
    if length < 12 or length % 4:
        raise ValueError(
            f"RTCP generic NACK payload is {length} bytes; needs 8 bytes of SSRCs plus 4-byte PID/BLP entries"
        )
    sender_ssrc, media_ssrc = _TWO_SSRCS.unpack_from(data, start)
    seqs: list[int] = []
    for pos in range(start + 8, end, 4):
        pid, blp = _PID_BLP.unpack_from(data, pos)
        seqs.append(pid)
        bit = 0
        while blp:
            if blp & 1:
                seqs.append((pid + bit + 1) & 0xFFFF)
            blp >>= 1
            bit += 1
    return Nack(sender_ssrc, media_ssrc, tuple(seqs))


def _parse_psfb(data: bytes, start: int, end: int, fmt: int) -> Pli | Fir | Remb | None:
    length = end - start
    if fmt == _PSFB_PLI:
        if length < 8:
            raise ValueError(f"RTCP PLI payload is {length} bytes, needs 8")
        return Pli(*_TWO_SSRCS.unpack_from(data, start))
    if fmt == _PSFB_FIR:
        if length < 8 or (length - 8) % 8:
            raise ValueError(
                f"RTCP FIR payload is {length} bytes; needs 8 bytes of SSRCs plus 8-byte FCI entries"
            )
        sender_ssrc, media_ssrc = _TWO_SSRCS.unpack_from(data, start)
        entries = tuple(FirEntry(*_FIR_ENTRY.unpack_from(data, pos)) for pos in range(start + 8, end, 8))
        return Fir(sender_ssrc, media_ssrc, entries)
    if fmt == _PSFB_AFB and length >= 12 and data[start + 8 : start + 12] == b"REMB":
        if length < 16:
            raise ValueError(f"RTCP REMB payload is {length} bytes, needs at least 16")
        sender_ssrc = _SSRC.unpack_from(data, start)[0]
        _, num_ssrcs, exp_mantissa, mantissa_low = _REMB_HEADER.unpack_from(data, start + 8)
        needed = 16 + 4 * num_ssrcs
        if length < needed:
            raise ValueError(f"RTCP REMB with {num_ssrcs} SSRCs needs {needed} bytes, has {length}")
        bitrate = (((exp_mantissa & 0x03) << 16) | mantissa_low) << (exp_mantissa >> 2)
        ssrcs = struct.unpack_from(f"!{num_ssrcs}I", data, start + 16)
        return Remb(sender_ssrc, bitrate, tuple(ssrcs))
    return None


# --- Building ---------------------------------------------------------------------------------


def _header(count: int, packet_type: int, payload_length: int) -> bytes:
    return _HEADER.pack(0x80 | count, packet_type, payload_length // 4)


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Build a picture loss indication asking ``media_ssrc``'s sender for a key frame."""
    return _header(_PSFB_PLI, RTCP_PSFB, 8) + _TWO_SSRCS.pack(sender_ssrc, media_ssrc)


def build_fir(sender_ssrc: int, media_ssrc: int, seq_nr: int) -> bytes:
    """Build a full intra request for ``media_ssrc`` with command sequence number ``seq_nr``.

    Per RFC 5104 §4.3.1 the header's media source is 0 and the target is in the FCI entry;
    increment ``seq_nr`` (mod 256) for each new request.
    """
    return (
        _header(_PSFB_FIR, RTCP_PSFB, 16)
        + _TWO_SSRCS.pack(sender_ssrc, 0)
        + _FIR_ENTRY.pack(media_ssrc, seq_nr & 0xFF)
    )


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> bytes:
    """Build a generic NACK for the missing sequence numbers ``seqs``.

    They are de-duplicated, ordered with 16-bit wrap-around taken into account (relative to the
    first one given, so pass a window of less than 32768), and packed into as few PID+BLP
    entries as possible. Raises :class:`ValueError` if ``seqs`` is empty.
    """
    unique = {seq & 0xFFFF for seq in seqs}
    if not unique:
        raise ValueError("a NACK needs at least one sequence number")
    # Order by signed distance from an arbitrary member, so 65535 comes before 0.
    ref = next(iter(unique))
    ordered = sorted(unique, key=lambda seq: ((seq - ref + 0x8000) & 0xFFFF) - 0x8000)
    fci = bytearray()
    pid = ordered[0]
    blp = 0
    for seq in ordered[1:]:
        distance = (seq - pid - 1) & 0xFFFF
        if distance < 16:
            blp |= 1 << distance
        else:
            fci += _PID_BLP.pack(pid, blp)
            pid = seq
            blp = 0
    fci += _PID_BLP.pack(pid, blp)
    return (
        _header(_RTPFB_NACK, RTCP_RTPFB, 8 + len(fci)) + _TWO_SSRCS.pack(sender_ssrc, media_ssrc) + bytes(fci)
    )


def _pack_report_blocks(blocks: Sequence[ReportBlock]) -> bytes:
    if len(blocks) > 31:
        raise ValueError(f"an RTCP report carries at most 31 report blocks, got {len(blocks)}")
    return b"".join(
        _REPORT_BLOCK.pack(
            b.ssrc,
            ((b.fraction_lost & 0xFF) << 24) | (max(-0x800000, min(b.packets_lost, 0x7FFFFF)) & 0xFFFFFF),
            b.highest_sequence & 0xFFFFFFFF,
            b.jitter & 0xFFFFFFFF,
            b.lsr & 0xFFFFFFFF,
            b.dlsr & 0xFFFFFFFF,
        )
        for b in blocks
    )


def build_receiver_report(ssrc: int, blocks: Sequence[ReportBlock] = ()) -> bytes:
    """Build a receiver report from ``ssrc`` with up to 31 report blocks (``packets_lost`` is
    clamped to the signed 24-bit range)."""
    payload = _SSRC.pack(ssrc) + _pack_report_blocks(blocks)
    return _header(len(blocks), RTCP_RR, len(payload)) + payload


def build_sender_report(
    ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    blocks: Sequence[ReportBlock] = (),
) -> bytes:
    """Build a sender report: ``rtp_timestamp`` corresponds to wall-clock ``ntp_timestamp`` (a
    64-bit NTP value, see :func:`ntp_now`); the counts are since the stream started."""
    payload = _SENDER_INFO.pack(
        ssrc,
        ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
        rtp_timestamp & 0xFFFFFFFF,
        packet_count & 0xFFFFFFFF,
        octet_count & 0xFFFFFFFF,
    ) + _pack_report_blocks(blocks)
    return _header(len(blocks), RTCP_SR, len(payload)) + payload


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    """Build a REMB telling the senders of ``ssrcs`` to stay under ``bitrate`` bits per second.

    The bitrate is encoded as an 18-bit mantissa and 6-bit exponent, so it is rounded down to 18
    significant bits. The header's media source is 0 as the draft requires.
    """
    if bitrate < 0:
        raise ValueError(f"REMB bitrate must be >= 0, got {bitrate}")
    if len(ssrcs) > 255:
        raise ValueError(f"a REMB lists at most 255 SSRCs, got {len(ssrcs)}")
    exponent = 0
    mantissa = bitrate
    while mantissa > 0x3FFFF:
        mantissa >>= 1
        exponent += 1
    if exponent > 63:
        raise ValueError(f"REMB bitrate {bitrate} is too large to encode")
    payload = (
        _TWO_SSRCS.pack(sender_ssrc, 0)
        + _REMB_HEADER.pack(b"REMB", len(ssrcs), (exponent << 2) | (mantissa >> 16), mantissa & 0xFFFF)
        + b"".join(_SSRC.pack(s) for s in ssrcs)
    )
    return _header(_PSFB_AFB, RTCP_PSFB, len(payload)) + payload


def build_sdes(ssrc: int, cname: str) -> bytes:
    """Build an SDES packet with one chunk carrying ``ssrc``'s CNAME (RFC 3550 §6.5.1)."""
    value = cname.encode("utf-8")
    if len(value) > 255:
        raise ValueError(f"SDES CNAME is {len(value)} bytes, at most 255 allowed")
    chunk = _SSRC.pack(ssrc) + bytes((_SDES_CNAME, len(value))) + value + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return _header(1, RTCP_SDES, len(chunk)) + chunk


def build_bye(ssrcs: Sequence[int], reason: bytes = b"") -> bytes:
    """Build a BYE for up to 31 ``ssrcs`` with an optional reason (at most 255 bytes)."""
    if len(ssrcs) > 31:
        raise ValueError(f"a BYE lists at most 31 SSRCs, got {len(ssrcs)}")
    if len(reason) > 255:
        raise ValueError(f"a BYE reason is at most 255 bytes, got {len(reason)}")
    payload = b"".join(_SSRC.pack(s) for s in ssrcs)
    if reason:
        payload += bytes((len(reason),)) + reason
        payload += b"\x00" * (-len(payload) % 4)
    return _header(len(ssrcs), RTCP_BYE, len(payload)) + payload


# --- NTP time ---------------------------------------------------------------------------------


def ntp_from_unix(seconds: float) -> int:
    """Convert a Unix time in seconds to a 64-bit NTP timestamp (32.32 fixed point since 1900)."""
    return int((seconds + _NTP_EPOCH_OFFSET) * 4294967296.0) & 0xFFFFFFFFFFFFFFFF


def ntp_now() -> int:
    """The current wall-clock time as a 64-bit NTP timestamp, for :func:`build_sender_report`."""
    return ntp_from_unix(time.time())


def compact_ntp(ntp_timestamp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp: the form of LSR in report blocks and of
    round-trip-time arithmetic (RFC 3550 §6.4.1)."""
    return (ntp_timestamp >> 16) & 0xFFFFFFFF
