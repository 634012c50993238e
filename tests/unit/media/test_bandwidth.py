"""A subscriber transport's bandwidth state wired into the forwarding path, sans-I/O: consumers
stamp transport-wide sequence numbers on everything they send, the subscriber's transport-cc
feedback / REMB / receiver reports (real RTCP bytes through the transport's demultiplexer)
reach the estimator, and the allocator interface answers with decisions."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from salon.media.allocator import ConsumerInput, Layer, MediaKindClass
from salon.media.consumer import Consumer
from salon.media.rtcp import ReportBlock, build_receiver_report, build_remb, compact_ntp, ntp_from_unix
from salon.media.rtp import find_header_extension, parse_rtp_header, unwrap_rtx
from salon.media.sdp import HeaderExtensionIds
from salon.media.twcc import build_transport_feedback, parse_transport_sequence
from tests.unit.media.media_fakes import DELTA, KEY, OPUS, FakeTransport, add_consumer, feed, make_producer

TWCC_ID = 5


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(Consumer, "_now", staticmethod(lambda: 0.0))
    yield


def twcc_of(packet: bytes) -> int:
    header = parse_rtp_header(packet)
    value = find_header_extension(packet, header, TWCC_ID)
    assert value is not None, "packet without a transport-wide sequence number"
    return parse_transport_sequence(value)


def test_every_packet_on_the_transport_is_numbered_in_send_order() -> None:
    video, _ = make_producer()
    audio, _ = make_producer(OPUS, ssrc=3333, rtx_ssrc=None)
    sub = FakeTransport()
    v_consumer, _ = add_consumer(
        video, 5000, sub=sub, extensions=HeaderExtensionIds(mid=9, abs_send_time=3, transport_cc=TWCC_ID)
    )
    add_consumer(
        audio,
        6000,
        sub=sub,
        payload_type=109,
        rtx_payload_type=None,
        extensions=HeaderExtensionIds(mid=9, transport_cc=TWCC_ID),
    )
    feed(video, 1, 0, KEY, now=0.1)
    feed(audio, 7, 960, b"\xfc" * 20, now=0.11, pt=111, ssrc=3333)
    feed(video, 2, 0, DELTA, now=0.12)
    feed(audio, 8, 1920, b"\xfc" * 20, now=0.13, pt=111, ssrc=3333)
    assert [twcc_of(p) for p in sub.rtp] == [0, 1, 2, 3]
    # The rest of the packet is intact: mid and abs-send-time still there, payload unchanged.
    first = sub.rtp[0]
    header = parse_rtp_header(first)
    assert find_header_extension(first, header, 9) == b"v"
    assert find_header_extension(first, header, 3) is not None
    assert first[header.payload_offset :] == KEY
    # A retransmission (RTX) is numbered too, after what was sent before it.
    v_seq = parse_rtp_header(sub.rtp[0]).sequence_number
    v_consumer.receive_nack([v_seq], now=0.2)
    rtx = sub.rtp[-1]
    rtx_header = parse_rtp_header(rtx)
    assert rtx_header.ssrc == v_consumer.rtx_ssrc and twcc_of(rtx) == 4
    assert unwrap_rtx(rtx, rtx_header)[0] == v_seq
    # The history knows what was sent under each number.
    assert sub.bandwidth.history.sent == 5


def test_without_the_extension_nothing_is_numbered() -> None:
    video, _ = make_producer()
    consumer, sub = add_consumer(video, 5000)
    feed(video, 1, 0, KEY, now=0.1)
    header = parse_rtp_header(sub.rtp[0])
    assert find_header_extension(sub.rtp[0], header, TWCC_ID) is None
    assert sub.bandwidth.history.sent == 0
    assert consumer.extensions.transport_cc is None


def test_transport_cc_feedback_reaches_the_estimator() -> None:
    video, _ = make_producer()
    consumer, sub = add_consumer(
        video, 5000, extensions=HeaderExtensionIds(mid=9, abs_send_time=3, transport_cc=TWCC_ID)
    )
    # 2 s of video at ~1 Mbit/s, every packet acknowledged 20 ms later; the last 30% lost.
    t = 0.0
    for i in range(600):
        feed(video, 1 + i, 3000 * (i // 3), KEY if i == 0 else DELTA + bytes(360), now=t)
        t += 0.0033
    arrivals: list[int | None] = [int((0.02 + i * 0.0033) * 1e6) for i in range(400)]
    arrivals += [None] * 200
    for start in range(0, 600, 100):
        chunk = arrivals[start : start + 100]
        if all(a is None for a in chunk):
            chunk = [*chunk[:-1], arrivals[399]]
        feedback = build_transport_feedback(77, consumer.ssrc, start, chunk, start // 100)
        sub.receive_rtcp(feedback, 2.0 + start / 1000)
    bandwidth = sub.bandwidth
    assert bandwidth.feedback_packets == 6
    assert bandwidth.feedback_results == 600
    dump = bandwidth.dump(2.6)
    assert dump["transport_cc"] is True
    assert dump["loss_fraction"] > 0.5  # the last two feedbacks lost (almost) everything
    assert bandwidth.estimate(2.6) < 600_000  # heavy loss pulled the loss-based estimate down


def test_remb_only_subscriber_is_estimated_from_remb_and_receiver_reports() -> None:
    video, _ = make_producer()
    consumer, sub = add_consumer(video, 5000)
    feed(video, 1, 0, KEY, now=0.1)
    sub.receive_rtcp(build_receiver_report(90, []) + build_remb(90, 350_000, [consumer.ssrc]), 1.0)
    assert sub.bandwidth.estimate(1.0) == 350_000
    # A REMB about SSRCs this transport does not send is ignored.
    sub.receive_rtcp(build_remb(90, 50_000, [424242]), 1.1)
    assert sub.bandwidth.estimate(1.1) == 350_000
    # Heavy loss in its receiver reports lowers the estimate below its REMB.
    block = ReportBlock(consumer.ssrc, 128, 10, 100, 0, 0, 0)  # 50% lost
    sub.receive_rtcp(build_receiver_report(90, [block]), 1.2)
    assert sub.bandwidth.estimate(1.2) < 350_000


def test_allocation_interface_for_the_layer_switching() -> None:
    video, _ = make_producer()
    _consumer, sub = add_consumer(video, 5000)
    sub.receive_rtcp(build_remb(90, 400_000, [5000]), 1.0)
    layers = (Layer(0, 0, 150_000), Layer(1, 0, 500_000), Layer(2, 0, 1_500_000))
    allocation = sub.bandwidth.allocate(
        [ConsumerInput("a", MediaKindClass.AUDIO), ConsumerInput("v", MediaKindClass.VIDEO, layers)], 1.0
    )
    assert allocation.decisions["v"].spatial == 0 and allocation.desired > allocation.allocated
    dump = sub.bandwidth.dump(1.0)
    assert dump["allocated"] == allocation.allocated and dump["paused"] == []
    # Layers held back: after the estimate has been stable, a probe is asked for.
    assert sub.bandwidth.probe(10.0) is not None


def test_round_trip_time_from_receiver_reports_answering_our_sender_reports() -> None:
    video, _ = make_producer()
    consumer, sub = add_consumer(video, 5000)
    # Our SR left 0.3 s ago; the subscriber held it 0.1 s before its RR: RTT 0.2 s.
    lsr = compact_ntp(ntp_from_unix(time.time() - 0.3))
    block = ReportBlock(consumer.ssrc, 0, 0, 100, 0, lsr, int(0.1 * 65536))
    sub.receive_rtcp(build_receiver_report(90, [block]), 1.0)
    assert sub.bandwidth.dump(1.0)["rtt"] == pytest.approx(0.2, abs=0.05)
    # A block answering no SR (LSR 0) leaves it alone.
    sub.receive_rtcp(build_receiver_report(90, [ReportBlock(consumer.ssrc, 0, 0, 101, 0, 0, 0)]), 2.0)
    assert sub.bandwidth.dump(2.0)["rtt"] == pytest.approx(0.2, abs=0.05)
