"""Producer → Consumer forwarding logic without sockets: a fake transport records what is sent."""

from __future__ import annotations

from salon.media.consumer import (
    Consumer,
    ConsumerClosed,
    ConsumerCloseReason,
    ConsumerQualityChanged,
    PauseReason,
)
from salon.media.producer import Producer, ProducerClosed, ProducerCloseReason
from salon.media.rtcp import Nack, Pli, Remb, SenderReport, parse_rtcp
from salon.media.rtp import (
    abs_send_time,
    build_rtp,
    find_header_extension,
    iter_header_extensions,
    parse_rtp_header,
    unwrap_rtx,
)
from salon.media.sdp import HeaderExtensionIds, PublishTrack, RtpCodec, SubscribeTrack
from tests.unit.media.media_fakes import (
    CONT,
    DELTA,
    KEY,
    OPUS,
    VP8,
    FakeTransport,
    add_consumer,
    audio_level_block,
    feed,
    make_producer,
)


def make(paused: bool = False) -> tuple[Producer, Consumer, FakeTransport, FakeTransport]:
    pub, sub = FakeTransport(), FakeTransport()
    track = PublishTrack(
        mid="1",
        kind="video",
        codec=VP8,
        extensions=HeaderExtensionIds(mid=4, abs_send_time=2),
        ssrc=1111,
        rtx_ssrc=2222,
        cname="c",
    )
    producer = Producer(pub, track, stream_id="s")  # type: ignore[arg-type]
    sub_codec = RtpCodec(
        **{**{f: getattr(VP8, f) for f in VP8.__slots__}, "payload_type": 120, "rtx_payload_type": 121}
    )
    consumer = Consumer(
        sub,  # type: ignore[arg-type]
        producer,
        SubscribeTrack(
            mid="v",
            kind="video",
            source=producer.id,
            codec=sub_codec,
            extensions=HeaderExtensionIds(mid=9, abs_send_time=3),
        ),
        ssrc=5555,
        rtx_ssrc=6666,
        paused=paused,
    )
    producer.add_consumer(consumer)
    consumer.transport_connected()
    return producer, consumer, pub, sub


def test_consumer_starts_on_a_key_frame_and_rewrites_everything() -> None:
    producer, _consumer, pub, sub = make()
    assert any(isinstance(p, Pli) and p.media_ssrc == 1111 for raw in pub.rtcp for p in parse_rtcp(raw))
    feed(producer, 100, 9000, DELTA)
    feed(producer, 101, 9000, CONT)
    assert sub.rtp == []  # waiting for a key frame
    feed(producer, 102, 12000, KEY)
    feed(producer, 103, 12000, CONT)
    feed(producer, 104, 15000, DELTA)
    headers = [parse_rtp_header(p) for p in sub.rtp]
    assert [h.ssrc for h in headers] == [5555] * 3
    assert [h.payload_type for h in headers] == [120] * 3
    seqs = [h.sequence_number for h in headers]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(3)]
    assert headers[2].timestamp - headers[0].timestamp == 3000
    assert find_header_extension(sub.rtp[0], headers[0], 9) == b"v"
    # abs-send-time (id 3 for the subscriber) of the time the packet was forwarded (feed's 1.0 s).
    assert find_header_extension(sub.rtp[0], headers[0], 3) == abs_send_time(1.0) == b"\x04\x00\x00"
    assert sub.rtp[0][headers[0].payload_offset :] == KEY


def test_pause_and_resume_keep_sequence_numbers_continuous() -> None:
    producer, consumer, _pub, sub = make()
    feed(producer, 10, 1000, KEY)
    feed(producer, 11, 4000, DELTA)
    consumer.pause()
    feed(producer, 12, 7000, DELTA)
    feed(producer, 13, 10000, KEY)
    consumer.resume()
    feed(producer, 14, 13000, DELTA)  # not a key frame: still waiting
    feed(producer, 15, 16000, KEY)
    headers = [parse_rtp_header(p) for p in sub.rtp]
    assert len(headers) == 3
    assert headers[2].sequence_number == (headers[1].sequence_number + 1) & 0xFFFF
    assert consumer.stats.key_frame_starts == 2


