"""A ring buffer of recently forwarded RTP packets, to answer NACKs (RFC 4585 §6.2.1).

When a subscriber reports a missing packet, the SFU resends it from here rather than asking
the publisher, as mediasoup's ``RtpRetransmissionBuffer`` does. One buffer per producer stream
stores the packets as received (producer sequence numbers); the consumer maps the
subscriber's sequence number back with :meth:`salon.media.seq.SequenceRewriter.to_input`, then
rewrites the cached packet.

The ring is indexed by ``seq % capacity``. A slot remembers which sequence number it holds,
so :meth:`RetransmissionBuffer.get` never returns an older packet that happens to share the
slot. Because the 16-bit sequence number itself wraps, a slot untouched for 65536 packets
could still match; ``max_age`` (seconds) rules that out and also refuses packets too old to be
worth resending. Capacity is a power of two dividing 65536, so the ring stays contiguous
across the wrap from 65535 to 0.
"""

from __future__ import annotations

__all__ = ["RetransmissionBuffer"]


class RetransmissionBuffer:
    """Store packets by sequence number in an O(1) ring; look them up for retransmission.

    :param capacity: number of packets kept, a power of two from 1 to 65536 (default 1024).
    :param max_age: when given, :meth:`get` with ``now`` refuses packets stored more than
        this many seconds earlier.
    """

    __slots__ = ("_mask", "_max_age", "_packets", "_seqs", "_times")

    def __init__(self, capacity: int = 1024, max_age: float | None = None):
        if capacity < 1 or capacity > 0x10000 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two from 1 to 65536, got {capacity}")
        self._mask = capacity - 1
        self._max_age = max_age
        self._seqs = [-1] * capacity
        self._packets: list[bytes | None] = [None] * capacity
        self._times = [0.0] * capacity

    @property
    def capacity(self) -> int:
        """The number of slots."""
        return self._mask + 1

    def store(self, seq: int, packet: bytes, now: float) -> None:
        """Keep ``packet`` (sequence number ``seq``, received at ``now``), evicting the slot's
        previous occupant."""
        index = seq & self._mask
        self._seqs[index] = seq & 0xFFFF
        self._packets[index] = packet
        self._times[index] = now

    def get(self, seq: int, now: float | None = None) -> bytes | None:
        """Return the stored packet with sequence number ``seq``, or None if it was never
        stored, has been overwritten, or (with ``max_age`` and ``now``) is too old."""
        index = seq & self._mask
        if self._seqs[index] != seq & 0xFFFF:
            return None
        if now is not None and self._max_age is not None and now - self._times[index] > self._max_age:
            return None
        return self._packets[index]

    def clear(self) -> None:
        """Forget every packet (for example when the producer's stream restarts)."""
        capacity = self._mask + 1
        self._seqs = [-1] * capacity
        self._packets = [None] * capacity
        self._times = [0.0] * capacity
