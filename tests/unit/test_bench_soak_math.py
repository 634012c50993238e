"""The soak benchmark's measurements: the line fit and the /proc readings."""

from __future__ import annotations

import os
import socket

import pytest

from salon.bench.soak import linear_slope, process_resources


def test_linear_slope_of_a_line_and_of_page_steps() -> None:
    assert linear_slope([1, 2, 3, 4], [10, 12, 14, 16]) == pytest.approx(2.0)
    # RSS moves in 4 kB pages: one page every 4 cycles is 1 kB per cycle.
    cycles = list(range(100, 1001))
    rss = [4096 * (c // 4) for c in cycles]
    assert linear_slope(cycles, rss) == pytest.approx(1024, rel=0.01)
    assert linear_slope([1], [5]) is None
    assert linear_slope([2, 2], [1, 3]) is None
    with pytest.raises(ValueError):
        linear_slope([1, 2], [1])


def test_process_resources_counts_udp_sockets() -> None:
    before = process_resources(os.getpid())
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        during = process_resources(os.getpid())
    finally:
        for s in sockets:
            s.close()
    after = process_resources(os.getpid())
    assert during["udp_sockets"] == before["udp_sockets"] + 3
    assert during["sockets"] == before["sockets"] + 3
    assert during["fds"] == before["fds"] + 3
    assert after["udp_sockets"] == before["udp_sockets"]
    assert during["rss_kb"] > 0
