"""A GCC-like send-side bandwidth estimator for one subscriber transport, and a probe controller.

Sans-I/O: time comes in as ``now`` (seconds, monotonic), packets as
:class:`~salon.media.twcc.PacketResult` s from the transport-cc feedback, REMB values and
receiver-report loss fractions as plain numbers; :attr:`BandwidthEstimator.estimate` is the
output, in bits per second. The design follows Google Congestion Control
(draft-ietf-rmcat-gcc-02 and libwebrtc's goog_cc), simplified:

* **Delay-based.** Packets are grouped by send time into bursts of 5 ms
  (:class:`InterArrival`); between consecutive groups the one-way delay variation is
  ``(arrival delta) - (send delta)``. A :class:`TrendlineFilter` accumulates and smooths it and
  fits a line over the last 20 groups: the slope says whether queues are building. An
  :class:`OveruseDetector` compares the slope (scaled) with an adaptive threshold and says
  *overusing*, *underusing* or *normal*. An :class:`AimdRateController` then decreases to 85% of
  the throughput the receiver measured on overuse, holds on underuse, and increases otherwise
  (8% per second while far from the last decrease, about one packet per response time near it).
* **Loss-based.** Over each feedback interval of at least 20 packets: loss under 2% increases
  the loss-based estimate by 8% per second (and 10 s after the last heavy loss it stops
  limiting: it follows the delay-based estimate), loss over 10% decreases it by half the loss
  fraction, in between holds.
* **REMB.** A subscriber that sends only REMB (aiortc does) gets the REMB value; with both, the
  REMB caps the estimate.

The estimate is the minimum of the delay-based and loss-based estimates (and REMB), clamped to
``[min_bitrate, max_bitrate]``.

:class:`ProbeController` decides when to probe (layers are held back and the estimate has been
stable for a while) and evaluates a probe cluster's feedback: the rate the receiver saw while
the cluster arrived, which, if higher than the estimate, lifts it.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from salon.media.twcc import TICK_US, PacketResult

__all__ = [
    "AimdRateController",
    "BandwidthEstimator",
    "BandwidthUsage",
    "InterArrival",
    "OveruseDetector",
    "ProbeCluster",
    "ProbeController",
    "ReceiveSideEstimator",
    "TrendlineFilter",
]


class BandwidthUsage(enum.Enum):
    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


# --- Delay-based ------------------------------------------------------------------------------


BURST_SECONDS = 0.005
"""Packets sent within this time of a group's first packet belong to the group."""


class InterArrival:
    """Groups packets into 5 ms send bursts and yields the deltas between completed groups.

    :meth:`add` returns ``None`` until a group completes, then ``(send_delta, arrival_delta,
    arrival_time)`` in seconds for it against the group before (``arrival_time`` is the
    completed group's last arrival). Packets whose send time goes backwards (reordered in the
    feedback) are ignored. As in libwebrtc, a packet arriving within 5 ms of the group's last
    arrival and with a smaller propagation delay joins the group even if sent later (a burst
    released by a queue).
    """

    __slots__ = ("_current", "_previous")

    def __init__(self) -> None:
        # [first_send, last_send, last_arrival] of the group being built and the one before.
        self._current: list[float] | None = None
        self._previous: list[float] | None = None

    def add(self, send_time: float, arrival_time: float) -> tuple[float, float, float] | None:
        current = self._current
        if current is None:
            self._current = [send_time, send_time, arrival_time]
            return None
        if send_time < current[0]:
            return None  # reordered
        if self._belongs(current, send_time, arrival_time):
            current[1] = max(current[1], send_time)
            current[2] = max(current[2], arrival_time)
            return None
        result = None
        previous = self._previous
        if previous is not None:
            result = (current[1] - previous[1], current[2] - previous[2], current[2])
        self._previous = current
        self._current = [send_time, send_time, arrival_time]
        return result

    @staticmethod
    def _belongs(current: list[float], send_time: float, arrival_time: float) -> bool:
        if send_time - current[0] <= BURST_SECONDS:
            return True
        arrival_delta = arrival_time - current[2]
        propagation_delta = arrival_delta - (send_time - current[1])
        return propagation_delta < 0 and arrival_delta <= BURST_SECONDS


