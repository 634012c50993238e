"""Pipe transports (:mod:`salon.media.pipe`): a producer's RTP over loopback UDP from its router
to a mirror producer on another router, with NACK, key-frame requests and RTCP flowing back.

Both ends run in this process on real sockets; the producer on the sending side is fed like a
publisher's, the mirror on the receiving side feeds an ordinary consumer."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from media_fakes import DELTA, KEY, OPUS, VP8, FakeTransport, add_consumer, feed, make_producer

from salon.media.consumer import Consumer
from salon.media.errors import MediaStateError
from salon.media.pipe import PipedProducer, PipeKeys, PipeTransport
from salon.media.producer import Producer
from salon.media.rtcp import Nack, Pli, Remb, SenderReport, build_pli
from salon.media.rtp import build_rtp, parse_rtp_header
from salon.media.sdp import EncodingParameters, HeaderExtensionIds, PublishTrack
from salon.media.totals import PIPE_COUNTERS, totals
from salon.media.transport import DROPPED


async def _until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@dataclass
class Piped:
    source: Producer
    publisher: FakeTransport
    sender: PipeTransport
    receiver: PipeTransport
    mirror: Producer
    consumer: Consumer
    subscriber: FakeTransport

    def payloads(self) -> list[bytes]:
        """What the subscriber on the receiving side got, as payloads, in order."""
        out = []
        for raw in self.subscriber.rtp:
            header = parse_rtp_header(raw)
            out.append(raw[header.payload_offset :])
        return out


@pytest.fixture(params=["plain", "srtp"])
async def piped(request: pytest.FixtureRequest) -> AsyncIterator[Piped]:
    """A pipe on the loopback: plain RTP (between workers) or SRTP (as between nodes)."""
    send_keys, receive_keys = PipeKeys.pair() if request.param == "srtp" else (None, None)
    source, publisher = make_producer()
    sender = await PipeTransport.sender("stream-1", [source], keys=send_keys)
    receiver = await PipeTransport.receiver(
        "stream-1", [PipedProducer.of(source)], ("127.0.0.1", sender.port), keys=receive_keys
    )
    sender.connect(("127.0.0.1", receiver.port))
    mirror = receiver.producers["video"]
    consumer, subscriber = add_consumer(mirror, 5000)
    try:
        yield Piped(source, publisher, sender, receiver, mirror, consumer, subscriber)
    finally:
        sender.close()
        receiver.close()
        await asyncio.sleep(0)  # the loop closes the sockets


def _frame(seq: int) -> bytes:
    return (KEY if seq == 10 else DELTA) + seq.to_bytes(2, "big")


async def test_packets_reach_a_consumer_of_the_mirror_producer(piped: Piped) -> None:
    assert piped.mirror.codec == piped.source.codec and piped.mirror.ssrc == piped.source.ssrc
    assert piped.source.pipes == [piped.sender], "the pipe taps the producer, not a consumer"
    assert piped.publisher.sent_rtcp(Pli), "the sending end asks for a key frame when it connects"
    for seq in range(10, 15):
        feed(piped.source, seq, seq * 3000, _frame(seq))
    await _until(lambda: len(piped.subscriber.rtp) == 5, "5 packets through the pipe")
    assert piped.payloads() == [_frame(seq) for seq in range(10, 15)]
    assert piped.sender.stats.packets_sent == 5 and piped.receiver.stats.packets_received == 5


async def test_loss_on_the_pipe_is_nacked_and_retransmitted(piped: Piped) -> None:
    feed(piped.source, 10, 30000, _frame(10))
    feed(piped.source, 11, 33000, _frame(11))
    await _until(lambda: len(piped.subscriber.rtp) == 2, "the first 2 packets")
    peer, piped.sender.peer = piped.sender.peer, None  # packet 12 is lost on the pipe
    feed(piped.source, 12, 36000, _frame(12))
    piped.sender.peer = peer
    for seq in (13, 14):
        feed(piped.source, seq, seq * 3000, _frame(seq))
    await _until(lambda: _frame(12) in piped.payloads(), "packet 12 retransmitted through the pipe")
    assert piped.sender.stats.nacks_received >= 1 and piped.sender.stats.retransmitted >= 1
    assert sorted(piped.payloads()) == sorted(_frame(seq) for seq in range(10, 15))
    # Answered from the sending side's buffer: the publisher was not asked.
    assert not piped.publisher.sent_rtcp(Nack)


async def test_a_miss_of_the_senders_buffer_is_nacked_to_the_publisher(piped: Piped) -> None:
    feed(piped.source, 100, 3000, _frame(10))
    feed(piped.source, 102, 9000, DELTA)  # 101 never reached the SFU: NACKed at once upstream
    await _until(lambda: piped.sender.stats.cache_misses >= 1, "the pipe's NACK of 101 to miss the cache")
    assert any(101 in nack.seqs for nack in piped.publisher.sent_rtcp(Nack))
    assert _frame(10) in piped.payloads() and piped.sender.stats.retransmitted == 0


async def test_key_frame_request_goes_back_through_the_pipe(piped: Piped) -> None:
    before = len(piped.publisher.sent_rtcp(Pli))

    async def ask() -> None:
        while len(piped.publisher.sent_rtcp(Pli)) == before:
            piped.consumer.receive_key_frame_request(time.monotonic())
            await asyncio.sleep(0.05)

    await asyncio.wait_for(ask(), 5)  # the producers' throttles (0.3 s) let one through
    assert piped.sender.stats.key_frame_requests >= 1
    assert piped.receiver.stats.rtcp_sent >= 1


async def test_datagrams_from_another_source_are_dropped(piped: Piped) -> None:
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        intruder.bind(("127.0.0.1", 0))
        forged = build_rtp(payload_type=96, sequence_number=10, timestamp=0, ssrc=1111, payload=KEY)
        intruder.sendto(forged, ("127.0.0.1", piped.receiver.port))
        await _until(lambda: piped.receiver.stats.foreign_dropped == 1, "the forged packet to be dropped")
        assert piped.mirror.stats.packets_received == 0 and piped.subscriber.rtp == []
        # Feedback forged towards the sending side is dropped too: no key frame asked for.
        plis = len(piped.publisher.sent_rtcp(Pli))
        intruder.sendto(build_pli(1, 1111), ("127.0.0.1", piped.sender.port))
        await _until(lambda: piped.sender.stats.foreign_dropped == 1, "the forged PLI to be dropped")
        assert len(piped.publisher.sent_rtcp(Pli)) == plis
    finally:
        intruder.close()
    feed(piped.source, 10, 0, _frame(10))
    await _until(lambda: len(piped.subscriber.rtp) == 1, "the genuine packet")


async def test_audio_and_video_share_one_pipe() -> None:
    video, _ = make_producer()
    audio, _ = make_producer(OPUS, ssrc=3333, rtx_ssrc=None)
    sender = await PipeTransport.sender("s", [video, audio])
    receiver = await PipeTransport.receiver(
        "s",
        [PipedProducer.from_dict(PipedProducer.of(p).to_dict()) for p in (video, audio)],
        ("127.0.0.1", sender.port),
    )
    try:
        sender.connect(("127.0.0.1", receiver.port))
        assert receiver.producers["audio"].codec == OPUS
        a_consumer, a_sub = add_consumer(receiver.producers["audio"], 7000, rtx_payload_type=None)
        v_consumer, v_sub = add_consumer(receiver.producers["video"], 8000)
        feed(audio, 1, 960, b"\xfc\x01", pt=111, ssrc=3333)
        feed(video, 1, 3000, KEY)
        await _until(lambda: len(a_sub.rtp) == 1 and len(v_sub.rtp) == 1, "one packet of each kind")
        assert a_consumer.producer is receiver.producers["audio"] and not v_consumer.closed
    finally:
        sender.close()
        receiver.close()
        await asyncio.sleep(0)  # the loop closes the sockets


async def test_close_is_idempotent_and_cascades(piped: Piped) -> None:
    piped.receiver.close()
    piped.receiver.close()
    assert piped.mirror.closed and piped.consumer.closed, "the mirror's consumers close with the pipe"
    assert piped.receiver.producers == {}
    piped.sender.close()
    piped.sender.close()
    assert piped.source.pipes == [] and not piped.source.closed
    feed(piped.source, 10, 0, _frame(10))  # no tap left: nothing is sent
    assert piped.sender.stats.packets_sent == 0


async def test_sender_closes_with_its_last_producer() -> None:
    source, _ = make_producer()
    sender = await PipeTransport.sender("s", [source])
    source.close()
    assert sender.closed
    with pytest.raises(MediaStateError):
        await PipeTransport.sender("s", [source])
    await asyncio.sleep(0)


async def test_peer_must_be_on_the_loopback() -> None:
    source, _ = make_producer()
    sender = await PipeTransport.sender("s", [source])
    try:
        with pytest.raises(MediaStateError):
            sender.connect(("10.0.0.1", 4000))
    finally:
        sender.close()
        await asyncio.sleep(0)


async def test_publisher_sender_reports_reach_the_consumers_through_the_pipe(piped: Piped) -> None:
    feed(piped.source, 10, 30000, _frame(10))
    await _until(lambda: len(piped.subscriber.rtp) == 1, "the key frame")
    report = SenderReport(
        ssrc=1111, ntp_timestamp=0xE000_0000_8000_0000, rtp_timestamp=30000, packet_count=1, octet_count=57
    )
    piped.source.receive_sender_report(report, time.monotonic())
    await _until(lambda: piped.subscriber.sent_rtcp(SenderReport), "the rewritten SR at the subscriber")
    (sent,) = piped.subscriber.sent_rtcp(SenderReport)
    assert isinstance(sent, SenderReport)
    assert sent.ssrc == 5000 and sent.ntp_timestamp == report.ntp_timestamp


async def test_the_remb_back_through_the_pipe_never_lowers_the_publishers(piped: Piped) -> None:
    """The publisher's REMB is its own uplink (the allocator gives weak subscribers a lower
    layer): a far subscriber's estimate does not travel up to it; the mirror's REMB through
    the pipe is the mirror's own measure of the pipe."""
    feed(piped.source, 10, 30000, _frame(10))
    await _until(lambda: len(piped.subscriber.rtp) == 1, "the key frame")
    piped.consumer.receive_remb(300_000, time.monotonic())  # the far subscriber's estimate
    piped.mirror.on_timer(time.monotonic())  # its RR + REMB go back through the pipe
    await _until(lambda: bool(piped.sender.remb_bitrate(piped.source)), "the REMB through the pipe")
    assert piped.sender.remb_bitrate(piped.source) == piped.mirror.uplink_estimate
    piped.source.on_timer(time.monotonic())
    rembs = piped.publisher.sent_rtcp(Remb)
    assert rembs and isinstance(rembs[-1], Remb)
    assert rembs[-1].bitrate == piped.source.uplink_estimate > 300_000


