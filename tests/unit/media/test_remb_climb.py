"""A REMB-only subscriber (the Python SDK: aiortc sends REMB, no transport-cc) on an unshaped
link climbs to the top simulcast layer within the issue's bound.

Sans-I/O and deterministic: the simulcast publisher of ``test_layer_allocation`` (three VP8
encodings, 180p / 360p / 720p, three temporal layers) feeds a consumer whose transport's
allocator decides its layer; every packet the subscriber receives goes through aiortc's own
receive-side estimator (``aiortc.rate.RemoteBitrateEstimator``, what an aiortc subscriber runs)
on the simulated clock, whose REMBs reach the transport's :class:`TransportBandwidth`, with a
loss-free receiver report every second, as aiortc sends them. aiortc's REMB only ever tells
what it already receives (its first after about 3 s, then at most 1.5x the incoming rate): the
climb is the allocator's probing on loss-free reports, not the REMB."""

from __future__ import annotations

from aiortc.rate import RemoteBitrateEstimator

from salon.media.rtcp import ReportBlock
from salon.media.rtp import find_header_extension, parse_rtp_header
from tests.unit.media.test_layer_allocation import setup

#: Seconds from the first packet until a REMB-only subscriber on an unshaped link forwards the
#: top layer (issue 13: back on the top layer in under 10 s once a limit lifts).
CLIMB_BOUND = 10.0


def test_a_remb_only_subscriber_climbs_to_the_top_layer_on_aiortcs_own_remb() -> None:
    pub, consumer, sub, allocation, consumers, events = setup()
    aiortc = RemoteBitrateEstimator()
    start = pub.now
    seen = 0
    next_report = start + 1.0
    rembs: list[tuple[float, int]] = []
    top_at: float | None = None
    while pub.now < start + 20:
        pub.send_frame((0, 1, 2) if pub.frame % 30 == 0 else ())
        allocation.run(consumers, pub.now)
        for packet in sub.rtp[seen:]:
            header = parse_rtp_header(packet)
            value = find_header_extension(packet, header, 3)  # abs-send-time, as aiortc reads it
            if value is None:
                continue
            remb = aiortc.add(
                int(pub.now * 1000),
                int.from_bytes(value, "big"),
                len(packet) - header.payload_offset,
                header.ssrc,
            )
            if remb is not None:
                rembs.append((pub.now - start, remb[0]))
                sub.bandwidth.on_remb(remb[0], pub.now)
        seen = len(sub.rtp)
        if pub.now >= next_report:
            next_report += 1.0
            sub.bandwidth.on_report_block(ReportBlock(consumer.ssrc, 0, 0, 0, 0, 0, 0), pub.now)
        if top_at is None and consumer.wanted_layer[0] == 2 and consumer.current_layer == 2:
            top_at = pub.now - start
    assert rembs and rembs[0][0] > 2.0, rembs[:3]  # aiortc's first REMB comes late...
    assert rembs[0][1] < 1_200_000, rembs[:3]  # ... and says what it already gets
    assert sub.bandwidth.remb_packets == len(rembs) and sub.bandwidth.feedback_packets == 0
    assert top_at is not None and top_at <= CLIMB_BOUND, (top_at, allocation.dump())
    # It stays there, and the probing stops.
    assert consumer.wanted_layer[0] == 2 and consumer.current_layer == 2
    assert allocation.padding_bitrate == 0
    assert not events  # never paused for quality
    print(f"REMB-only subscriber on the top layer {top_at:.1f} s after the first packet")
