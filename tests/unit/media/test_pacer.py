"""The pacer (sans-I/O): rates respected, bursts spread, retransmissions before video, audio
never queued, the queue bounded by dropping the oldest video."""

from __future__ import annotations

from salon.media.pacer import MIN_BURST, PacedPacket, Pacer


def _packet(size: int, owner: object = "video", at: float = 0.0) -> PacedPacket:
    return PacedPacket(bytes(size), size, 0, 0, owner, at)


def _send(pacer: Pacer, now: float, size: int, owner: object = "video") -> bool:
    """The consumer's logic: admitted → sent now (True); else queued (False)."""
    if pacer.admit(now, size):
        return True
    assert pacer.enqueue(_packet(size, owner, now)) == []
    return False


def _drain(pacer: Pacer, until: float) -> list[tuple[float, PacedPacket]]:
    """Run the transport's drain timer until ``until``: (send time, packet) of each packet."""
    sent: list[tuple[float, PacedPacket]] = []
    now = 0.0
    while True:
        at = pacer.next_send(now)
        if at > until:
            return sent
        now = max(now, at)
        while (item := pacer.pop(now)) is not None:
            sent.append((now, item))


def test_unpaced_without_a_rate() -> None:
    pacer = Pacer()
    assert all(pacer.admit(0.0, 1200) for _ in range(1000))
    assert len(pacer) == 0
    assert pacer.can_pad(0.0)


def test_a_key_frame_burst_is_spread_at_the_pacing_rate() -> None:
    pacer = Pacer(factor=1.5)
    pacer.set_budget(400_000, 0.0)  # 600 kbit/s = 75_000 bytes/s
    assert pacer.rate == 75_000
    # A 30 kB key frame arrives at once: 25 packets of 1200 bytes.
    sent_now = [_send(pacer, 0.0, 1200) for _ in range(25)]
    assert sent_now[0] and not all(sent_now)  # the first leaves at once, most wait
    queued = sent_now.count(False)
    assert pacer.queued_bytes == queued * 1200
    sent = _drain(pacer, 10.0)
    assert len(sent) == queued
    times = [t for t, _ in sent]
    assert times == sorted(times)
    # The rate is respected over any window: bytes sent by t <= rate * t + the initial burst.
    total = 0
    for t, item in sent:
        total += item.size
        assert total <= 75_000 * t + MIN_BURST + 1200
    # ... and the burst is spread, not held: the last packet left about 30 kB / 75 kB/s after.
    assert 0.3 < times[-1] < 0.45


def test_the_fast_path_sends_at_once_under_the_rate() -> None:
    pacer = Pacer(factor=1.0)
    pacer.set_budget(800_000, 0.0)  # 100_000 bytes/s
    now = 0.0
    for _ in range(300):  # 1000-byte packets every 20 ms: 50 kB/s, half the rate
        now += 0.02
        assert pacer.admit(now, 1000)
    assert len(pacer) == 0


def test_retransmissions_leave_before_queued_video() -> None:
    pacer = Pacer(factor=1.0)
    pacer.set_budget(80_000, 0.0)  # 10 kB/s
    for _ in range(5):
        _send(pacer, 0.0, 1000, owner="video")
    assert pacer.admit(0.0, 500) is False  # a retransmission does not jump into the fast path
    pacer.enqueue(_packet(500, owner="rtx"), retransmission=True)
    order = [item.owner for _, item in _drain(pacer, 10.0)]
    assert order == ["rtx", "video", "video", "video", "video"]


def test_audio_is_never_queued_but_delays_video() -> None:
    pacer = Pacer(factor=1.0)
    pacer.set_budget(80_000, 0.0)  # 10 kB/s
    assert pacer.admit(0.0, 1000)  # video
    assert not pacer.admit(0.0, 1000)  # in debt: video would wait...
    pacer.charge(0.0, 200)  # ... audio leaves anyway, charged
    assert pacer.tokens < -1000
    # The next video may leave once the debt (audio's included) is paid.
    pacer.enqueue(_packet(1000))
    assert abs(pacer.next_send(0.0) - 1200 / 10_000) < 1e-9


