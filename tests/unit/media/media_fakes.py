"""Sans-I/O fakes for Producer / Consumer tests: a transport that records what is sent.

:class:`FakeTransport` routes incoming RTCP with the real
:meth:`~salon.media.transport.WebRtcTransport.receive_rtcp` (parse + demultiplex to producers and
consumers by SSRC), so tests feed the same bytes a client would send.
"""

from __future__ import annotations

from typing import Any

from salon.media.bandwidth import TransportBandwidth
from salon.media.consumer import Consumer
from salon.media.pacer import PacedPacket, Pacer
from salon.media.producer import Producer
from salon.media.routing import RtpRoutes
from salon.media.rtcp import RtcpPacket, parse_rtcp
from salon.media.rtp import build_rtp, encode_one_byte_extensions, parse_rtp_header
from salon.media.sdp import HeaderExtensionIds, PublishTrack, RtpCodec, SubscribeTrack
from salon.media.transport import TransportState, TransportStats, WebRtcTransport

VP8 = RtpCodec(
    kind="video",
    mime_type="video/VP8",
    clock_rate=90000,
    channels=None,
    payload_type=96,
    rtcp_feedback=(("nack", None), ("nack", "pli"), ("goog-remb", None)),
    rtx_payload_type=97,
)
OPUS = RtpCodec(kind="audio", mime_type="audio/opus", clock_rate=48000, channels=2, payload_type=111)
KEY = bytes([0x10, 0x00, 0x9D, 0x01, 0x2A]) + bytes(50)  # VP8: S=1 PID=0, P=0
DELTA = bytes([0x10, 0x01]) + bytes(50)  # S=1 PID=0, P=1: inter frame
CONT = bytes([0x00, 0x00]) + bytes(50)  # not a partition start


class FakeTransport:
    """What Producer and Consumer use of a WebRtcTransport, recording sent packets."""

    receive_rtcp = WebRtcTransport.receive_rtcp

    def __init__(self) -> None:
        self.state = TransportState.CONNECTED
        self.stats = TransportStats()
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.scheduled: list[float] = []
        self.routes: RtpRoutes[Producer, Consumer] = RtpRoutes()
        self.bandwidth = TransportBandwidth()
        self.pacer = Pacer()  # rate 0: admits everything
        self.paced: list[PacedPacket] = []

    def send_rtp(self, packet: bytes) -> None:
        self.rtp.append(packet)

    def send_rtcp(self, packet: bytes) -> None:
        self.rtcp.append(packet)

    def pace(self, item: PacedPacket, now: float, *, retransmission: bool = False) -> None:
        self.paced.append(item)

    def schedule(self, at: float) -> None:
        self.scheduled.append(at)

    def remove_producer(self, producer: Any) -> None:
        pass

    def remove_consumer(self, consumer: Any) -> None:
        pass

    def sent_rtcp(self, kind: type[Any] | None = None) -> list[RtcpPacket]:
        """Every RTCP packet sent so far (of type ``kind``), in order."""
        return [p for raw in self.rtcp for p in parse_rtcp(raw) if kind is None or isinstance(p, kind)]


def make_producer(
    codec: RtpCodec = VP8,
    *,
    ssrc: int = 1111,
    rtx_ssrc: int | None = 2222,
    extensions: HeaderExtensionIds | None = None,
) -> tuple[Producer, FakeTransport]:
    pub = FakeTransport()
    track = PublishTrack(
        mid="1" if codec.kind == "video" else "0",
        kind=codec.kind,
        codec=codec,
        extensions=extensions
        or HeaderExtensionIds(mid=4, abs_send_time=2 if codec.kind == "video" else None),
        ssrc=ssrc,
        rtx_ssrc=rtx_ssrc if codec.rtx_payload_type is not None else None,
        cname="c",
    )
    producer = Producer(pub, track, stream_id="s")  # type: ignore[arg-type]
    pub.routes.add_producer(producer, mid=producer.mid, ssrcs=producer.ssrcs())
    return producer, pub


def add_consumer(
    producer: Producer,
    ssrc: int,
    *,
    sub: FakeTransport | None = None,
    payload_type: int = 120,
    rtx_payload_type: int | None = 121,
    extensions: HeaderExtensionIds | None = None,
) -> tuple[Consumer, FakeTransport]:
    sub = sub or FakeTransport()
    codec = producer.codec
    sub_codec = RtpCodec(
        **{
            **{f: getattr(codec, f) for f in codec.__slots__},
            "payload_type": payload_type,
            "rtx_payload_type": rtx_payload_type if codec.rtx_payload_type is not None else None,
        }
    )
    video = producer.kind == "video"
    consumer = Consumer(
        sub,  # type: ignore[arg-type]
        producer,
        SubscribeTrack(
            mid="v" if video else "a",
            kind=producer.kind,
            source=producer.id,
            codec=sub_codec,
            extensions=extensions or HeaderExtensionIds(mid=9, abs_send_time=3 if video else None),
        ),
        ssrc=ssrc,
        rtx_ssrc=ssrc + 1 if sub_codec.rtx_payload_type is not None else None,
    )
    sub.routes.add_consumer(consumer, [s for s in (consumer.ssrc, consumer.rtx_ssrc) if s is not None])
    producer.add_consumer(consumer)
    consumer.transport_connected()
    return consumer, sub


def feed(
    producer: Producer,
    seq: int,
    ts: int,
    payload: bytes,
    now: float = 1.0,
    pt: int = 96,
    ssrc: int = 1111,
    extensions: bytes = b"",
) -> None:
    data = build_rtp(
        payload_type=pt, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=payload, extensions=extensions
    )
    producer.receive_rtp(data, parse_rtp_header(data), now)


def audio_level_block(ext_id: int, level: int, voice: bool = False) -> bytes:
    """A publisher's one-byte extension block carrying an RFC 6464 audio level."""
    return encode_one_byte_extensions([(ext_id, bytes([(0x80 if voice else 0) | level]))])
