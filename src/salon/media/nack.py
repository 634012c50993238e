"""Loss detection and NACK scheduling for one incoming (publisher) RTP stream.

The SFU is the receiver on the publisher's leg, so it must ask for lost packets itself with
generic NACKs (RFC 4585 §6.2.1) as mediasoup's ``NackGenerator`` does; otherwise every
subscriber stalls on the same hole. :class:`NackGenerator` is fed each arriving sequence
number and:

* on a gap, returns the missing numbers at once so the caller NACKs them immediately;
* re-NACKs each missing packet every ``retry_interval`` (40 ms), via :meth:`poll`;
* gives a packet up after ``max_retries`` NACKs (10) or ``max_age`` seconds (1 s), and then
  reports ``key_frame_needed``: a decoder cannot get past the hole without a key frame;
* drops a packet from the list when it arrives late (reordered or retransmitted), counting it
  as recovered;
* takes packets someone else found missing (:meth:`request`: a subscriber NACKed a packet the
  retransmission cache does not hold) onto the same list, so they get the same retries and
  give-up as a detected gap; a packet already given up is not chased again;
* treats a jump of more than ``max_jump`` sequence numbers as a stream restart (RFC 3550
  Appendix A.1: accepted when the next packet confirms it, so one stray packet does not reset
  anything): the list is cleared and a key frame is needed. The same happens if more than
  ``max_missing`` packets would be missing at once.

Counters ``nacked`` (packets found missing), ``recovered`` and ``given_up`` describe the
stream's health; ``requests`` counts every sequence number put in a NACK, retries included.

Sans-I/O: ``now`` is passed in (seconds, monotonic); the caller builds and sends the NACK (see
:func:`salon.media.rtcp.build_nack`) and the PLI, and calls :meth:`NackGenerator.poll` at
:meth:`NackGenerator.next_deadline`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["NackGenerator", "NackPoll"]


@dataclass(frozen=True, slots=True)
class NackPoll:
    """What :meth:`NackGenerator.poll` asks the caller to do now."""

    seqs: tuple[int, ...] = ()
    """Sequence numbers to NACK (again) now, oldest first."""
    key_frame_needed: bool = False
    """A packet was given up or the stream restarted: request a key frame (PLI)."""


_NOTHING = NackPoll()

_EARLY = 1e-3
"""Seconds by which a poll may come before a deadline and still count (event-loop timers can
fire up to one clock resolution early)."""


class _Missing:
    __slots__ = ("first_seen", "last_sent", "tries")

    def __init__(self, now: float) -> None:
        self.first_seen = now
        self.last_sent = now
        self.tries = 1


class NackGenerator:
    """Track missing packets of one RTP stream and decide when to NACK them.

    :param retry_interval: seconds between two NACKs of the same packet (default 0.04).
    :param max_retries: NACKs per packet, the first included, before giving up (default 10).
    :param max_age: seconds after which a missing packet is given up (default 1.0).
    :param max_jump: a sequence jump larger than this is a restart, not loss (default 1000).
    :param max_missing: more missing packets than this at once clears the list and asks for
        a key frame instead (default 500).
    """

    __slots__ = (
        "_bad_seq",
        "_given_up_recent",
        "_key_frame_at",
        "_max_age",
        "_max_ext",
        "_max_jump",
        "_max_missing",
        "_max_retries",
        "_max_seq",
        "_missing",
        "_retry_interval",
        "_started",
        "given_up",
        "nacked",
        "recovered",
        "requests",
    )

    def __init__(
        self,
        *,
        retry_interval: float = 0.04,
        max_retries: int = 10,
        max_age: float = 1.0,
        max_jump: int = 1000,
        max_missing: int = 500,
    ):
        if not 0 < max_jump < 0x8000:
            raise ValueError(f"max_jump must be 1..32767, got {max_jump}")
        self._retry_interval = retry_interval
        self._max_retries = max_retries
        self._max_age = max_age
        self._max_jump = max_jump
        self._max_missing = max_missing
        self._started = False
        self._max_seq = 0
        self._max_ext = 0
        self._bad_seq = -1
        self._key_frame_at: float | None = None
        # Extended sequence number -> state; insertion order is ascending sequence order.
        self._missing: dict[int, _Missing] = {}
        # Extended sequence numbers given up within the last max_jump packets: a late request
        # for one of them (a subscriber still NACKing the hole) does not start a new chase.
        self._given_up_recent: set[int] = set()
        self.nacked = 0
        """Packets found missing (each counted once)."""
        self.recovered = 0
        """Missing packets that arrived afterwards."""
        self.given_up = 0
        """Missing packets abandoned after ``max_retries`` or ``max_age``."""
        self.requests = 0
        """Sequence numbers sent in NACKs, retries included."""

    @property
    def missing(self) -> list[int]:
        """The sequence numbers currently considered missing, oldest first."""
        return [ext & 0xFFFF for ext in self._missing]

    def on_packet(self, seq: int, now: float) -> list[int]:
        """Feed the sequence number of an arriving packet (for RTX: the original one).

        Returns the sequence numbers newly found missing, to NACK right away (oldest first).
        """
        seq &= 0xFFFF
        if not self._started:
            self._restart(seq)
            return []
        diff = ((seq - self._max_seq + 0x8000) & 0xFFFF) - 0x8000
        if diff == 1:
            self._max_seq = seq
            self._max_ext += 1
            return []
        if diff > self._max_jump or diff < -self._max_jump:
            if seq == self._bad_seq:
                # Two in a row after a big jump: the stream restarted. Begin anew.
                self._restart(seq)
                self._key_frame_at = now
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
            return []
        if diff <= 0:
            if self._missing.pop(self._max_ext + diff, None) is not None:
                self.recovered += 1
            return []
        first_missing = self._max_ext + 1
        self._max_seq = seq
        self._max_ext += diff
        if len(self._missing) + diff - 1 > self._max_missing:
            self.given_up += len(self._missing)
            self._missing.clear()
            self._key_frame_at = now
            return []
        new = []
        for ext in range(first_missing, self._max_ext):
            self._missing[ext] = _Missing(now)
            new.append(ext & 0xFFFF)
        self.nacked += len(new)
        self.requests += len(new)
        return new

    def poll(self, now: float) -> NackPoll:
        """Return the packets due for another NACK and whether a key frame is now needed.

        Packets that reached ``max_retries`` NACKs (and waited one more interval) or
        ``max_age`` are given up here.
        """
        key_frame = self._key_frame_at is not None and now + _EARLY >= self._key_frame_at
        if key_frame:
            self._key_frame_at = None
        if not self._missing:
            return NackPoll((), True) if key_frame else _NOTHING
        due = []
        expired = []
        late_now = now + _EARLY  # a timer firing a hair early still counts as on time
        retry_interval = self._retry_interval
        max_age = self._max_age
        for ext, state in self._missing.items():
            if state.first_seen + max_age <= late_now:
                expired.append(ext)
                continue
            if state.last_sent + retry_interval > late_now:
                continue
            if state.tries >= self._max_retries:
                expired.append(ext)
                continue
            state.tries += 1
            state.last_sent = now
            due.append(ext & 0xFFFF)
        if expired:
            for ext in expired:
                del self._missing[ext]
            self.given_up += len(expired)
            self._remember_given_up(expired)
            key_frame = True
        self.requests += len(due)
        if not due and not key_frame:
            return _NOTHING
        return NackPoll(tuple(due), key_frame)

    def request(self, seqs: Iterable[int], now: float) -> list[int]:
        """Chase packets found missing elsewhere (a subscriber NACK that missed the cache).

        Each sequence number at or behind the highest one received (by less than ``max_jump``)
        that is not already missing nor already given up joins the missing list as if just
        NACKed: it is re-NACKed by :meth:`poll` every ``retry_interval`` and given up (with
        ``key_frame_needed``) like a detected gap. Returns the newly added sequence numbers,
        to NACK right away (oldest first); the others are already on the schedule or hopeless.
        """
        if not self._started:
            return []
        added: list[int] = []
        for seq in seqs:
            diff = (((seq & 0xFFFF) - self._max_seq + 0x8000) & 0xFFFF) - 0x8000
            if diff > 0 or diff <= -self._max_jump:
                continue
            ext = self._max_ext + diff
            if ext in self._missing or ext in self._given_up_recent:
                continue
            if len(self._missing) >= self._max_missing:
                break
            self._missing[ext] = _Missing(now)
            added.append(ext)
        if not added:
            return []
        # Keep the list in ascending sequence order (poll and ``missing`` rely on it).
        self._missing = dict(sorted(self._missing.items()))
        added.sort()
        self.nacked += len(added)
        self.requests += len(added)
        return [ext & 0xFFFF for ext in added]

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has something to do, or None if nothing is missing."""
        deadline = self._key_frame_at
        for state in self._missing.values():
            due = min(state.last_sent + self._retry_interval, state.first_seen + self._max_age)
            if deadline is None or due < deadline:
                deadline = due
        return deadline

    def reset(self) -> None:
        """Forget everything (the next packet starts the stream anew); counters are kept."""
        self._started = False
        self._missing.clear()
        self._given_up_recent.clear()
        self._key_frame_at = None

    def _remember_given_up(self, exts: list[int]) -> None:
        recent = self._given_up_recent
        recent.update(exts)
        if len(recent) > 256:  # requests reach back max_jump packets at most: forget older ones
            floor = self._max_ext - self._max_jump
            self._given_up_recent = {ext for ext in recent if ext > floor}

    def _restart(self, seq: int) -> None:
        self._started = True
        self._max_seq = seq
        self._max_ext = seq
        self._bad_seq = -1
        self.given_up += len(self._missing)
        self._missing.clear()
        self._given_up_recent.clear()