def test_nack_is_answered_from_the_cache_with_rtx_and_misses_go_upstream() -> None:
    producer, consumer, pub, sub = make()
    feed(producer, 200, 1000, KEY)
    feed(producer, 201, 1000, CONT)
    first = parse_rtp_header(sub.rtp[1])
    sent_before = len(sub.rtp)
    pub.rtcp.clear()
    consumer.receive_nack([first.sequence_number, (first.sequence_number + 5) & 0xFFFF], now=2.0)
    assert consumer.stats.retransmitted_from_cache == 1
    rtx = sub.rtp[sent_before]
    header = parse_rtp_header(rtx)
    assert (header.ssrc, header.payload_type, header.timestamp) == (6666, 121, first.timestamp)
    osn, payload = unwrap_rtx(rtx, header)
    assert osn == first.sequence_number and payload == CONT
    # seq + 5 was never sent to this subscriber: nothing to map, nothing upstream.
    assert consumer.stats.cache_misses == 0
    # A NACK for a packet forwarded but evicted from the cache goes upstream.
    producer.encodings[0].cache.clear()
    consumer.receive_nack([first.sequence_number], now=2.1)
    assert consumer.stats.cache_misses == 1
    nacks = [p for raw in pub.rtcp for p in parse_rtcp(raw) if isinstance(p, Nack)]
    assert nacks and nacks[-1].media_ssrc == 1111 and nacks[-1].seqs == (201,)


def test_publisher_gap_is_nacked_at_once_and_rtx_recovers_it() -> None:
    producer, _consumer, pub, sub = make()
    feed(producer, 300, 1000, KEY)
    pub.rtcp.clear()
    feed(producer, 302, 1000, CONT, now=1.01)
    nacks = [p for raw in pub.rtcp for p in parse_rtcp(raw) if isinstance(p, Nack)]
    assert nacks and nacks[0].seqs == (301,)
    rtx = build_rtp(payload_type=97, sequence_number=7, timestamp=1000, ssrc=2222, payload=b"\x01\x2d" + CONT)
    producer.receive_rtp(rtx, parse_rtp_header(rtx), 1.05)
    assert producer.stats.rtx_received == 1
    forwarded = [parse_rtp_header(p) for p in sub.rtp]
    assert len(forwarded) == 3  # the recovered packet is forwarded too
    assert forwarded[2].sequence_number == (forwarded[0].sequence_number + 1) & 0xFFFF


def test_sender_report_and_remb() -> None:
    producer, consumer, pub, sub = make()
    feed(producer, 1, 90000, KEY)
    sub.rtcp.clear()
    producer.receive_sender_report(
        SenderReport(ssrc=1111, ntp_timestamp=123 << 32, rtp_timestamp=90000, packet_count=1, octet_count=1),
        1.0,
    )
    (sr,) = parse_rtcp(sub.rtcp[0])
    assert isinstance(sr, SenderReport)
    assert sr.ssrc == 5555 and sr.ntp_timestamp == 123 << 32
    assert sr.rtp_timestamp == parse_rtp_header(sub.rtp[0]).timestamp
    assert sr.packet_count == 1
    consumer.receive_remb(400_000, 1.0)
    assert consumer.remb_bitrate == 400_000
    pub.rtcp.clear()
    producer.on_timer(5.0)
    # The REMB upstream is the publisher's uplink (nothing congested here), not the subscriber's.
    rembs = [p for raw in pub.rtcp for p in parse_rtcp(raw) if isinstance(p, Remb)]
    assert rembs and rembs[0].bitrate == producer.max_bitrate and rembs[0].ssrcs == (1111,)


def test_producer_close_closes_consumers_with_producer_closed() -> None:
    producer, consumer, _pub, _sub = make()
    events: list[object] = []
    consumer.events.add_listener(events.append)
    producer.events.add_listener(events.append)
    producer.close()
    producer.close()
    assert [type(e) for e in events] == [ConsumerClosed, ProducerClosed]
    assert isinstance(events[0], ConsumerClosed) and events[0].reason is ConsumerCloseReason.PRODUCER_CLOSED
    assert isinstance(events[1], ProducerClosed) and events[1].reason is ProducerCloseReason.CLOSED
    assert consumer.closed and producer.consumers == []


# --- header extensions per subscriber -------------------------------------------------------

