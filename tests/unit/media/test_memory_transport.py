"""Transports, producers and consumers over the in-memory link: the production packet path
(datagram gate, real SRTP, routing, forwarding, RTCP, timers) without sockets, ICE or DTLS."""

from __future__ import annotations

import asyncio
import pathlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from salon.media.consumer import Consumer, ConsumerCloseReason
from salon.media.memory import PEER_ADDR, PEER_REMOTE, MemoryLink, MemoryPeer
from salon.media.producer import Producer, ProducerCloseReason
from salon.media.router import Router
from salon.media.rtcp import Fir, Nack, Pli, ReceiverReport, Remb, build_fir, build_nack, build_pli
from salon.media.rtp import build_rtp, encode_one_byte_extensions, parse_rtp_header, unwrap_rtx
from salon.media.sdp import HeaderExtensionIds, PublishTrack, SubscribeTrack
from salon.media.transport import TransportCloseReason, TransportState, WebRtcTransport
from salon.media.twcc import TransportFeedback
from salon.media.webrtc import LinkFailure, LinkFailureKind
from tests.unit.media.media_fakes import DELTA, KEY, VP8

PUB_SSRC, PUB_RTX_SSRC = 1111, 2222
SUB_SSRC, SUB_RTX_SSRC = 5000, 5001
MID_EXT = 4


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def memory_transport(name: str) -> tuple[WebRtcTransport, MemoryPeer]:
    link = MemoryLink(name)
    transport = await WebRtcTransport.create(link=link, transport_id=name)
    return transport, link.peer


async def connect(*transports: WebRtcTransport) -> None:
    for transport in transports:
        transport.start(PEER_REMOTE)
    for transport in transports:
        await wait_until(lambda t=transport: t.state is TransportState.CONNECTED, f"{transport!r} connected")  # type: ignore[misc]


@dataclass
class Call:
    pub: WebRtcTransport
    pub_peer: MemoryPeer
    producer: Producer
    sub: WebRtcTransport
    sub_peer: MemoryPeer
    consumer: Consumer

    def publish(
        self, seq: int, payload: bytes, *, ssrc: int = PUB_SSRC, pt: int = 96, ext: bytes = b""
    ) -> None:
        self.pub_peer.send_rtp(
            build_rtp(
                payload_type=pt,
                sequence_number=seq,
                timestamp=seq * 3000,
                ssrc=ssrc,
                payload=payload,
                extensions=ext,
            )
        )

    def forwarded(self) -> list[tuple[int, int, int, bytes]]:
        """(ssrc, payload type, sequence number, payload) of each packet the subscriber got."""
        out = []
        for data in self.sub_peer.rtp:
            header = parse_rtp_header(data)
            out.append(
                (header.ssrc, header.payload_type, header.sequence_number, data[header.payload_offset :])
            )
        return out


async def make_call(
    *,
    announced_ssrc: bool = True,
    publisher_extensions: HeaderExtensionIds | None = None,
    subscriber_extensions: HeaderExtensionIds | None = None,
) -> Call:
    """A publisher and a subscriber transport joined in memory, one VP8 producer consumed."""
    pub, pub_peer = await memory_transport("pub")
    track = PublishTrack(
        mid="1",
        kind="video",
        codec=VP8,
        extensions=publisher_extensions or HeaderExtensionIds(mid=MID_EXT, abs_send_time=2),
        ssrc=PUB_SSRC if announced_ssrc else None,
        rtx_ssrc=PUB_RTX_SSRC if announced_ssrc else None,
        cname="c",
    )
    producer = Producer(pub, track, stream_id="s")
    pub.add_producer(producer)
    sub, sub_peer = await memory_transport("sub")
    consumer = Consumer(
        sub,
        producer,
        SubscribeTrack(
            mid="0",
            kind="video",
            source=producer.id,
            codec=VP8,
            extensions=subscriber_extensions or HeaderExtensionIds(mid=9),
        ),
        ssrc=SUB_SSRC,
        rtx_ssrc=SUB_RTX_SSRC,
    )
    sub.add_consumer(consumer)
    producer.add_consumer(consumer)
    await connect(pub, sub)
    return Call(pub, pub_peer, producer, sub, sub_peer, consumer)


@pytest.fixture
async def call() -> AsyncIterator[Call]:
    made = await make_call()
    yield made
    await made.pub.close()
    await made.sub.close()


