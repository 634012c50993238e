"""Upstream and downstream RTCP of the forwarding path, sans-I/O: a producer, several consumers
on fake transports, and real RTCP bytes routed by the transport's demultiplexer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from salon.media.consumer import Consumer
from salon.media.producer import Producer
from salon.media.rtcp import (
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    SenderReport,
    build_fir,
    build_nack,
    build_pli,
    build_receiver_report,
    build_remb,
    build_sender_report,
    compact_ntp,
)
from salon.media.rtp import abs_send_time, build_rtp, encode_one_byte_extensions, parse_rtp_header
from salon.media.sdp import HeaderExtensionIds, RtpCodec
from tests.unit.media.media_fakes import (
    CONT,
    DELTA,
    KEY,
    OPUS,
    VP8,
    FakeTransport,
    add_consumer,
    feed,
    make_producer,
)


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Consumers read the monotonic clock when their transport connects: pin it to 0."""
    monkeypatch.setattr(Consumer, "_now", staticmethod(lambda: 0.0))
    yield


# --- item: upstream NACK on a cache miss, with retries ----------------------------------------


def test_a_cache_miss_is_nacked_upstream_then_retried_until_given_up_and_a_key_frame_is_asked() -> None:
    producer, pub = make_producer()
    consumer, sub = add_consumer(producer, 5555)
    feed(producer, 100, 1000, KEY, now=0.1)
    for seq in range(101, 110):
        feed(producer, seq, 1000, CONT, now=0.1)
    out = parse_rtp_header(sub.rtp[3])  # publisher seq 103
    producer.encodings[0].cache.clear()  # evicted: the subscriber's NACK misses the cache
    pub.rtcp.clear()
    sub.receive_rtcp(build_nack(7, consumer.ssrc, [out.sequence_number]), 0.2)
    assert consumer.stats.cache_misses == 1 and producer.stats.upstream_nacks == 1
    assert [n.seqs for n in pub.sent_rtcp(Nack)] == [(103,)]
    assert pub.scheduled[-1] == pytest.approx(0.24)  # the generator's retry interval
    # A second subscriber NACK for the same packet adds no NACK: it is on the retry schedule.
    sub.receive_rtcp(build_nack(7, consumer.ssrc, [out.sequence_number]), 0.21)
    assert len(pub.sent_rtcp(Nack)) == 1 and producer.stats.upstream_nacks == 1
    # Retries every 40 ms (10 NACKs in all), then give up and ask for a key frame.
    now = 0.2
    for _ in range(12):
        now = producer.on_timer(now)
    assert [n.seqs for n in pub.sent_rtcp(Nack)] == [(103,)] * 10
    assert producer.stats.given_up == 1
    assert len(pub.sent_rtcp(Pli)) == 1
    # Given up means given up: the subscriber NACKing the hole again starts no new chase.
    sub.receive_rtcp(build_nack(7, consumer.ssrc, [out.sequence_number]), now)
    assert len(pub.sent_rtcp(Nack)) == 10


def test_a_retransmission_after_a_cache_miss_stops_the_retries_and_counts_as_recovered() -> None:
    producer, pub = make_producer()
    consumer, sub = add_consumer(producer, 5555)
    feed(producer, 100, 1000, KEY, now=0.1)
    feed(producer, 101, 1000, CONT, now=0.1)
    feed(producer, 102, 1000, CONT, now=0.1)
    producer.encodings[0].cache.clear()
    pub.rtcp.clear()
    out = parse_rtp_header(sub.rtp[1])
    consumer.receive_nack([out.sequence_number], 0.2)
    assert [n.seqs for n in pub.sent_rtcp(Nack)] == [(101,)]
    feed(producer, 101, 1000, CONT, now=0.22)  # the publisher resends it
    assert producer.on_timer(0.3) >= 0.3
    producer.on_timer(0.5)
    assert len(pub.sent_rtcp(Nack)) == 1
    assert producer.stats.recovered == 1 and producer.stats.given_up == 0


