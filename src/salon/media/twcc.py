"""Transport-wide congestion control: the sequence-number extension, the feedback and a send history.

Sans-I/O. draft-holmer-rmcat-transport-wide-cc-extensions-01 defines two things:

* an RTP header extension (URI :data:`TRANSPORT_CC_URI`) carrying a 16-bit sequence number that
  counts every RTP packet sent on the transport, whatever its SSRC
  (:func:`encode_transport_sequence`, :func:`parse_transport_sequence`);
* an RTCP feedback message, RTPFB (PT 205) FMT 15, with which the receiver reports for a range
  of those sequence numbers which packets arrived and when
  (:func:`parse_transport_feedback`, :func:`build_transport_feedback`)::

     0                   1                   2                   3
    |V=2|P|  FMT=15 |    PT=205     |           length              |
    |                     SSRC of packet sender                     |
    |                      SSRC of media source                     |
    |      base sequence number     |      packet status count      |
    |                 reference time                | fb pkt. count |
    |          packet chunk         |         packet chunk          |
    .                          ...                                  .
    |         packet chunk          |  recv delta   |  recv delta   |
    .                          ...                                  .

  Each packet gets a status symbol: 0 not received, 1 received with a small delta (one unsigned
  byte), 2 received with a large or negative delta (two signed bytes), 3 reserved. Symbols are
  packed in 16-bit chunks: a *run-length* chunk (``0 SS LLLLLLLLLLLLL``: 13-bit run of one
  symbol) or a *status vector* chunk (``1 0`` + fourteen 1-bit symbols, or ``1 1`` + seven
  2-bit symbols). Receive deltas are in 250 µs ticks, each relative to the previous received
  packet, the first relative to the reference time (a signed 24-bit count of 64 ms).

:class:`SendHistory` is the sender's side: it remembers, per transport-wide sequence number,
when a packet was sent and how large it was, and turns a feedback message into per-packet
:class:`PacketResult` s (send time, arrival time, size, lost) for the estimator
(:mod:`salon.media.estimator`). Arrival times are in the receiver's clock; only their differences
mean anything.

:class:`FeedbackGenerator` is the receiver's side (toward publishers that negotiated
transport-cc): the transport calls its :meth:`~FeedbackGenerator.recorder` once per received
packet carrying a transport-wide sequence number, and :meth:`~FeedbackGenerator.build` every
:data:`FEEDBACK_INTERVAL` turns what arrived since into feedback messages of bounded size, so
the publisher's own congestion control (Chromium's GCC) sees its uplink.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

__all__ = [
    "FEEDBACK_INTERVAL",
    "MAX_FEEDBACK_PACKETS",
    "MAX_REPORTED_PACKETS",
    "TRANSPORT_CC_URI",
    "FeedbackGenerator",
    "PacketResult",
    "SendHistory",
    "TransportFeedback",
    "build_transport_feedback",
    "encode_transport_sequence",
    "parse_transport_feedback",
    "parse_transport_sequence",
]

TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
"""The header extension's URI in SDP ``a=extmap``."""

_RTCP_RTPFB = 205
_FMT_TRANSPORT_CC = 15

TICK_US = 250
"""One receive-delta tick in microseconds."""
REFERENCE_US = 64_000
"""One reference-time unit in microseconds."""

MAX_REPORTED_PACKETS = 8192
"""Most packets one feedback message may report: senders report far fewer (one message per
~50-100 ms), and the bound keeps a 20-byte message from costing 65,535 iterations."""

_NOT_RECEIVED = 0
_SMALL = 1
_LARGE = 2

_MAX_RUN = 0x1FFF  # 13-bit run length
_FIXED = struct.Struct("!IIHHI")  # sender ssrc, media ssrc, base seq, status count, ref|fb count
_U16 = struct.Struct("!H")
_I16 = struct.Struct("!h")
_HEADER = struct.Struct("!BBH")


def encode_transport_sequence(sequence: int) -> bytes:
    """The 2-byte value of the transport-wide sequence-number header extension."""
    return (sequence & 0xFFFF).to_bytes(2, "big")


def parse_transport_sequence(value: bytes | memoryview) -> int:
    """Read the extension value written by :func:`encode_transport_sequence`.

    Raises :class:`ValueError` when the value is not 2 bytes long.
    """
    if len(value) != 2:
        raise ValueError(f"transport-wide sequence number extension is {len(value)} bytes, expected 2")
    return (value[0] << 8) | value[1]