class TrendlineFilter:
    """Smoothed accumulated delay and the slope of its linear fit over a window of groups.

    :meth:`update` takes one group's delay variation (ms) and arrival time (ms) and returns the
    *modified trend*: ``slope * min(groups, 60) * gain``, comparable to the detector threshold.
    """

    __slots__ = (
        "_accumulated",
        "_count",
        "_first_arrival",
        "_gain",
        "_smoothed",
        "_smoothing",
        "_window",
        "_window_size",
    )

    def __init__(self, window: int = 20, smoothing: float = 0.9, gain: float = 4.0) -> None:
        self._window: deque[tuple[float, float]] = deque(maxlen=window)
        self._window_size = window
        self._smoothing = smoothing
        self._gain = gain
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._count = 0
        self._first_arrival: float | None = None

    def update(self, delay_variation_ms: float, arrival_ms: float) -> float:
        if self._first_arrival is None:
            self._first_arrival = arrival_ms
        self._count += 1
        self._accumulated += delay_variation_ms
        self._smoothed = self._smoothing * self._smoothed + (1 - self._smoothing) * self._accumulated
        self._window.append((arrival_ms - self._first_arrival, self._smoothed))
        if len(self._window) < self._window_size:
            return 0.0
        slope = _slope(self._window)
        return slope * min(self._count, 60) * self._gain


def _slope(points: Sequence[tuple[float, float]] | deque[tuple[float, float]]) -> float:
    """Least-squares slope, in one pass with x relative to the first point (precision over
    long calls: the x values are milliseconds since the first group)."""
    n = len(points)
    x0 = points[0][0]
    sx = sy = sxx = sxy = 0.0
    for x, y in points:
        x -= x0
        sx += x
        sy += y
        sxx += x * x
        sxy += x * y
    denominator = n * sxx - sx * sx
    return (n * sxy - sx * sy) / denominator if denominator else 0.0


class OveruseDetector:
    """Compares the modified trend with an adaptive threshold (draft-ietf-rmcat-gcc-02 §5.4-5.5).

    Overuse is signalled when the trend stays above the threshold for more than 10 ms and is
    not falling; underuse when it is below minus the threshold. The threshold follows the trend
    (slowly up, faster down) within [6, 600], ignoring spikes more than 15 above it.
    """

    K_UP = 0.0087
    K_DOWN = 0.039
    OVERUSE_TIME_MS = 10.0

    __slots__ = ("_last_update_ms", "_overuse_count", "_overuse_ms", "_prev_trend", "state", "threshold")

    def __init__(self, threshold: float = 12.5) -> None:
        self.threshold = threshold
        self.state = BandwidthUsage.NORMAL
        self._overuse_ms = -1.0
        self._overuse_count = 0
        self._prev_trend = 0.0
        self._last_update_ms: float | None = None

    def detect(self, trend: float, send_delta_ms: float, now_ms: float) -> BandwidthUsage:
        if trend > self.threshold:
            if self._overuse_ms < 0:
                self._overuse_ms = send_delta_ms / 2
            else:
                self._overuse_ms += send_delta_ms
            self._overuse_count += 1
            if (
                self._overuse_ms > self.OVERUSE_TIME_MS
                and self._overuse_count > 1
                and trend >= self._prev_trend
            ):
                self._overuse_ms = 0.0
                self._overuse_count = 0
                self.state = BandwidthUsage.OVERUSING
        elif trend < -self.threshold:
            self._overuse_ms = -1.0
            self._overuse_count = 0
            self.state = BandwidthUsage.UNDERUSING
        else:
            self._overuse_ms = -1.0
            self._overuse_count = 0
            self.state = BandwidthUsage.NORMAL
        self._prev_trend = trend
        self._adapt(trend, now_ms)
        return self.state

    def _adapt(self, trend: float, now_ms: float) -> None:
        last = self._last_update_ms
        self._last_update_ms = now_ms
        if last is None:
            return
        if abs(trend) > self.threshold + 15:
            return
        k = self.K_DOWN if abs(trend) < self.threshold else self.K_UP
        dt = min(now_ms - last, 100.0)
        self.threshold = min(600.0, max(6.0, self.threshold + k * (abs(trend) - self.threshold) * dt))