# --- item: key-frame requests from subscribers -----------------------------------------------


def test_subscriber_plis_and_firs_become_one_throttled_pli_to_the_publisher() -> None:
    producer, pub = make_producer()
    subs = [add_consumer(producer, 5000 + 10 * i) for i in range(3)]
    feed(producer, 1, 0, KEY, now=0.1)  # every consumer starts; the joins' request is satisfied
    pub.rtcp.clear()
    sent_before = producer.stats.key_frame_requests_sent
    (c0, s0), (c1, s1), (c2, s2) = subs
    s0.receive_rtcp(build_pli(70, c0.ssrc), 1.0)
    assert [(p.sender_ssrc != 0, p.media_ssrc) for p in pub.sent_rtcp(Pli)] == [(True, 1111)]
    # More requests inside the 300 ms interval, PLI and FIR, from all subscribers: held back.
    s1.receive_rtcp(build_pli(71, c1.ssrc), 1.05)
    s2.receive_rtcp(build_fir(72, c2.ssrc, 1), 1.1)
    s0.receive_rtcp(build_pli(70, c0.ssrc), 1.2)
    assert len(pub.sent_rtcp(Pli)) == 1
    assert [c.stats.key_frame_requests_received for c, _ in subs] == [2, 1, 1]
    # The transport timer was asked to fire at the end of the interval: one PLI for all.
    assert min(t for t in pub.scheduled if t > 1.0) == pytest.approx(1.3)
    producer.on_timer(1.29)
    assert len(pub.sent_rtcp(Pli)) == 1
    producer.on_timer(1.3)
    assert len(pub.sent_rtcp(Pli)) == 2
    assert producer.stats.key_frame_requests_sent - sent_before == 2
    assert not pub.sent_rtcp(Fir)
    # A key frame arrives: nothing pending, nothing retried.
    feed(producer, 2, 3000, KEY, now=1.35)
    producer.on_timer(5.0)
    assert len(pub.sent_rtcp(Pli)) == 2


def test_a_throttled_request_is_dropped_when_a_key_frame_arrives_first() -> None:
    producer, pub = make_producer()
    (c0, s0), (c1, s1) = add_consumer(producer, 5000), add_consumer(producer, 6000)
    feed(producer, 1, 0, KEY, now=0.1)
    pub.rtcp.clear()
    s0.receive_rtcp(build_pli(70, c0.ssrc), 1.0)
    s1.receive_rtcp(build_pli(71, c1.ssrc), 1.1)
    feed(producer, 2, 3000, KEY, now=1.2)  # the answer to the first PLI serves both
    producer.on_timer(1.3)
    assert len(pub.sent_rtcp(Pli)) == 1


def test_a_publisher_that_offered_only_ccm_fir_gets_firs_with_increasing_sequence_numbers() -> None:
    fir_only = RtpCodec(
        **{
            **{f: getattr(VP8, f) for f in VP8.__slots__},
            "rtcp_feedback": (("nack", None), ("ccm", "fir"), ("goog-remb", None)),
        }
    )
    producer, pub = make_producer(fir_only)
    (c0, s0), (c1, s1) = add_consumer(producer, 5000), add_consumer(producer, 6000)
    feed(producer, 1, 0, KEY, now=0.1)
    first = pub.sent_rtcp(Fir)  # the joins' request
    assert len(first) == 1 and not pub.sent_rtcp(Pli)
    pub.rtcp.clear()
    s0.receive_rtcp(build_pli(70, c0.ssrc), 1.0)
    s1.receive_rtcp(build_fir(71, c1.ssrc, 9), 1.1)  # throttled, sent by the timer
    producer.on_timer(1.3)
    firs = pub.sent_rtcp(Fir)
    assert not pub.sent_rtcp(Pli)
    assert [(f.media_ssrc, [(e.ssrc, e.seq_nr) for e in f.entries]) for f in firs] == [
        (0, [(1111, (first[0].entries[0].seq_nr + 1) & 0xFF)]),
        (0, [(1111, (first[0].entries[0].seq_nr + 2) & 0xFF)]),
    ]


