"""The allocator at work on one subscriber transport: layers, quality pauses and probing.

:class:`TransportAllocation` is owned by a :class:`~salon.media.transport.WebRtcTransport`
that sends simulcast video (a transport with only single-encoding streams never runs it:
there is nothing to choose). From the transport's timer:

* every :data:`ALLOCATION_INTERVAL` seconds it builds one
  :class:`~salon.media.allocator.ConsumerInput` per consumer (audio; simulcast video with the
  layers its producer measures, :meth:`~salon.media.producer.Producer.layers`, and the
  subscriber's preferences; the active speaker's stream first among the others), runs the
  transport's allocator on the current estimate
  (:meth:`~salon.media.bandwidth.TransportBandwidth.allocate`) and applies the decisions:
  :meth:`~salon.media.consumer.Consumer.set_layer` (temporal ``None`` when the top temporal
  layer is chosen), or a quality pause / resume
  (:meth:`~salon.media.consumer.Consumer.set_paused` with
  :attr:`~salon.media.consumer.PauseReason.QUALITY`, which the subscriber hears as
  ``video_disabled`` / ``video_enabled`` reason ``quality``). A single-encoding video cannot be
  lowered for one subscriber: its measured bitrate is counted like audio, first and never
  paused. Consumers paused by their subscriber are left out; so are consumers whose layer or
  quality pause was set by hand (``Consumer.allocated`` False). Recorders are not consumers of
  a transport: they take the top layer (the producer's own switcher) and never count here.
* **Probing.** When the allocation holds layers back (``desired`` above ``allocated``) and the
  estimate has not dropped for :data:`PROBE_STABLE_FOR` seconds, the transport pads: RTX
  padding-only packets (:meth:`~salon.media.consumer.Consumer.send_padding`) every
  :data:`PADDING_TICK` seconds, up to :data:`PADDING_SHARE` of the estimate in total with the
  media (at most :data:`MAX_PADDING_BITRATE`), so the subscriber's receive rate, hence its
  REMB or the transport-cc estimate, can grow past what the lower layer alone sends and the
  subscriber climbs back when its link allows. A drop of the estimate stops the padding.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from salon.media.allocator import (
    AUDIO_DEFAULT_BITRATE,
    Allocation,
    ConsumerInput,
    Layer,
    MediaKindClass,
    Preferences,
)

if TYPE_CHECKING:
    from salon.media.bandwidth import TransportBandwidth
    from salon.media.consumer import Consumer, PauseReason

__all__ = [
    "ALLOCATION_INTERVAL",
    "CLEAN_HEADROOM",
    "CUT_BELOW",
    "LOSS_COLLAPSE",
    "MAX_PADDING_BITRATE",
    "MAX_PROBE_FACTOR",
    "PADDING_SHARE",
    "PADDING_TICK",
    "PROBE_STABLE_FOR",
    "TransportAllocation",
]

logger = logging.getLogger(__name__)

#: How often the allocator runs per subscriber transport (seconds).
ALLOCATION_INTERVAL = 0.5
#: Padding is sent in bursts this often while probing (seconds).
PADDING_TICK = 0.05
#: Media + padding stay under this share of the estimate.
PADDING_SHARE = 0.85
#: Padding never exceeds this (bit/s): each packet costs CPU on the SFU.
MAX_PADDING_BITRATE = 1_200_000
#: No padding until the estimate has not dropped for this long (seconds).
PROBE_STABLE_FOR = 2.0
#: A drop of the estimate by more than this share counts as a decrease.
_DROP = 0.05
_PADDING_PACKET_BITS = (12 + 16 + 255) * 8
#: A cut never goes below 70% of the highest rate sent without loss in this window (seconds).
_CLEAN_WINDOW = 5.0
#: Seconds of sending a receiver report's loss is judged against (aiortc reports every 0.5-1.5 s).
_REPORT_SPAN = 1.5
#: Longest wait between probes after failed ones (seconds). A REMB-only probe that fails is
#: lost media on a full link (padding overfills its queue for the second a receiver report
#: takes): at 6 s a 600 kbit/s subscriber on its right layer froze every few seconds.
MAX_PROBE_WAIT = 20.0
#: A probe sends up to this multiple of the budget (media and padding)...
PROBE_FACTOR = 1.25
#: ... growing by PROBE_FACTOR_STEP after each probe that got through without loss, up to
#: this (REMB-only: back to the top layer in a few probes once a limit lifts).
#: (It was 2.0: probes of 1.1 Mbit/s on a 600 kbit/s tbf link lost half of the media too;
#: at 1.5 a failed probe overfills a link by half at most.)
MAX_PROBE_FACTOR = 1.5
PROBE_FACTOR_STEP = 0.25
#: A clean receiver report lets the REMB-only budget grow (8% a second) up to this multiple of
#: the most sent without loss in the last seconds, no further: beyond it only probes prove more.
CLEAN_HEADROOM = 1.25
#: The link collapsed when the estimate is under this share of what the current layers send:
#: a switch down then cuts the old layer at once (:meth:`Consumer.set_layer` ``cut``).
CUT_BELOW = 0.75
#: Receiver-report loss above this means the link carries far less than was sent: the
#: REMB-only budget goes to what got through (sent x (1 - loss)), not half the loss off.
LOSS_COLLAPSE = 0.34


class TransportAllocation:
    """Allocation state of one subscriber transport (see the module docstring)."""

    __slots__ = (
        "_budget",
        "_clean",
        "_cut_waiting",
        "_last_budget_at",
        "_last_cut",
        "_last_drop",
        "_last_estimate",
        "_layout",
        "_next_run",
        "_padding_credit",
        "_padding_sent",
        "_probe_gain",
        "_probe_wait",
        "_sent_history",
        "_sent_rate",
        "active_speaker",
        "bandwidth",
        "last_budget",
        "name",
        "padding_bitrate",
        "runs",
    )

    def __init__(self, bandwidth: TransportBandwidth, name: str = "") -> None:
        self.bandwidth = bandwidth
        #: The transport's id, for the log lines (several subscribers' lines interleave).
        self.name = name
        #: Stream id of the session's active speaker (set by the router), None if unknown.
        self.active_speaker: str | None = None
        self._next_run = 0.0
        self._last_estimate = 0
        #: The budget of the last allocation (bit/s; 0: none yet): the pacer's rate follows it.
        self.last_budget = 0
        self._last_drop: float | None = None
        self._padding_credit = 0.0
        #: Padding bits actually sent since the last allocation (the pacer sends padding only
        #: with its queue empty: less than decided while media waits).
        self._padding_sent = 0
        self._sent_rate = 0
        #: Consumers cut (:meth:`Consumer.set_layer` ``cut``) still waiting for their key frame.
        self._cut_waiting: set[str] = set()
        #: (time, rate decided) of the recent allocations: a receiver report covers about the
        #: last second, sent at what these decided.
        self._sent_history: collections.deque[tuple[float, int, int]] = collections.deque()
        self._budget: float | None = None
        self._last_budget_at = 0.0
        self._probe_wait = PROBE_STABLE_FOR
        self._probe_gain = PROBE_FACTOR
        self._last_cut: float | None = None
        self._layout: tuple[tuple[str, int | None, int | None, bool], ...] = ()
        #: (time, rate sent) of the intervals a loss-free receiver report covered.
        self._clean: collections.deque[tuple[float, float]] = collections.deque()
        #: Padding rate (bit/s) decided by the last allocation (0: not probing).
        self.padding_bitrate = 0
        self.runs = 0

    def inputs(self, consumers: Iterable[Consumer], now: float) -> list[ConsumerInput]:
        """The allocator's view of ``consumers``."""
        out: list[ConsumerInput] = []
        for consumer in consumers:
            if consumer.closed or consumer.paused:
                continue
            producer = consumer.producer
            if consumer.kind == "audio":
                out.append(ConsumerInput(consumer.id, MediaKindClass.AUDIO))
                continue
            if not consumer.simulcast or not consumer.allocated:
                # Fixed cost: what the stream sends (no layer to choose for this subscriber).
                if consumer.forwarding:
                    layers = producer.layers(now)
                    if consumer.simulcast:
                        spatial = consumer.current_layer
                        layers = [layer for layer in layers if layer.spatial == spatial][-1:]
                    rate = max((layer.bitrate for layer in layers), default=0)
                    out.append(ConsumerInput(consumer.id, MediaKindClass.AUDIO, (Layer(0, 0, rate),)))
                continue
            layers = producer.layers(now)
            if not any(layer.bitrate for layer in layers):
                continue  # nothing measured yet (or nothing flowing): nothing to decide
            out.append(
                ConsumerInput(
                    consumer.id,
                    MediaKindClass.SCREEN if producer.screen else MediaKindClass.VIDEO,
                    layers,
                    active_speaker=producer.stream_id == self.active_speaker,
                    preferences=Preferences(consumer.max_width, consumer.max_height, consumer.max_frame_rate),
                    keep_frame_rate=True,
                )
            )
        return out

    def budget(self, now: float) -> int:
        """What the allocator may spend (bit/s): the transport-cc estimate, or for a REMB-only
        subscriber (aiortc) :meth:`_remb_only_budget`."""
        bandwidth = self.bandwidth
        if bandwidth.feedback_packets:
            return bandwidth.estimate(now)
        return self._remb_only_budget(now)

    def _remb_only_budget(self, now: float) -> int:
        """A REMB-only subscriber's budget, from the loss in its receiver reports and what was
        sent (media and padding) without loss.

        aiortc's REMB is delay-based but pessimistic on a busy host (its own scheduling
        delays look like queueing), and stale-high after a drop (it never lowers its estimate
        below 1.5x what it receives unless it detects overuse): it only gives the budget its
        starting value. Each receiver report: loss above 10% cuts the budget by half the loss
        (at most once a second, never below 70% of the highest rate sent without loss in the
        last 5 s), and when padding was being sent probing backs off (its wait doubles, up to
        :data:`MAX_PROBE_WAIT`); loss above :data:`LOSS_COLLAPSE` (the link collapsed) cuts to
        90% of what got through (sent x (1 - loss)) without that floor, but at most to a
        quarter per report, and not when padding was sent meanwhile (a failed probe: the rule
        above); reports are ignored while a cut consumer waits for its key frame (the
        sequence numbers the cut left unused are not in the loss:
        :meth:`~salon.media.bandwidth.TransportBandwidth.skipped`); 2-10% holds; under 2%
        the budget rises to what was just sent (a probe that got through) and 8% a second
        beyond, up to :data:`CLEAN_HEADROOM` x the most sent without loss lately, and the
        next probe may go further (:data:`PROBE_FACTOR` x the budget, a
        :data:`PROBE_FACTOR_STEP` more after each probe that got through, up to
        :data:`MAX_PROBE_FACTOR`; any loss of 2% or more starts again from
        :data:`PROBE_FACTOR`).
        """
        bandwidth = self.bandwidth
        estimator = bandwidth.estimator
        budget = self._budget
        if budget is None:
            budget = float(bandwidth.estimate(now))
        loss = bandwidth.recent_loss
        bandwidth.recent_loss = None
        if loss is not None and self._cut_waiting:
            # The link collapsed and a cut consumer waits for its key frame: the budget was
            # cut for it already, what the reports meanwhile say of the old layer is stale.
            loss = None
        if loss is not None and loss > estimator.LOSS_HIGH:
            logger.info(
                "allocation %s: receiver-reported loss %.2f, sent %d, budget %d, remb %s",
                self.name,
                loss,
                self._sent_rate,
                budget,
                estimator.remb,
            )
        sent = float(self._sent_rate)
        recent = [rate for at, rate, _ in self._sent_history if now - at <= _REPORT_SPAN]
        # A report can describe padding that stopped up to a report's span plus the link's
        # queue ago: a second more.
        span = _REPORT_SPAN + 1.0
        probed = any(padding for at, _, padding in self._sent_history if now - at <= span)
        # Loss is judged against the most that was sent while the report was being gathered;
        # a clean report proves only what was sent all along (a probe decided half a second
        # ago is not proven by a report about the second before it).
        sent_most = float(max(recent, default=self._sent_rate))
        sent_proven = float(min(recent, default=self._sent_rate))
        dt = min(1.0, now - self._last_budget_at) if self._last_budget_at else 0.0
        self._last_budget_at = now
        if loss is not None:
            if loss > estimator.LOSS_HIGH:
                if self._last_cut is None or now - self._last_cut >= 1.0:
                    if loss > LOSS_COLLAPSE and sent_most > 0 and not probed:
                        # The link carries far less than was sent: what got through, with a
                        # margin for the queue to drain (no floor from before the collapse).
                        # At most a quarter off per report: a loss fraction near 1 (bursts on a
                        # short queue) must not take the budget under every layer at once.
                        budget = max(budget / 4, min(budget * (1 - loss / 2), 0.9 * sent_most * (1 - loss)))
                        self._clean.clear()
                    else:
                        # Never below most of what got through without loss in the last seconds.
                        floor = max(
                            (rate for at, rate in self._clean if now - at <= _CLEAN_WINDOW), default=0.0
                        )
                        cut = budget * (1 - loss / 2)
                        if probed:
                            # A probe failed: the loss is the padding's. The media sent meanwhile
                            # keeps its share: cutting it too switched a 600 kbit/s subscriber
                            # off its layer (a key-frame wait, a 2 s freeze) at every failed
                            # probe. (A link that also dropped is cut once the padding is out
                            # of the reports.)
                            media = max(
                                (
                                    rate - padding
                                    for at, rate, padding in self._sent_history
                                    if now - at <= span
                                ),
                                default=0,
                            )
                            cut = max(cut, min(budget, float(media)))
                        budget = max(0.7 * floor, cut)
                    budget = max(float(estimator.min_bitrate), budget)
                    self._last_cut = now
                    if self.padding_bitrate > 0:
                        # A probe failed: wait longer before the next one. (Loss without a
                        # probe is the link changing, not the probing: no back-off.)
                        self._probe_wait = min(MAX_PROBE_WAIT, self._probe_wait * 2)
                self._last_drop = now
                self._probe_gain = PROBE_FACTOR
            elif loss < estimator.LOSS_LOW:
                sent = sent_proven
                self._clean.append((now, sent))
                while self._clean and now - self._clean[0][0] > _CLEAN_WINDOW:
                    self._clean.popleft()
                if sent > budget:
                    # A probe got through: the next may go further.
                    self._probe_wait = PROBE_STABLE_FOR
                    self._probe_gain = min(MAX_PROBE_FACTOR, self._probe_gain + PROBE_FACTOR_STEP)
                # 8% a second, but not past CLEAN_HEADROOM x what got through without loss:
                # sending less than the budget (the layers chosen need less) proves nothing
                # above it, and a budget left to grow so for a minute reached 800 kbit/s on a
                # 600 kbit/s link and took the top layer without a probe (then lost half).
                # (Not while a video is paused for quality: its resume has its own margin and
                # back-off, and the little padding of an audio-only link proves too little for
                # the lowest layer: a 300 kbit/s subscriber stayed paused.)
                grown = max(budget, sent) * 1.08**dt
                last = bandwidth.last_allocation
                if last is None or not any(d.paused for d in last.decisions.values()):
                    proven = max((rate for _, rate in self._clean), default=sent)
                    grown = min(grown, CLEAN_HEADROOM * proven)
                budget = max(budget, grown)
            else:
                self._probe_gain = PROBE_FACTOR
        budget = min(budget, float(estimator.max_bitrate))
        self._budget = budget
        return int(budget)

    def run(self, consumers: dict[str, Consumer], now: float) -> float:
        """Allocate if due, pad if probing; returns when to be called next."""
        if now >= self._next_run:
            self._next_run = now + ALLOCATION_INTERVAL
            self._allocate(consumers, now)
        if self.padding_bitrate <= 0:
            return self._next_run
        self._pad(consumers, now)
        return min(self._next_run, now + PADDING_TICK)

    def _allocate(self, consumers: dict[str, Consumer], now: float) -> Allocation:
        self.runs += 1
        for cid in list(self._cut_waiting):
            cut = consumers.get(cid)
            if cut is None or cut.closed or cut.current_layer is not None or cut.quality_paused:
                # Restarted after its gap (whose unused sequence numbers the transport's
                # bandwidth takes out of the next report's loss).
                self._cut_waiting.discard(cid)
        history = self._sent_history
        if history and history[-1][2]:
            # What the last interval really sent: a receiver report proves only that (padding
            # decided but held back by the pacer proved a budget the link never carried).
            at, rate, padding = history[-1]
            if now > at:
                actual = min(padding, int(self._padding_sent / (now - at)))
                history[-1] = (at, rate - padding + actual, actual)
                self._sent_rate = rate - padding + actual
        self._padding_sent = 0
        inputs = self.inputs(consumers.values(), now)
        estimate = self.budget(now)
        self.last_budget = estimate
        allocation = self.bandwidth.allocator.allocate(estimate, inputs, now)
        self.bandwidth.last_allocation = allocation
        if estimate < self._last_estimate * (1 - _DROP):
            self._last_drop = now
        self._last_estimate = estimate
        # The link collapsed when what the current layers send is well above the estimate:
        # switches down then cut the old layer at once (no waiting for the key frame behind
        # a full queue).
        collapsed = estimate < CUT_BELOW * self._current_rate(consumers, inputs)
        for decision in allocation.decisions.values():
            consumer = consumers.get(decision.consumer_id)
            if consumer is None or consumer.kind != "video":
                continue
            if not consumer.simulcast or not consumer.allocated:
                continue
            if decision.paused:
                consumer.set_paused(True, _quality())
                continue
            if consumer.quality_paused:
                consumer.set_paused(False, _quality())
            temporal = decision.temporal
            top_temporal = max(
                (
                    layer.temporal
                    for item in inputs
                    if item.consumer_id == consumer.id
                    for layer in item.layers
                    if layer.spatial == decision.spatial
                ),
                default=0,
            )
            if temporal is not None and temporal >= top_temporal:
                temporal = None
            if consumer.wanted_layer != (decision.spatial, temporal):
                current = consumer.current_layer
                consumer.set_layer(decision.spatial, temporal, cut=collapsed)
                if (
                    collapsed
                    and current is not None
                    and decision.spatial is not None
                    and decision.spatial < current
                ):
                    self._cut_waiting.add(consumer.id)
        if allocation.changed and logger.isEnabledFor(logging.DEBUG):
            for item in inputs:
                logger.debug(
                    "allocation input %s %s %s: %s",
                    item.consumer_id,
                    item.kind.value,
                    item.preferences,
                    [(x.spatial, x.temporal, x.bitrate, x.width, x.frame_rate) for x in item.layers],
                )
        layout = tuple(
            (d.consumer_id, d.spatial, d.temporal, d.paused) for d in allocation.decisions.values()
        )
        if layout != self._layout:  # a layer or a pause changed (not just a measured bitrate)
            self._layout = layout
            logger.info(
                "allocation %s: estimate %d, allocated %d of %d, padding %d, remb %s: %s",
                self.name,
                estimate,
                allocation.allocated,
                allocation.desired,
                self.padding_bitrate,
                self.bandwidth.estimator.remb,
                ", ".join(
                    f"{d.consumer_id}={'paused' if d.paused else (d.spatial, d.temporal)}"
                    for d in allocation.decisions.values()
                ),
            )
        held_back = allocation.desired > allocation.allocated * 1.05
        stable = self._last_drop is None or now - self._last_drop >= self._probe_wait
        if held_back and stable:
            if self.bandwidth.feedback_packets:
                ceiling = PADDING_SHARE * estimate
            else:
                # REMB-only: a step above what last got through without loss, not above a
                # budget that loss has not corrected yet.
                clean = max((rate for at, rate in self._clean if now - at <= _CLEAN_WINDOW), default=0.0)
                ceiling = self._probe_gain * max(clean, float(allocation.allocated))
                ceiling = min(ceiling, float(estimate) * self._probe_gain)
            # Up to what the top layers need with the allocator's upgrade headroom: a probe
            # that only reaches ``desired`` would leave the last step to the 8%/s growth.
            wanted = allocation.desired * (1 + self.bandwidth.allocator.upgrade_margin)
            room = min(ceiling, wanted) - allocation.allocated
            self.padding_bitrate = int(max(0.0, min(room, float(MAX_PADDING_BITRATE))))
        else:
            self.padding_bitrate = 0
        self._sent_rate = allocation.allocated + self.padding_bitrate
        history.append((now, self._sent_rate, self.padding_bitrate))
        while history and now - history[0][0] > _REPORT_SPAN + 1.0:
            history.popleft()
        if self.bandwidth.feedback_packets and held_back:
            self._probe(consumers, now)
        return allocation

    @staticmethod
    def _current_rate(consumers: dict[str, Consumer], inputs: list[ConsumerInput]) -> int:
        """What the consumers send now (bit/s): each video's current layer (its highest
        measured temporal layer, or its lowest layer while it has none yet), audio and fixed
        costs as measured."""
        total = 0
        for item in inputs:
            if item.kind is MediaKindClass.AUDIO:
                total += max((layer.bitrate for layer in item.layers), default=0) or AUDIO_DEFAULT_BITRATE
                continue
            consumer = consumers.get(item.consumer_id)
            spatial = None if consumer is None else consumer.current_layer
            rates = [layer.bitrate for layer in item.layers if layer.spatial == spatial]
            total += max(rates, default=0)
        return total

    def _probe(self, consumers: dict[str, Consumer], now: float) -> None:
        """Send a probe cluster if the transport's probe controller asks for one (transport-cc
        only: its feedback measures the cluster's dispersion at the bottleneck; a probe that
        got through lifts the estimate at once instead of 8% a second)."""
        cluster = self.bandwidth.probe(now)
        if cluster is None:
            return
        count, spacing = cluster.plan(_PADDING_PACKET_BITS)
        for consumer in consumers.values():
            if consumer.kind == "video" and consumer.can_pad:
                sequences: list[int] = []
                if consumer.send_padding(now, count, spacing=spacing, sequences=sequences):
                    for sequence in sequences:
                        self.bandwidth.probes.add_probe_packet(sequence)
                    return

    def _pad(self, consumers: dict[str, Consumer], now: float) -> None:
        self._padding_credit = min(
            self._padding_credit + self.padding_bitrate * PADDING_TICK, self.padding_bitrate * 0.2
        )
        count = int(self._padding_credit // _PADDING_PACKET_BITS)
        if count <= 0:
            return
        # The video consumers that negotiated RTX carry it (one at a time, the first that can).
        for consumer in consumers.values():
            if consumer.kind == "video" and consumer.can_pad:
                sent = consumer.send_padding(now, count)
                if sent:
                    self._padding_credit -= sent * 8
                    self._padding_sent += sent * 8
                    return

    def dump(self) -> dict[str, object]:
        return {
            "runs": self.runs,
            "padding_bitrate": self.padding_bitrate,
            "active_speaker": self.active_speaker,
        }


def _quality() -> PauseReason:
    # Imported late: the consumer module imports the transport module, which imports this one.
    from salon.media.consumer import PauseReason

    return PauseReason.QUALITY