class AimdRateController:
    """Additive-increase / multiplicative-decrease on the detector's signal.

    ``update(usage, acked_bitrate, now)`` returns the new delay-based rate. Decrease goes to
    ``beta`` (0.85) times the throughput the receiver acknowledged; the rate is never raised
    above 1.5 x that throughput + 10 kbit/s (it would not be measurable). Increase is
    multiplicative (8%/s) until the rate is within 3 standard deviations of the average
    decrease point, additive (one 1200-byte packet per response time) near it.
    When the sender is application-limited the cap stops increases but does not lower the rate.
    ``cap_by_throughput=False`` (the publisher's uplink, :class:`ReceiveSideEstimator`) drops
    that cap: see there.
    """

    BETA = 0.85

    __slots__ = ("_avg_max", "_cap_by_throughput", "_last_change", "_var_max", "rate", "rtt")

    def __init__(self, initial_bitrate: float, *, cap_by_throughput: bool = True) -> None:
        self.rate = float(initial_bitrate)
        self._cap_by_throughput = cap_by_throughput
        self.rtt = 0.1
        self._last_change: float | None = None
        self._avg_max: float | None = None  # average acked rate at decreases, kbit/s
        self._var_max = 0.4

    def update(self, usage: BandwidthUsage, acked_bitrate: float | None, now: float) -> float:
        last = self._last_change
        dt = 0.0 if last is None else min(now - last, 1.0)
        if usage is BandwidthUsage.OVERUSING:
            if acked_bitrate is not None and (
                last is None or now - last >= self.rtt or self.rate > acked_bitrate
            ):
                new = self.BETA * acked_bitrate
                if new < self.rate:
                    self._note_decrease(acked_bitrate)
                    self.rate = new
                self._last_change = now
            return self.rate
        if usage is BandwidthUsage.UNDERUSING:
            self._last_change = now
            return self.rate  # hold: let the queues drain
        if last is None:
            self._last_change = now
            return self.rate
        previous = self.rate
        if self._near_max(acked_bitrate):
            response = self.rtt + 0.1
            increased = previous + max(1000.0 * dt, 1200 * 8 / response * dt)
        else:
            increased = previous * 1.08**dt
        if acked_bitrate is not None and self._cap_by_throughput:
            increased = min(increased, max(previous, 1.5 * acked_bitrate + 10_000))
        self.rate = increased
        self._last_change = now
        return self.rate

    def _note_decrease(self, acked: float) -> None:
        kbps = acked / 1000
        if self._avg_max is None:
            self._avg_max = kbps
            return
        if self._avg_max and abs(kbps - self._avg_max) > 3 * (self._var_max * self._avg_max) ** 0.5:
            self._avg_max = kbps  # moved far: start over
        alpha = 0.05
        self._avg_max = (1 - alpha) * self._avg_max + alpha * kbps
        norm = max(self._avg_max, 1.0)
        self._var_max = min(
            2.5, max(0.4, (1 - alpha) * self._var_max + alpha * (self._avg_max - kbps) ** 2 / norm)
        )

    def _near_max(self, acked: float | None) -> bool:
        if self._avg_max is None or acked is None:
            return False
        std: float = (self._var_max * self._avg_max) ** 0.5
        return abs(acked / 1000 - self._avg_max) <= 3 * std

    def set_estimate(self, bitrate: float, now: float) -> None:
        self.rate = float(bitrate)
        self._last_change = now


# --- The estimator ----------------------------------------------------------------------------