def test_audio_key_frame_requests_are_not_forwarded() -> None:
    producer, pub = make_producer(OPUS, rtx_ssrc=None)
    consumer, sub = add_consumer(producer, 5000, payload_type=109, rtx_payload_type=None)
    sub.receive_rtcp(build_pli(70, consumer.ssrc), 1.0)
    assert consumer.stats.key_frame_requests_received == 1
    assert not pub.sent_rtcp(Pli) and not pub.sent_rtcp(Fir)


# --- item: REMB upstream ---------------------------------------------------------------------


def test_remb_upstream_ignores_subscriber_estimates() -> None:
    # Subscribers on weak links report low REMBs: the publisher is not held down by them
    # (each subscriber gets the layer its own link carries).
    producer, pub = make_producer()
    subs = [add_consumer(producer, 5000 + 10 * i) for i in range(3)]
    for i in range(30):
        feed(producer, 1 + i, 3000 * i, KEY if i == 0 else DELTA, now=0.1 + i * 0.033)
    for (consumer, sub), bitrate in zip(subs, (800_000, 300_000, 2_000_000), strict=True):
        sub.receive_rtcp(build_receiver_report(90, []) + build_remb(90, bitrate, [consumer.ssrc]), 0.5)
    assert [c.remb_bitrate for c, _ in subs] == [800_000, 300_000, 2_000_000]
    pub.rtcp.clear()
    producer.on_timer(1.0)
    (remb,) = pub.sent_rtcp(Remb)
    assert (remb.bitrate, remb.ssrcs) == (producer.max_bitrate, (1111,))


def _abs(seconds: float) -> bytes:
    return encode_one_byte_extensions([(2, abs_send_time(seconds))])


def _send_through_uplink(
    producer: Producer, capacity: float, start: float, seconds: float, rate: float
) -> float:
    """The publisher sends 1000-byte packets at ``rate`` stamped with abs-send-time; its uplink
    drains at ``capacity`` bit/s (20 ms propagation): the producer sees them at the arrival
    times a queue would give. Returns the end time."""
    size = 1000
    busy = start
    t = start
    seq = int(start * 1000)
    while t < start + seconds:
        busy = max(t, busy) + size * 8 / capacity
        data = build_rtp(
            payload_type=96,
            sequence_number=seq & 0xFFFF,
            timestamp=int(t * 90000) & 0xFFFFFFFF,
            ssrc=1111,
            payload=DELTA + bytes(size - len(DELTA) - 20),
            extensions=_abs(t),
        )
        producer.receive_rtp(data, parse_rtp_header(data), busy + 0.02)
        seq += 1
        t += size * 8 / rate
    return t


def test_remb_upstream_follows_the_publishers_own_uplink() -> None:
    producer, pub = make_producer()
    add_consumer(producer, 5000)
    # 1 Mbit/s through a 3 Mbit/s uplink: no congestion, the REMB stays at the cap.
    _send_through_uplink(producer, 3_000_000, 0.0, 5.0, 1_000_000)
    assert producer.uplink_estimate == producer.max_bitrate
    # The uplink narrows to 600 kbit/s while the publisher keeps sending 1 Mbit/s: queues build
    # and the REMB drops to about what gets through.
    _send_through_uplink(producer, 600_000, 5.0, 3.0, 1_000_000)
    assert producer.uplink_estimate < 650_000
    pub.rtcp.clear()
    producer.on_timer(10.0)
    (remb,) = pub.sent_rtcp(Remb)
    assert remb.bitrate < 650_000
    assert producer.dump()["uplink_estimate"] == producer.uplink_estimate


def test_uplink_without_abs_send_time_is_measured_on_rtp_timestamps() -> None:
    producer, _pub = make_producer(extensions=HeaderExtensionIds(mid=4))
    _send_through_uplink(producer, 3_000_000, 0.0, 3.0, 1_000_000)
    assert producer.uplink_estimate == producer.max_bitrate
    _send_through_uplink(producer, 500_000, 3.0, 3.0, 1_000_000)
    assert producer.uplink_estimate < 600_000


