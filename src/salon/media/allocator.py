"""Per-subscriber-transport bitrate allocation: which layer each consumer forwards.

Sans-I/O. Given the transport's bandwidth estimate (:mod:`salon.media.estimator`) and, per
consumer, its kind, whether it shows the active speaker, the layers its producer has (with the
bitrate measured on the producer for each spatial/temporal layer) and the subscriber's
preferences (max resolution, max frame rate), :meth:`Allocator.allocate` returns one
:class:`ConsumerDecision` per consumer: a layer, or paused with reason ``quality``.

Order of service:

1. **Audio** is always on and its bitrate comes off the budget first.
2. Every video gets its **lowest** allowed layer, in priority order: screen shares, then the
   active speaker, then the others (by ``priority`` then id, so the order is stable). A video
   whose lowest layer does not fit is **paused** (reason ``quality``).
3. What is left **upgrades** videos in the same priority order, each climbing its allowed
   layers as far as the budget goes before the next one climbs: a screen share goes to its top
   layer before the speaker climbs, the speaker before the others.

Hysteresis, so decisions do not flap on a noisy estimate:

* a paused video resumes only when its lowest layer fits with ``resume_margin`` (20%) to spare,
  and not before ``resume_hold`` seconds after it paused; a resume that failed (paused again
  within ``resume_trial`` seconds) doubles that wait for the next one, up to
  ``max_resume_hold``: each resume sends a key frame, and on a link that cannot carry the
  lowest layer those retries are lost packets the subscriber's decoder may never get back;
* an upgrade above the consumer's current layer needs ``upgrade_margin`` (10%) headroom;
  keeping the current layer or going down needs none.

Layers with bitrate 0 (the producer is not receiving them) are not offered. Preferences filter
layers by width, height and frame rate; when no layer satisfies them the smallest layer (lowest
encoding, lowest frame rate) is used.
Camera video (``keep_frame_rate``) keeps its frame rate: reduced frame rates (VP8 temporal
layers) are offered on the lowest encoding only, every higher encoding at the highest frame
rate allowed; a screen share may trade frame rate for resolution.
The layer switching itself is the consumer's (``set_layer``), the pause is reported to the
subscriber as ``video_disabled`` / ``video_enabled`` with reason ``quality``; both are the
caller's job: the allocator only decides.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "AUDIO_DEFAULT_BITRATE",
    "Allocation",
    "Allocator",
    "ConsumerDecision",
    "ConsumerInput",
    "Layer",
    "MediaKindClass",
    "Preferences",
]

AUDIO_DEFAULT_BITRATE = 40_000
"""Bitrate assumed for an audio consumer whose producer has not measured one yet."""


class MediaKindClass(enum.Enum):
    AUDIO = "audio"
    VIDEO = "video"
    SCREEN = "screen"


@dataclass(frozen=True, slots=True)
class Layer:
    """One forwardable layer of a producer: spatial index (0 = lowest encoding), temporal index
    (0 = base frame rate), what it looks like and its measured bitrate (bit/s, cumulative for
    the temporal layers below it)."""

    spatial: int
    temporal: int
    bitrate: int
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Preferences:
    """The subscriber's wishes for one subscription (``None``: no limit)."""

    max_width: int | None = None
    max_height: int | None = None
    max_frame_rate: float | None = None

    def allows(self, layer: Layer) -> bool:
        return (
            (self.max_width is None or not layer.width or layer.width <= self.max_width)
            and (self.max_height is None or not layer.height or layer.height <= self.max_height)
            and (
                self.max_frame_rate is None
                or not layer.frame_rate
                or layer.frame_rate <= self.max_frame_rate + 0.5
            )
        )