class BandwidthEstimator:
    """The send-side estimate of one subscriber transport, in bits per second.

    Feed :meth:`on_packet_results` (transport-cc), :meth:`on_remb`, :meth:`on_loss_fraction`
    (receiver reports, for subscribers without transport-cc) and :meth:`set_rtt`; read
    :attr:`estimate`. :meth:`apply_probe` lifts the delay-based estimate after a successful
    probe.
    """

    LOSS_LOW = 0.02
    LOSS_HIGH = 0.10
    LOSS_MIN_PACKETS = 20
    ACKED_WINDOW = 0.5
    REMB_TIMEOUT = 5.0
    LOSS_RECOVERY = 10.0

    def __init__(
        self,
        initial_bitrate: int = 600_000,
        min_bitrate: int = 30_000,
        max_bitrate: int = 10_000_000,
    ) -> None:
        if not 0 < min_bitrate <= initial_bitrate <= max_bitrate:
            raise ValueError("need 0 < min_bitrate <= initial_bitrate <= max_bitrate")
        self.min_bitrate = min_bitrate
        self.max_bitrate = max_bitrate
        self._inter_arrival = InterArrival()
        self._trendline = TrendlineFilter()
        self.detector = OveruseDetector()
        self._aimd = AimdRateController(initial_bitrate)
        self.delay_based: float = float(initial_bitrate)
        self.loss_based: float = float(initial_bitrate)
        self.remb: int | None = None
        self._remb_time = 0.0
        self._twcc_seen = False
        self._acked: deque[tuple[float, int]] = deque()  # (arrival time, size) of received packets
        self._acked_bytes = 0
        self._loss_received = 0
        self._loss_lost = 0
        self._last_loss_increase: float | None = None
        self.last_loss_fraction = 0.0
        self.last_decrease: float | None = None
        self.last_loss_decrease: float | None = None

    # Inputs

    def set_rtt(self, rtt: float) -> None:
        self._aimd.rtt = max(0.001, min(rtt, 2.0))

    def on_remb(self, bitrate: int, now: float) -> None:
        self.remb = max(0, int(bitrate))
        self._remb_time = now

    def on_loss_fraction(self, fraction: float, now: float) -> None:
        """A loss fraction (0..1) from a receiver report; used only while no transport-cc
        feedback arrives (with it, loss is counted from the feedback)."""
        if not self._twcc_seen:
            if self.remb is not None and fraction > self.LOSS_HIGH:
                self.loss_based = min(self.loss_based, float(self.remb))  # decrease from what is sent
            self._apply_loss(fraction, now)

    def on_packet_results(self, results: Sequence[PacketResult], now: float) -> None:
        if not results:
            return
        self._twcc_seen = True
        usage = self.detector.state
        for result in sorted(results, key=lambda r: r.sequence):
            arrival = result.arrival_time
            if arrival is None:
                self._loss_lost += 1
                continue
            self._loss_received += 1
            self._record_acked(arrival, result.size)
            deltas = self._inter_arrival.add(result.send_time, arrival)
            if deltas is None:
                continue
            send_delta, arrival_delta, group_arrival = deltas
            trend = self._trendline.update((arrival_delta - send_delta) * 1000, group_arrival * 1000)
            usage = self.detector.detect(trend, send_delta * 1000, group_arrival * 1000)
        before = self._aimd.rate
        self.delay_based = self._aimd.update(usage, self.acked_bitrate, now)
        if self.delay_based < before:
            self.last_decrease = now
        total = self._loss_received + self._loss_lost
        if total >= self.LOSS_MIN_PACKETS:
            self._apply_loss(self._loss_lost / total, now)
            self._loss_received = self._loss_lost = 0

    def _record_acked(self, arrival: float, size: int) -> None:
        acked = self._acked
        acked.append((arrival, size))
        self._acked_bytes += size
        while acked and acked[0][0] < arrival - self.ACKED_WINDOW:
            self._acked_bytes -= acked.popleft()[1]

    def _apply_loss(self, fraction: float, now: float) -> None:
        self.last_loss_fraction = fraction
        if fraction > self.LOSS_HIGH:
            self.loss_based = max(self.min_bitrate, self.loss_based * (1 - 0.5 * fraction))
            self.last_decrease = self.last_loss_decrease = now
        elif fraction < self.LOSS_LOW:
            last = self._last_loss_increase
            dt = 1.0 if last is None else min(now - last, 1.0)
            grown = self.loss_based * 1.08**dt
            decreased = self.last_loss_decrease
            if decreased is None or now - decreased >= self.LOSS_RECOVERY:
                # Long without heavy loss: loss no longer limits, delay-based does.
                grown = max(grown, self.delay_based)
            self.loss_based = min(float(self.max_bitrate), grown)
            self._last_loss_increase = now

    def apply_probe(self, bitrate: float, now: float) -> None:
        """A probe measured ``bitrate`` getting through: lift the delay-based (and loss-based)
        estimates to 95% of it if that is higher."""
        target = 0.95 * bitrate
        if target > self.delay_based:
            self._aimd.set_estimate(target, now)
            self.delay_based = target
        self.loss_based = max(self.loss_based, target)

    # Outputs

    @property
    def acked_bitrate(self) -> float | None:
        """Receive rate over the last 0.5 s of arrivals (bit/s), ``None`` until enough data."""
        acked = self._acked
        if len(acked) < 2:
            return None
        span = acked[-1][0] - acked[0][0]
        if span < 0.1:
            return None
        return self._acked_bytes * 8 / max(span, self.ACKED_WINDOW)

    def estimate_at(self, now: float) -> int:
        """The estimate at ``now``: min of delay-based, loss-based and a fresh REMB."""
        remb = self.remb if self.remb is not None and now - self._remb_time <= self.REMB_TIMEOUT else None
        if self._twcc_seen:
            value = min(self.delay_based, self.loss_based)
            if remb is not None:
                value = min(value, remb)
        elif remb is not None:
            value = min(remb, self.loss_based) if self.last_loss_fraction > self.LOSS_HIGH else remb
        else:
            value = self.loss_based
        return int(max(self.min_bitrate, min(self.max_bitrate, value)))

    @property
    def estimate(self) -> int:
        """The estimate ignoring REMB freshness (see :meth:`estimate_at`)."""
        return self.estimate_at(self._remb_time)

    def dump(self, now: float) -> dict[str, object]:
        acked = self.acked_bitrate
        return {
            "estimate": self.estimate_at(now),
            "delay_based": int(self.delay_based),
            "loss_based": int(self.loss_based),
            "remb": self.remb,
            "acked_bitrate": None if acked is None else int(acked),
            "usage": self.detector.state.value,
            "threshold": round(self.detector.threshold, 2),
            "loss_fraction": round(self.last_loss_fraction, 4),
            "transport_cc": self._twcc_seen,
            "rtt": round(self._aimd.rtt, 4),
        }


