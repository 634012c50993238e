"""Bandwidth state of one subscriber transport: transport-wide sequence numbers, the estimator fed
by transport-cc feedback / REMB / receiver reports, the probe controller and the allocator.

Sans-I/O glue owned by :class:`~salon.media.transport.WebRtcTransport` (``transport.bandwidth``):

* consumers whose subscriber negotiated the transport-wide sequence-number extension call
  :meth:`TransportBandwidth.stamp` once per packet they send (forwarded or retransmitted) and
  write the 2 bytes it returns into their extension block;
* the transport routes the subscriber's transport-cc feedback to
  :meth:`TransportBandwidth.on_transport_feedback`, its REMB to :meth:`~TransportBandwidth.on_remb`
  and the report blocks of its receiver reports to :meth:`~TransportBandwidth.on_report_block`;
* :meth:`TransportBandwidth.allocate` is the allocator's interface for the layer switching
  (the simulcast consumers call it with their layers and apply the decisions);
* :meth:`TransportBandwidth.dump` goes into the transport's worker dump.
"""

from __future__ import annotations

from collections.abc import Sequence

from salon.media.allocator import Allocation, Allocator, ConsumerInput
from salon.media.estimator import BandwidthEstimator, ProbeCluster, ProbeController
from salon.media.rtcp import ReportBlock, compact_ntp, ntp_now
from salon.media.twcc import SendHistory, TransportFeedback

__all__ = ["TransportBandwidth"]