SIM_SSRCS = (5001, 5002, 5003)
SIM_RIDS = ("q", "h", "f")


def _simulcast_producer() -> tuple[Producer, FakeTransport]:
    publisher = FakeTransport()
    track = PublishTrack(
        mid="1",
        kind="video",
        codec=VP8,
        extensions=HeaderExtensionIds(mid=4, abs_send_time=2, rid=10, repaired_rid=11),
        ssrc=None,
        rtx_ssrc=None,
        cname="c",
        simulcast_offered=True,
        encodings=tuple(EncodingParameters(rid=r) for r in SIM_RIDS),
    )
    return Producer(publisher, track, stream_id="s"), publisher  # type: ignore[arg-type]


def _sim_frame(layer: int, seq: int) -> bytes:
    return (KEY if seq == 10 else DELTA) + bytes((layer, seq))


async def test_every_simulcast_encoding_is_piped_and_feedback_names_its_encoding() -> None:
    source, publisher = _simulcast_producer()
    for layer in (0, 1):  # flowing before the pipe opens; the top encoding starts after
        assert source.learn_ssrc(SIM_SSRCS[layer], 96, rid=SIM_RIDS[layer])
    source.screen = True  # a screen share stays one on the far side
    sender = await PipeTransport.sender("s", [source])
    info = PipedProducer.from_dict(PipedProducer.of(source).to_dict())
    assert [(e.rid, e.ssrc) for e in info.encodings] == [("q", 5001), ("h", 5002), ("f", None)]
    assert info.screen
    receiver = await PipeTransport.receiver("s", [info], ("127.0.0.1", sender.port))
    try:
        sender.connect(("127.0.0.1", receiver.port))
        assert {p.media_ssrc for p in publisher.sent_rtcp(Pli) if isinstance(p, Pli)} == {5001, 5002}
        assert source.learn_ssrc(SIM_SSRCS[2], 96, rid="f")
        mirror = receiver.producers["video"]
        assert mirror.simulcast and [e.rid for e in mirror.encodings] == list(SIM_RIDS)
        assert mirror.screen
        consumer, sub = add_consumer(mirror, 7000)
        consumer.set_layer(1)
        for seq in (10, 11, 12, 13):
            for layer, ssrc in enumerate(SIM_SSRCS):
                lost = layer == 1 and seq == 11  # lost on the pipe: NACKed by the mirror
                peer = sender.peer
                if lost:
                    sender.peer = None
                feed(source, seq, seq * 3000, _sim_frame(layer, seq), ssrc=ssrc)
                sender.peer = peer
        await _until(
            lambda: [e.packets_received for e in mirror.encodings] == [4, 4, 4],
            "every encoding through the pipe",
        )
        assert [e.ssrc for e in mirror.encodings] == list(SIM_SSRCS), "the same SSRCs in the same layers"
        assert receiver.stats.unknown_ssrc == 0 and receiver.stats.layer_announcements >= 3
        # The hole in encoding 1 was answered from encoding 1's cache (same seq as the others').
        assert sender.stats.retransmitted >= 1 and not publisher.sent_rtcp(Nack)

        def forwarded() -> list[bytes]:
            return [raw[parse_rtp_header(raw).payload_offset :][-2:] for raw in sub.rtp]

        await _until(lambda: len(forwarded()) == 4, "encoding 1's four packets at the consumer")
        assert sorted(forwarded()) == [bytes((1, seq)) for seq in (10, 11, 12, 13)]

        # A key-frame request of encoding 0 on the far side reaches the publisher for its SSRC.
        def plis_for(ssrc: int) -> int:
            return sum(1 for p in publisher.sent_rtcp(Pli) if isinstance(p, Pli) and p.media_ssrc == ssrc)

        before = plis_for(5001), plis_for(5002), plis_for(5003)

        async def ask() -> None:
            while plis_for(5001) == before[0]:
                mirror.request_key_frame(time.monotonic(), 0)
                await asyncio.sleep(0.05)

        await asyncio.wait_for(ask(), 5)
        assert (plis_for(5002), plis_for(5003)) == before[1:]
    finally:
        sender.close()
        receiver.close()
        await asyncio.sleep(0)


