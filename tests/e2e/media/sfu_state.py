"""Reading the real server's media state from a test: the main process's view and the worker's."""

from __future__ import annotations

import asyncio
import time

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
