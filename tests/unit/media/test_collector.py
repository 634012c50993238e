"""salon.media.collector: closed transports' garbage is collected soon, at a bounded rate."""

from __future__ import annotations

import asyncio
import gc
import weakref

from salon.media.collector import Collector


class _Cycle:
    """Stands for a closed transport: objects that refer to each other."""

    def __init__(self) -> None:
        self.me = self
        self.payload = bytearray(10_000)


class _Runs:
    """A fake ``collect`` that records when it ran and wakes whoever waits for a run."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ran = asyncio.Event()

    def __call__(self) -> int:
        self.times.append(asyncio.get_running_loop().time())
        self.ran.set()
        return 0

    async def next(self) -> None:
        async with asyncio.timeout(5):
            await self.ran.wait()
        self.ran.clear()


async def test_requests_share_one_run_and_runs_are_spaced() -> None:
    runs = _Runs()
    collector = Collector(0.2, collect=runs)
    collector.request()
    collector.request()
    await runs.next()
    assert collector.runs == 1  # the first request runs at once; the second shared it
    collector.request()  # within the interval: waits for its end
    collector.request()
    await runs.next()
    assert runs.times[1] - runs.times[0] >= 0.19, runs.times
    await asyncio.sleep(0.3)
    assert collector.runs == 2


async def test_close_cancels_the_pending_run() -> None:
    runs = _Runs()
    collector = Collector(10.0, collect=runs)
    collector.request()
    await runs.next()
    collector.request()  # due in 10 s
    collector.close()
    await asyncio.sleep(0.1)
    assert collector.runs == 1


async def test_garbage_cycles_are_freed_without_waiting_for_the_thresholds() -> None:
    gc.collect()
    gc.disable()  # as if the automatic thresholds were far away
    try:
        freed = asyncio.Event()
        closed = _Cycle()
        gone = weakref.ref(closed, lambda _: freed.set())
        del closed
        assert gone() is not None  # reference counting alone does not free a cycle
        Collector(0.5).request()
        async with asyncio.timeout(5):
            await freed.wait()
    finally:
        gc.enable()
