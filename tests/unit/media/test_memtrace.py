"""salon.media.memtrace: where a process's memory grows (behind /debug/processes)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from salon.media import memtrace


class _Kept:
    pass


@pytest.fixture(autouse=True)
def _fresh_baselines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memtrace, "_baseline", None)
    monkeypatch.setattr(memtrace, "_census_baseline", None)


def test_census_finds_the_type_that_grew_and_what_holds_it() -> None:
    assert memtrace.census(5) == []  # the baseline
    holder = {"kept": [_Kept() for _ in range(500)]}
    grown = memtrace.census(5)
    top = grown[0]
    assert top["type"].endswith("_Kept") and top["count_diff"] == 500, grown
    assert "builtins.list" in top["referrers"]
    assert holder["kept"]


def test_growth_needs_tracing_then_reports_the_allocation_site() -> None:
    assert not tracemalloc.is_tracing()
    assert memtrace.growth(5) == []
    tracemalloc.start(5)
    try:
        assert memtrace.growth(5) == []  # the baseline
        kept = [bytearray(1000) for _ in range(200)]
        grown = memtrace.growth(3)
    finally:
        tracemalloc.stop()
    assert kept
    top = grown[0]
    assert top["size_diff"] >= 200 * 1000 and top["count_diff"] >= 200
    assert any("test_memtrace.py" in frame for frame in top["traceback"])


def test_start_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memtrace.ENV, raising=False)
    assert memtrace.start_from_env() == 0
    monkeypatch.setenv(memtrace.ENV, "not a number")
    assert memtrace.start_from_env() == 0
    assert not tracemalloc.is_tracing()


def test_heap_counts_the_python_blocks_kept() -> None:
    gc.collect()  # garbage left by earlier tests must not be freed between the two counts
    before = memtrace.heap()["python_blocks"]
    kept = [(i * 7919) << 40 for i in range(5_000)]  # ints: not tracked by the garbage collector
    after = memtrace.heap()["python_blocks"]
    assert after - before >= 4_900, (before, after)  # a few blocks may be freed meanwhile
    del kept
    assert memtrace.heap()["python_blocks"] < after - 4_000
    heap = memtrace.heap()
    if "in_use" in heap:  # glibc
        assert heap["in_use"] > 0 and heap["free"] >= 0 and heap["mmapped"] >= 0
