"""Pacer: what leaves toward one subscriber leaves at a pacing rate, not in bursts (sans-I/O).

Without it the SFU forwards a key frame (tens of kB) the moment it arrives; a shallow link
queue (a 500 kbit/s link with 200 ms of queue holds 12.5 kB) drops part of it, the subscriber
cannot decode until NACK/RTX repair it, its next receiver report shows heavy loss and the
budget is cut again (docs/benchmarks.md, "Quality on a shaped link"). libwebrtc paces every
packet; salon paces only what would burst:

* a token bucket filled at :attr:`Pacer.rate` (bytes/s: :data:`PACING_FACTOR` x the
  transport's budget, set by the transport at each allocation), holding at most
  :data:`BURST_TIME` worth of tokens (and never less than :data:`MIN_BURST` bytes);
* **fast path** (:meth:`Pacer.admit`): the queue is empty and the bucket is not in debt: the
  packet goes at once and its size is taken from the bucket (which may go into debt by one
  packet). A rate of 0 means "not paced" (no estimate yet, or not a subscriber transport):
  everything is admitted;
* otherwise video and retransmissions wait in the queue (:meth:`Pacer.enqueue`) and leave
  when :meth:`Pacer.pop` says (the transport drains on a timer at :meth:`Pacer.next_send`):
  retransmissions before video, each class first in, first out;
* **audio is never queued** (:meth:`Pacer.charge`: sent at once, its size taken from the
  bucket), padding only when the queue is empty (:meth:`Pacer.can_pad`) and charged too;
* a long queue drains faster: when it holds more than :data:`MAX_QUEUE_TIME` at the pacing
  rate, it drains at its size / :data:`MAX_QUEUE_TIME` (libwebrtc's queue time limit does
  likewise), so that a key frame of seconds at a low rate still gets through soon (dropping
  part of it would only ask for another as large);
* the queue is bounded: when it holds more than :data:`DROP_QUEUE_TIME` at the pacing rate,
  the oldest video packets are dropped (never audio, never retransmissions) and their owners
  returned, so that the transport tells them (a consumer that lost video asks for a key
  frame).

Packets are queued with their transport-wide sequence number and abs-send-time not yet
written (:class:`PacedPacket` says where): the transport writes them when the packet leaves,
so the numbering follows the send order and the send times are the real ones.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

__all__ = [
    "BURST_TIME",
    "DROP_QUEUE_TIME",
    "MAX_QUEUE_TIME",
    "MIN_BURST",
    "PACING_FACTOR",
    "PacedPacket",
    "Pacer",
]

PACING_FACTOR = 1.5
"""Pacing rate / budget. libwebrtc uses 2.5 (deep link queues); a shallow queue (a tbf with
200 ms at 500 kbit/s) overflows at 2.5x, see docs/benchmarks.md, "Pacer"."""

BURST_TIME = 0.02
"""Seconds of tokens the bucket holds at most (a burst after an idle period)."""

MIN_BURST = 2400
"""Bytes the bucket may always hold (two full packets), whatever the rate."""

MAX_QUEUE_TIME = 1.0
"""Seconds of queue (at the pacing rate) beyond which the queue drains faster than that rate."""

DROP_QUEUE_TIME = 3.0
"""Seconds of queue (at the pacing rate) beyond which the oldest video is dropped."""

_OWED = -1.0
"""A debt of at most this many bytes counts as paid (:meth:`Pacer.next_send` computes a time
from floats: the refill at that time may fall short by a rounding error)."""


@dataclass(slots=True)
class PacedPacket:
    """One queued RTP packet (clear text, before SRTP)."""

    packet: bytes
    size: int
    """Bytes counted against the rate (and recorded for transport-cc)."""
    twcc_at: int
    """Offset of the 2 transport-wide sequence-number bytes to write when it leaves (0: none)."""
    abs_at: int
    """Offset of the 3 abs-send-time bytes to write when it leaves (0: none)."""
    owner: object
    """Told when the packet is dropped (the consumer that sent it)."""
    queued_at: float


class Pacer:
    """The pacing state of one subscriber transport; see the module docstring."""

    __slots__ = (
        "_last",
        "_retransmissions",
        "_video",
        "burst",
        "drop_queue_time",
        "dropped",
        "factor",
        "max_queue_time",
        "queued",
        "queued_bytes",
        "rate",
        "tokens",
    )

    def __init__(
        self,
        factor: float = PACING_FACTOR,
        max_queue_time: float = MAX_QUEUE_TIME,
        drop_queue_time: float = DROP_QUEUE_TIME,
    ) -> None:
        self.factor = factor
        self.max_queue_time = max_queue_time
        self.drop_queue_time = drop_queue_time
        #: Bytes per second; 0: not paced (everything admitted).
        self.rate = 0.0
        self.burst = float(MIN_BURST)
        #: Bytes that may leave now (negative: debt, nothing leaves until it is paid).
        self.tokens = 0.0
        self._last = 0.0
        self._retransmissions: collections.deque[PacedPacket] = collections.deque()
        self._video: collections.deque[PacedPacket] = collections.deque()
        self.queued_bytes = 0
        #: Packets that went through the queue / were dropped from it (counters).
        self.queued = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._retransmissions) + len(self._video)

    def set_budget(self, bitrate: float, now: float, *, factor: float | None = None) -> None:
        """The transport's budget (bit/s) changed: pace at ``factor`` (default
        :attr:`factor`) x it (0: stop pacing; what is queued still leaves, at the last rate)."""
        self._refill(now)
        rate = bitrate * (self.factor if factor is None else factor) / 8
        if rate <= 0 and len(self):
            return  # keep draining at the old rate
        self.rate = rate
        self.burst = max(float(MIN_BURST), rate * BURST_TIME)
        if self.tokens > self.burst:
            self.tokens = self.burst

    def _drain_rate(self) -> float:
        """The rate the queue drains at: the pacing rate, or faster when the queue holds more
        than :attr:`max_queue_time` at that rate."""
        rate = self.rate
        backlog = self.queued_bytes / self.max_queue_time
        return backlog if backlog > rate else rate

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            tokens = self.tokens + elapsed * self._drain_rate()
            burst = self.burst
            self.tokens = burst if tokens > burst else tokens

    def admit(self, now: float, size: int) -> bool:
        """Whether a packet of ``size`` bytes may leave now (the fast path: the queue is
        empty and the bucket not in debt); takes its size from the bucket if so. False: the
        caller queues it (:meth:`enqueue`)."""
        if not self.rate:
            return True
        if self._video or self._retransmissions:
            return False
        self._refill(now)
        if self.tokens < 0:
            return False
        self.tokens -= size
        return True

    def charge(self, now: float, size: int) -> None:
        """A packet that leaves now whatever the queue holds (audio, padding): take its size
        from the bucket, so that the video after it waits for it."""
        if self.rate:
            self._refill(now)
            self.tokens -= size

    def can_pad(self, now: float) -> bool:
        """Whether padding may go now: nothing queued and the bucket not in debt."""
        if not self.rate:
            return True
        if self._video or self._retransmissions:
            return False
        self._refill(now)
        return self.tokens >= 0

    def enqueue(self, item: PacedPacket, *, retransmission: bool = False) -> list[object]:
        """Queue a packet the fast path refused; returns the owners of the video packets
        dropped to keep the queue under :attr:`drop_queue_time` (each owner once)."""
        (self._retransmissions if retransmission else self._video).append(item)
        self.queued_bytes += item.size
        self.queued += 1
        limit = self.rate * self.drop_queue_time
        if self.queued_bytes <= limit or not self.rate:
            return []
        owners: list[object] = []
        video = self._video
        while video and self.queued_bytes > limit:
            dropped = video.popleft()
            self.queued_bytes -= dropped.size
            self.dropped += 1
            if dropped.owner not in owners:
                owners.append(dropped.owner)
        return owners

    def discard(self, owner: object) -> tuple[int, int]:
        """Drop what ``owner`` has queued (a consumer whose layer was cut: its queued video and
        the retransmissions of that layer would only delay the new one, and fill the queue up
        to its bound, where the new layer's key frame would be dropped); returns the video
        packets and the retransmissions dropped. Both are the newest of their stream (nothing
        of an owner leaves ahead of its queue), so their sequence numbers are the last ones
        the owner gave out."""
        counts = []
        for queue in (self._video, self._retransmissions):
            kept = [item for item in queue if item.owner is not owner]
            counts.append(len(queue) - len(kept))
            if len(kept) != len(queue):
                queue.clear()
                queue.extend(kept)
        video, retransmissions = counts
        if video or retransmissions:
            self.queued_bytes = sum(item.size for item in self._video) + sum(
                item.size for item in self._retransmissions
            )
            self.dropped += video + retransmissions
        return video, retransmissions

    def next_send(self, now: float) -> float:
        """When the next queued packet may leave (inf: nothing queued)."""
        if not (self._video or self._retransmissions):
            return float("inf")
        self._refill(now)
        if self.tokens >= _OWED or self.rate <= 0:
            return now
        return now + -self.tokens / self._drain_rate()

    def pop(self, now: float) -> PacedPacket | None:
        """The next packet to send now (retransmissions first), or None: nothing queued, or
        the bucket is in debt (come back at :meth:`next_send`)."""
        queue = self._retransmissions or self._video
        if not queue:
            return None
        self._refill(now)
        if self.tokens < _OWED and self.rate > 0:
            return None
        item = queue.popleft()
        self.tokens -= item.size
        self.queued_bytes -= item.size
        return item

    def clear(self) -> None:
        self._retransmissions.clear()
        self._video.clear()
        self.queued_bytes = 0

    def dump(self) -> dict[str, object]:
        return {
            "rate": round(self.rate * 8),
            "queued_packets": len(self),
            "queued_bytes": self.queued_bytes,
            "packets_queued": self.queued,
            "packets_dropped": self.dropped,
        }
