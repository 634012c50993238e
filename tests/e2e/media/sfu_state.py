"""Reading the real server's media state from a test: the main process's view and the worker's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from salon.media.channel import WorkerDump
from salon.media.plane import SfuMediaPlane
from tests.conftest import RunningServer


def plane_of(server: RunningServer) -> SfuMediaPlane:
    plane = server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)
    return plane


async def worker_dump(server: RunningServer) -> WorkerDump:
    """The counters of the server's only media worker, asked on the server's own loop."""
    dumps = await asyncio.wrap_future(server.thread.run_coroutine(plane_of(server).pool.dump()))
    (dump,) = dumps
    return dump


async def eventually_counts(
    server: RunningServer, transports: int, producers: int, consumers: int, what: str
) -> WorkerDump:
    """Wait (at most 10 s) until the worker holds exactly these many objects."""
    deadline = time.monotonic() + 10
    while True:
        dump = await worker_dump(server)
        if (dump.transports, dump.producers, dump.consumers) == (transports, producers, consumers):
            return dump
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: worker has {dump.transports} transports, {dump.producers} producers, "
                f"{dump.consumers} consumers; expected {transports}, {producers}, {consumers}"
            )
        await asyncio.sleep(0.05)


async def video_consumer(server: RunningServer) -> dict[str, Any]:
    """The dump of the only video consumer of the server's only media worker."""
    (worker,) = plane_of(server).pool.workers.values()
    dump = await asyncio.wrap_future(server.thread.run_coroutine(worker.dump(routers=True)))
    consumers = [
        c for r in dump.router_dumps.values() for c in r["consumers"].values() if c["kind"] == "video"
    ]
    assert len(consumers) == 1, consumers
    consumer: dict[str, Any] = consumers[0]
    return consumer


async def eventually_preferences(server: RunningServer, expected: dict[str, object], what: str) -> None:
    """Wait (at most 10 s) until the video consumer holds these preferences (``max_width``,
    ``max_height``, ``max_frame_rate``)."""
    deadline = time.monotonic() + 10
    while True:
        last = (await video_consumer(server))["preferences"]
        if last == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: the video consumer has {last}, expected {expected}")
        await asyncio.sleep(0.1)


async def pause_for_quality(
    server: RunningServer, session_id: str, subscription_id: str, paused: bool
) -> None:
    """Pause (or resume) a subscription's video for quality in the worker, as the allocator
    does, on the server's own loop."""
    plane = plane_of(server)
    await asyncio.wrap_future(
        server.thread.run_coroutine(plane.pause_for_quality(session_id, subscription_id, paused))
    )
