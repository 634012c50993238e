"""Sequence-number and timestamp rewriting for one outgoing RTP stream (one consumer).

A subscriber must see one continuous RTP stream (RFC 3550 §5.1): sequence numbers that go up
by one per packet and timestamps that advance with real time, whatever happens upstream. The
SFU pauses and resumes forwarding, switches the subscriber to another producer or simulcast
layer (whose sequence numbers and timestamps are unrelated), starts each of those on a key
frame, and drops packets it decides not to forward (for example padding-only probes).
:class:`SequenceRewriter` hides all of that. It follows mediasoup's ``SeqManager``
(worker/src/RTC/SeqManager.cpp: a base offset plus a sorted set of dropped inputs) for
sequence numbers and the timestamp half of LiveKit's ``rtpmunger`` (pkg/sfu/rtpmunger.go) for
timestamps.

Theory of operation
-------------------

Internally every sequence number is *extended* (unwrapped past 65535) relative to the newest
input packet, the same way a receiver extends them (RFC 3550 Appendix A.1), so wrap-around and
late packets need no special cases:

* ``out_ext = in_ext + base - (number of dropped inputs older than in_ext)``.
* :meth:`SequenceRewriter.start` re-bases: ``base`` is chosen so that the start packet gets
  ``last output + 1`` and the drop list is cleared. Inputs older than the start packet are
  refused (they belong to the previous source or to before the key frame we started on).
* :meth:`SequenceRewriter.drop` on the newest input records it in the drop list, so the next
  packet takes its output number and the subscriber sees no gap. Dropping a packet older than
  the newest input is a no-op: later packets already got their numbers.
* Late (reordered or retransmitted) packets get the output number they would have had, as
  long as they are at most ``max_late`` packets behind the newest input. Drops older than that
  are folded into ``base``, so the drop list stays small.
* :meth:`SequenceRewriter.to_input` inverts the mapping, to turn a subscriber's NACK back into
  the producer's sequence number.

Timestamps are offset by a constant ``ts_offset`` between starts. At a start, the output
timestamp of the start packet is the last output timestamp plus the wall-clock time elapsed
since that last output packet, in clock-rate units (at least one tick), so a subscriber's
jitter buffer sees the pause or switch as the time that really passed. The time of the last
output packet is known exactly when :meth:`SequenceRewriter.rewrite` is given ``now``;
otherwise it is estimated from the output timestamps and the time of the last start.

The first start has no previous output: its output sequence number and timestamp are the
``initial_seq`` / ``initial_ts`` given to the constructor, or random values as RFC 3550 §5.1
recommends.

All methods are O(1) except in the presence of drops (O(log n) with n drops in the window)
and :meth:`~SequenceRewriter.to_input` (O(n)). Nothing here does I/O; ``now`` is passed in,
in seconds on any monotonic clock.
"""

from __future__ import annotations

import random
from bisect import bisect_left

__all__ = ["SequenceRewriter"]

_SEQ_MOD = 0x10000
_TS_MASK = 0xFFFFFFFF