# --- Receive side (toward publishers) ---------------------------------------------------------


class ReceiveSideEstimator:
    """The publisher's uplink as the SFU measures it: the value of the REMB sent to it.

    The same delay-based machinery as the send side, run where the packets arrive: send times
    come from the publisher's abs-send-time extension (6.18 fixed-point seconds, wrapping every
    64 s) or, when it did not negotiate it, from the RTP timestamp (one group per frame, as
    libwebrtc's single-stream estimator); arrival times are the SFU's clock. The rate starts at
    ``max_bitrate`` (nothing known: do not hold the publisher down) and only an overuse of the
    uplink lowers it, to 85% of the rate received. Subscribers' downlinks play no part: each
    gets what its own link carries from the layers the publisher sends (allocator).

    Unlike the send side, the rate climbs back (8% a second, additively near the last
    decrease points) without the cap of 1.5x the rate received: the publisher only sends
    what the REMB allows, so after a cut (a real overuse, or a false one from a loaded host's
    scheduling delays) a simulcast publisher that dropped its upper layers would never send
    enough to lift the cap, and the SFU cannot probe a publisher. An uplink that cannot carry
    the climb shows an overuse again and is cut again.
    """

    __slots__ = (
        "_aimd",
        "_detector",
        "_inter_arrival",
        "_last_raw",
        "_max_bitrate",
        "_send",
        "_trend",
        "_window_bytes",
        "_window_rates",
        "_window_start",
        "incoming_bitrate",
    )

    ACKED_WINDOW = 0.5
    #: The rate a cut starts from is the highest of this many windows (2 s): a stall of the
    #: sender or of this process for part of one window (a loaded host) is also the delay
    #: spike that signals the overuse, and cutting to 85% of that window's rate collapsed the
    #: REMB to a few tens of kbit/s.
    RATE_WINDOWS = 4

    def __init__(self, max_bitrate: int) -> None:
        self._inter_arrival = InterArrival()
        self._trend = TrendlineFilter()
        self._detector = OveruseDetector()
        self._aimd = AimdRateController(max_bitrate, cap_by_throughput=False)
        self._max_bitrate = float(max_bitrate)
        self._last_raw: int | None = None
        self._send = 0.0
        self._window_start: float | None = None
        self._window_bytes = 0
        #: Bit/s received: the highest of the last RATE_WINDOWS complete windows (None before
        #: the first).
        self.incoming_bitrate: float | None = None
        self._window_rates: deque[float] = deque(maxlen=self.RATE_WINDOWS)

    @property
    def usage(self) -> BandwidthUsage:
        return self._detector.state

    def on_packet(self, send_raw: int, wrap: int, ticks_per_second: float, arrival: float, size: int) -> None:
        """One received packet: ``send_raw`` is its abs-send-time value (``wrap`` = 1 << 24,
        ``ticks_per_second`` = 262144) or its RTP timestamp (1 << 32, the clock rate); ``wrap``
        must be a power of two."""
        last = self._last_raw
        if last is None:
            send = 0.0
        else:
            delta = (send_raw - last) & (wrap - 1)
            if delta >= wrap >> 1:
                delta -= wrap
            send = self._send + delta / ticks_per_second
        self._send = send
        self._last_raw = send_raw
        # Incoming rate over windows of at least ACKED_WINDOW: one addition per packet.
        self._window_bytes += size
        started = self._window_start
        if started is None:
            self._window_start = arrival
        elif arrival - started >= self.ACKED_WINDOW:
            self._window_rates.append(self._window_bytes * 8 / (arrival - started))
            self.incoming_bitrate = max(self._window_rates)
            self._window_start = arrival
            self._window_bytes = 0
        # Fast path (most packets): sent within the current 5 ms group, in order.
        group = self._inter_arrival._current
        if group is not None and 0.0 <= send - group[0] <= BURST_SECONDS:
            if send > group[1]:
                group[1] = send
            if arrival > group[2]:
                group[2] = arrival
            return
        deltas = self._inter_arrival.add(send, arrival)
        if deltas is None:
            return
        send_delta, arrival_delta, group_arrival = deltas
        trend = self._trend.update((arrival_delta - send_delta) * 1000, group_arrival * 1000)
        usage = self._detector.detect(trend, send_delta * 1000, group_arrival * 1000)
        aimd = self._aimd
        if aimd.update(usage, self.incoming_bitrate, arrival) > self._max_bitrate:
            aimd.rate = self._max_bitrate

    def estimate(self, max_bitrate: int) -> int:
        return int(max(30_000, min(max_bitrate, self._aimd.rate)))


