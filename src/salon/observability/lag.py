"""How late an event loop runs its callbacks: a timer that measures its own lateness.

:class:`LoopLag` schedules a callback every ``interval`` seconds and records how late it ran
(the time the loop spent on something else: a long callback, a blocking call, too much work)
into a histogram (cumulative bucket counts, sum, count: what Prometheus wants) and a sliding
maximum over the last ``window`` to ``2 * window`` seconds. The main process and every media
worker run one; the workers report theirs in their dump (:class:`~salon.media.channel.WorkerDump`).
No dependency beyond asyncio, so the workers need not import ``prometheus_client``.
"""

from __future__ import annotations

import asyncio
import bisect

__all__ = ["LAG_BUCKETS", "LoopLag"]

#: Upper bounds (seconds) of the lag histogram's buckets (``+Inf`` is implied).
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLag:
    """The lag probe of the running event loop: :meth:`start` on the loop, :meth:`stop` at the
    end (idempotent)."""

    def __init__(self, interval: float = 0.25, window: float = 10.0) -> None:
        self.interval = interval
        self.window = window
        self._counts = [0] * (len(LAG_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0
        self._max = 0.0
        self._previous_max = 0.0
        self._window_start = 0.0
        self._expected = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._window_start = loop.time()
        self._schedule(loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._expected = now + self.interval
        self._handle = self._loop.call_at(self._expected, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.observe(max(0.0, now - self._expected), now)
        self._schedule(now)

    def observe(self, lag: float, now: float) -> None:
        """Record one measured lag (seconds) at loop time ``now``."""
        self._counts[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self.sum += lag
        self.count += 1
        if now - self._window_start >= self.window:
            self._previous_max, self._max = self._max, 0.0
            self._window_start = now
        if lag > self._max:
            self._max = lag

    @property
    def max(self) -> float:
        """The largest lag of the last ``window`` to ``2 * window`` seconds."""
        return max(self._max, self._previous_max)

    def buckets(self) -> list[int]:
        """Cumulative counts, one per bound of :data:`LAG_BUCKETS` then ``+Inf`` (= count)."""
        cumulative, total = [], 0
        for count in self._counts:
            total += count
            cumulative.append(total)
        return cumulative