def test_a_paused_subscribers_key_frame_requests_are_not_forwarded() -> None:
    producer, pub = make_producer()
    consumer, sub = add_consumer(producer, 5000)
    feed(producer, 1, 0, KEY, now=0.1)
    consumer.pause()
    pub.rtcp.clear()
    sub.receive_rtcp(build_pli(70, consumer.ssrc), 1.0)
    assert consumer.stats.key_frame_requests_received == 1 and not pub.sent_rtcp(Pli)


def test_audio_producers_send_receiver_reports_without_remb() -> None:
    producer, pub = make_producer(OPUS, rtx_ssrc=None)
    feed(producer, 1, 0, b"\xfc" * 20, pt=111)
    producer.on_timer(1.0)
    assert len(pub.sent_rtcp(ReceiverReport)) == 1 and not pub.sent_rtcp(Remb)


# --- item: receiver reports to the publisher -------------------------------------------------


def test_receiver_report_counts_known_loss_and_carries_lsr_dlsr_after_a_sender_report() -> None:
    producer, pub = make_producer()
    lost = {1005, 1010, 1011}
    for seq in range(1000, 1020):
        if seq not in lost:
            feed(producer, seq, seq * 10, KEY if seq == 1000 else CONT, now=0.5)
    ntp = (3_900_000_000 << 32) | 0x12345678
    pub.receive_rtcp(build_sender_report(1111, ntp, 10000, 18, 1000), 0.75)
    pub.rtcp.clear()
    producer.on_timer(1.0)
    (rr,) = pub.sent_rtcp(ReceiverReport)
    (block,) = rr.reports
    assert block.ssrc == 1111
    assert block.packets_lost == 3
    assert block.fraction_lost == 3 * 256 // 20
    assert block.highest_sequence == 1019
    assert block.lsr == compact_ntp(ntp)
    assert block.dlsr == int(0.25 * 65536)

    # Next interval: one of the lost packets comes late, two new ones arrive.
    feed(producer, 1010, 10100, CONT, now=1.5)
    feed(producer, 1020, 10200, CONT, now=1.5)
    feed(producer, 1021, 10210, CONT, now=1.5)
    producer.on_timer(2.0)
    block = pub.sent_rtcp(ReceiverReport)[-1].reports[0]
    assert (block.packets_lost, block.fraction_lost, block.highest_sequence) == (2, 0, 1021)
    assert block.dlsr == int(1.25 * 65536)


