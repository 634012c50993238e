"""A stream is announced when its media flows: the worker reports a publish transport as
connected on the first RTP packet of one of its producers, not when ICE + DTLS complete."""

from __future__ import annotations

from typing import Any

from salon.media.channel import TransportConnectedEvent
from salon.media.events import EventEmitter
from salon.media.producer import Producer
from salon.media.router import Router
from salon.media.rtp import build_rtp, parse_rtp_header
from salon.media.transport import TransportConnected, TransportEvent
from salon.media.worker import HostedRouter
from tests.unit.media.media_fakes import KEY, OPUS, FakeTransport, feed, make_producer


class FakeWorker:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)


class WatchedTransport(FakeTransport):
    """A publish (or subscribe) transport as HostedRouter.watch sees it."""

    def __init__(self, transport_id: str, producers: list[Producer]) -> None:
        super().__init__()
        self.id = transport_id
        self.closed = False
        self.events: EventEmitter[TransportEvent] = EventEmitter(self)
        self.producers = {p.id: p for p in producers}


def hosted() -> tuple[HostedRouter, FakeWorker]:
    worker = FakeWorker()
    return HostedRouter(worker, Router("r1")), worker  # type: ignore[arg-type]


def test_producer_first_packet_callback_fires_once_and_only_for_media() -> None:
    producer, _pub = make_producer()
    calls: list[Producer] = []
    producer.on_first_packet = calls.append
    padding = build_rtp(payload_type=97, sequence_number=1, timestamp=0, ssrc=2222, payload=b"")
    producer.receive_rtp(padding, parse_rtp_header(padding), 0.1)  # RTX padding probe: no media
    feed(producer, 1, 0, KEY, pt=55)  # not our payload type
    assert calls == []
    feed(producer, 2, 0, KEY)
    feed(producer, 3, 0, KEY)
    assert calls == [producer] and producer.on_first_packet is None


def test_a_publish_transport_is_reported_connected_on_its_first_media_packet() -> None:
    router, worker = hosted()
    video, _ = make_producer()
    audio, _ = make_producer(OPUS, ssrc=3333, rtx_ssrc=None)
    transport = WatchedTransport("t-pub", [audio, video])
    router.watch(transport)  # type: ignore[arg-type]
    transport.events.emit(TransportConnected(transport))  # type: ignore[arg-type]
    assert worker.sent == []  # ICE + DTLS up, but no media yet: the stream stays hidden
    feed(audio, 1, 0, b"\xfc" * 20, pt=111, ssrc=3333)
    assert worker.sent == [TransportConnectedEvent(router_id="r1", transport_id="t-pub")]
    feed(audio, 2, 960, b"\xfc" * 20, pt=111, ssrc=3333)
    feed(video, 1, 0, KEY)  # the other producer's first packet announces nothing more
    assert len(worker.sent) == 1
    assert audio.on_first_packet is None and video.on_first_packet is None


def test_a_subscribe_transport_is_reported_connected_when_ice_and_dtls_are_up() -> None:
    router, worker = hosted()
    transport = WatchedTransport("t-sub", [])
    router.watch(transport)  # type: ignore[arg-type]
    transport.events.emit(TransportConnected(transport))  # type: ignore[arg-type]
    assert worker.sent == [TransportConnectedEvent(router_id="r1", transport_id="t-sub")]


def test_no_announcement_from_a_closed_publish_transport() -> None:
    router, worker = hosted()
    video, _ = make_producer()
    transport = WatchedTransport("t-pub", [video])
    router.watch(transport)  # type: ignore[arg-type]
    transport.closed = True
    feed(video, 1, 0, KEY)
    assert worker.sent == []
