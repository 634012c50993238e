"""Where a process's memory grows: ``tracemalloc`` snapshots compared with a baseline.

Off unless ``SALON_TRACEMALLOC=N`` is set in the server's environment (N: the frames kept per
allocation traceback; tracing slows a process down severalfold and costs memory of its own).
The server's main process and every media worker (which inherit the environment) then trace
from start-up. ``GET /debug/processes?tracemalloc=K`` (``SALON_DEBUG_ENDPOINTS=1``) makes each
process take a snapshot: the first call records the baseline and returns nothing, each later
one returns the K allocation sites that grew the most since the baseline.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from typing import Any

__all__ = ["ENV", "growth", "start_from_env"]

ENV = "SALON_TRACEMALLOC"

_baseline: tracemalloc.Snapshot | None = None
_FILTERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def start_from_env() -> int:
    """Start tracing if ``SALON_TRACEMALLOC`` asks for it; the frames per traceback (0: off)."""
    try:
        frames = int(os.environ.get(ENV, "0") or 0)
    except ValueError:
        return 0
    if frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(min(frames, 100))
    return frames if tracemalloc.is_tracing() else 0


def growth(top: int) -> list[dict[str, Any]]:
    """The ``top`` allocation sites that grew the most since the first call (the baseline).

    Each is ``size_diff`` and ``count_diff`` (bytes and blocks since the baseline), ``size``
    and ``count`` now, and ``traceback`` (innermost frame last, as ``file:line``). Empty when
    tracing is off or on the first call. A full garbage collection runs first, so that what
    is left is referenced, not merely uncollected.
    """
    global _baseline
    if top <= 0 or not tracemalloc.is_tracing():
        return []
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(_FILTERS)
    if _baseline is None:
        _baseline = snapshot
        return []
    stats = snapshot.compare_to(_baseline, "traceback")
    return [
        {
            "size_diff": stat.size_diff,
            "count_diff": stat.count_diff,
            "size": stat.size,
            "count": stat.count,
            "traceback": [f"{frame.filename}:{frame.lineno}" for frame in stat.traceback],
        }
        for stat in stats[:top]
    ]