async def test_pipe_traffic_counts_in_the_worker_totals_and_stays_after_close(piped: Piped) -> None:
    def pipe_totals() -> dict[str, int]:
        counts = totals([], [piped.sender, piped.receiver])
        return {k: counts[k] for k in PIPE_COUNTERS} | {"received": counts["packets_received"]}

    before = pipe_totals()
    for seq in range(10, 15):
        feed(piped.source, seq, seq * 3000, _frame(seq))
    await _until(lambda: len(piped.subscriber.rtp) == 5, "5 packets through the pipe")
    during = pipe_totals()
    assert during["pipe_packets_out"] - before["pipe_packets_out"] == 5
    assert during["pipe_packets_in"] - before["pipe_packets_in"] == 5
    sent = during["pipe_bytes_out"] - before["pipe_bytes_out"]
    assert sent == during["pipe_bytes_in"] - before["pipe_bytes_in"] == piped.sender.stats.bytes_sent > 5 * 50
    assert during["received"] - before["received"] == 5, "the mirror producer counts as the worker's"
    piped.sender.close()
    piped.receiver.close()
    assert pipe_totals() == during, "closed pipes (and the mirror) keep their counts in the totals"


# -- SRTP pipes (between nodes) -----------------------------------------------------------


async def test_an_srtp_pipe_sends_only_protected_datagrams() -> None:
    """What leaves an SRTP pipe's socket is SRTP: the payload is not in it, and only the
    receiving end's key recovers the packet."""
    send_keys, receive_keys = PipeKeys.pair()
    source, _ = make_producer()
    sender = await PipeTransport.sender("s", [source], keys=send_keys)
    capture = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    capture.bind(("127.0.0.1", 0))
    capture.settimeout(5)
    try:
        sender.connect(("127.0.0.1", capture.getsockname()[1]))
        payload = KEY + b"\xaa" * 200
        feed(source, 10, 30000, payload)
        datagrams = []
        while True:  # the layer announcement (SRTCP), then the packet
            data = await asyncio.get_running_loop().run_in_executor(None, capture.recv, 2000)
            datagrams.append(data)
            if not (192 <= data[1] <= 223):
                break
        wire = datagrams[-1]
        assert payload not in wire and b"\xaa" * 16 not in wire, "the payload is encrypted on the wire"
        assert len(wire) == 12 + len(payload) + 16, "SRTP (AES-GCM): the RTP header, then a 16-byte tag"
        clear = receive_keys.contexts().unprotect(wire)
        assert clear is not None and clear[12:] == payload
        assert PipeKeys(PipeKeys.generate(), PipeKeys.generate()).contexts().unprotect(wire) is None
        assert receive_keys.contexts().unprotect_rtcp(datagrams[0]) is not None, "SLYR is SRTCP"
    finally:
        capture.close()
        sender.close()
        await asyncio.sleep(0)


