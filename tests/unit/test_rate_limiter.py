"""The demo endpoint's token bucket per client address (salon.server.limits.RateLimiter)."""

from __future__ import annotations

import pytest

from salon.server.limits import RateLimiter


def test_a_burst_then_one_per_interval_per_key() -> None:
    limiter = RateLimiter(burst=3, interval=10.0)
    assert [limiter.acquire("a", now=0.0) for _ in range(3)] == [None, None, None]
    assert limiter.acquire("a", now=0.0) == pytest.approx(10.0)
    assert limiter.acquire("b", now=0.0) is None  # another address has its own bucket
    assert limiter.acquire("a", now=5.0) == pytest.approx(5.0)
    assert limiter.acquire("a", now=10.0) is None
    assert limiter.acquire("a", now=10.0) is not None
    assert [limiter.acquire("a", now=1000.0) for _ in range(4)][-1] is not None  # refills to burst only
    assert RateLimiter.retry_after(0.2) == "1" and RateLimiter.retry_after(9.1) == "10"


def test_the_table_of_addresses_is_bounded() -> None:
    limiter = RateLimiter(burst=1, interval=10.0, max_keys=100)
    for i in range(10_000):
        limiter.acquire(f"10.0.{i // 256}.{i % 256}", now=float(i) / 1000)
        assert len(limiter._buckets) <= 100
    with pytest.raises(ValueError):
        RateLimiter(burst=0, interval=1.0)
