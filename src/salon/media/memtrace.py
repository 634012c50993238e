"""Where a process's memory grows: ``tracemalloc`` snapshots compared with a baseline.

Off unless ``SALON_TRACEMALLOC=N`` is set in the server's environment (N: the frames kept per
allocation traceback; tracing slows a process down severalfold and costs memory of its own).
The server's main process and every media worker (which inherit the environment) then trace
from start-up. ``GET /debug/processes?tracemalloc=K`` (``SALON_DEBUG_ENDPOINTS=1``) makes each
process take a snapshot: the first call records the baseline and returns nothing, each later
one returns the K allocation sites that grew the most since the baseline.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import gc
import os
import sys
import tracemalloc
from typing import Any

__all__ = ["ENV", "census", "growth", "heap", "start_from_env"]

ENV = "SALON_TRACEMALLOC"

_baseline: tracemalloc.Snapshot | None = None
_census_baseline: collections.Counter[str] | None = None
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


def _type_name(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def census(top: int) -> list[dict[str, Any]]:
    """The ``top`` object types whose live count (objects the garbage collector tracks) grew
    the most since the first call (the baseline); needs no tracing. Each is ``type``,
    ``count_diff``, ``count`` and, for a few of the newest such objects, the types of what
    refers to them (``referrers``): where the growth is kept."""
    global _census_baseline
    if top <= 0:
        return []
    gc.collect()
    objects = gc.get_objects()
    counts = collections.Counter(_type_name(o) for o in objects)
    if _census_baseline is None:
        _census_baseline = counts
        return []
    grown = sorted(
        ((name, counts[name] - _census_baseline.get(name, 0)) for name in counts),
        key=lambda item: item[1],
        reverse=True,
    )[:top]
    result: list[dict[str, Any]] = []
    for name, diff in grown:
        if diff <= 0:
            break
        newest = [o for o in reversed(objects) if _type_name(o) == name][:3]
        referrers = collections.Counter(
            _type_name(r) for o in newest for r in gc.get_referrers(o) if r is not objects
        )
        result.append(
            {
                "type": name,
                "count_diff": diff,
                "count": counts[name],
                "referrers": dict(referrers.most_common(5)),
            }
        )
    del objects
    return result


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_mallinfo2: Any = None


def heap() -> dict[str, int]:
    """The C heap (glibc ``mallinfo2``): bytes in use, free inside the heap, and mmapped
    (none of these where there is no glibc), and ``python_blocks``, the memory blocks Python's
    allocator has handed out and not freed (:func:`sys.getallocatedblocks`: objects and
    buffers). Python objects of 512 bytes or less live in pymalloc's arenas, mapped apart from
    the C heap: a count of blocks flat while RSS grows points at the C heap or at fragmented
    arenas, not at objects kept."""
    global _mallinfo2
    if _mallinfo2 is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _mallinfo2 = libc.mallinfo2
            _mallinfo2.restype = _MallInfo2
        except (OSError, AttributeError):
            _mallinfo2 = False
    blocks = {"python_blocks": sys.getallocatedblocks()}
    if not _mallinfo2:
        return blocks
    info = _mallinfo2()
    return {"in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd, **blocks}