def test_padding_only_when_the_queue_is_empty() -> None:
    pacer = Pacer(factor=1.0)
    pacer.set_budget(80_000, 0.0)
    assert pacer.can_pad(0.0)
    _send(pacer, 0.0, 3000)
    _send(pacer, 0.0, 1000)  # queued behind the debt
    assert not pacer.can_pad(0.0)
    _drain(pacer, 10.0)
    assert pacer.can_pad(10.0)


def test_the_queue_is_bounded_by_dropping_the_oldest_video() -> None:
    pacer = Pacer(factor=1.0, max_queue_time=0.5, drop_queue_time=0.5)
    pacer.set_budget(80_000, 0.0)  # 10 kB/s: the bound is 5000 bytes
    pacer.admit(0.0, 1000)
    pacer.enqueue(_packet(1000, owner="rtx"), retransmission=True)
    dropped: list[object] = []
    for i in range(10):
        dropped += pacer.enqueue(_packet(1000, owner=f"video{i}"))
    assert pacer.queued_bytes <= 5000
    assert pacer.dropped == 6
    assert dropped == [f"video{i}" for i in range(6)]  # the oldest go, each owner once
    order = [item.owner for _, item in _drain(pacer, 10.0)]
    assert order == ["rtx", "video6", "video7", "video8", "video9"]  # never the retransmission


def test_a_lower_budget_slows_the_queue() -> None:
    pacer = Pacer(factor=1.0, max_queue_time=10.0)
    pacer.set_budget(800_000, 0.0)
    queued = [_send(pacer, 0.0, 1000) for _ in range(20)].count(False)
    assert queued == 19  # the bucket starts empty: one packet of debt
    pacer.set_budget(80_000, 0.0)  # 10 kB/s from now on
    sent = _drain(pacer, 100.0)
    assert len(sent) == queued
    assert abs(sent[-1][0] - 19 * 1000 / 10_000) < 1e-6  # each waits for the one before


def test_a_zero_budget_keeps_draining_what_is_queued() -> None:
    pacer = Pacer(factor=1.0)
    pacer.set_budget(80_000, 0.0)
    for _ in range(3):
        _send(pacer, 0.0, 1000)
    pacer.set_budget(0, 0.0)
    assert pacer.rate == 10_000
    assert len(_drain(pacer, 10.0)) == 2  # the first went at once


def test_discarding_an_owners_queue_keeps_the_others() -> None:
    pacer = Pacer(factor=1.0, max_queue_time=10.0)
    pacer.set_budget(80_000, 0.0)
    pacer.admit(0.0, 1000)
    for owner in ("a", "b", "a", "b"):
        pacer.enqueue(_packet(1000, owner=owner))
    pacer.enqueue(_packet(500, owner="a"), retransmission=True)
    pacer.enqueue(_packet(400, owner="b"), retransmission=True)
    assert pacer.discard("a") == (2, 1)
    assert pacer.queued_bytes == 2400 and pacer.dropped == 3
    assert [(item.owner, item.size) for _, item in _drain(pacer, 10.0)] == [
        ("b", 400),
        ("b", 1000),
        ("b", 1000),
    ]
    assert pacer.discard("a") == (0, 0)


def test_a_queue_longer_than_its_time_limit_drains_faster() -> None:
    """A key frame of several seconds at a low rate gets through sooner instead of being
    dropped in part (which would only ask for another as large)."""
    pacer = Pacer(factor=1.0, max_queue_time=1.0, drop_queue_time=10.0)
    pacer.set_budget(80_000, 0.0)  # 10 kB/s
    queued = [_send(pacer, 0.0, 1000) for _ in range(60)].count(False)  # 60 kB: 6 s at the rate
    sent = _drain(pacer, 100.0)
    assert len(sent) == queued and pacer.dropped == 0
    # At its size per second while over a second's worth (ln 6 s), then at the rate (1 s).
    assert sent[-1][0] < 3.0  # not 5.9 s
    # Once the backlog is under a second at the rate, the rate is back.
    for i in range(5):
        _send(pacer, 10.0 + i * 0.2, 1000)
    assert len(pacer) == 0
