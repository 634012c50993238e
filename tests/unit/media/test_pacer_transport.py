"""The pacer on a real transport (in-memory link, real SRTP, the transport's drain timer): a
key-frame burst toward a paced subscriber leaves spread out, numbered (transport-cc) in the
order it leaves, retransmissions ahead of queued video; unpaced transports send at once."""

from __future__ import annotations

import time

from salon.media.rtcp import Pli, build_nack
from salon.media.rtp import find_header_extension, parse_rtp_header, unwrap_rtx
from salon.media.sdp import HeaderExtensionIds
from tests.unit.media.media_fakes import DELTA, KEY
from tests.unit.media.test_memory_transport import (
    MID_EXT,
    SUB_RTX_SSRC,
    SUB_SSRC,
    Call,
    make_call,
    wait_until,
)

TWCC_EXT, ABS_EXT = 5, 2


async def make_paced_call() -> Call:
    return await make_call(
        publisher_extensions=HeaderExtensionIds(mid=MID_EXT),
        subscriber_extensions=HeaderExtensionIds(mid=9, abs_send_time=ABS_EXT, transport_cc=TWCC_EXT),
    )


def _twcc(packet: bytes) -> int:
    value = find_header_extension(packet, parse_rtp_header(packet), TWCC_EXT)
    assert value is not None and len(value) == 2
    return int.from_bytes(value, "big")


async def test_a_key_frame_burst_leaves_paced_and_numbered_in_send_order() -> None:
    call = await make_paced_call()
    try:
        # 160 kbit/s x 1.5 = 30 kB/s; the 20 packets of ~1.1 kB below take about 0.75 s.
        call.sub.pacer.set_budget(160_000, time.monotonic())
        big = bytes(1050)
        call.publish(100, KEY + big)
        for seq in range(101, 120):
            call.publish(seq, DELTA + big)
        sent_at_once = len(call.sub_peer.rtp)
        assert 1 <= sent_at_once <= 3  # the bucket's burst, not the 20 packets
        # A NACK for the first packet while the rest waits: its RTX goes ahead of the video.
        first = parse_rtp_header(call.sub_peer.rtp[0]).sequence_number
        call.sub_peer.send_rtcp(build_nack(77, SUB_SSRC, [first]))
        await wait_until(lambda: len(call.sub_peer.rtp) == 21, "the queue drained", 10.0)
        packets = call.sub_peer.rtp
        headers = [parse_rtp_header(p) for p in packets]
        # Retransmission first, then the queued video in order.
        assert headers[sent_at_once].ssrc == SUB_RTX_SSRC
        assert unwrap_rtx(packets[sent_at_once], headers[sent_at_once])[0] == first
        media = [h.sequence_number for h in headers if h.ssrc == SUB_SSRC]
        assert [(s - media[0]) & 0xFFFF for s in media] == list(range(20))
        payloads = [
            p[h.payload_offset :] for p, h in zip(packets, headers, strict=True) if h.ssrc == SUB_SSRC
        ]
        assert payloads == [KEY + big] + [DELTA + big] * 19  # written around, not over
        sent_times = [find_header_extension(p, h, ABS_EXT) for p, h in zip(packets, headers, strict=True)]
        assert all(t is not None and len(t) == 3 for t in sent_times)
        assert len(set(sent_times)) > 5  # stamped when each left, not when queued
        # Transport-wide numbers follow the order the packets left in, with no gap.
        numbers = [_twcc(p) for p in packets]
        assert [(n - numbers[0]) & 0xFFFF for n in numbers] == list(range(21))
        assert call.sub.bandwidth.history.sent == 21
        assert call.sub.dump()["pacer"]["packets_queued"] == 21 - sent_at_once
    finally:
        await call.pub.close()
        await call.sub.close()


async def test_without_a_rate_nothing_waits() -> None:
    call = await make_paced_call()
    try:
        assert call.sub.pacer.rate == 0  # no REMB nor transport-cc feedback yet: not paced
        big = bytes(1050)
        call.publish(100, KEY + big)
        for seq in range(101, 120):
            call.publish(seq, DELTA + big)
        assert len(call.sub_peer.rtp) == 20  # synchronous: all sent at once
        assert call.sub.pacer.queued == 0
    finally:
        await call.pub.close()
        await call.sub.close()


async def test_closing_a_transport_with_a_queue_cancels_its_drain() -> None:
    call = await make_paced_call()
    call.sub.pacer.set_budget(16_000, time.monotonic())  # 3 kB/s: seconds of queue
    big = bytes(1050)
    call.publish(100, KEY + big)
    for seq in range(101, 105):
        call.publish(seq, DELTA + big)
    assert len(call.sub.pacer) > 0
    await call.sub.close()
    await call.sub.close()  # idempotent
    assert len(call.sub.pacer) == 0 and call.sub._pace_timer is None
    await call.pub.close()


async def test_video_dropped_from_a_full_queue_asks_the_publisher_for_a_key_frame() -> None:
    call = await make_paced_call()
    try:
        await wait_until(lambda: len(call.pub_peer.received_rtcp(Pli)) == 1, "the PLI sent on connecting")
        call.sub.pacer.set_budget(16_000, time.monotonic())  # 3 kB/s: the queue holds 9 kB
        big = bytes(1050)
        call.publish(100, KEY + big)
        for seq in range(101, 115):
            call.publish(seq, DELTA + big)
        assert call.sub.pacer.queued_bytes <= 9000
        assert call.sub.pacer.dropped == call.consumer.stats.paced_dropped > 0
        await wait_until(lambda: len(call.pub_peer.received_rtcp(Pli)) == 2, "a PLI for the dropped video")
    finally:
        await call.pub.close()
        await call.sub.close()


async def test_plain_padding_goes_only_as_the_bucket_allows() -> None:
    call = await make_paced_call()
    try:
        call.publish(100, KEY)  # the consumer forwards: it may pad
        now = time.monotonic()
        assert call.consumer.send_padding(now, 40) > 0  # unpaced: all 40 at once
        assert len(call.sub_peer.rtp) == 1 + 40
        call.sub.pacer.set_budget(800_000, now)  # 150 kB/s, 3 kB of bucket at most
        sent = call.consumer.send_padding(now + 1.0, 40)
        assert 0 < sent <= 3000 + 300
        assert call.sub.pacer.tokens < 300
        assert call.consumer.send_padding(now + 1.0, 40) == 0  # nothing left in the bucket
    finally:
        await call.pub.close()
        await call.sub.close()