async def test_a_subscriber_gets_the_publishers_packets_rewritten_from_the_first_key_frame(
    call: Call,
) -> None:
    # Connecting the subscriber asked the publisher for a key frame.
    await wait_until(lambda: call.pub_peer.received_rtcp(Pli) != [], "a PLI to the publisher")
    assert {p.media_ssrc for p in call.pub_peer.received_rtcp(Pli)} == {PUB_SSRC}
    call.publish(99, DELTA)  # before the key frame: not forwarded
    call.publish(100, KEY)
    call.publish(101, DELTA)
    forwarded = call.forwarded()
    assert [(s, pt, p) for s, pt, _, p in forwarded] == [(SUB_SSRC, 96, KEY), (SUB_SSRC, 96, DELTA)]
    assert (forwarded[1][2] - forwarded[0][2]) & 0xFFFF == 1
    assert call.pub.stats.rtp_received == 3 and call.pub.stats.srtp_errors == 0
    assert call.sub.stats.rtp_sent == 2 and call.sub_peer.srtp_errors == 0
    assert call.consumer.stats.packets_sent == 2


async def test_an_unannounced_ssrc_is_learnt_from_the_mid_extension() -> None:
    made = await make_call(announced_ssrc=False)
    try:
        mid = encode_one_byte_extensions([(MID_EXT, b"1")])
        made.publish(100, KEY, ssrc=777, ext=mid)
        made.publish(101, DELTA, ssrc=777)  # no extension any more: routed by SSRC
        assert made.producer.ssrc == 777
        assert [p for *_, p in made.forwarded()] == [KEY, DELTA]
        made.publish(102, DELTA, ssrc=778, pt=100)  # unknown SSRC and payload type: dropped
        assert made.pub.stats.rtp_unknown == 1
    finally:
        await made.pub.close()
        await made.sub.close()


async def test_a_publisher_gap_is_nacked_upstream_and_the_rtx_repair_forwarded(call: Call) -> None:
    call.publish(100, KEY)
    call.publish(102, DELTA)  # 101 lost on the publisher's leg
    assert [n.seqs for n in call.pub_peer.received_rtcp(Nack)] == [(101,)]
    repair = (101).to_bytes(2, "big") + b"\x10\x01repaired"
    call.publish(1, repair, ssrc=PUB_RTX_SSRC, pt=97)
    assert call.producer.stats.rtx_received == 1
    forwarded = call.forwarded()
    assert forwarded[-1][3] == b"\x10\x01repaired"
    assert (forwarded[-1][2] - forwarded[0][2]) & 0xFFFF == 1  # 101's place in the subscriber's sequence


async def test_a_subscriber_nack_is_answered_from_the_cache_with_rtx(call: Call) -> None:
    for seq, payload in ((100, KEY), (101, DELTA + b"a"), (102, DELTA + b"b")):
        call.publish(seq, payload)
    lost = call.forwarded()[1][2]
    call.sub_peer.send_rtcp(build_nack(77, SUB_SSRC, [lost]))
    rtx = call.sub_peer.rtp[-1]
    header = parse_rtp_header(rtx)
    assert (header.ssrc, header.payload_type) == (SUB_RTX_SSRC, 97)
    assert unwrap_rtx(rtx, header) == (lost, DELTA + b"a")
    assert call.consumer.stats.retransmitted_from_cache == 1
    assert call.pub_peer.received_rtcp(Nack) == []  # nothing asked upstream


async def test_subscriber_pli_and_fir_reach_the_publisher_as_plis_for_its_ssrc(call: Call) -> None:
    await wait_until(lambda: len(call.pub_peer.received_rtcp(Pli)) == 1, "the PLI sent on connecting")
    call.publish(100, KEY)  # the consumer starts: it asks for no more key frames itself
    call.sub_peer.send_rtcp(build_pli(77, SUB_SSRC))
    # At once, or when the producer's throttle interval ends.
    await wait_until(lambda: len(call.pub_peer.received_rtcp(Pli)) == 2, "the subscriber's PLI upstream")
    call.publish(101, KEY)
    call.sub_peer.send_rtcp(build_fir(77, SUB_SSRC, 1))
    await wait_until(lambda: len(call.pub_peer.received_rtcp(Pli)) == 3, "the subscriber's FIR upstream")
    assert call.consumer.stats.key_frame_requests_received == 2
    assert {p.media_ssrc for p in call.pub_peer.received_rtcp(Pli)} == {PUB_SSRC}
    assert call.pub_peer.received_rtcp(Fir) == []  # the publisher offered PLI: no FIR


