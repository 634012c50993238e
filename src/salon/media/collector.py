"""Prompt collection of closed transports' garbage in a media worker.

A closed transport's objects (aiortc's DTLS and ICE transports, aioice's connection and
protocols, their futures and callbacks) refer to each other in cycles, so reference counting
never frees them: only a full (generation 2) run of Python's cyclic garbage collector does. A
full run happens when the objects that survived since the last one exceed a quarter of all
long-lived objects, so the wait between runs grows with the process, and meanwhile every
closed transport keeps its memory, OpenSSL's buffers of its DTLS connection included (about
7 kB each, outside Python's allocator). ``salon bench soak`` measured 12-14 kB per cycle of
worker RSS growth from it, and under 1 kB with a collection after each cycle
(docs/benchmarks.md).

:class:`Collector` runs a full collection soon after transports close, at most once per
``interval`` seconds, so that the garbage at any time is bounded by what closed within one
interval. At start-up the worker also freezes the objects of its imports
(:func:`gc.freeze`): a full collection then walks only the objects created since, which
keeps its pause short.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

__all__ = ["COLLECT_INTERVAL", "Collector"]

logger = logging.getLogger(__name__)

COLLECT_INTERVAL = 2.0
"""Seconds between two collections at most once per this interval (and this long after the
first close that asks for one when none ran recently)."""


class Collector:
    """Runs ``collect`` (a full :func:`gc.collect`) after :meth:`request`, at most once per
    ``interval`` seconds; requests made meanwhile share the next run. :meth:`close` cancels a
    pending run."""

    def __init__(
        self,
        interval: float = COLLECT_INTERVAL,
        *,
        collect: Callable[[], int] = gc.collect,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._collect = collect
        self._clock = clock
        self._last = -float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self.runs = 0
        """Collections run so far."""

    def request(self) -> None:
        """Something closed: collect its garbage soon (within ``interval`` seconds)."""
        if self._timer is not None:
            return
        delay = max(0.0, self._last + self.interval - self._clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._run)

    def _run(self) -> None:
        self._timer = None
        started = self._clock()
        found = self._collect()
        self._last = self._clock()
        self.runs += 1
        logger.debug("collected %d objects in %.1f ms", found, (self._last - started) * 1000)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