@dataclass(frozen=True, slots=True)
class ConsumerInput:
    """What the allocator needs to know about one consumer."""

    consumer_id: str
    kind: MediaKindClass
    layers: Sequence[Layer] = ()
    active_speaker: bool = False
    preferences: Preferences = field(default_factory=Preferences)
    priority: int = 0
    """Higher first among consumers of the same class (e.g. a subscriber's pinned stream)."""
    keep_frame_rate: bool = False
    """Camera video: lower frame rates only on the lowest encoding (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class ConsumerDecision:
    """The layer one consumer should forward, or that it is paused for lack of bandwidth."""

    consumer_id: str
    spatial: int | None
    temporal: int | None
    bitrate: int
    paused: bool = False
    reason: str | None = None
    """``"quality"`` when paused because even the lowest layer does not fit."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """The result of one :meth:`Allocator.allocate`."""

    decisions: dict[str, ConsumerDecision]
    changed: tuple[str, ...]
    """Consumers whose decision differs from the previous allocation (new ones included)."""
    paused: tuple[str, ...]
    """Consumers that went from forwarding to paused in this allocation."""
    resumed: tuple[str, ...]
    """Consumers that went from paused to forwarding in this allocation."""
    allocated: int
    """Sum of the chosen layers' bitrates (bit/s)."""
    desired: int
    """What the consumers would take with unlimited bandwidth (top allowed layers): above
    ``allocated`` means layers are held back (a reason to probe)."""


def _order_key(item: ConsumerInput) -> tuple[int, int, str]:
    klass = 0 if item.kind is MediaKindClass.SCREEN else 1 if item.active_speaker else 2
    return (klass, -item.priority, item.consumer_id)


class Allocator:
    """Allocates one subscriber transport's estimate across its consumers; keeps the previous
    decisions for hysteresis (see the module docstring)."""

    def __init__(
        self,
        *,
        resume_margin: float = 0.2,
        upgrade_margin: float = 0.1,
        resume_hold: float = 2.0,
        max_resume_hold: float = 16.0,
        resume_trial: float = 5.0,
    ) -> None:
        self.resume_margin = resume_margin
        self.upgrade_margin = upgrade_margin
        self.resume_hold = resume_hold
        self.max_resume_hold = max_resume_hold
        self.resume_trial = resume_trial
        self._previous: dict[str, ConsumerDecision] = {}
        self._paused_at: dict[str, float] = {}
        self._resumed_at: dict[str, float] = {}
        self._hold: dict[str, float] = {}

    def forget(self, consumer_id: str) -> None:
        """The consumer closed."""
        self._previous.pop(consumer_id, None)
        self._paused_at.pop(consumer_id, None)
        self._resumed_at.pop(consumer_id, None)
        self._hold.pop(consumer_id, None)

    def allocate(self, estimate: int, consumers: Sequence[ConsumerInput], now: float) -> Allocation:
        budget = float(estimate)
        decisions: dict[str, ConsumerDecision] = {}
        desired = 0
        for item in consumers:
            if item.kind is MediaKindClass.AUDIO:
                rate = max((layer.bitrate for layer in item.layers), default=0) or AUDIO_DEFAULT_BITRATE
                decisions[item.consumer_id] = ConsumerDecision(item.consumer_id, 0, 0, rate)
                budget -= rate
                desired += rate
        videos = sorted((c for c in consumers if c.kind is not MediaKindClass.AUDIO), key=_order_key)
        ladders: dict[str, list[Layer]] = {}
        for item in videos:
            ladder = _ladder(item)
            ladders[item.consumer_id] = ladder
            if ladder:
                desired += ladder[-1].bitrate
        # Pass 1: the lowest layer for each video, in priority order.
        chosen: dict[str, int] = {}  # consumer id -> index into its ladder
        for item in videos:
            cid = item.consumer_id
            ladder = ladders[cid]
            if not ladder:
                continue
            lowest = ladder[0].bitrate
            needed: float = lowest
            previous = self._previous.get(cid)
            if previous is not None and previous.paused:
                needed = lowest * (1 + self.resume_margin)
                paused_at = self._paused_at.get(cid)
                if paused_at is not None and now - paused_at < self._hold.get(cid, self.resume_hold):
                    needed = float("inf")
            if needed <= budget:
                chosen[cid] = 0
                budget -= lowest
        # Pass 2: in priority order, each video climbs as far as the budget allows.
        for item in videos:
            cid = item.consumer_id
            index = chosen.get(cid)
            if index is None:
                continue
            ladder = ladders[cid]
            current = self._current_bitrate(cid, ladder)
            while index + 1 < len(ladder):
                step = ladder[index + 1].bitrate - ladder[index].bitrate
                step_needed: float = step
                if ladder[index + 1].bitrate > current:
                    step_needed += ladder[index + 1].bitrate * self.upgrade_margin
                if step_needed > budget:
                    break
                index += 1
                budget -= step
            chosen[cid] = index
        allocated = 0
        for item in videos:
            cid = item.consumer_id
            ladder = ladders[cid]
            index = chosen.get(cid)
            if index is None:
                decisions[cid] = ConsumerDecision(cid, None, None, 0, paused=True, reason="quality")
            else:
                layer = ladder[index]
                decisions[cid] = ConsumerDecision(cid, layer.spatial, layer.temporal, layer.bitrate)
        allocated = sum(d.bitrate for d in decisions.values())
        changed, paused, resumed = [], [], []
        for cid, decision in decisions.items():
            before = self._previous.get(cid)
            if before != decision:
                changed.append(cid)
            if decision.paused and (before is None or not before.paused):
                paused.append(cid)
                self._paused_at[cid] = now
                resumed_at = self._resumed_at.pop(cid, None)
                if resumed_at is not None and now - resumed_at < self.resume_trial:
                    hold = self._hold.get(cid, self.resume_hold)
                    self._hold[cid] = min(self.max_resume_hold, 2 * hold)
                else:
                    self._hold.pop(cid, None)
            elif not decision.paused and before is not None and before.paused:
                resumed.append(cid)
                self._paused_at.pop(cid, None)
                self._resumed_at[cid] = now
        for cid in set(self._previous) - set(decisions):
            self.forget(cid)
        self._previous = decisions
        return Allocation(decisions, tuple(changed), tuple(paused), tuple(resumed), allocated, desired)

    def _current_bitrate(self, consumer_id: str, ladder: list[Layer]) -> int:
        """The bitrate, in today's measurements, of the layer the consumer forwards now."""
        previous = self._previous.get(consumer_id)
        if previous is None or previous.paused:
            return 0
        for layer in ladder:
            if layer.spatial == previous.spatial and layer.temporal == previous.temporal:
                return layer.bitrate
        return 0


