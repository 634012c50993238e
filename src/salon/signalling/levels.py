"""Rate-limiting the ``audio_levels`` events of one session, sans-I/O.

The media plane reports audio levels as often as it likes; a session's clients receive at
most ``max_per_second`` ``audio_levels`` messages per second. :class:`LevelThrottle` sends
at once when the previous message is at least ``1 / max_per_second`` seconds old, and
otherwise keeps the levels (the latest level of each stream wins) until then: nothing is
lost but intermediate values, and the last levels reported always reach the clients, at most
one interval late. Two messages are never closer than the interval, so any one-second window
holds at most ``max_per_second`` of them.

The caller passes ``now`` (seconds, monotonic) and, while :meth:`LevelThrottle.deadline` is
not None, calls :meth:`LevelThrottle.poll` at that time.
"""

from __future__ import annotations

import math

__all__ = ["AUDIO_LEVELS_PER_SECOND", "LevelThrottle", "check_levels"]

#: At most this many ``audio_levels`` messages per second and session.
AUDIO_LEVELS_PER_SECOND = 4


def check_levels(levels: dict[str, float]) -> dict[str, float]:
    """The levels, each a number within 0..1; raises :class:`ValueError` otherwise."""
    for stream_id, level in levels.items():
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 <= level <= 1.0:
            raise ValueError(f"the audio level of stream {stream_id} is {level!r}, not a number within 0..1")
    return {stream_id: float(level) for stream_id, level in levels.items()}


class LevelThrottle:
    """At most ``max_per_second`` batches of levels per second; the latest level of each
    stream wins while a batch waits."""

    def __init__(self, max_per_second: int = AUDIO_LEVELS_PER_SECOND) -> None:
        if max_per_second <= 0:
            raise ValueError("max_per_second must be positive")
        self.interval = 1.0 / max_per_second
        self._last_sent = -math.inf
        self._pending: dict[str, float] = {}

    def offer(self, levels: dict[str, float], now: float) -> dict[str, float] | None:
        """Report ``levels``; returns the batch to send now, or None if it must wait until
        :meth:`deadline`."""
        self._pending.update(levels)
        return self.poll(now)

    def deadline(self) -> float | None:
        """When the waiting batch may be sent; None when nothing waits."""
        return self._last_sent + self.interval if self._pending else None

    def poll(self, now: float) -> dict[str, float] | None:
        """The waiting batch if it may be sent at ``now``, else None."""
        if not self._pending or now < self._last_sent + self.interval:
            return None
        batch, self._pending = self._pending, {}
        self._last_sent = now
        return batch
