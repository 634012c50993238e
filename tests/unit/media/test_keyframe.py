from __future__ import annotations

import pytest

from salon.media.keyframe import KeyFrameRequestThrottle


def test_the_first_request_is_sent_at_once() -> None:
    throttle = KeyFrameRequestThrottle()
    assert throttle.request(10.0)


def test_a_request_inside_the_interval_is_deferred_then_fired_by_poll() -> None:
    throttle = KeyFrameRequestThrottle(min_interval=0.3)
    assert throttle.request(10.0)
    assert not throttle.request(10.1)
    assert throttle.pending
    assert throttle.next_deadline() == pytest.approx(10.3)
    assert not throttle.poll(10.2)
    assert throttle.poll(10.3)
    assert not throttle.pending
    assert not throttle.poll(10.35)


def test_many_requests_inside_the_interval_become_one() -> None:
    throttle = KeyFrameRequestThrottle(min_interval=0.3)
    throttle.request(0.0)
    assert not any(throttle.request(t) for t in (0.05, 0.1, 0.2, 0.25))
    assert [throttle.poll(t) for t in (0.3, 0.31, 0.4)] == [True, False, False]


def test_a_request_after_the_interval_is_sent_at_once() -> None:
    throttle = KeyFrameRequestThrottle(min_interval=0.3)
    throttle.request(0.0)
    assert throttle.request(0.3)
    assert not throttle.request(0.4)


def test_a_key_frame_satisfies_a_pending_request() -> None:
    throttle = KeyFrameRequestThrottle(min_interval=0.3)
    throttle.request(0.0)
    throttle.request(0.1)
    throttle.on_key_frame(0.2)
    assert not throttle.pending
    assert throttle.next_deadline() is None
    assert not throttle.poll(0.5)
    assert not throttle.poll(5.0)


def test_a_request_without_a_key_frame_in_reply_is_retried() -> None:
    throttle = KeyFrameRequestThrottle(min_interval=0.3, retry_interval=1.0)
    throttle.request(0.0)
    assert throttle.next_deadline() == pytest.approx(1.0)
    assert not throttle.poll(0.9)
    assert throttle.poll(1.0)
    assert throttle.next_deadline() == pytest.approx(2.0)
    throttle.on_key_frame(1.2)
    assert throttle.next_deadline() is None
    assert not throttle.poll(2.5)


def test_retries_can_be_disabled() -> None:
    throttle = KeyFrameRequestThrottle(retry_interval=None)
    throttle.request(0.0)
    assert throttle.next_deadline() is None
    assert not throttle.poll(100.0)


def test_nothing_is_due_before_any_request() -> None:
    throttle = KeyFrameRequestThrottle()
    assert throttle.next_deadline() is None
    assert not throttle.poll(0.0)
    throttle.on_key_frame(0.0)
    assert throttle.request(0.0)


@pytest.mark.parametrize(("min_interval", "retry_interval"), [(-1.0, 1.0), (0.5, 0.2)])
def test_invalid_intervals_are_refused(min_interval: float, retry_interval: float) -> None:
    with pytest.raises(ValueError):
        KeyFrameRequestThrottle(min_interval, retry_interval)


def test_a_poll_a_hair_before_the_deadline_counts_as_on_time() -> None:
    throttle = KeyFrameRequestThrottle(min_interval=0.3)
    throttle.request(5.0)
    throttle.request(5.1)
    assert throttle.poll(5.2995)
