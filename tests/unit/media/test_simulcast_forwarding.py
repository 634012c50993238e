"""Simulcast through the real Producer, Consumer and the transport's SSRC learning, without
sockets: a publisher sends three RID encodings (SSRCs unannounced, as Chromium does), a
subscriber's consumer forwards one and switches when told to, only at a key frame of the new
encoding, and the subscriber sees one continuous stream."""

from __future__ import annotations

import itertools
from typing import Any

from salon.media.consumer import Consumer
from salon.media.producer import Producer
from salon.media.rtcp import Nack, Pli, Remb, build_nack, build_sender_report, parse_rtcp
from salon.media.rtp import build_rtp, encode_one_byte_extensions, parse_rtp_header
from salon.media.sdp import EncodingParameters, HeaderExtensionIds, PublishTrack
from salon.media.transport import WebRtcTransport
from salon.media.vp8 import parse_vp8_descriptor
from tests.unit.media.media_fakes import VP8, FakeTransport, add_consumer
from tests.unit.media.test_vp8 import descriptor

MID, RID, RRID = 4, 10, 11
SSRCS = (5001, 5002, 5003)
RTX_SSRCS = (6001, 6002, 6003)
RIDS = ("q", "h", "f")


class Publisher:
    """Three encodings' packet streams, each with its own numbering, plus the SFU side."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        track = PublishTrack(
            mid="1",
            kind="video",
            codec=VP8,
            extensions=HeaderExtensionIds(mid=MID, abs_send_time=2, rid=RID, repaired_rid=RRID),
            ssrc=None,
            rtx_ssrc=None,
            cname="c",
            simulcast_offered=True,
            encodings=tuple(EncodingParameters(rid=r) for r in RIDS),
        )
        self.producer = Producer(self.transport, track, stream_id="s")  # type: ignore[arg-type]
        # Registered as the real transport does (routes by mid, RID and payload type).
        t: Any = self.transport
        t.producers = {}
        WebRtcTransport.add_producer(t, self.producer)
        self.seq = [100, 30000, 65530]
        self.ts = [1000, 2000000, 3000000000]
        self.pid = [10, 20000, 32767]
        self.tl0 = [0, 100, 255]
        self.frame = 0
        self.now = 10.0
        self.last: dict[int, tuple[bytes, int]] = {}

    def packet(self, layer: int, payload: bytes, *, rtx_of: int | None = None) -> bytes:
        ext = [(MID, b"1")]
        ts = self.ts[layer]
        if rtx_of is not None:
            payload, ts = self.last[layer]
        else:
            self.last[layer] = (payload, ts)
            ext.append((RID, RIDS[layer].encode()))
            data = build_rtp(
                payload_type=96,
                sequence_number=self.seq[layer] & 0xFFFF,
                timestamp=self.ts[layer] & 0xFFFFFFFF,
                ssrc=SSRCS[layer],
                payload=payload,
                extensions=encode_one_byte_extensions(ext),
            )
            self.seq[layer] += 1
            return data
        ext.append((RRID, RIDS[layer].encode()))
        return build_rtp(
            payload_type=97,
            sequence_number=7,
            timestamp=ts & 0xFFFFFFFF,
            ssrc=RTX_SSRCS[layer],
            payload=(rtx_of & 0xFFFF).to_bytes(2, "big") + payload,
            extensions=encode_one_byte_extensions(ext),
        )

    def receive(self, data: bytes) -> None:
        header = parse_rtp_header(data)
        producer = self.transport.routes.producer(header.ssrc)
        if producer is None:
            producer = WebRtcTransport._learn_ssrc(self.transport, data, header)  # type: ignore[arg-type]
        assert producer is self.producer, f"SSRC {header.ssrc} not routed"
        producer.receive_rtp(data, header, self.now)

    def send_frame(self, keys: tuple[int, ...] = ()) -> None:
        """One frame on each encoding (two packets each), key frames on ``keys``."""
        for layer in range(3):
            key = self.frame == 0 or layer in keys
            for part in range(2):
                payload = descriptor(
                    start=part == 0, picture_id=self.pid[layer] & 0x7FFF, tl0=self.tl0[layer], tid=0, key=key
                )
                self.receive(self.packet(layer, payload))
            self.pid[layer] += 1
            self.tl0[layer] = (self.tl0[layer] + 1) & 0xFF
            self.ts[layer] += 3000
        self.frame += 1
        self.now += 1 / 30


def sent(sub: FakeTransport) -> list[tuple[int, int, int, int | None]]:
    out = []
    for raw in sub.rtp:
        header = parse_rtp_header(raw)
        d = parse_vp8_descriptor(raw[header.payload_offset :])
        out.append((header.ssrc, header.sequence_number, header.timestamp, d.picture_id))
    return out


def test_rid_encodings_are_learnt_and_the_consumer_switches_at_key_frames() -> None:
    pub = Publisher()
    consumer, sub = add_consumer(pub.producer, 9000)
    assert consumer.simulcast and consumer.target_layer == 2
    pub.send_frame()
    # SSRCs learnt from the RIDs; RTX SSRCs from the repaired RIDs.
    assert [e.ssrc for e in pub.producer.encodings] == list(SSRCS)
    for layer in range(3):
        pub.receive(pub.packet(layer, b"", rtx_of=pub.seq[layer] - 1))
    assert [e.rtx_ssrc for e in pub.producer.encodings] == list(RTX_SSRCS)
    for _ in range(3):
        pub.send_frame()
    assert consumer.current_layer == 2
    top = len(sub.rtp)
    assert top == 8 + 1  # four frames of two packets, and the RTX repair of frame 0's last one
    pub.transport.rtcp.clear()
    consumer.set_layer(0)
    plis = pub.transport.sent_rtcp(Pli)
    assert [p.media_ssrc for p in plis] == [SSRCS[0]], "the key frame is asked of the target encoding"
    for _ in range(3):
        pub.send_frame()
    assert consumer.current_layer == 2, "switched before a key frame of encoding 0"
    pub.send_frame(keys=(0,))
    assert consumer.current_layer == 0
    for _ in range(3):
        pub.send_frame()
    consumer.set_layer(1)
    pub.send_frame(keys=(2,))  # not the target: ignored
    assert consumer.current_layer == 0
    pub.send_frame(keys=(1,))
    pub.send_frame()
    assert consumer.current_layer == 1 and consumer.stats.layer_switches == 3
    packets = sent(sub)
    assert {p[0] for p in packets} == {9000}
    # The RTX repair of frame 0's last packet went out again as that packet (same numbers).
    assert packets[2] == packets[1]
    del packets[2]
    assert all(b[1] == (a[1] + 1) & 0xFFFF for a, b in itertools.pairwise(packets)), "sequence gap"
    assert all(0 < (b[2] - a[2]) & 0xFFFFFFFF < 0x80000000 for a, b in itertools.pairwise(packets[::2]))
    picture_ids = [p[3] for p in packets[::2]]  # one per frame, consecutive across both switches
    assert all(b == (a + 1) & 0x7FFF for a, b in itertools.pairwise(picture_ids)), picture_ids
    # 7 frames of f, 6 of q (the frame of the switch to h sent q first), 2 of h.
    assert len(picture_ids) == 7 + 6 + 2


def test_nack_and_sender_reports_follow_the_forwarded_encoding() -> None:
    pub = Publisher()
    consumer, sub = add_consumer(pub.producer, 9000)
    consumer.set_layer(1)
    for _ in range(3):
        pub.send_frame()
    assert consumer.current_layer == 1
    last = parse_rtp_header(sub.rtp[-1])
    sub.rtp.clear()
    sub.receive_rtcp(build_nack(1, 9000, [last.sequence_number]), pub.now)
    assert len(sub.rtp) == 1, "answered from encoding 1's cache"
    rtx = parse_rtp_header(sub.rtp[0])
    assert rtx.ssrc == 9001 and rtx.payload_type == 121
    # A NACK miss goes upstream to encoding 1's SSRC.
    pub.producer.encodings[1].cache.clear()
    sub.receive_rtcp(build_nack(1, 9000, [last.sequence_number]), pub.now)
    nacks = pub.transport.sent_rtcp(Nack)
    assert nacks and nacks[-1].media_ssrc == SSRCS[1]
    # Only the forwarded encoding's SR reaches the subscriber.
    sub.rtcp.clear()
    for ssrc in SSRCS:
        pub.transport.receive_rtcp(build_sender_report(ssrc, 1 << 40, 12345, 10, 1000), pub.now)
    assert len(sub.rtcp) == 1
    # The publisher gets one receiver report block per encoding and a REMB for all of them.
    pub.transport.rtcp.clear()
    pub.producer.on_timer(pub.now + 5)
    remb = pub.transport.sent_rtcp(Remb)
    assert remb and sorted(remb[-1].ssrcs) == list(SSRCS) and remb[-1].bitrate >= 2_500_000


def test_a_missing_top_encoding_falls_back_to_the_best_one_flowing() -> None:
    pub = Publisher()
    consumer, sub = add_consumer(pub.producer, 9000)

    def two_layers(keys: tuple[int, ...] = ()) -> None:
        # The publisher sends only q and h (its capture is too small for f).
        for layer in range(2):
            key = pub.frame == 0 or layer in keys
            for part in range(2):
                pub.receive(
                    pub.packet(
                        layer, descriptor(start=part == 0, picture_id=pub.pid[layer], tl0=0, tid=0, key=key)
                    )
                )
            pub.pid[layer] += 1
            pub.ts[layer] += 3000
        pub.frame += 1
        pub.now += 1 / 30

    two_layers()
    assert consumer.current_layer is None
    for _ in range(40):
        two_layers()
    consumer.on_timer(pub.now)
    assert consumer.target_layer == 1
    two_layers(keys=(1,))
    assert consumer.current_layer == 1 and sub.rtp


def test_non_simulcast_consumers_are_unchanged() -> None:
    pub = FakeTransport()
    track = PublishTrack(
        mid="1", kind="video", codec=VP8, extensions=HeaderExtensionIds(mid=4), ssrc=1, rtx_ssrc=2, cname="c"
    )
    producer = Producer(pub, track, stream_id="s")  # type: ignore[arg-type]
    consumer: Consumer
    consumer, _sub = add_consumer(producer, 9000)
    assert not consumer.simulcast and consumer.current_layer is None
    consumer.set_layer(0)  # no effect
    assert not producer.simulcast and producer.ssrcs() == [1, 2]
    assert [p for raw in pub.rtcp for p in parse_rtcp(raw) if isinstance(p, Pli)]


class FakeRecorder:
    id = "rec"

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send_rtp(self, producer: Producer, data: bytes) -> None:
        self.packets.append(data)

    def producer_closed(self, producer: Producer) -> None:
        pass


def test_recorders_get_the_top_flowing_encoding_as_one_stream() -> None:
    pub = Publisher()
    recorder = FakeRecorder()
    pub.producer.add_recorder(recorder)  # type: ignore[arg-type]
    for _ in range(4):
        pub.send_frame()
    headers = [parse_rtp_header(p) for p in recorder.packets]
    assert len(headers) == 8 and len({h.ssrc for h in headers}) == 1
    assert all(
        parse_vp8_descriptor(p[h.payload_offset :]).picture_id is not None
        for p, h in zip(recorder.packets, headers, strict=True)
    )
    # The archiver's NACK of a recorded packet comes back as recorded.
    assert pub.producer.get_cached(headers[5].sequence_number) == recorder.packets[5]
    # The publisher stops sending f: after a second the recording asks h for a key frame and
    # continues on it.
    for _ in range(40):
        for layer in range(2):
            for part in range(2):
                pub.receive(
                    pub.packet(layer, descriptor(start=part == 0, picture_id=pub.pid[layer], tl0=0, tid=0))
                )
            pub.pid[layer] += 1
            pub.ts[layer] += 3000
        pub.now += 1 / 30
    pub.transport.rtcp.clear()
    pub.producer.on_timer(pub.now)
    assert [p.media_ssrc for p in pub.transport.sent_rtcp(Pli)] == [SSRCS[1]]
    for part in range(2):
        pub.receive(
            pub.packet(1, descriptor(start=part == 0, picture_id=pub.pid[1], tl0=1, tid=0, key=part == 0))
        )
    headers = [parse_rtp_header(p) for p in recorder.packets]
    assert len(headers) == 10 and len({h.ssrc for h in headers}) == 1
    assert all(b.sequence_number == (a.sequence_number + 1) & 0xFFFF for a, b in itertools.pairwise(headers))
    pictures = [
        parse_vp8_descriptor(p[h.payload_offset :]).picture_id
        for p, h in zip(recorder.packets, headers, strict=True)
    ]
    assert pictures[8] == (pictures[7] + 1) & 0x7FFF
    # A NACK miss of a recorded packet goes upstream to the encoding it came from.
    pub.producer.encodings[1].cache.clear()
    pub.producer.request_retransmission([headers[9].sequence_number], pub.now)
    assert pub.transport.sent_rtcp(Nack)[-1].media_ssrc == SSRCS[1]