def test_receiver_report_extends_the_highest_sequence_number_across_the_wrap() -> None:
    producer, pub = make_producer()
    for i, seq in enumerate((65530, 65531, 65532, 65533, 65534, 65535, 0, 2, 3, 4)):
        feed(producer, seq, i * 3000, KEY if i == 0 else CONT, now=0.5)
    producer.on_timer(1.0)
    block = pub.sent_rtcp(ReceiverReport)[0].reports[0]
    assert block.highest_sequence == 0x10000 + 4
    assert (block.packets_lost, block.fraction_lost) == (1, 256 // 11)
    feed(producer, 6, 40000, CONT, now=1.5)  # 5 lost, across a gap after the wrap
    producer.on_timer(2.0)
    block = pub.sent_rtcp(ReceiverReport)[-1].reports[0]
    assert (block.highest_sequence, block.packets_lost, block.fraction_lost) == (0x10006, 2, 128)


def test_receiver_report_before_any_sender_report_has_no_lsr() -> None:
    producer, pub = make_producer()
    feed(producer, 10, 0, KEY, now=0.1)
    producer.on_timer(1.0)
    block = pub.sent_rtcp(ReceiverReport)[0].reports[0]
    assert (block.lsr, block.dlsr, block.packets_lost, block.fraction_lost) == (0, 0, 0, 0)
    assert block.highest_sequence == 10


# --- item: sender reports rewritten per subscriber -------------------------------------------


def test_sender_reports_map_the_same_ntp_time_onto_each_consumers_own_timeline() -> None:
    """Audio/video sync: per consumer, SR RTP time - packet RTP time must equal the publisher's.

    Two subscribers, each with an audio and a video consumer; the second joins later and one
    of its consumers pauses and resumes, so every consumer has its own timestamp offset.
    """
    video, vpub = make_producer()
    audio, apub = make_producer(OPUS, ssrc=3333, rtx_ssrc=None)
    subscriber_a, subscriber_b = FakeTransport(), FakeTransport()
    va, _ = add_consumer(video, 5000, sub=subscriber_a)
    aa, _ = add_consumer(audio, 5100, sub=subscriber_a, payload_type=109, rtx_payload_type=None)
    feed(video, 100, 90_000, KEY, now=1.0)
    feed(audio, 200, 48_000, b"\xfc" * 20, now=1.0, pt=111, ssrc=3333)
    vb, _ = add_consumer(video, 6000, sub=subscriber_b)
    ab, _ = add_consumer(audio, 6100, sub=subscriber_b, payload_type=109, rtx_payload_type=None)
    ab.pause()
    feed(video, 101, 93_000, DELTA, now=1.033)  # not a key frame: vb keeps waiting
    feed(video, 102, 96_000, KEY, now=1.066)
    feed(audio, 201, 48_960, b"\xfc" * 20, now=1.02, pt=111, ssrc=3333)
    ab.resume()
    feed(audio, 202, 49_920, b"\xfc" * 20, now=1.04, pt=111, ssrc=3333)

    last_in = {va: 96_000, vb: 96_000, aa: 49_920, ab: 49_920}
    last_out = {
        consumer: [h.timestamp for h in map(parse_rtp_header, sub.rtp) if h.ssrc == consumer.ssrc][-1]
        for sub, consumer in ((subscriber_a, va), (subscriber_a, aa), (subscriber_b, vb), (subscriber_b, ab))
    }
    assert len({(last_out[c] - last_in[c]) & 0xFFFFFFFF for c in last_in}) == 4  # all offsets differ

    video_ntp, audio_ntp = (3_900_000_001 << 32), (3_900_000_001 << 32) | 0x80000000
    vpub.receive_rtcp(build_sender_report(1111, video_ntp, 97_500, 3, 150), 1.1)
    apub.receive_rtcp(build_sender_report(3333, audio_ntp, 72_000, 3, 60), 1.1)
    reports = {sr.ssrc: sr for sub in (subscriber_a, subscriber_b) for sr in sub.sent_rtcp(SenderReport)}
    assert set(reports) == {5000, 5100, 6000, 6100}
    for consumer, in_rtp, ntp in (
        (va, 97_500, video_ntp),
        (vb, 97_500, video_ntp),
        (aa, 72_000, audio_ntp),
        (ab, 72_000, audio_ntp),
    ):
        sr = reports[consumer.ssrc]
        assert sr.ntp_timestamp == ntp
        assert (sr.rtp_timestamp - last_out[consumer]) & 0xFFFFFFFF == in_rtp - last_in[consumer]
        assert sr.packet_count == consumer.stats.packets_sent
        assert sr.octet_count == consumer.stats.octets_sent
    assert reports[5000].packet_count == 3 and reports[6000].packet_count == 1


def test_no_sender_report_reaches_a_consumer_that_has_not_started() -> None:
    video, vpub = make_producer()
    consumer, sub = add_consumer(video, 5000)
    feed(video, 1, 0, DELTA, now=0.1)
    vpub.receive_rtcp(build_sender_report(1111, 1 << 32, 0, 1, 10), 0.2)
    vpub.receive_rtcp(build_sender_report(4242, 1 << 32, 0, 1, 10), 0.2)  # not the producer's SSRC
    assert not sub.sent_rtcp(SenderReport) and consumer.stats.sender_reports_sent == 0