async def test_an_srtp_pipe_drops_plain_and_wrongly_keyed_datagrams_from_its_peer() -> None:
    send_keys, receive_keys = PipeKeys.pair()
    source, publisher = make_producer()
    sender = await PipeTransport.sender("s", [source], keys=send_keys)
    receiver = await PipeTransport.receiver(
        "s", [PipedProducer.of(source)], ("127.0.0.1", sender.port), keys=receive_keys
    )
    sender.connect(("127.0.0.1", receiver.port))
    mirror = receiver.producers["video"]
    _, subscriber = add_consumer(mirror, 5000)
    counted = DROPPED["pipe_unauthenticated"]
    try:
        peer = ("127.0.0.1", sender.port)
        forged = build_rtp(payload_type=96, sequence_number=10, timestamp=0, ssrc=1111, payload=KEY)
        receiver.datagram_received(forged, peer, time.monotonic())  # plain RTP from the peer
        stranger = PipeKeys(PipeKeys.generate(), PipeKeys.generate()).contexts()
        protected = stranger.protect(forged)
        assert protected is not None
        receiver.datagram_received(protected, peer, time.monotonic())  # another key
        assert receiver.stats.auth_failed == 2 and mirror.stats.packets_received == 0
        plis = len(publisher.sent_rtcp(Pli))
        sender.datagram_received(
            build_pli(1, source.ssrc or 0), ("127.0.0.1", receiver.port), time.monotonic()
        )
        assert sender.stats.auth_failed == 1 and len(publisher.sent_rtcp(Pli)) == plis
        assert DROPPED["pipe_unauthenticated"] == counted + 3, "counted in the worker's drops (metrics)"
        feed(source, 10, 0, _frame(10))
        await _until(lambda: len(subscriber.rtp) == 1, "the genuine packet")
        assert receiver.stats.auth_failed == 2
    finally:
        sender.close()
        receiver.close()
        await asyncio.sleep(0)