def _ladder(item: ConsumerInput) -> list[Layer]:
    """The layers a consumer may use, cheapest first, filtered by its preferences (the lowest
    layer alone if none satisfies them), each strictly costlier than the one before."""
    available = sorted(
        (layer for layer in item.layers if layer.bitrate > 0),
        key=lambda layer: (layer.bitrate, layer.spatial, layer.temporal),
    )
    if not available:
        return []
    allowed = [layer for layer in available if item.preferences.allows(layer)] or [
        min(available, key=lambda layer: (layer.spatial, layer.temporal))
    ]
    if item.keep_frame_rate and item.kind is MediaKindClass.VIDEO:
        # Camera video keeps its frame rate: lower frame rates only on the lowest encoding,
        # above it each encoding at the highest frame rate allowed.
        lowest = min(layer.spatial for layer in allowed)
        top_temporal: dict[int, int] = {}
        for layer in allowed:
            top_temporal[layer.spatial] = max(top_temporal.get(layer.spatial, 0), layer.temporal)
        allowed = [
            layer
            for layer in allowed
            if layer.spatial == lowest or layer.temporal == top_temporal[layer.spatial]
        ]
    ladder: list[Layer] = []
    for layer in allowed:
        if ladder and (layer.spatial, layer.temporal) < (ladder[-1].spatial, ladder[-1].temporal):
            continue  # a lower layer measuring more than a higher one: skip the odd one out
        ladder.append(layer)
    return ladder