@dataclass(frozen=True, slots=True)
class TransportFeedback:
    """A parsed transport-cc feedback message.

    ``deltas`` has one entry per reported packet, starting at ``base_sequence``: the receive
    delta in 250 µs ticks, or ``None`` for a packet not received.
    """

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    reference_time: int
    """Signed, in 64 ms units of the receiver's clock."""
    feedback_count: int
    """8-bit counter of feedback messages sent, to detect lost feedback."""
    deltas: tuple[int | None, ...]

    def packets(self) -> Iterator[tuple[int, int | None]]:
        """Yield ``(sequence, arrival_us)`` per reported packet, ``arrival_us`` being ``None``
        for a lost packet, otherwise microseconds in the receiver's clock."""
        arrival = self.reference_time * REFERENCE_US
        seq = self.base_sequence
        for delta in self.deltas:
            if delta is None:
                yield seq, None
            else:
                arrival += delta * TICK_US
                yield seq, arrival
            seq = (seq + 1) & 0xFFFF


def parse_transport_feedback(
    data: bytes | memoryview, start: int = 0, end: int | None = None
) -> TransportFeedback:
    """Parse the payload of one RTPFB FMT 15 packet: ``data[start:end]`` is everything after the
    4-byte common header (padding already removed; trailing zero bytes after the deltas are
    allowed).

    Raises :class:`ValueError` naming the problem when chunks or deltas run past the end, a
    reserved symbol appears or more than :data:`MAX_REPORTED_PACKETS` packets are reported.
    """
    if end is None:
        end = len(data)
    if end - start < 16:
        raise ValueError(f"RTCP transport-cc feedback is {end - start} bytes, needs at least 16")
    sender_ssrc, media_ssrc, base, count, ref_word = _FIXED.unpack_from(data, start)
    if count > MAX_REPORTED_PACKETS:
        raise ValueError(
            f"RTCP transport-cc feedback reports {count} packets, at most {MAX_REPORTED_PACKETS} accepted"
        )
    reference = ref_word >> 8
    if reference & 0x800000:
        reference -= 0x1000000
    symbols: list[int] = []
    pos = start + 16
    while len(symbols) < count:
        if pos + 2 > end:
            raise ValueError(
                f"RTCP transport-cc feedback declares {count} packets, chunks end after {len(symbols)}"
            )
        chunk = (data[pos] << 8) | data[pos + 1]
        pos += 2
        remaining = count - len(symbols)
        if not chunk & 0x8000:
            symbol = (chunk >> 13) & 0x3
            run = chunk & _MAX_RUN
            if run == 0:
                raise ValueError("RTCP transport-cc run-length chunk with a run of 0")
            symbols.extend([symbol] * min(run, remaining))
        elif chunk & 0x4000:
            symbols.extend(((chunk >> shift) & 0x3) for shift in range(12, -1, -2)[:remaining])
        else:
            symbols.extend(((chunk >> shift) & 0x1) for shift in range(13, -1, -1)[:remaining])
    deltas: list[int | None] = []
    for symbol in symbols:
        if symbol == _NOT_RECEIVED:
            deltas.append(None)
        elif symbol == _SMALL:
            if pos + 1 > end:
                raise ValueError("RTCP transport-cc feedback is truncated in its receive deltas")
            deltas.append(data[pos])
            pos += 1
        elif symbol == _LARGE:
            if pos + 2 > end:
                raise ValueError("RTCP transport-cc feedback is truncated in its receive deltas")
            deltas.append(_I16.unpack_from(data, pos)[0])
            pos += 2
        else:
            raise ValueError("RTCP transport-cc feedback uses the reserved status symbol 3")
    return TransportFeedback(sender_ssrc, media_ssrc, base, reference, ref_word & 0xFF, tuple(deltas))