OPUS_FRAME = b"\xfc" + bytes(40)


def extensions_of(packet: bytes) -> dict[int, bytes]:
    return dict(iter_header_extensions(packet, parse_rtp_header(packet)))


def test_audio_level_is_forwarded_under_the_subscribers_extension_id() -> None:
    producer, _pub = make_producer(
        OPUS, ssrc=3333, rtx_ssrc=None, extensions=HeaderExtensionIds(mid=4, audio_level=1)
    )
    with_level, sub = add_consumer(
        producer, 5000, payload_type=109, extensions=HeaderExtensionIds(mid=9, audio_level=5)
    )
    _without, other = add_consumer(producer, 6000, payload_type=111, extensions=HeaderExtensionIds(mid=3))
    for seq, (level, voice) in enumerate([(30, True), (90, False), (0, True)]):
        feed(
            producer,
            seq,
            seq * 960,
            OPUS_FRAME,
            pt=111,
            ssrc=3333,
            extensions=audio_level_block(1, level, voice),
        )
    feed(producer, 3, 3 * 960, OPUS_FRAME, pt=111, ssrc=3333)  # no extension: the last level stays
    assert [extensions_of(p) for p in sub.rtp] == [
        {9: b"a", 5: bytes([0x80 | 30])},
        {9: b"a", 5: bytes([90])},
        {9: b"a", 5: bytes([0x80])},
        {9: b"a", 5: bytes([0x80])},
    ]
    assert [extensions_of(p) for p in other.rtp] == [{3: b"a"}] * 4
    # Payload and the rest of the rewrite are untouched by the extra element.
    for packet in sub.rtp:
        header = parse_rtp_header(packet)
        assert (header.ssrc, header.payload_type) == (with_level.ssrc, 109)
        assert packet[header.payload_offset :] == OPUS_FRAME


def test_no_audio_level_is_written_when_the_publisher_sends_none() -> None:
    producer, _pub = make_producer(OPUS, ssrc=3333, rtx_ssrc=None, extensions=HeaderExtensionIds(mid=4))
    _consumer, sub = add_consumer(
        producer, 5000, payload_type=109, extensions=HeaderExtensionIds(mid=9, audio_level=5)
    )
    feed(producer, 1, 960, OPUS_FRAME, pt=111, ssrc=3333)
    assert extensions_of(sub.rtp[0]) == {9: b"a"}


def test_audio_retransmissions_carry_the_level_of_the_cached_packet() -> None:
    opus_nack = RtpCodec(
        **{**{f: getattr(OPUS, f) for f in OPUS.__slots__}, "rtcp_feedback": (("nack", None),)}
    )
    producer, _pub = make_producer(
        opus_nack, ssrc=3333, rtx_ssrc=None, extensions=HeaderExtensionIds(mid=4, audio_level=1)
    )
    consumer, sub = add_consumer(
        producer, 5000, payload_type=109, extensions=HeaderExtensionIds(mid=9, audio_level=5)
    )
    feed(producer, 1, 960, OPUS_FRAME, pt=111, ssrc=3333, extensions=audio_level_block(1, 20, True))
    feed(producer, 2, 1920, OPUS_FRAME, pt=111, ssrc=3333, extensions=audio_level_block(1, 100))
    consumer.receive_nack([parse_rtp_header(sub.rtp[0]).sequence_number], 2.0)
    assert sub.rtp[-1] == sub.rtp[0]  # same seq, timestamp, payload and level: a plain resend


def test_video_extension_blocks_stay_mid_and_abs_send_time() -> None:
    producer, _pub = make_producer(extensions=HeaderExtensionIds(mid=4, abs_send_time=2, audio_level=1))
    _consumer, sub = add_consumer(
        producer, 5000, extensions=HeaderExtensionIds(mid=9, abs_send_time=3, audio_level=5)
    )
    feed(producer, 1, 0, KEY, extensions=audio_level_block(1, 20))
    assert set(extensions_of(sub.rtp[0])) == {9, 3}