class SequenceRewriter:
    """Map an incoming (seq, timestamp) stream onto a continuous outgoing one.

    :param initial_seq: output sequence number of the first start; random if None.
    :param initial_ts: output timestamp of the first start; random if None.
    :param max_late: how far behind the newest input (in packets) a late packet may be and
        still be rewritten; older ones get None. Must be below 32768.
    """

    __slots__ = (
        "_base",
        "_dropped",
        "_initial_seq",
        "_initial_ts",
        "_last_out_ts",
        "_max_in",
        "_max_in_ext",
        "_max_late",
        "_max_out_ext",
        "_ref_time",
        "_ref_ts",
        "_start_ext",
        "_start_out_ext",
        "_started",
        "_ts_offset",
    )

    def __init__(self, initial_seq: int | None = None, initial_ts: int | None = None, max_late: int = 0x2000):
        if not 0 < max_late < 0x8000:
            raise ValueError(f"max_late must be 1..32767 packets, got {max_late}")
        self._initial_seq = random.randrange(_SEQ_MOD) if initial_seq is None else initial_seq & 0xFFFF
        self._initial_ts = random.randrange(1 << 32) if initial_ts is None else initial_ts & _TS_MASK
        self._max_late = max_late
        self._started = False
        self._base = 0
        self._ts_offset = 0
        self._dropped: list[int] = []
        self._max_in = 0
        self._max_in_ext = 0
        self._start_ext = 0
        self._max_out_ext = -1
        self._start_out_ext = 0
        self._last_out_ts = 0
        self._ref_time = 0.0
        self._ref_ts = 0

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has been called."""
        return self._started

    @property
    def ts_offset(self) -> int:
        """What is added (mod 2**32) to input timestamps; for rewriting sender reports."""
        return self._ts_offset

    @property
    def last_sequence_number(self) -> int | None:
        """The highest output sequence number produced so far, None before the first output."""
        # Extended output numbers only grow from initial_seq, the first start's output.
        if not self._started or self._max_out_ext < self._initial_seq:
            return None
        return self._max_out_ext & 0xFFFF

    @property
    def last_timestamp(self) -> int:
        """The output timestamp of the newest output packet (the start timestamp before any)."""
        return self._last_out_ts

    def start(self, in_seq: int, in_ts: int, now: float, clock_rate: int) -> tuple[int, int]:
        """Re-base the mapping on input packet (``in_seq``, ``in_ts``), which comes next.

        Call it for the first packet to forward after subscribing, resuming or switching source
        (normally the first packet of a key frame). Returns the (seq, timestamp) that packet
        will get; :meth:`rewrite` of it returns the same.
        """
        in_seq &= 0xFFFF
        if not self._started:
            out_ext = self._initial_seq
            out_ts = self._initial_ts
        else:
            out_ext = self._max_out_ext + 1
            elapsed = round((now - self._ref_time) * clock_rate)
            out_ts = (self._ref_ts + elapsed) & _TS_MASK
            # Never go backwards or stand still relative to what the subscriber last saw.
            advance = (out_ts - self._last_out_ts) & _TS_MASK
            if advance == 0 or advance >= 0x80000000:
                out_ts = (self._last_out_ts + 1) & _TS_MASK
        self._started = True
        self._max_in = in_seq
        self._max_in_ext = in_seq
        self._start_ext = in_seq
        self._base = out_ext - in_seq
        self._dropped.clear()
        self._start_out_ext = out_ext
        self._max_out_ext = out_ext - 1
        self._ts_offset = (out_ts - in_ts) & _TS_MASK
        self._last_out_ts = out_ts
        self._ref_time = now
        self._ref_ts = out_ts
        return out_ext & 0xFFFF, out_ts

    def rewrite(self, in_seq: int, in_ts: int, now: float | None = None) -> tuple[int, int] | None:
        """Return the output (seq, timestamp) of an input packet, or None not to forward it.

        None means: not started yet, from before the current start, more than ``max_late``
        packets behind the newest input, or an input that was dropped. Pass ``now`` to let the
        next :meth:`start` measure the pause exactly.
        """
        if not self._started:
            return None
        diff = ((in_seq - self._max_in + 0x8000) & 0xFFFF) - 0x8000
        ext = self._max_in_ext + diff
        if diff > 0:
            self._max_in = in_seq & 0xFFFF
            self._max_in_ext = ext
            dropped = self._dropped
            if dropped and dropped[0] < ext - self._max_late:
                self._fold_drops()
        elif ext < self._start_ext or diff < -self._max_late:
            return None
        dropped = self._dropped
        if dropped:
            index = bisect_left(dropped, ext)
            if index < len(dropped) and dropped[index] == ext:
                return None
            out_ext = ext + self._base - index
        else:
            out_ext = ext + self._base
        out_ts = (in_ts + self._ts_offset) & _TS_MASK
        if out_ext > self._max_out_ext:
            self._max_out_ext = out_ext
            self._last_out_ts = out_ts
            if now is not None:
                self._ref_time = now
                self._ref_ts = out_ts
        return out_ext & 0xFFFF, out_ts

    def skip(self, count: int) -> None:
        """Leave ``count`` output sequence numbers unused before the next :meth:`start` (a
        receiver then gives up on packets of the previous source it is still missing, see
        :meth:`salon.media.layers.LayerSwitcher.cut`). No effect before the first start."""
        if self._started and count > 0:
            self._max_out_ext += count

    def rewrite_timestamp(self, in_ts: int) -> int:
        """Map an input RTP timestamp (e.g. from a sender report) to the output timeline."""
        return (in_ts + self._ts_offset) & _TS_MASK

    def drop(self, in_seq: int) -> None:
        """Skip the input packet ``in_seq`` without leaving a gap in the output.

        Only effective for a packet newer than every input seen so far (the usual case: it is
        being handled right now); an older packet already has its output number reserved.
        """
        if not self._started:
            return
        diff = ((in_seq - self._max_in + 0x8000) & 0xFFFF) - 0x8000
        if diff <= 0:
            return
        ext = self._max_in_ext + diff
        self._max_in = in_seq & 0xFFFF
        self._max_in_ext = ext
        self._dropped.append(ext)
        if self._dropped[0] < ext - self._max_late:
            self._fold_drops()

    def to_input(self, out_seq: int) -> int | None:
        """Map an output sequence number (from a subscriber's NACK) back to the input one.

        Returns None if it was never produced from the current source: after the newest
        output, before the current start, or too old (more than ``max_late`` behind).
        """
        if not self._started or self._max_out_ext < self._start_out_ext:
            return None
        max_out = self._max_out_ext
        diff = ((out_seq - max_out + 0x8000) & 0xFFFF) - 0x8000
        out_ext = max_out + diff
        if diff > 0 or out_ext < self._start_out_ext:
            return None
        in_ext = out_ext - self._base
        for dropped in self._dropped:
            if dropped > in_ext:
                break
            in_ext += 1
        if in_ext < self._max_in_ext - self._max_late:
            return None
        return in_ext & 0xFFFF

    def _fold_drops(self) -> None:
        # Drops this old can no longer be told apart from "too late": count them into base.
        dropped = self._dropped
        index = bisect_left(dropped, self._max_in_ext - self._max_late)
        del dropped[:index]
        self._base -= index