def _encode_chunks(symbols: Sequence[int]) -> bytes:
    """Pack status symbols into chunks: runs of 14 or more as run-length, otherwise one-bit
    vectors where only 0/1 occur, two-bit vectors of seven symbols where a 2 occurs."""
    out = bytearray()
    n = len(symbols)
    i = 0
    while i < n:
        symbol = symbols[i]
        run = 1
        while i + run < n and symbols[i + run] == symbol and run < _MAX_RUN:
            run += 1
        if run >= 14 or (i + run == n and run >= 7):
            out += _U16.pack((symbol << 13) | run)
            i += run
            continue
        window = symbols[i : i + 14]
        if all(s < 2 for s in window):
            chunk = 0x8000
            for k, s in enumerate(window):
                chunk |= s << (13 - k)
            out += _U16.pack(chunk)
            i += len(window)
        elif run >= 7:
            out += _U16.pack((symbol << 13) | run)
            i += run
        else:
            chunk = 0xC000
            for k, s in enumerate(symbols[i : i + 7]):
                chunk |= s << (12 - 2 * k)
            out += _U16.pack(chunk)
            i += 7
    return bytes(out)


def build_transport_feedback(
    sender_ssrc: int,
    media_ssrc: int,
    base_sequence: int,
    arrivals_us: Sequence[int | None],
    feedback_count: int,
) -> bytes:
    """Build one complete RTPFB FMT 15 packet (common header included).

    ``arrivals_us`` has one entry per packet from ``base_sequence`` on: its arrival time in
    microseconds of the receiver's clock, or ``None`` when it was not received. The reference
    time is the first arrival rounded down to 64 ms; arrivals are rounded to 250 µs ticks.
    Raises :class:`ValueError` when there is no packet, more than :data:`MAX_REPORTED_PACKETS`,
    none received, or two consecutive arrivals are more than the two-byte delta range (about
    ±8 s) apart.
    """
    if not arrivals_us or len(arrivals_us) > MAX_REPORTED_PACKETS:
        raise ValueError(
            f"transport-cc feedback reports 1..{MAX_REPORTED_PACKETS} packets, got {len(arrivals_us)}"
        )
    first = next((a for a in arrivals_us if a is not None), None)
    if first is None:
        raise ValueError("transport-cc feedback needs at least one received packet")
    reference = first // REFERENCE_US
    if not -0x800000 <= reference <= 0x7FFFFF:
        raise ValueError(f"transport-cc reference time {reference} does not fit 24 bits")
    symbols: list[int] = []
    deltas = bytearray()
    previous = reference * (REFERENCE_US // TICK_US)
    for arrival in arrivals_us:
        if arrival is None:
            symbols.append(_NOT_RECEIVED)
            continue
        ticks = arrival // TICK_US
        delta = ticks - previous
        previous = ticks
        if 0 <= delta <= 0xFF:
            symbols.append(_SMALL)
            deltas.append(delta)
        elif -0x8000 <= delta <= 0x7FFF:
            symbols.append(_LARGE)
            deltas += _I16.pack(delta)
        else:
            raise ValueError(f"transport-cc receive delta of {delta} ticks does not fit two bytes")
    payload = (
        _FIXED.pack(
            sender_ssrc,
            media_ssrc,
            base_sequence & 0xFFFF,
            len(arrivals_us),
            ((reference & 0xFFFFFF) << 8) | (feedback_count & 0xFF),
        )
        + _encode_chunks(symbols)
        + bytes(deltas)
    )
    payload += b"\x00" * (-len(payload) % 4)
    return _HEADER.pack(0x80 | _FMT_TRANSPORT_CC, _RTCP_RTPFB, len(payload) // 4) + payload


# --- Send history -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacketResult:
    """What the feedback says about one sent packet."""

    sequence: int
    """Unwrapped (64-bit) transport-wide sequence number."""
    send_time: float
    """Sender clock, seconds."""
    size: int
    """Bytes sent (RTP packet before SRTP)."""
    arrival_time: float | None
    """Receiver clock, seconds; ``None`` when reported lost."""

    @property
    def lost(self) -> bool:
        return self.arrival_time is None


class SendHistory:
    """Transport-wide sequence numbers for one transport, and what was sent under each.

    :meth:`next_sequence` (or the faster :meth:`stamper`) hands out the next 16-bit number and
    records the send time and size; :meth:`on_feedback` maps a feedback message back onto those
    records. The history keeps the last ``capacity`` packets (a power of two; sequence numbers
    older than that are skipped), and each packet is reported at most once as received and at
    most once as lost: a later feedback repeating it is ignored, except that a packet first
    reported lost and then received is reported again (received late).
    """

    __slots__ = ("_capacity", "_counter", "_mask", "_reported", "_sizes", "_times")

    def __init__(self, capacity: int = 4096) -> None:
        if not 1 <= capacity <= 0x8000 or capacity & (capacity - 1):
            raise ValueError(f"send history capacity must be a power of two up to 32768, got {capacity}")
        self._capacity = capacity
        self._mask = capacity - 1
        # The next unwrapped sequence number, in a list so the stamping closure updates it
        # without attribute lookups.
        self._counter = [0]
        # Preallocated rings: storing a packet allocates nothing.
        self._times = array("d", bytes(8 * capacity))
        self._sizes = array("l", bytes(array("l").itemsize * capacity))
        self._reported: dict[int, bool] = {}  # seq -> reported received (True) or lost (False)

    @property
    def sent(self) -> int:
        """Packets numbered so far."""
        return self._counter[0]

    def next_sequence(self, send_time: float, size: int) -> int:
        """Number one packet about to be sent; returns the 16-bit value for its extension."""
        counter = self._counter
        seq = counter[0]
        counter[0] = seq + 1
        slot = seq & self._mask
        self._times[slot] = send_time
        self._sizes[slot] = size
        return seq & 0xFFFF

    def stamper(self) -> Callable[[float, int], bytes]:
        """A fast :meth:`next_sequence` for the forwarding path: ``stamp(send_time, size)``
        returns the extension's 2 bytes directly (one call, closure locals only)."""
        counter = self._counter
        times = self._times
        sizes = self._sizes
        mask = self._mask
        pack = _U16.pack

        def stamp(send_time: float, size: int) -> bytes:
            seq = counter[0]
            counter[0] = seq + 1
            slot = seq & mask
            times[slot] = send_time
            sizes[slot] = size
            return pack(seq & 0xFFFF)

        return stamp

    def _unwrap(self, seq16: int) -> int:
        """The unwrapped sequence number closest to the last one sent for a 16-bit value."""
        last = self._counter[0] - 1
        diff = (seq16 - last) & 0xFFFF
        if diff >= 0x8000:
            diff -= 0x10000
        return last + diff

    def on_feedback(self, feedback: TransportFeedback) -> list[PacketResult]:
        """The :class:`PacketResult` s for a feedback message, in sequence order, for packets
        this history still holds."""
        results: list[PacketResult] = []
        times = self._times
        sizes = self._sizes
        mask = self._mask
        reported = self._reported
        end = self._counter[0]
        oldest = end - self._capacity
        if len(reported) > 2 * self._capacity:  # forget what left the history
            for seq in [s for s in reported if s < oldest]:
                del reported[seq]
        base = self._unwrap(feedback.base_sequence)
        for index, (_, arrival_us) in enumerate(feedback.packets()):
            seq = base + index
            if seq < 0 or seq < oldest or seq >= end:
                continue
            slot = seq & mask
            before = reported.get(seq)
            if arrival_us is None:
                if before is not None:
                    continue  # already reported, received or lost
                reported[seq] = False
                results.append(PacketResult(seq, times[slot], sizes[slot], None))
            else:
                if before:
                    continue
                reported[seq] = True
                results.append(PacketResult(seq, times[slot], sizes[slot], arrival_us / 1e6))
        return results


# --- Feedback generator (receiver side) ------------------------------------------------------

FEEDBACK_INTERVAL = 0.05
"""Seconds between two feedback rounds toward a publisher (libwebrtc sends every 50-250 ms)."""

MAX_FEEDBACK_PACKETS = 256
"""Packets reported per feedback message at most, so one message stays under about 700 bytes
(two-byte deltas, interleaved losses). Only a message that has not reported a received packet
yet goes on past it, through a run of losses (two bytes per 8191 in a run-length chunk)."""

_WRAP_US = (1 << 24) * REFERENCE_US  # the 24-bit reference time wraps every ~12.4 days
_MAX_DELTA_US = 0x7FFF * TICK_US  # what a signed two-byte receive delta spans


class FeedbackGenerator:
    """Arrival times of the transport-wide sequence numbers a publisher stamps, and the
    transport-cc feedback reporting them.

    ``record = generator.recorder()`` is the per-packet call: ``record(seq16, now)`` unwraps
    the 16-bit number against the highest seen and stores the arrival time in preallocated
    rings (``capacity`` packets, a power of two); nothing is allocated per packet.
    :meth:`build` reports every sequence number from the end of the last report up to the
    highest received, a number that did not arrive as not received, in as many messages as
    the bound :data:`MAX_FEEDBACK_PACKETS` takes. A packet arriving after its number was
    reported (reordered past a report) moves the report window back to it, so the range is
    reported again with it received (as libwebrtc's receiver does; senders ignore repeats).
    Numbers that fell out of the ring before being reported are skipped.
    """

    __slots__ = ("_capacity", "_count", "_mask", "_max_packets", "_seqs", "_state", "_times", "sender_ssrc")

    def __init__(
        self, sender_ssrc: int, capacity: int = 4096, max_packets: int = MAX_FEEDBACK_PACKETS
    ) -> None:
        if not 16 <= capacity <= 0x4000 or capacity & (capacity - 1):
            raise ValueError(f"feedback capacity must be a power of two in 16..16384, got {capacity}")
        if not 1 <= max_packets <= MAX_REPORTED_PACKETS:
            raise ValueError(f"max_packets must be 1..{MAX_REPORTED_PACKETS}, got {max_packets}")
        self.sender_ssrc = sender_ssrc
        self._capacity = capacity
        self._mask = capacity - 1
        self._max_packets = max_packets
        self._count = 0  # feedback messages built (8-bit counter in the message)
        # [highest unwrapped sequence received, first not yet reported]; -1 until a packet.
        self._state = [-1, -1]
        self._seqs = array("q", [-1]) * capacity  # unwrapped sequence number held by each slot
        self._times = array("d", bytes(8 * capacity))

    @property
    def pending(self) -> bool:
        """Whether a packet arrived that :meth:`build` has not reported yet."""
        high, start = self._state
        return high >= 0 and start <= high

    @property
    def messages(self) -> int:
        """Feedback messages built so far."""
        return self._count

    def recorder(self) -> Callable[[int, float], None]:
        """The per-packet call ``record(seq16, now)``: closure locals only."""
        state = self._state
        seqs = self._seqs
        times = self._times
        mask = self._mask
        capacity = self._capacity

        def record(seq16: int, now: float) -> None:
            high = state[0]
            if high < 0:  # the first packet: start above 0 so earlier numbers stay positive
                seq = state[0] = state[1] = seq16 + 0x10000
            else:
                diff = (seq16 - high) & 0xFFFF
                if diff >= 0x8000:
                    diff -= 0x10000
                seq = high + diff
                if diff > 0:
                    state[0] = seq
                elif seq < state[1]:  # reordered past a report: report it again
                    if high - seq >= capacity:
                        return
                    state[1] = seq
            slot = seq & mask
            seqs[slot] = seq
            times[slot] = now

        return record

    def build(self, media_ssrc: int) -> list[bytes]:
        """The feedback messages (complete RTCP packets) for everything received since the last
        call; ``media_ssrc`` is one of the publisher's SSRCs (libwebrtc drops feedback naming an
        SSRC it does not send)."""
        state = self._state
        high, start = state
        if high < 0 or start > high:
            return []
        start = max(start, high - self._capacity + 1)
        state[1] = high + 1
        seqs = self._seqs
        times = self._times
        mask = self._mask
        max_packets = self._max_packets
        out: list[bytes] = []
        arrivals: list[int | None] = []
        base = start
        received = False
        last_us = 0
        for seq in range(start, high + 1):
            slot = seq & mask
            arrival_us = int(times[slot] * 1e6) if seqs[slot] == seq else None
            if received and (
                len(arrivals) >= max_packets
                or (arrival_us is not None and abs(arrival_us - last_us) > _MAX_DELTA_US)
            ):  # full, or a delta two bytes cannot carry: cut before this packet
                out.append(self._message(base, arrivals, media_ssrc))
                arrivals, base, received = [], seq, False
            arrivals.append(arrival_us)
            if arrival_us is not None:
                received = True
                last_us = arrival_us
        if received:
            out.append(self._message(base, arrivals, media_ssrc))
        return out

    def _message(self, base: int, arrivals: list[int | None], media_ssrc: int) -> bytes:
        # Shift by whole wraps of the 24-bit reference time so it fits (libwebrtc unwraps it).
        first = next(a for a in arrivals if a is not None)
        shift = ((first + _WRAP_US // 2) // _WRAP_US) * _WRAP_US
        if shift:
            arrivals = [None if a is None else a - shift for a in arrivals]
        count = self._count
        self._count = count + 1
        return build_transport_feedback(self.sender_ssrc, media_ssrc, base & 0xFFFF, arrivals, count & 0xFF)