async def test_garbage_and_foreign_datagrams_are_dropped_before_srtp(call: Call) -> None:
    call.pub_peer.send_datagram(b"\xff" * 20)  # no protocol starts with 255
    call.pub_peer.send_datagram(b"\x80" * 20, addr=("192.0.2.99", 1))  # "SRTP" from elsewhere
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)  # a binding request
    call.pub_peer.send_datagram(stun)
    assert (call.pub.stats.garbage_dropped, call.pub.stats.foreign_dropped) == (1, 1)
    assert call.pub_peer.stun == [(stun, PEER_ADDR)]
    call.pub_peer.send_datagram(b"\x80" * 40)  # from the validated address: SRTP that fails
    assert call.pub.stats.srtp_errors == 1


async def test_closing_the_publisher_transport_closes_producer_and_consumers() -> None:
    made = await make_call()
    await made.pub.close()
    assert made.producer.close_reason is ProducerCloseReason.TRANSPORT_CLOSED
    assert made.consumer.close_reason is ConsumerCloseReason.PRODUCER_CLOSED
    assert made.pub.routes.producer(PUB_SSRC) is None and made.sub.routes.consumer(SUB_SSRC) is None
    made.sub_peer.send_rtcp(build_pli(77, SUB_SSRC))  # feedback about a closed consumer: ignored
    assert made.sub.state is TransportState.CONNECTED
    await made.sub.close()
    assert made.sub.close_reason is TransportCloseReason.CLOSED


async def test_a_link_failure_closes_the_transport_with_its_reason() -> None:
    link = MemoryLink("failing")
    link.failure = LinkFailure(LinkFailureKind.DTLS, "DTLS handshake ended in state failed")
    transport = await WebRtcTransport.create(link=link)
    transport.start(PEER_REMOTE)
    await wait_until(lambda: transport.state is TransportState.CLOSED, "the transport to close")
    assert transport.close_reason is TransportCloseReason.DTLS_FAILED
    assert link.closed


CHROMIUM_OFFER = (pathlib.Path(__file__).parent / "fixtures" / "chromium-offer.sdp").read_bytes().decode()
CHROMIUM_AUDIO_SSRC, CHROMIUM_VIDEO_SSRC = 1293847561, 2763917513


async def test_a_router_forwards_a_chromium_publishers_stream_over_memory_links() -> None:
    links: list[MemoryLink] = []

    def new_link() -> MemoryLink:
        links.append(MemoryLink(f"m{len(links)}"))
        return links[-1]

    router = Router(link_factory=new_link)
    try:
        published = await router.publish(CHROMIUM_OFFER, stream_id="s1")
        subscribed = await router.subscribe("s1", CHROMIUM_OFFER.replace("a=sendonly", "a=recvonly"))
        assert "a=setup:active" in published.answer_sdp and len(links) == 2
        pub_peer, sub_peer = links[0].peer, links[1].peer
        await wait_until(
            lambda: published.transport.state is subscribed.transport.state is TransportState.CONNECTED,
            "both transports connected",
        )
        consumers = {c.kind: c for c in subscribed.consumers}
        opus = build_rtp(
            payload_type=111, sequence_number=7, timestamp=960, ssrc=CHROMIUM_AUDIO_SSRC, payload=b"o"
        )
        pub_peer.send_rtp(opus)
        vp8 = build_rtp(
            payload_type=96, sequence_number=9, timestamp=3000, ssrc=CHROMIUM_VIDEO_SSRC, payload=KEY
        )
        pub_peer.send_rtp(vp8)
        received = [parse_rtp_header(p) for p in sub_peer.rtp]
        assert [(h.ssrc, h.payload_type) for h in received] == [
            (consumers["audio"].ssrc, consumers["audio"].codec.payload_type),
            (consumers["video"].ssrc, consumers["video"].codec.payload_type),
        ]
        assert sub_peer.rtp[1].endswith(KEY) and sub_peer.rtp[0].endswith(b"o")
    finally:
        await router.close()
    assert all(link.closed for link in links)


