"""Router placement on the worker pool: the least loaded worker, ties taken in turn."""

from __future__ import annotations

import pytest

from salon.media.workers import WorkerHandle, WorkerPool, WorkerState, cpu_points


class FakeWorker:
    """What placement reads from a :class:`WorkerHandle`: its state and its load."""

    def __init__(self, name: str, consumers: int = 0, routers: int = 0) -> None:
        self.name = name
        self.state = WorkerState.READY
        self.consumers = consumers
        self.routers = routers

    def load(self) -> tuple[int, int]:
        return self.consumers, self.routers


def pool_of(*workers: FakeWorker | WorkerHandle) -> WorkerPool:
    pool = WorkerPool(len(workers))
    pool.workers = {slot: worker for slot, worker in enumerate(workers)}  # type: ignore[misc]
    return pool


def placed(pool: WorkerPool) -> str:
    worker = pool.least_loaded()
    assert worker is not None
    return str(worker.name)


async def test_equally_loaded_workers_take_turns() -> None:
    # Sessions that come and go one at a time leave every worker idle between them: each new
    # one must not go to the first worker again.
    pool = pool_of(FakeWorker("a"), FakeWorker("b"), FakeWorker("c"))
    assert [placed(pool) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


async def test_the_least_loaded_worker_wins_over_the_turn() -> None:
    a, b, c = (
        FakeWorker("a", consumers=3),
        FakeWorker("b", consumers=1),
        FakeWorker("c", consumers=1, routers=2),
    )
    pool = pool_of(a, b, c)
    assert [placed(pool) for _ in range(3)] == ["b", "b", "b"]
    b.consumers = 5
    assert placed(pool) == "c"
    c.routers = 0
    a.consumers = 1
    # a and c now tie at (1, 0): they alternate, b (5 consumers) is never chosen.
    assert sorted(placed(pool) for _ in range(4)) == ["a", "a", "c", "c"]


async def test_only_ready_workers_are_placed_on() -> None:
    a, b = FakeWorker("a"), FakeWorker("b")
    a.state = WorkerState.DEAD
    pool = pool_of(a, b)
    assert [placed(pool) for _ in range(3)] == ["b", "b", "b"]
    b.state = WorkerState.CLOSING
    assert pool.least_loaded() is None


async def test_a_spreading_session_excludes_the_workers_it_uses() -> None:
    a, b, c = FakeWorker("a"), FakeWorker("b", consumers=4), FakeWorker("c", consumers=2)
    pool = pool_of(a, b, c)
    assert pool.least_loaded(exclude={a}) is c  # type: ignore[arg-type]
    assert pool.least_loaded(exclude={a, c}) is b  # type: ignore[arg-type]
    assert pool.least_loaded(exclude={a, b, c}) is None  # type: ignore[arg-type]


class FakeProcess:
    pid = 4242


async def test_a_worker_busy_with_few_consumers_counts_as_loaded() -> None:
    # Consumers stand for forwarding work, but not every consumer costs the same: a worker
    # whose CPU is high (heavy streams, recorders, pipes) is loaded however few it has.
    busy = WorkerHandle("busy", FakeProcess(), on_death=lambda _: None)  # type: ignore[arg-type]
    idle = WorkerHandle("idle", FakeProcess(), on_death=lambda _: None)  # type: ignore[arg-type]
    for worker, used in ((busy, 0.62), (idle, 0.04)):
        worker.state = WorkerState.READY
        worker.account_cpu(100.0, 10.0)
        worker.account_cpu(105.0, 10.0 + 5 * used)  # smoothed: half of it the first time
        worker.account_cpu(110.0, 10.0 + 10 * used)
    assert busy.cpu == pytest.approx(0.75 * 0.62)
    assert busy.load() == (40, 0) and idle.load() == (0, 0)  # idle noise counts nothing
    pool = pool_of(busy, idle)  # type: ignore[arg-type]
    assert [placed(pool) for _ in range(3)] == ["idle"] * 3


def test_cpu_points_are_tenths_of_a_core() -> None:
    assert [cpu_points(c) for c in (-1.0, 0.0, 0.09, 0.1, 0.55, 1.0, 3.0)] == [0, 0, 0, 10, 50, 100, 100]
