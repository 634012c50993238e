"""The send-side bandwidth estimator and probe controller on synthetic traces: a simulated
bottleneck link (a FIFO queue draining at the link rate, with optional random loss) between a
sender pacing at the estimate and a receiver sending transport-cc feedback every 100 ms."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salon.media.estimator import (
    BandwidthEstimator,
    BandwidthUsage,
    InterArrival,
    OveruseDetector,
    ProbeController,
    ReceiveSideEstimator,
    TrendlineFilter,
)
from salon.media.twcc import PacketResult, SendHistory, build_transport_feedback, parse_transport_feedback

PACKET = 1200


@dataclass
class Link:
    """A bottleneck: FIFO queue served at ``capacity`` bit/s, 20 ms propagation, random loss,
    a drop-tail queue of ``queue_limit`` seconds."""

    capacity: float
    loss: float = 0.0
    queue_limit: float = 0.5
    jitter: float = 0.0
    seed: int = 1
    busy_until: float = 0.0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def arrival(self, send_time: float, size: int) -> float | None:
        if self.rng.random() < self.loss:
            return None
        start = max(send_time, self.busy_until)
        if start - send_time > self.queue_limit:
            return None
        self.busy_until = start + size * 8 / self.capacity
        return self.busy_until + 0.020 + self.rng.uniform(0, self.jitter)


def run(
    estimator: BandwidthEstimator,
    link: Link,
    seconds: float,
    start: float = 0.0,
    app_limit: float = 20e6,
    history: SendHistory | None = None,
) -> list[tuple[float, int]]:
    """Send paced at the estimate (capped by ``app_limit``) through ``link`` through real
    feedback bytes and a :class:`SendHistory`; returns ``(time, estimate)`` every 100 ms."""
    history = history or SendHistory()
    now = start
    pending: list[tuple[int, float | None]] = []  # (seq16, arrival)
    next_feedback = start + 0.1
    trace: list[tuple[float, int]] = []
    count = 0
    while now < start + seconds:
        rate = min(estimator.estimate_at(now), app_limit)
        seq = history.next_sequence(now, PACKET)
        pending.append((seq, link.arrival(now, PACKET)))
        now += PACKET * 8 / rate
        if now >= next_feedback:
            # Feedback for packets that have arrived (or are lost) by now.
            ready = [p for p in pending if p[1] is None or p[1] <= now]
            if ready:
                base = ready[0][0]
                by_seq = {s: a for s, a in ready}
                span = (ready[-1][0] - base) & 0xFFFF
                arrivals = [by_seq.get((base + i) & 0xFFFF) for i in range(span + 1)]
                arrivals_us = [None if a is None else int(a * 1e6) for a in arrivals]
                if any(a is not None for a in arrivals_us):
                    packet = build_transport_feedback(1, 2, base, arrivals_us, count)
                    count += 1
                    results = history.on_feedback(parse_transport_feedback(packet, 4))
                    estimator.on_packet_results(results, now)
                pending = [p for p in pending if not (p[1] is None or p[1] <= now)]
            trace.append((now, estimator.estimate_at(now)))
            next_feedback += 0.1
    return trace


def test_inter_arrival_groups_bursts_of_5_ms() -> None:
    ia = InterArrival()
    assert ia.add(0.000, 1.000) is None
    assert ia.add(0.004, 1.004) is None  # same group
    assert ia.add(0.010, 1.012) is None  # second group starts, first has no predecessor
    assert ia.add(0.011, 1.013) is None
    deltas = ia.add(0.020, 1.030)  # third group starts: second completes
    assert deltas is not None
    send_delta, arrival_delta, arrival = deltas
    assert send_delta == pytest.approx(0.007)
    assert arrival_delta == pytest.approx(0.009)
    assert arrival == pytest.approx(1.013)
    assert ia.add(0.005, 2.0) is None  # reordered, ignored


def test_inter_arrival_burst_released_by_a_queue_joins_the_group() -> None:
    ia = InterArrival()
    ia.add(0.000, 1.000)
    # Sent 20 ms later but arrives 1 ms after: a queue released it in a burst.
    assert ia.add(0.020, 1.001) is None
    ia.add(0.040, 1.040)
    assert ia.add(0.060, 1.060) == pytest.approx((0.040 - 0.020, 1.040 - 1.001, 1.040))


def test_trendline_slope_positive_when_queue_builds() -> None:
    building = TrendlineFilter()
    flat = TrendlineFilter()
    trend_up = trend_flat = 0.0
    for i in range(40):
        trend_up = building.update(2.0, i * 10.0)  # every group 2 ms later than sent
        trend_flat = flat.update(0.0, i * 10.0)
    assert trend_up > 12.5
    assert trend_flat == 0.0


def test_overuse_detector_needs_sustained_trend_and_adapts_threshold() -> None:
    detector = OveruseDetector()
    assert detector.detect(20.0, 5.0, 0.0) is BandwidthUsage.NORMAL  # first sample: not yet
    assert detector.detect(21.0, 10.0, 10.0) is BandwidthUsage.OVERUSING
    assert detector.detect(-20.0, 10.0, 20.0) is BandwidthUsage.UNDERUSING
    assert detector.detect(1.0, 10.0, 30.0) is BandwidthUsage.NORMAL
    # A long calm period lowers the threshold towards its floor of 6.
    for i in range(200):
        detector.detect(0.0, 10.0, 40.0 + i * 10)
    assert detector.threshold == pytest.approx(6.0)


@pytest.mark.parametrize("capacity", [500_000, 1_500_000, 4_000_000])
def test_converges_under_link_capacity(capacity: int) -> None:
    estimator = BandwidthEstimator(initial_bitrate=300_000)
    trace = run(estimator, Link(capacity), seconds=45)
    late = [e for t, e in trace if t > 35]  # 8%/s from 300 kbit/s reaches 4 Mbit/s in ~33 s
    assert max(late) < 1.15 * capacity, f"overshoots {capacity}: {max(late)}"
    assert sum(late) / len(late) > 0.5 * capacity, f"underuses {capacity}: {sum(late) / len(late)}"


def test_wifi_like_jitter_without_congestion_does_not_collapse_the_estimate() -> None:
    # Up to 10 ms of random extra delay per packet (reordering-free arrivals are not
    # guaranteed), 1% loss, plenty of capacity, the sender app-limited at 1.2 Mbit/s.
    estimator = BandwidthEstimator(initial_bitrate=1_200_000)
    trace = run(estimator, Link(20_000_000, loss=0.01, jitter=0.010), seconds=30, app_limit=1_200_000)
    assert min(e for t, e in trace if t > 5) >= 1_000_000
    assert estimator.detector.state is not BandwidthUsage.OVERUSING


def test_capacity_drop_is_followed_within_seconds() -> None:
    estimator = BandwidthEstimator(initial_bitrate=2_000_000)
    link = Link(3_000_000)
    history = SendHistory()
    run(estimator, link, seconds=10, history=history)
    assert estimator.estimate_at(10.0) > 1_500_000
    link.capacity = 500_000
    trace = run(estimator, link, seconds=10, start=10.0, history=history)
    fit = next((t for t, e in trace if e <= 500_000), None)
    assert fit is not None and fit - 10.0 < 3.0, f"estimate fit 500 kbit/s only at {fit}"
    assert max(e for t, e in trace if t > 15) < 600_000


def test_loss_above_10_percent_decreases_below_2_percent_does_not() -> None:
    lossy = BandwidthEstimator(initial_bitrate=1_000_000)
    run(lossy, Link(50_000_000, loss=0.2), seconds=5, app_limit=1_000_000)
    assert lossy.loss_based < 500_000
    assert lossy.estimate_at(5.0) == int(lossy.loss_based)
    clean = BandwidthEstimator(initial_bitrate=1_000_000)
    run(clean, Link(50_000_000, loss=0.01), seconds=5, app_limit=1_000_000)
    assert clean.loss_based >= 1_000_000
    assert clean.estimate_at(5.0) >= 1_000_000


def test_remb_only_subscriber_and_remb_as_cap() -> None:
    estimator = BandwidthEstimator(initial_bitrate=600_000)
    estimator.on_remb(250_000, now=1.0)
    assert estimator.estimate_at(1.5) == 250_000
    assert estimator.dump(1.5)["transport_cc"] is False
    estimator.on_remb(2_000_000, now=2.0)
    assert estimator.estimate_at(2.5) == 2_000_000
    # Heavy loss in receiver reports lowers it.
    estimator.on_loss_fraction(0.3, now=3.0)
    assert estimator.estimate_at(3.0) < 2_000_000
    # A stale REMB is ignored.
    assert estimator.estimate_at(20.0) == int(estimator.loss_based)
    # With transport-cc, a REMB caps the estimate.
    with_twcc = BandwidthEstimator(initial_bitrate=1_000_000)
    run(with_twcc, Link(10_000_000), seconds=2, app_limit=1_000_000)
    with_twcc.on_remb(400_000, now=2.0)
    assert with_twcc.estimate_at(2.1) == 400_000


def test_rejects_inconsistent_limits() -> None:
    with pytest.raises(ValueError, match="min_bitrate"):
        BandwidthEstimator(initial_bitrate=10_000, min_bitrate=30_000)


@settings(max_examples=30, deadline=None)
@given(
    results=st.lists(
        st.tuples(st.floats(0, 0.2), st.one_of(st.none(), st.floats(0, 0.5)), st.integers(50, 1500)),
        max_size=200,
    )
)
def test_any_feedback_keeps_the_estimate_within_bounds(
    results: list[tuple[float, float | None, int]],
) -> None:
    estimator = BandwidthEstimator(initial_bitrate=500_000, min_bitrate=50_000, max_bitrate=5_000_000)
    t = 0.0
    packets = []
    for i, (gap, delay, size) in enumerate(results):
        t += gap
        packets.append(PacketResult(i, t, size, None if delay is None else t + delay))
    for k in range(0, len(packets), 10):
        estimator.on_packet_results(packets[k : k + 10], now=packets[k].send_time + 0.1)
        assert 50_000 <= estimator.estimate_at(t) <= 5_000_000


def _probe_results(cluster_rate: float, link_rate: float, first_seq: int) -> list[PacketResult]:
    out = []
    busy = 0.0
    for i in range(10):
        send = 10.0 + i * PACKET * 8 / cluster_rate
        busy = max(send, busy) + PACKET * 8 / link_rate
        out.append(PacketResult(first_seq + i, send, PACKET, busy + 0.02))
    return out


def test_probe_controller_probes_when_held_back_and_stable() -> None:
    probes = ProbeController(interval=5.0, stable_for=3.0)
    assert probes.decide(10.0, estimate=500_000, desired=450_000, last_decrease=None) is None  # nothing held
    assert probes.decide(10.0, estimate=500_000, desired=2_000_000, last_decrease=8.0) is None  # not stable
    cluster = probes.decide(10.0, estimate=500_000, desired=2_000_000, last_decrease=5.0)
    assert cluster is not None and cluster.bitrate == 1_000_000
    assert probes.decide(10.1, estimate=500_000, desired=2_000_000, last_decrease=5.0) is None  # running
    for i in range(10):
        probes.add_probe_packet(100 + i)
    results = _probe_results(1_000_000, 5_000_000, 100)
    assert probes.on_packet_results(results[:5]) is None  # not all feedback yet
    measured = probes.on_packet_results(results[5:])
    assert measured is not None and 900_000 <= measured <= 1_050_000
    estimator = BandwidthEstimator(initial_bitrate=500_000)
    estimator.apply_probe(measured, now=10.2)
    assert estimator.delay_based >= 0.95 * 900_000


def test_probe_through_a_narrow_link_measures_the_link_and_backs_off() -> None:
    probes = ProbeController(interval=5.0, stable_for=0.0)
    cluster = probes.decide(10.0, estimate=500_000, desired=2_000_000, last_decrease=None)
    assert cluster is not None
    for i in range(10):
        probes.add_probe_packet(i)
    # The link carries only 400 kbit/s: no better than the estimate, a failure.
    assert probes.on_packet_results(_probe_results(1_000_000, 400_000, 0)) is None
    assert probes.interval == 10.0
    assert probes.decide(14.0, estimate=500_000, desired=2_000_000, last_decrease=None) is None
    second = probes.decide(20.5, estimate=500_000, desired=2_000_000, last_decrease=None)
    assert second is not None and second.cluster_id == cluster.cluster_id + 1
    # No feedback at all: times out and counts as failed.
    probes.add_probe_packet(50)
    assert probes.decide(23.0, estimate=500_000, desired=2_000_000, last_decrease=None) is None
    assert probes.active is None and probes.interval == 15.0  # capped at MAX_INTERVAL


#: A transport-cc feedback Chromium (in a namespace of the shaped-link lab, link unlimited)
#: sent about a probe cluster: media 1092-1094, five padding packets 1095-1099 stamped 3 ms
#: apart (the burst left at once) and media 1100. Every packet up to 1099 arrived at the same
#: 250 us tick. (base sequence, reference time, feedback count, deltas in ticks)
CHROMIUM_PROBE_FEEDBACK = (1092, 16357, 166, (204, 0, 0, 0, 0, 0, 0, 0, 87))
#: What the SFU recorded for those sequence numbers: (send time in seconds, size).
CHROMIUM_PROBE_SENT = (
    (11.035389, 101),
    (11.035922, 97),
    (11.036005, 862),
    (11.039355, 283),
    (11.042355, 283),
    (11.045355, 283),
    (11.048355, 283),
    (11.051355, 283),
    (11.058477, 95),
)


#: The same through the lab's 500 kbit/s tbf (a 1600-byte bucket): media 1851-1853, a probe
#: cluster 1854-1859 stamped for 793 kbit/s (sent at once), padding 1860-1862 sent with it.
#: The bucket let 1854-1857 through at one tick; 1858 and 1859 came at the link's rate.
CHROMIUM_BUCKET_FEEDBACK = (1851, 27456, 185, (124, 9, 33, 63, 0, 0, 0, 4, 22, 32, 11, 22))
CHROMIUM_BUCKET_SENT = (
    (1757.213506, 98),
    (1757.217183, 745),
    (1757.225358, 92),
    (1757.243453, 283),
    (1757.246307, 283),
    (1757.249161, 283),
    (1757.252015, 283),
    (1757.254869, 283),
    (1757.257723, 283),
    (1757.240598, 283),
    (1757.240598, 283),
    (1757.240598, 283),
)


def _recorded(
    recorded: tuple[int, int, int, tuple[int | None, ...]], sent: tuple[tuple[float, int], ...]
) -> list[PacketResult]:
    """The :class:`PacketResult` s of a recorded feedback (through its bytes and a
    :class:`SendHistory` holding the recorded send times and sizes)."""
    history = SendHistory()
    base, reference, count, deltas = recorded
    for _ in range(base):
        history.next_sequence(0.0, 100)
    for send_time, size in sent:
        history.next_sequence(send_time, size)
    arrivals: list[int | None] = []
    at = reference * 64_000
    for delta in deltas:
        if delta is None:
            arrivals.append(None)
        else:
            at += 250 * delta
            arrivals.append(at)
    feedback = parse_transport_feedback(build_transport_feedback(1, 2, base, arrivals, count), 4)
    assert feedback.deltas == deltas
    return history.on_feedback(feedback)


def test_probe_through_a_token_bucket_is_measured_behind_its_burst() -> None:
    """The packets a token bucket let through at once say nothing of its rate: the probe is
    measured on those that came after (412 kbit/s here, under the 401 kbit/s estimate with the
    margin: a failure), not over the whole cluster (1.7 Mbit/s: a success at 793 kbit/s, which
    lifted the estimate past the link and cost a freeze)."""
    results = _recorded(CHROMIUM_BUCKET_FEEDBACK, CHROMIUM_BUCKET_SENT)
    probes = ProbeController(interval=5.0, stable_for=0.0)
    assert probes.decide(1757.24, estimate=401_217, desired=793_238, last_decrease=None) is not None
    for sequence in range(1854, 1860):
        probes.add_probe_packet(sequence)
    assert probes.on_packet_results(results) is None
    assert probes.probes_succeeded == 0 and probes.interval == 10.0
    # The same cluster had the link been unlimited (all at one tick): a success at its rate.
    fast = [
        PacketResult(r.sequence, r.send_time, r.size, 1757.24125) if 1854 <= r.sequence < 1860 else r
        for r in results
    ]
    probes = ProbeController(interval=5.0, stable_for=0.0)
    assert probes.decide(1757.24, estimate=401_217, desired=793_238, last_decrease=None) is not None
    for sequence in range(1854, 1860):
        probes.add_probe_packet(sequence)
    measured = probes.on_packet_results(fast)
    assert measured is not None and abs(measured - 793_238) < 1_000


def test_probe_arriving_within_one_feedback_tick_is_measured_at_its_send_rate() -> None:
    """A cluster faster than the receiver's clock resolution arrived faster than it was sent:
    a success at the rate it was sent, not a failure (which doubled the wait before the next
    probe and left the climb after a lifted limit to 8% a second)."""
    results = _recorded(CHROMIUM_PROBE_FEEDBACK, CHROMIUM_PROBE_SENT)
    probes = ProbeController(interval=5.0, stable_for=0.0)
    assert probes.decide(11.0, estimate=213_580, desired=800_000, last_decrease=None) is not None
    for sequence in range(1095, 1100):
        probes.add_probe_packet(sequence)
    measured = probes.on_packet_results(results)
    # The five padding packets were stamped 3 ms apart: 4 x 283 bytes in 12 ms.
    assert measured == int(4 * 283 * 8 / 0.012)
    assert probes.probes_succeeded == 1 and probes.interval == 5.0


@pytest.mark.parametrize("bitrate", [60_000, 200_000, 440_000, 1_000_000, 5_000_000])
def test_probe_cluster_is_stamped_at_its_bitrate(bitrate: int) -> None:
    """However few packets the target needs, the send times a cluster is stamped with put it at
    its bitrate (the minimum count lasts longer, it does not claim a higher rate)."""
    probes = ProbeController(interval=5.0, stable_for=0.0)
    cluster = probes.decide(10.0, estimate=bitrate // 2, desired=bitrate, last_decrease=None)
    assert cluster is not None and cluster.bitrate == bitrate
    count, spacing = cluster.plan(PACKET * 8)
    assert count >= cluster.min_packets and (count - 1) * spacing >= cluster.duration - spacing
    for i in range(count):
        probes.add_probe_packet(i)
    # An unlimited link: every packet arrives 20 ms after it was sent.
    results = [PacketResult(i, 10.0 + i * spacing, PACKET, 10.02 + i * spacing) for i in range(count)]
    measured = probes.on_packet_results(results)
    assert measured is not None and abs(measured - bitrate) <= bitrate * 0.001
    # Through a link at 60% of it, the link is what is measured.
    link = Link(capacity=0.6 * bitrate, queue_limit=10.0)
    probes = ProbeController(interval=5.0, stable_for=0.0)
    assert probes.decide(10.0, estimate=bitrate // 4, desired=bitrate // 2, last_decrease=None) is not None
    for i in range(count):
        probes.add_probe_packet(i)
    arrivals = [link.arrival(10.0, PACKET) for _ in range(count)]  # the burst leaves at once
    results = [PacketResult(i, 10.0 + i * spacing, PACKET, arrivals[i]) for i in range(count)]
    measured = probes.on_packet_results(results)
    assert measured is not None and 0.5 * bitrate <= measured <= 0.6 * bitrate


def test_publisher_uplink_estimate_climbs_back_after_a_cut_though_the_publisher_sends_little() -> None:
    """A cut (here a queue building for a second) lowers the REMB to a publisher to 85% of what
    arrives; the publisher then sends little (a simulcast publisher drops its upper layers), and
    the estimate still climbs back, beyond 1.5x what arrives, until the next overuse."""
    estimator = ReceiveSideEstimator(2_000_000)
    frame, now, timestamp = 1 / 30, 0.0, 0

    def frames(seconds: float, arrival_gap: float, size: int) -> None:
        nonlocal now, timestamp
        for _ in range(int(seconds / frame)):
            timestamp = (timestamp + 3000) & 0xFFFFFFFF
            now += arrival_gap
            estimator.on_packet(timestamp, 1 << 32, 90_000.0, now, size)

    frames(3, frame, 4000)  # ~1 Mbit/s, no queue
    assert estimator.estimate(2_000_000) == 2_000_000
    frames(1.5, frame * 1.3, 4000)  # a queue builds: overuse
    cut = estimator.estimate(2_000_000)
    assert cut < 1_000_000
    frames(30, frame, 500)  # the publisher sends ~120 kbit/s now, no queue
    assert estimator.estimate(2_000_000) > max(2 * cut, 1.5 * 120_000 + 10_000)


def test_publisher_uplink_cut_by_a_stall_starts_from_the_rate_before_it() -> None:
    """The sender (or the SFU) stalls for most of a 0.5 s window on a loaded host: the delay
    spike reads as an overuse, and the cut is to 85% of what arrived over the last 2 s, not of
    the stalled window's few packets."""
    estimator = ReceiveSideEstimator(4_000_000)
    frame, now, timestamp = 1 / 30, 0.0, 0
    for _ in range(90):  # 3 s at ~1 Mbit/s
        timestamp += 3000
        now += frame
        estimator.on_packet(timestamp, 1 << 32, 90_000.0, now, 4000)
    # 0.45 s without a packet, then the frames sent meanwhile arrive late and slowly: a queue.
    now += 0.45
    for _ in range(30):
        timestamp += 3000
        now += frame * 1.3
        estimator.on_packet(timestamp, 1 << 32, 90_000.0, now, 4000)
    cut = estimator.estimate(4_000_000)
    assert 0.85 * 0.9 * 960_000 <= cut < 4_000_000