def test_a_consumer_switched_to_a_republished_producer_continues_the_same_rtp_stream() -> None:
    old, consumer, _old_pub, sub = make()
    feed(old, 100, 9000, KEY)
    feed(old, 101, 12000, DELTA)
    new_pub = FakeTransport()
    track = PublishTrack(
        mid="0",
        kind="video",
        codec=VP8,
        extensions=HeaderExtensionIds(mid=4),
        ssrc=7777,
        rtx_ssrc=None,
        cname="d",
    )
    new = Producer(new_pub, track, stream_id="s")  # type: ignore[arg-type]
    assert consumer.can_switch_to(new)
    consumer.switch_producer(new)
    assert consumer.producer is new and consumer in new.consumers and consumer not in old.consumers
    # It asks the new publisher for a key frame at once, and waits for one.
    assert any(isinstance(p, Pli) and p.media_ssrc == 7777 for raw in new_pub.rtcp for p in parse_rtcp(raw))
    feed(new, 5000, 777000, DELTA)
    feed(old, 102, 15000, DELTA)  # the old producer's late packets no longer reach it
    assert len(sub.rtp) == 2
    feed(new, 5001, 780000, KEY)
    feed(new, 5002, 783000, DELTA)
    headers = [parse_rtp_header(p) for p in sub.rtp]
    assert [h.ssrc for h in headers] == [5555] * 4 and [h.payload_type for h in headers] == [120] * 4
    seqs = [h.sequence_number for h in headers]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(4)]  # no gap, no jump
    assert headers[3].timestamp - headers[2].timestamp == 3000
    # Closing the old producer no longer closes the consumer.
    old.close()
    assert not consumer.closed


def test_a_consumer_cannot_switch_to_another_kind_or_codec() -> None:
    _old, consumer, _pub, _sub = make()
    audio = PublishTrack(
        mid="0", kind="audio", codec=OPUS, extensions=HeaderExtensionIds(), ssrc=1, rtx_ssrc=None, cname=""
    )
    assert not consumer.can_switch_to(Producer(FakeTransport(), audio, stream_id="s"))  # type: ignore[arg-type]


def test_a_quality_pause_stops_forwarding_apart_from_the_subscribers_own_and_is_reported() -> None:
    producer, consumer, _pub, sub = make()
    changes: list[bool] = []
    consumer.events.add_listener(
        lambda e: changes.append(e.paused) if isinstance(e, ConsumerQualityChanged) else None
    )
    feed(producer, 100, 9000, KEY)
    assert len(sub.rtp) == 1
    consumer.set_paused(True, PauseReason.QUALITY)
    consumer.set_paused(True, PauseReason.QUALITY)  # no change: not reported again
    assert changes == [True] and consumer.quality_paused and not consumer.paused
    assert not consumer.forwarding
    feed(producer, 101, 12000, KEY)
    assert len(sub.rtp) == 1
    # The subscriber turning video on does not lift the quality pause, nor off-and-on.
    consumer.set_paused(False, PauseReason.SUBSCRIBER)
    consumer.set_paused(True, PauseReason.SUBSCRIBER)
    consumer.set_paused(False, PauseReason.SUBSCRIBER)
    feed(producer, 102, 15000, KEY)
    assert len(sub.rtp) == 1 and changes == [True]
    consumer.set_paused(False, PauseReason.QUALITY)
    assert changes == [True, False] and consumer.forwarding
    feed(producer, 103, 18000, DELTA)
    assert len(sub.rtp) == 1  # not before the key frame
    feed(producer, 104, 21000, KEY)
    headers = [parse_rtp_header(p) for p in sub.rtp]
    assert len(headers) == 2 and headers[1].sequence_number == (headers[0].sequence_number + 1) & 0xFFFF
    consumer.close()
    consumer.set_paused(True, PauseReason.QUALITY)  # closed: nothing happens
    assert changes == [True, False]


def test_preferences_are_stored_for_layer_selection() -> None:
    _producer, consumer, _pub, _sub = make()
    assert (consumer.max_width, consumer.max_height, consumer.max_frame_rate) == (None, None, None)
    consumer.set_preferences(320, 180, 7.5)
    assert (consumer.max_width, consumer.max_height, consumer.max_frame_rate) == (320, 180, 7.5)
    assert consumer.dump()["preferences"] == {"max_width": 320, "max_height": 180, "max_frame_rate": 7.5}
    consumer.set_preferences(None, None, None)
    assert consumer.dump()["preferences"] == {"max_width": None, "max_height": None, "max_frame_rate": None}