# --- Probing ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeCluster:
    """A request to send padding / RTX at ``bitrate`` for ``duration`` seconds (at least
    ``min_packets`` packets), tagged ``cluster_id`` so its feedback can be evaluated."""

    cluster_id: int
    bitrate: int
    duration: float
    min_packets: int

    def plan(self, packet_bits: int) -> tuple[int, float]:
        """``(count, spacing)`` for sending the cluster in packets of ``packet_bits``: at least
        ``min_packets``, enough for ``duration`` at ``bitrate``; ``spacing`` (seconds between
        the send times they are stamped with) puts them at ``bitrate``, so a cluster of the
        minimum count lasts longer than ``duration`` rather than claiming a higher rate (five
        padding packets in 15 ms claimed 755 kbit/s whatever the target: a probe on a
        500 kbit/s link "measured" that and lifted the estimate past the link)."""
        count = max(self.min_packets, int(self.bitrate * self.duration / packet_bits) + 1)
        return count, packet_bits / self.bitrate


class ProbeController:
    """When to probe and what a probe found.

    :meth:`decide` asks for a probe when the allocation holds layers back (``desired`` above
    the estimate), the estimate has not decreased for ``stable_for`` seconds and no probe is
    running; the target is the desired rate capped at twice the estimate. After a failed probe
    the interval doubles (up to :attr:`MAX_INTERVAL`); after a success it resets.

    The transport sends the cluster, remembering which transport-wide sequence numbers carried
    it (:meth:`add_probe_packet`); :meth:`on_packet_results` evaluates the cluster once every
    packet of it has feedback and returns the measured rate (the lower of send and receive
    rates) when it beat the estimate — feed it to
    :meth:`BandwidthEstimator.apply_probe`.
    """

    DURATION = 0.015
    #: Padding packets are small (283 bytes): ten, to pass a token bucket's burst (the lab's
    #: tbf at 500 kbit/s holds 1600 bytes, five and a half of them) and leave packets that
    #: show the rate behind it (:meth:`_evaluate`).
    MIN_PACKETS = 10
    TIMEOUT = 2.0

    #: Longest wait between probes after failed ones (seconds): once a limit lifts, a
    #: subscriber held on a low layer (sending too little for the delay-based estimate to
    #: grow past 1.5x of it) climbs only by probes, so the wait is the floor of its climb
    #: back (it was 60 s: a Chromium subscriber stayed on the lowest layer for 45 s).
    MAX_INTERVAL = 15.0

    def __init__(self, interval: float = 5.0, stable_for: float = 3.0) -> None:
        self.base_interval = interval
        self.interval = interval
        self.stable_for = stable_for
        self._next_id = 1
        self._active: ProbeCluster | None = None
        self._active_since = 0.0
        self._active_estimate = 0
        self._packets: dict[int, PacketResult | None] = {}
        self._last_probe: float | None = None
        self.probes_sent = 0
        self.probes_succeeded = 0

    @property
    def active(self) -> ProbeCluster | None:
        return self._active

    def decide(
        self, now: float, estimate: int, desired: int, last_decrease: float | None
    ) -> ProbeCluster | None:
        if self._active is not None:
            if now - self._active_since > self.TIMEOUT:
                self._finish(success=False)
            else:
                return None
        if desired <= estimate * 1.05:
            return None
        if last_decrease is not None and now - last_decrease < self.stable_for:
            return None
        if self._last_probe is not None and now - self._last_probe < self.interval:
            return None
        target = int(min(desired, 2 * estimate))
        cluster = ProbeCluster(self._next_id, target, self.DURATION, self.MIN_PACKETS)
        self._next_id += 1
        self._active = cluster
        self._active_since = now
        self._active_estimate = estimate
        self._packets = {}
        self._last_probe = now
        self.probes_sent += 1
        return cluster

    def add_probe_packet(self, sequence: int) -> None:
        """The transport sent a probe packet under unwrapped transport-wide ``sequence``."""
        if self._active is not None:
            self._packets[sequence] = None

    def on_packet_results(self, results: Sequence[PacketResult]) -> int | None:
        if self._active is None or not self._packets:
            return None
        for result in results:
            if result.sequence in self._packets:
                self._packets[result.sequence] = result
        if any(r is None for r in self._packets.values()):
            return None
        measured = self._evaluate([r for r in self._packets.values() if r is not None])
        success = measured is not None and measured > self._active_estimate
        self._finish(success)
        return measured if success else None

    @staticmethod
    def _evaluate(packets: list[PacketResult]) -> int | None:
        received = [p for p in packets if p.arrival_time is not None]
        if len(received) < max(2, int(0.8 * len(packets))):
            return None
        sends = sorted(p.send_time for p in packets)
        arrivals = sorted(p.arrival_time for p in received if p.arrival_time is not None)
        send_span = sends[-1] - sends[0]
        if send_span <= 0:
            return None
        # The first packet only opens the interval (as libwebrtc's probe_bitrate_estimator).
        send_bits = sum(p.size for p in packets) * 8 - packets[0].size * 8
        # The receive rate is what the link sustained after the packets that arrived in the
        # first tick: the cluster leaves in a burst, and a token bucket (tc tbf, a policer)
        # lets its burst through at once, so the whole cluster's span measured the bucket (a
        # probe at 793 kbit/s "got through" a 500 kbit/s tbf whose 1600-byte bucket passed
        # five of its six packets in one tick). On a FIFO bottleneck only the first packet
        # arrives in the first tick: the rate over the rest is the same.
        tick = TICK_US / 1e6
        ordered = sorted(received, key=lambda p: p.arrival_time or 0.0)
        first = ordered[0].arrival_time or 0.0
        after = [p for p in ordered if (p.arrival_time or 0.0) - first >= tick]
        if len(after) >= 2:
            recv_bits = sum(p.size for p in after[1:]) * 8
            recv_span = max((after[-1].arrival_time or 0.0) - (after[0].arrival_time or 0.0), tick)
        else:
            # Arrival times come in whole ticks (and a receiver stamps a batch it reads at once
            # alike): a cluster that arrived within a tick or two came faster than can be
            # measured, not infinitely slowly (on an unlimited link Chromium reported a burst
            # of five at one tick, which failed every probe there and left the climb after a
            # lifted limit to 8% a second).
            recv_bits = sum(p.size for p in ordered[1:]) * 8
            recv_span = max(arrivals[-1] - arrivals[0], tick)
        send_rate = send_bits / send_span
        recv_rate = recv_bits / recv_span
        if send_rate > 0 and recv_rate < 0.9 * send_rate:
            return int(recv_rate * 0.95)  # the receive rate is the capacity seen
        return int(min(send_rate, recv_rate))

    def _finish(self, success: bool) -> None:
        self._active = None
        self._packets = {}
        if success:
            self.probes_succeeded += 1
            self.interval = self.base_interval
        else:
            self.interval = min(self.MAX_INTERVAL, self.interval * 2)