async def test_a_chromium_publisher_gets_transport_cc_feedback_and_no_remb() -> None:
    """Transport-cc negotiated with a publisher: every packet it stamps (audio, video, and a
    padding packet of an SSRC nothing is routed to) is reported in feedback within about
    FEEDBACK_INTERVAL, losses as not received; REMB is not sent to it."""
    links: list[MemoryLink] = []

    def new_link() -> MemoryLink:
        links.append(MemoryLink(f"m{len(links)}"))
        return links[-1]

    router = Router(link_factory=new_link)
    try:
        published = await router.publish(CHROMIUM_OFFER, stream_id="s1", screen=True)
        # A screen share (the stream's videoType): its video producer is marked for allocation.
        assert {p.kind: p.screen for p in published.producers} == {"audio": False, "video": True}
        assert "a=rtcp-fb:96 transport-cc" in published.answer_sdp
        assert "goog-remb" not in published.answer_sdp
        pub_peer = links[0].peer
        transport = published.transport
        await wait_until(lambda: transport.state is TransportState.CONNECTED, "connected")
        assert transport.feedback is not None
        sent_at: dict[int, float] = {}
        lost = {5, 12}
        for seq in range(20):
            twcc = encode_one_byte_extensions([(3, (0xFFF8 + seq & 0xFFFF).to_bytes(2, "big"))])
            if seq in lost:
                continue
            if seq == 15:  # padding on an SSRC the offer does not announce: still reported
                packet = build_rtp(
                    payload_type=97, sequence_number=1, timestamp=0, ssrc=99, payload=b"", extensions=twcc
                )
            elif seq % 2:
                packet = build_rtp(
                    payload_type=111,
                    sequence_number=seq,
                    timestamp=seq * 960,
                    ssrc=CHROMIUM_AUDIO_SSRC,
                    payload=b"o",
                    extensions=twcc,
                )
            else:
                packet = build_rtp(
                    payload_type=96,
                    sequence_number=seq,
                    timestamp=seq * 3000,
                    ssrc=CHROMIUM_VIDEO_SSRC,
                    payload=KEY if seq == 0 else DELTA,
                    extensions=twcc,
                )
            sent_at[(0xFFF8 + seq) & 0xFFFF] = time.monotonic()
            pub_peer.send_rtp(packet)

        def reported() -> dict[int, int | None]:
            feedback = [f for f in pub_peer.received_rtcp() if isinstance(f, TransportFeedback)]
            return {s: a for f in feedback for s, a in f.packets()}

        await wait_until(lambda: (0xFFF8 + 19) & 0xFFFF in reported(), "feedback up to the last packet", 5.0)
        got = reported()
        expected = [(0xFFF8 + s) & 0xFFFF for s in range(20)]
        assert sorted(got, key=lambda s: (s - 0xFFF8) & 0xFFFF) == expected
        assert {s for s, a in got.items() if a is None} == {(0xFFF8 + s) & 0xFFFF for s in lost}
        feedback = [f for f in pub_peer.received_rtcp() if isinstance(f, TransportFeedback)]
        assert {f.media_ssrc for f in feedback} <= {CHROMIUM_AUDIO_SSRC, CHROMIUM_VIDEO_SSRC, 99, 3158293042}
        # Let the producers' report timers run: receiver reports, but no REMB.
        await wait_until(lambda: bool(pub_peer.received_rtcp(ReceiverReport)), "a receiver report", 5.0)
        assert not pub_peer.received_rtcp(Remb)
        assert transport.dump()["feedback_sent"] >= 1
    finally:
        await router.close()


async def test_a_publisher_without_transport_cc_gets_remb() -> None:
    links: list[MemoryLink] = []

    def new_link() -> MemoryLink:
        links.append(MemoryLink(f"m{len(links)}"))
        return links[-1]

    router = Router(link_factory=new_link)
    try:
        offer = re.sub(r"a=rtcp-fb:\d+ transport-cc\r\n", "", CHROMIUM_OFFER)
        published = await router.publish(offer, stream_id="s1")
        assert "goog-remb" in published.answer_sdp and "transport-cc" not in published.answer_sdp
        pub_peer = links[0].peer
        await wait_until(lambda: published.transport.state is TransportState.CONNECTED, "connected")
        assert published.transport.feedback is None
        for seq in range(3):
            twcc = encode_one_byte_extensions([(3, seq.to_bytes(2, "big"))])
            pub_peer.send_rtp(
                build_rtp(
                    payload_type=96,
                    sequence_number=seq,
                    timestamp=seq * 3000,
                    ssrc=CHROMIUM_VIDEO_SSRC,
                    payload=KEY if seq == 0 else DELTA,
                    extensions=twcc,
                )
            )
        await wait_until(lambda: bool(pub_peer.received_rtcp(Remb)), "a REMB", 5.0)
        assert not pub_peer.received_rtcp(TransportFeedback)
    finally:
        await router.close()
