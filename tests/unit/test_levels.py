"""The rate limit of ``audio_levels`` events (``salon.signalling.levels``)."""

from __future__ import annotations

import pytest

from salon.signalling.levels import LevelThrottle, check_levels


def test_the_first_levels_are_sent_at_once() -> None:
    throttle = LevelThrottle()
    assert throttle.offer({"a": 0.5}, now=10.0) == {"a": 0.5}
    assert throttle.deadline() is None


def test_levels_reported_within_a_quarter_second_wait_and_the_latest_of_each_stream_wins() -> None:
    throttle = LevelThrottle()
    throttle.offer({"a": 0.5}, now=10.0)
    assert throttle.offer({"a": 0.6, "b": 0.1}, now=10.05) is None
    assert throttle.offer({"a": 0.7}, now=10.10) is None
    assert throttle.deadline() == pytest.approx(10.25)
    assert throttle.poll(10.2) is None
    assert throttle.poll(10.25) == {"a": 0.7, "b": 0.1}
    assert throttle.deadline() is None
    assert throttle.poll(11.0) is None  # nothing waits


def test_no_more_than_four_batches_leave_in_any_second_however_fast_levels_arrive() -> None:
    throttle = LevelThrottle()
    sent: list[float] = []
    now = 0.0
    while now < 5.0:  # a report every 10 ms, with the caller polling at each deadline
        deadline = throttle.deadline()
        if deadline is not None and deadline <= now and throttle.poll(deadline) is not None:
            sent.append(deadline)
        if throttle.offer({"a": now / 5.0}, now) is not None:
            sent.append(now)
        now = round(now + 0.01, 6)
    assert len(sent) >= 19  # 4 per second, not far fewer
    for start in sent:
        assert len([t for t in sent if start <= t < start + 1.0]) <= 4


def test_the_rate_is_configurable_and_must_be_positive() -> None:
    throttle = LevelThrottle(max_per_second=2)
    throttle.offer({"a": 0.1}, now=0.0)
    throttle.offer({"a": 0.2}, now=0.1)
    assert throttle.deadline() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        LevelThrottle(max_per_second=0)


@pytest.mark.parametrize("level", [-0.01, 1.01, float("nan"), float("inf"), True, "0.5", None])
def test_a_level_outside_zero_to_one_is_refused_naming_the_stream(level: object) -> None:
    with pytest.raises(ValueError, match=r"audio level of stream s1 is .*not a number within 0\.\.1"):
        check_levels({"s1": level})  # type: ignore[dict-item]


def test_integral_levels_become_floats() -> None:
    assert check_levels({"a": 0, "b": 1}) == {"a": 0.0, "b": 1.0}