async def test_an_srtp_pipe_may_have_a_peer_off_the_loopback_a_plain_one_not() -> None:
    send_keys, _ = PipeKeys.pair()
    source, _ = make_producer()
    sender = await PipeTransport.sender("s", [source], keys=send_keys)
    try:
        sender.connect(("10.0.0.1", 4000))
        assert sender.peer == ("10.0.0.1", 4000)
        with pytest.raises(MediaStateError):
            sender.connect(("not-an-address", 4000))
    finally:
        sender.close()
        await asyncio.sleep(0)
    with pytest.raises(MediaStateError):
        PipeTransport("s", sending=True, host="10.0.0.1")  # plain RTP stays on the loopback


def test_pipe_keys_are_fresh_per_pipe_and_direction_and_never_shown() -> None:
    a_end, b_end = PipeKeys.pair()
    assert a_end.send == b_end.receive and a_end.receive == b_end.send and a_end.send != a_end.receive
    assert PipeKeys.pair()[0].send != a_end.send
    assert a_end.send.hex() not in repr(a_end) and a_end.send.hex() not in str([a_end])
    assert PipeKeys.from_hex(*a_end.to_hex()) == a_end
    with pytest.raises(ValueError):
        PipeKeys(b"short", a_end.receive)


async def test_an_srtp_pipe_retransmits_a_packet_lost_on_the_wire() -> None:
    """A packet protected and sent, then lost, is protected again for its NACK answer (same
    SRTP index): the receiving end takes it (not a replay: the first never arrived)."""
    send_keys, receive_keys = PipeKeys.pair()
    source, publisher = make_producer()
    sender = await PipeTransport.sender("s", [source], keys=send_keys)
    receiver = await PipeTransport.receiver(
        "s", [PipedProducer.of(source)], ("127.0.0.1", sender.port), keys=receive_keys
    )
    sender.connect(("127.0.0.1", receiver.port))
    _, subscriber = add_consumer(receiver.producers["video"], 5000)
    protocol = receiver._transport.get_protocol() if receiver._transport is not None else None
    assert isinstance(protocol, asyncio.DatagramProtocol)
    deliver = protocol._received  # type: ignore[attr-defined]
    lost: list[bytes] = []

    def lossy(data: bytes, addr: tuple[str, int], now: float) -> None:
        if not lost and not 192 <= data[1] <= 223 and int.from_bytes(data[2:4], "big") == 12:
            lost.append(data)  # packet 12's first copy never arrives
            return
        deliver(data, addr, now)

    protocol._received = lossy  # type: ignore[attr-defined]
    try:
        for seq in range(10, 15):
            feed(source, seq, seq * 3000, _frame(seq))
        await _until(lambda: len(subscriber.rtp) == 5, "all 5 packets, 12 retransmitted")
        assert lost and sender.stats.retransmitted >= 1 and receiver.stats.auth_failed == 0
        assert not publisher.sent_rtcp(Nack), "answered from the sending end's buffer"
    finally:
        sender.close()
        receiver.close()
        await asyncio.sleep(0)
