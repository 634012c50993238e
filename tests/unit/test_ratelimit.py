"""The per-connection token bucket (sans I/O: time is passed in)."""

from __future__ import annotations

import pytest

from salon.signalling.ratelimit import TokenBucket, Verdict


def test_a_full_burst_is_allowed_then_messages_are_refused() -> None:
    bucket = TokenBucket(50, 200, now=0.0)
    assert [bucket.take(0.0) for _ in range(200)] == [Verdict.ALLOW] * 200
    assert bucket.take(0.0) is Verdict.REFUSE


def test_tokens_come_back_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(50, 200, now=0.0)
    for _ in range(200):
        bucket.take(0.0)
    # 0.1 s later: 5 tokens back.
    assert [bucket.take(0.1) for _ in range(6)] == [Verdict.ALLOW] * 5 + [Verdict.REFUSE]
    # A long pause refills to the burst, no more.
    assert [bucket.take(1000.0) for _ in range(201)] == [Verdict.ALLOW] * 200 + [Verdict.REFUSE]


def test_a_client_at_the_rate_is_never_refused() -> None:
    bucket = TokenBucket(50, 200, now=0.0)
    assert all(bucket.take(i / 50) is Verdict.ALLOW for i in range(10_000))


def test_a_client_that_keeps_going_while_refused_is_closed_after_another_burst() -> None:
    bucket = TokenBucket(50, 200, now=0.0)
    verdicts = [bucket.take(0.0) for _ in range(401)]
    assert verdicts[:200] == [Verdict.ALLOW] * 200
    assert verdicts[200:400] == [Verdict.REFUSE] * 200
    assert verdicts[400] is Verdict.CLOSE


def test_a_refused_client_that_backs_off_recovers() -> None:
    bucket = TokenBucket(50, 200, now=0.0)
    for _ in range(300):
        bucket.take(0.0)  # 200 allowed, 100 refused: 100 in debt
    assert bucket.take(1.0) is Verdict.REFUSE  # 50 paid back, still in debt
    assert bucket.take(3.1) is Verdict.ALLOW  # paid back, and some


def test_twice_the_rate_is_refused_then_closed() -> None:
    bucket = TokenBucket(50, 200, now=0.0)
    verdicts = [bucket.take(i / 100) for i in range(1000)]
    first_refused = verdicts.index(Verdict.REFUSE)
    assert 390 <= first_refused <= 410  # the burst lasts 4 s at a net 50/s
    assert Verdict.CLOSE in verdicts
    assert verdicts.index(Verdict.CLOSE) - first_refused <= 410


def test_time_going_backwards_adds_no_tokens() -> None:
    bucket = TokenBucket(1, 1, now=10.0)
    assert bucket.take(10.0) is Verdict.ALLOW
    assert bucket.take(5.0) is Verdict.REFUSE


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-1, 10), (10, 0)])
def test_nonsense_parameters_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, now=0.0)
