"""The worker pool's watch over its processes, with short timers and real processes.

* a worker that keeps dying at start is restarted at most ``max_restarts`` times per
  ``restart_window``, then left alone (and the log says so) until the window allows another
  try; meanwhile placement fails with "no media worker is running"; once a worker can start
  again, the slot is filled;
* a worker that stops answering its channel (SIGSTOP) is killed and replaced, and the
  routers on it report :class:`WorkerDied`;
* a worker that never reports ready is killed, and ``start()`` says it did not start.

A failing start is simulated by swapping ``_spawn_process`` (what the pool runs) for a
command that exits at once, or that sleeps holding its channel open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from salon.media import workers as workers_module
from salon.media.errors import MediaResourceError
from salon.media.workers import RouterHandleEvent, WorkerDied, WorkerPool

pytestmark = pytest.mark.timeout(60)

Spawn = Callable[[str, str], tuple["subprocess.Popen[bytes]", socket.socket]]
REAL_SPAWN: Spawn = workers_module._spawn_process


def process_exists(pid: int) -> bool:
    """Whether ``pid`` is a process (a zombie included: it must have been reaped)."""
    return os.path.exists(f"/proc/{pid}")


def spawn_command(code: str, spawned: list[int], times: list[float] | None = None) -> Spawn:
    """A ``_spawn_process`` that runs ``python -c code`` holding the worker end of the channel;
    records each pid (and when it was started, in ``times``)."""

    def spawn(name: str, log_level: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        finally:
            theirs.close()
        spawned.append(process.pid)
        if times is not None:
            times.append(time.monotonic())
        return process, ours

    return spawn


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_worker_dying_at_start_is_restarted_at_most_max_restarts_per_window(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="salon.media.workers")
    window = 5.0
    pool = WorkerPool(1, max_restarts=3, restart_window=window, ping_interval=60)
    await pool.start()
    try:
        (first,) = pool.workers.values()
        spawned: list[int] = []
        started: list[float] = []
        dying = spawn_command("raise SystemExit(3)", spawned, started)
        monkeypatch.setattr(workers_module, "_spawn_process", dying)
        first.process.kill()

        # Three quick tries, each dying at start; then the pool says it throttles and waits.
        await wait_for(lambda: "restarts too often" in caplog.text, "the pool to say it throttles")
        assert len(spawned) == 3 and caplog.text.count("restarting worker-0 failed") == 3
        assert pool.workers == {} and pool.restarts == 0
        with pytest.raises(MediaResourceError, match="no media worker is running"):
            await pool.place(timeout=0.2)

        # The next try comes only once the window since the first one has passed.
        await wait_for(lambda: len(spawned) > 3, "a try after the window", timeout=window * 3)
        assert started[3] - started[0] >= window - 0.1, f"tried again too early: {started}"
        assert all(not process_exists(pid) for pid in spawned[:3]), "a dead start was not reaped"

        # A worker that can start again fills the slot.
        monkeypatch.setattr(workers_module, "_spawn_process", REAL_SPAWN)
        await wait_for(lambda: pool.workers, "a working replacement", timeout=window * 4)
        (replacement,) = pool.workers.values()
        assert replacement.pid != first.pid and pool.restarts == 1
        assert (await replacement.dump()).pid == replacement.pid
        assert await pool.place(timeout=1) is replacement
    finally:
        await pool.close()
    assert not process_exists(first.pid)


async def test_a_hung_worker_is_killed_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="salon.media.workers")
    pool = WorkerPool(1, ping_interval=0.3, ping_timeout=4.0)
    await pool.start()
    try:
        (hung,) = pool.workers.values()
        router = pool.create_router(hung, name="hung")
        events: list[RouterHandleEvent] = []
        router.events.add_listener(events.append)
        await hung.dump()  # the router exists in the worker
        os.kill(hung.pid, signal.SIGSTOP)

        await wait_for(lambda: pool.workers and pool.workers[0] is not hung, "a replacement", timeout=30)
        assert "did not answer" in caplog.text
        assert [type(e) for e in events] == [WorkerDied], events
        await wait_for(lambda: not process_exists(hung.pid), "the hung process to be killed and reaped")
        replacement = pool.workers[0]
        assert (await replacement.dump()).routers == 0
        assert pool.restarts == 1
    finally:
        if process_exists(hung.pid):
            os.kill(hung.pid, signal.SIGKILL)
        await pool.close()
    assert not process_exists(replacement.pid)


async def test_a_worker_that_never_reports_ready_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[int] = []
    sleeper = spawn_command("import time; time.sleep(120)", spawned)
    monkeypatch.setattr(workers_module, "_spawn_process", sleeper)
    pool = WorkerPool(1, start_timeout=1.0, shutdown_timeout=1.0)
    with pytest.raises(MediaResourceError, match="did not start within"):
        await pool.start()
    (pid,) = spawned
    assert not process_exists(pid), "the worker that never came up is still there"
    assert pool.closed and pool.workers == {}