class TransportBandwidth:
    """Everything bandwidth-related of one (subscriber) transport; see the module docstring."""

    __slots__ = (
        "_blocks",
        "_expected",
        "_gaps",
        "_lost",
        "allocator",
        "estimator",
        "feedback_packets",
        "feedback_results",
        "history",
        "last_allocation",
        "probes",
        "recent_loss",
        "remb_packets",
        "stamp",
    )

    def __init__(self, initial_bitrate: int = 600_000, max_bitrate: int = 10_000_000) -> None:
        self.history = SendHistory()
        self.estimator = BandwidthEstimator(initial_bitrate=initial_bitrate, max_bitrate=max_bitrate)
        self.probes = ProbeController()
        self.allocator = Allocator()
        self.last_allocation: Allocation | None = None
        self.feedback_packets = 0
        self.feedback_results = 0
        self.remb_packets = 0
        #: Loss (0..1) in the receiver reports since the allocation last read it and set it to
        #: None (None: no report since): packets lost over packets expected, summed over every
        #: stream's report blocks (as libwebrtc does), not the highest ``fraction_lost`` of one
        #: block: a block covering a few dozen packets says 10% for 3% random loss.
        self.recent_loss: float | None = None
        self._blocks: dict[int, tuple[int, int]] = {}  # ssrc -> (highest sequence, cumulative lost)
        self._expected = 0
        self._lost = 0.0
        #: ssrc -> (last unused output sequence number, how many): numbers a consumer left
        #: unused on purpose (a layer cut, :data:`~salon.media.layers.CUT_SEQUENCE_GAP`), which
        #: the subscriber's next report counts as lost.
        self._gaps: dict[int, list[tuple[int, int]]] = {}
        #: The per-packet call: ``stamp(now, size)`` numbers one RTP packet of ``size`` bytes
        #: sent at ``now`` and returns the extension value (a closure over the history).
        self.stamp = self.history.stamper()

    def on_transport_feedback(self, feedback: TransportFeedback, now: float) -> None:
        self.feedback_packets += 1
        results = self.history.on_feedback(feedback)
        self.feedback_results += len(results)
        self.estimator.on_packet_results(results, now)
        measured = self.probes.on_packet_results(results)
        if measured is not None:
            self.estimator.apply_probe(measured, now)

    def on_remb(self, bitrate: int, now: float) -> None:
        self.remb_packets += 1
        self.estimator.on_remb(bitrate, now)

    def on_report_block(self, block: ReportBlock, now: float) -> None:
        """A report block about one of our streams: its loss (REMB-only subscribers) and,
        when it answers one of our sender reports, the round-trip time (RFC 3550 §6.4.1)."""
        fraction = block.fraction_lost / 256
        if self.recent_loss is None:  # read by the allocation: count again from here
            self._expected, self._lost = 0, 0.0
        previous = self._blocks.get(block.ssrc)
        self._blocks[block.ssrc] = (block.highest_sequence, block.packets_lost)
        expected = 0 if previous is None else block.highest_sequence - previous[0]
        skipped = 0
        gaps = self._gaps.get(block.ssrc)
        if gaps is not None:
            # Those the subscriber got a packet past: this report counts them as lost.
            covered = [gap for gap in gaps if 0 < ((block.highest_sequence - gap[0]) & 0xFFFF) < 1 << 15]
            if covered:
                skipped = sum(count for _, count in covered)
                gaps[:] = [gap for gap in gaps if gap not in covered]
                if not gaps:
                    del self._gaps[block.ssrc]
        if 0 < expected < 1 << 15:
            lost = min(expected, max(0, block.packets_lost - previous[1]))  # type: ignore[index]
            if skipped:
                expected = max(1, expected - skipped)
                lost = min(expected, max(0, lost - skipped))
                fraction = lost / expected
            self._expected += expected
            self._lost += lost
        elif skipped:
            # A first block that covers unused numbers: its fraction cannot be told apart
            # from them, it counts as no loss.
            self._expected += 50
            fraction = 0.0
        else:
            # A stream's first block (or one without a usable count): its fraction, weighted
            # as if it covered 50 packets.
            self._expected += 50
            self._lost += 50 * fraction
        if self._expected:
            self.recent_loss = self._lost / self._expected
        self.estimator.on_loss_fraction(fraction, now)
        if block.lsr:
            rtt = ((compact_ntp(ntp_now()) - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536
            if rtt < 10.0:
                self.estimator.set_rtt(rtt)

    def skipped(self, ssrc: int, last: int, count: int) -> None:
        """A consumer of stream ``ssrc`` left ``count`` output sequence numbers unused on
        purpose, the last of them ``last``: the subscriber's next report that goes past them
        counts them as lost, so they are taken out of its loss (and of the estimator's)."""
        gaps = self._gaps.setdefault(ssrc, [])
        gaps.append((last & 0xFFFF, count))
        del gaps[:-8]  # a subscriber that never reports keeps a few

    def estimate(self, now: float) -> int:
        return self.estimator.estimate_at(now)

    def allocate(self, consumers: Sequence[ConsumerInput], now: float) -> Allocation:
        """Allocate the current estimate across ``consumers`` (see :mod:`salon.media.allocator`)."""
        allocation = self.allocator.allocate(self.estimate(now), consumers, now)
        self.last_allocation = allocation
        return allocation

    def probe(self, now: float) -> ProbeCluster | None:
        """A probe to send now, if the last allocation held layers back and the estimate is
        stable (see :class:`~salon.media.estimator.ProbeController`)."""
        allocation = self.last_allocation
        if allocation is None:
            return None
        return self.probes.decide(now, self.estimate(now), allocation.desired, self.estimator.last_decrease)

    def dump(self, now: float) -> dict[str, object]:
        out = self.estimator.dump(now)
        out["packets_numbered"] = self.history.sent
        out["feedback_packets"] = self.feedback_packets
        out["feedback_results"] = self.feedback_results
        out["remb_packets"] = self.remb_packets
        out["probes_sent"] = self.probes.probes_sent
        out["probes_succeeded"] = self.probes.probes_succeeded
        allocation = self.last_allocation
        if allocation is not None:
            out["allocated"] = allocation.allocated
            out["desired"] = allocation.desired
            out["paused"] = sorted(d.consumer_id for d in allocation.decisions.values() if d.paused)
        return out
