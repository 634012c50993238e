"""What an incoming UDP datagram on a media port can be (RFC 7983 §7), checked before use.

A media worker's UDP ports are reachable by anyone: every datagram is classified here, in
the socket callback, before it may reach aioice (STUN), aiortc's DTLS reader or the SRTP
path, and anything that cannot be a valid datagram of those protocols is dropped (counted,
never logged per packet: see :class:`~salon.media.transport.WebRtcTransport`).

By the first byte (RFC 7983 §7), with the minimum each protocol needs:

=========  ===========  ====================================================================
first      protocol     accepted when
=========  ===========  ====================================================================
0..3       STUN         ≥ 20 bytes, the magic cookie, a length field (multiple of 4) that
                        matches the datagram (RFC 8489 §5-6)
20..63     DTLS         ≥ 13 bytes (a record header), version major byte 0xFE (RFC 6347 §4.1)
128..191   RTP / RTCP   ≥ 12 bytes (the RTP fixed header; an SRTCP packet is longer);
                        RTCP when the second byte is 192..223 (RFC 5761 §4)
other      —            never (ZRTP, TURN channels and QUIC are not used by the SFU)
=========  ===========  ====================================================================

Datagrams longer than :data:`MAX_DATAGRAM` are dropped too: no legitimate STUN, DTLS or SRTP
datagram of a WebRTC peer comes near it (browsers and aiortc stay under a 1500-byte MTU).
:func:`classify_datagram` is pure and never raises.
"""

from __future__ import annotations

import enum

__all__ = ["MAX_DATAGRAM", "Datagram", "classify_datagram"]

MAX_DATAGRAM = 4096
"""Longest datagram accepted (bytes); longer ones are dropped as ``OVERSIZED``."""

_STUN_COOKIE = b"\x21\x12\xa4\x42"


class Datagram(enum.Enum):
    """The kind of an incoming datagram; the ``DROP_*`` kinds name why it was dropped."""

    STUN = "stun"
    DTLS = "dtls"
    RTP = "rtp"
    RTCP = "rtcp"
    EMPTY = "empty"
    """Zero bytes."""
    OVERSIZED = "oversized"
    """Longer than :data:`MAX_DATAGRAM`."""
    MALFORMED = "malformed"
    """A STUN, DTLS, RTP or RTCP first byte, but too short or inconsistent to be one."""
    UNKNOWN = "unknown"
    """A first byte of no protocol the SFU speaks."""

    @property
    def valid(self) -> bool:
        return self in _VALID


_VALID = frozenset({Datagram.STUN, Datagram.DTLS, Datagram.RTP, Datagram.RTCP})


def classify_datagram(data: bytes) -> Datagram:
    """The kind of ``data`` (RFC 7983 §7 plus each protocol's minimal header check)."""
    size = len(data)
    if size == 0:
        return Datagram.EMPTY
    if size > MAX_DATAGRAM:
        return Datagram.OVERSIZED
    first = data[0]
    if 127 < first < 192:
        if size < 12:
            return Datagram.MALFORMED
        return Datagram.RTCP if 191 < data[1] < 224 else Datagram.RTP
    if 19 < first < 64:
        if size < 13 or data[1] != 0xFE:
            return Datagram.MALFORMED
        return Datagram.DTLS
    if first < 4:
        if size < 20 or data[4:8] != _STUN_COOKIE:
            return Datagram.MALFORMED
        length = (data[2] << 8) | data[3]
        if length % 4 or length + 20 != size:
            return Datagram.MALFORMED
        return Datagram.STUN
    return Datagram.UNKNOWN
