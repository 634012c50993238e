"""Router: the media plane of one session (mediasoup's object model, in-process).

Ownership tree, closed top-down, idempotently::

    Router (one per session)
    └── WebRtcTransport (one per client connection and direction)
        ├── Producer  (publish transport: the stream's audio and/or video track)
        └── Consumer  (subscribe transport: a copy of one producer for one subscriber)

A **stream** is one published audio+video signal from one client: 1-2 producers sharing a
``stream_id``, all on one publish transport. A client receives every stream it subscribes to
on **one subscribe transport** (one ICE + DTLS-SRTP association, bundled), renegotiated for
each new subscription: its consumers are added to the transport's m-lines.

* :meth:`Router.publish` takes the client's publish offer, creates the transport and the
  producers and returns the SDP answer (:class:`PublishResult`).
* :meth:`Router.subscribe` takes a subscriber's recvonly offer for one stream and returns the
  transport, consumers and answer (:class:`SubscribeResult`). Audio/video can start paused.
  Given the client's existing subscribe transport (``transport_id``) and a re-offer from the
  same peer connection (the same ICE credentials), the new m-lines get the stream's consumers
  on that transport and the answer covers every m-line: the ones already answered keep their
  codec, payload types and SSRCs (``inactive`` once their consumer closed, or when the client
  made them inactive). An offer from another peer connection gets a new transport.
* :meth:`Router.close_consumers` ends some consumers of a transport (an unsubscribe) and leaves
  the transport and its other consumers alone.
* :meth:`Router.unpublish` closes a stream (its transport, so its producers, so every consumer
  of it with reason ``producer_closed``).
* :meth:`Router.close` closes every transport (reason ``router_closed``).

Events (:class:`RouterEvent`): :class:`StreamPublished`, :class:`StreamClosed`,
:class:`RouterClosed`. Per-object events live on the objects (``transport.events``,
``producer.events``, ``consumer.events``); in particular a subscriber learns that a stream went
away from its consumers' :class:`~salon.media.consumer.ConsumerClosed` (``producer_closed``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiortc import RTCCertificate

from salon.errors import NotFoundError
from salon.media.consumer import Consumer, PauseReason
from salon.media.errors import MediaStateError
from salon.media.events import EventEmitter
from salon.media.pipe import PIPE_HOST, PipeClosed, PipedProducer, PipeKeys, PipeTransport
from salon.media.producer import Producer, ProducerClosed, ProducerEvent
from salon.media.recording import Recorder
from salon.media.sdp import (
    AnswerMedia,
    MediaKind,
    SendingSsrcs,
    build_answer,
    negotiate_publish,
    negotiate_subscribe,
    parse_offer,
)
from salon.media.transport import (
    TransportClosed,
    TransportEvent,
    TransportState,
    WebRtcTransport,
    WebRtcTransportOptions,
)
from salon.media.webrtc import MediaLink

__all__ = [
    "PublishResult",
    "Router",
    "RouterClosed",
    "RouterEvent",
    "Stream",
    "StreamClosed",
    "StreamPublished",
    "SubscribeResult",
]

logger = logging.getLogger(__name__)

_ids = itertools.count(1)


@dataclass(eq=False)
class Stream:
    """One published audio+video signal: 1-2 producers on one publish transport (or, for a
    stream published on another worker's router, on the receiving end of its pipe)."""

    id: str
    transport: WebRtcTransport | PipeTransport
    producers: dict[MediaKind, Producer] = field(default_factory=dict)
    msid: str = ""
    cname: str = ""

    @property
    def audio(self) -> Producer | None:
        return self.producers.get("audio")

    @property
    def video(self) -> Producer | None:
        return self.producers.get("video")

    @property
    def closed(self) -> bool:
        return all(p.closed for p in self.producers.values())


@dataclass(frozen=True, slots=True)
class RouterEvent:
    router: Router


@dataclass(frozen=True, slots=True)
class StreamPublished(RouterEvent):
    stream: Stream


@dataclass(frozen=True, slots=True)
class StreamClosed(RouterEvent):
    """All producers of the stream are closed (unpublished, or the publisher's transport closed)."""

    stream: Stream


@dataclass(frozen=True, slots=True)
class RouterClosed(RouterEvent):
    pass


@dataclass(frozen=True, slots=True)
class PublishResult:
    transport: WebRtcTransport
    stream: Stream
    producers: list[Producer]
    answer_sdp: str


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    transport: WebRtcTransport
    stream: Stream
    consumers: list[Consumer]
    answer_sdp: str
    new_transport: bool = True
    """False when the consumers were added to the client's existing subscribe transport."""


class Router:
    """The media plane of one session: owns its transports, indexes streams and producers."""

    def __init__(
        self,
        router_id: str | None = None,
        *,
        transport_options: WebRtcTransportOptions | None = None,
        certificate: RTCCertificate | None = None,
        link_factory: Callable[[], MediaLink] | None = None,
    ) -> None:
        """``link_factory``: the ICE + DTLS link of each new transport (default: an aiortc one
        on ``transport_options``; :class:`~salon.media.memory.MemoryLink` in unit tests)."""
        self.id = router_id or f"ro-{next(_ids)}-{secrets.token_hex(3)}"
        self.transport_options = transport_options or WebRtcTransportOptions()
        self.events: EventEmitter[RouterEvent] = EventEmitter(self)
        self.closed = False
        self.transports: dict[str, WebRtcTransport] = {}
        self.streams: dict[str, Stream] = {}
        self.producers: dict[str, Producer] = {}
        # One DTLS certificate per router: generating one per transport costs ~1 ms each.
        self._certificate = certificate or RTCCertificate.generateCertificate()
        self._link_factory = link_factory
        # The SSRCs of the router's consumers, unique in the router, each released when the
        # transport it was drawn for closes (until then a closed consumer's SSRC may still be
        # in the subscriber's state of that transport).
        self._ssrcs: set[int] = set()
        self._ssrcs_by_transport: dict[str, list[int]] = {}
        self._close_task: asyncio.Task[None] | None = None
        self.recorders: dict[str, Recorder] = {}
        """Streams being recorded (:mod:`salon.media.recording`), by recorder id."""
        self.pipes: dict[str, PipeTransport] = {}
        """Both ends of the pipes to and from other routers (:mod:`salon.media.pipe`), by id."""

    def __repr__(self) -> str:
        return f"Router({self.id})"

    # ----------------------------------------------------------------------------------------
    # Publish

    async def publish(
        self,
        offer_sdp: str,
        *,
        stream_id: str | None = None,
        transport_options: WebRtcTransportOptions | None = None,
        replace: bool = False,
        screen: bool = False,
    ) -> PublishResult:
        """Create a publish transport and its producers from a client's sendonly offer.

        ``replace``: the stream may exist already (its client set its media up again after a
        lost link): the new transport and producers take its place, each consumer of an old
        producer moves to the new producer of its kind (same codec; it starts again on the
        next key frame, which it asks for), and the old transport is closed. Subscribers keep
        their transports, m-lines and SSRCs. A consumer with no matching new producer closes
        with the old transport.

        ``screen``: the stream's video is a screen share (its producer's
        :attr:`~salon.media.producer.Producer.screen`: allocated before camera video).
        """
        self._check_open()
        offer = parse_offer(offer_sdp)
        tracks = negotiate_publish(offer)
        stream_id = stream_id or str(uuid.uuid4())
        previous = self.streams.get(stream_id)
        if previous is not None and (not replace or isinstance(previous.transport, PipeTransport)):
            raise MediaStateError(f"{self!r}: stream {stream_id} is already published")
        transport = await self._create_transport(transport_options)
        try:
            result = self._publish_on(transport, offer, tracks, stream_id, previous, screen=screen)
        except BaseException:
            await transport.close()
            raise
        if previous is not None and isinstance(previous.transport, WebRtcTransport):
            await previous.transport.close()
        return result

    def _publish_on(
        self,
        transport: WebRtcTransport,
        offer: Any,
        tracks: list[Any],
        stream_id: str,
        previous: Stream | None,
        *,
        screen: bool = False,
    ) -> PublishResult:
        if previous is not None and self.streams.get(stream_id) is not previous:
            previous = None  # closed meanwhile: nothing to take over
        stream = Stream(
            id=stream_id,
            transport=transport,
            msid=previous.msid if previous is not None else stream_id,
            cname=previous.cname if previous is not None else f"salon-{stream_id[:8]}",
        )
        producers: list[Producer] = []
        answers: list[AnswerMedia] = []
        for track in tracks:
            if track.kind in stream.producers:
                continue  # one audio and one video per stream; extra m-lines are rejected
            producer = Producer(
                transport, track, stream_id=stream_id, screen=screen and track.kind == "video"
            )
            transport.add_producer(producer)
            producer.events.add_listener(self._on_producer_event)
            stream.producers[track.kind] = producer
            self.producers[producer.id] = producer
            producers.append(producer)
            if track.simulcast_offered and not track.encodings:
                logger.info("%r: %r offered simulcast; answering with a single encoding", self, producer)
            answers.append(
                AnswerMedia(
                    mid=track.mid,
                    direction="recvonly",
                    codec=track.codec,
                    extensions=track.extensions,
                    simulcast_rids=track.simulcast_rids,
                )
            )
        self.streams[stream_id] = stream
        if previous is not None:
            moved = 0
            for kind, old in previous.producers.items():
                new = stream.producers.get(kind)
                for consumer in old.consumers:
                    if new is not None and consumer.can_switch_to(new):
                        consumer.switch_producer(new)
                        moved += 1
            logger.info("%r: stream %s republished, %d consumers moved", self, stream_id, moved)
        answer = build_answer(offer, transport.local_parameters(), answers)
        transport.start(offer.transport)
        logger.info(
            "%r: stream %s published on %r (%s)", self, stream_id, transport, ", ".join(map(repr, producers))
        )
        self.events.emit(StreamPublished(self, stream))
        return PublishResult(transport=transport, stream=stream, producers=producers, answer_sdp=answer)

    async def unpublish(self, stream_id: str) -> None:
        """Close a stream's publish transport (and so its producers and their consumers)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if isinstance(stream.transport, PipeTransport):
            self.close_pipe(stream.transport.id)
        else:
            await stream.transport.close()

    # ----------------------------------------------------------------------------------------
    # Subscribe

    async def subscribe(
        self,
        stream_id: str,
        offer_sdp: str,
        *,
        audio: bool = True,
        video: bool = True,
        transport_id: str | None = None,
        transport_options: WebRtcTransportOptions | None = None,
    ) -> SubscribeResult:
        """Consume ``stream_id`` for a subscriber, from its recvonly offer.

        ``transport_id`` names the client's subscribe transport, if it has one: an offer from
        the same peer connection (same ICE username fragment and password) renegotiates it, and
        the stream's consumers take the offer's new m-lines. Otherwise a new subscribe
        transport is created. ``audio`` / ``video`` False create that consumer paused.
        """
        self._check_open()
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            raise NotFoundError(f"{self!r}: no published stream {stream_id!r}")
        offer = parse_offer(offer_sdp)
        live = [p for p in stream.producers.values() if not p.closed]
        existing = self.transports.get(transport_id) if transport_id is not None else None
        if existing is not None and not existing.producers and existing.same_peer(offer.transport):
            fresh = replace(offer, media=tuple(m for m in offer.media if m.mid not in existing.answered))
            tracks = negotiate_subscribe(fresh, [(p.id, p.codec) for p in live])
            return self._subscribe_on(existing, stream, offer, tracks, audio=audio, video=video)
        tracks = negotiate_subscribe(offer, [(p.id, p.codec) for p in live])
        transport = await self._create_transport(transport_options)
        try:
            return self._subscribe_on(transport, stream, offer, tracks, audio=audio, video=video)
        except BaseException:
            await transport.close()
            raise

    def _subscribe_on(
        self,
        transport: WebRtcTransport,
        stream: Stream,
        offer: Any,
        tracks: list[Any],
        *,
        audio: bool,
        video: bool,
    ) -> SubscribeResult:
        new_transport = transport.state is TransportState.NEW
        consumers: list[Consumer] = []
        for track in tracks:
            producer = self.producers[track.source]
            ssrc = self._new_ssrc(transport)
            rtx_ssrc = self._new_ssrc(transport) if track.codec.rtx_payload_type is not None else None
            paused = not (audio if track.kind == "audio" else video)
            consumer = Consumer(transport, producer, track, ssrc=ssrc, rtx_ssrc=rtx_ssrc, paused=paused)
            transport.add_consumer(consumer)
            producer.add_consumer(consumer)
            consumers.append(consumer)
            transport.answered[track.mid] = AnswerMedia(
                mid=track.mid,
                direction="sendonly",
                codec=track.codec,
                extensions=track.extensions,
                sending=SendingSsrcs(
                    ssrc=ssrc,
                    rtx_ssrc=rtx_ssrc,
                    cname=stream.cname,
                    msid=f"{stream.msid} {producer.id}",
                ),
            )
        answer = build_answer(offer, transport.local_parameters(), self._answers(transport, offer))
        if new_transport:
            # No key-frame request yet: a key frame sent before this transport connects would be
            # dropped, and publishers (Chromium among them) ignore a second request that follows
            # a key frame closely. Each consumer asks when its transport connects.
            transport.start(offer.transport)
        else:
            for consumer in consumers:
                consumer.transport_connected()  # asks for its key frame if already connected
        logger.info(
            "%r: %r subscribes to stream %s (%s)%s",
            self,
            transport,
            stream.id,
            ", ".join(map(repr, consumers)),
            "" if new_transport else " by renegotiation",
        )
        return SubscribeResult(
            transport=transport,
            stream=stream,
            consumers=consumers,
            answer_sdp=answer,
            new_transport=new_transport,
        )

    @staticmethod
    def _answers(transport: WebRtcTransport, offer: Any) -> list[AnswerMedia]:
        """Every m-line of ``offer`` the transport answers: live consumers send, the m-lines of
        closed consumers (or that the client made inactive) stay, inactive, as negotiated. An
        m-line the client made inactive before it was ever answered (a subscription that failed)
        is answered inactive with its first codec, not rejected: aiortc cannot apply a rejected
        m-line in a renegotiation. Other unanswered m-lines are rejected."""
        live = {c.mid for c in transport.consumers.values()}
        answers: list[AnswerMedia] = []
        for m in offer.media:
            answered = transport.answered.get(m.mid)
            if answered is None:
                codec = next((c for c in m.codecs if c.name != "rtx"), None)
                if m.direction != "inactive" or codec is None or m.kind not in ("audio", "video"):
                    continue
                answered = transport.answered[m.mid] = AnswerMedia(
                    mid=m.mid,
                    direction="inactive",
                    codec=replace(codec, rtx_payload_type=None, rtcp_feedback=()),
                )
            if m.mid not in live or m.direction not in ("recvonly", "sendrecv"):
                answered = replace(answered, direction="inactive", sending=None)
            answers.append(answered)
        return answers

    async def close_consumers(self, transport_id: str, consumer_ids: list[str]) -> None:
        """Close some consumers of a transport (an unsubscribe); unknown ids are fine. The
        transport stays, and its other consumers keep flowing."""
        transport = self.transports.get(transport_id)
        if transport is None:
            return
        for consumer_id in consumer_ids:
            consumer = transport.consumers.get(consumer_id)
            if consumer is not None:
                consumer.close()

    def set_consumer_layer(
        self, transport_id: str, consumer_ids: list[str], spatial: int | None, temporal: int | None
    ) -> None:
        """Set the simulcast layer of some consumers of a transport
        (:meth:`~salon.media.consumer.Consumer.set_layer`); unknown ids are fine."""
        transport = self.transports.get(transport_id)
        if transport is None:
            return
        for consumer_id in consumer_ids:
            consumer = transport.consumers.get(consumer_id)
            if consumer is not None:
                # Set by hand: the allocator leaves it alone until both are None again, so a
                # quality pause it had set is lifted here (it would never lift it itself).
                consumer.allocated = spatial is None and temporal is None
                if not consumer.allocated and consumer.quality_paused:
                    consumer.set_paused(False, PauseReason.QUALITY)
                consumer.set_layer(spatial, temporal)

    # ----------------------------------------------------------------------------------------
    # Recording

    def start_recording(
        self,
        stream_id: str,
        sink: tuple[str, int],
        token: bytes,
        *,
        audio: bool = True,
        video: bool = True,
    ) -> Recorder:
        """Copy a published stream's RTP (its audio and/or video) to an archiver's ``sink``
        (a loopback UDP address), each datagram carrying ``token`` (:mod:`salon.media.recording`).
        The recorder asks the publisher for a key frame at once."""
        self._check_open()
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            raise NotFoundError(f"{self!r}: no published stream {stream_id!r}")
        wanted = [
            p for k, p in stream.producers.items() if not p.closed and (audio if k == "audio" else video)
        ]
        if not wanted:
            raise MediaStateError(f"{self!r}: stream {stream_id} has no track to record")
        try:
            recorder = Recorder(wanted, sink, token)
        except OSError as exc:
            raise MediaStateError(f"{self!r}: cannot reach the archiver at {sink}: {exc}") from exc
        self.recorders[recorder.id] = recorder
        logger.info("%r: %r records stream %s", self, recorder, stream_id)
        return recorder

    def stop_recording(self, recorder_id: str) -> Recorder | None:
        """Stop a recorder (unknown ids are fine); returns it, with its final counters."""
        recorder = self.recorders.pop(recorder_id, None)
        if recorder is not None:
            recorder.close()
        return recorder

    # ----------------------------------------------------------------------------------------
    # Pipes (a session spread over several workers: :mod:`salon.media.pipe`)

    async def pipe_out(
        self,
        stream_id: str,
        pipe_id: str | None = None,
        *,
        host: str = PIPE_HOST,
        keys: PipeKeys | None = None,
    ) -> PipeTransport:
        """The sending end of a pipe of ``stream_id`` (published here) to another router: taps
        the stream's producers; :meth:`PipeTransport.connect` it to the receiving end."""
        self._check_open()
        stream = self.streams.get(stream_id)
        if stream is None or stream.closed:
            raise NotFoundError(f"{self!r}: no published stream {stream_id!r}")
        if pipe_id is not None and pipe_id in self.pipes:
            raise MediaStateError(f"{self!r}: pipe {pipe_id} exists")
        pipe = await PipeTransport.sender(
            stream_id,
            stream.producers.values(),
            pipe_id=pipe_id,
            host=host,
            keys=keys,
            port_range=self._pipe_ports(keys),
        )
        if self.closed:
            pipe.close()
            raise MediaStateError(f"{self!r} closed while opening a pipe")
        self._add_pipe(pipe)
        logger.info("%r: %r pipes stream %s out", self, pipe, stream_id)
        return pipe

    async def pipe_in(
        self,
        stream_id: str,
        producers: list[PipedProducer],
        peer: tuple[str, int],
        pipe_id: str | None = None,
        *,
        host: str = PIPE_HOST,
        keys: PipeKeys | None = None,
    ) -> PipeTransport:
        """The receiving end of a pipe: ``stream_id`` (published on another router, whose pipe
        end is at ``peer``) becomes a stream of this router, its producers local producers, so
        subscribers here consume it like any other."""
        self._check_open()
        if stream_id in self.streams:
            raise MediaStateError(f"{self!r}: stream {stream_id} is here already")
        if pipe_id is not None and pipe_id in self.pipes:
            raise MediaStateError(f"{self!r}: pipe {pipe_id} exists")
        pipe = await PipeTransport.receiver(
            stream_id,
            producers,
            peer,
            pipe_id=pipe_id,
            host=host,
            keys=keys,
            port_range=self._pipe_ports(keys),
        )
        if self.closed or stream_id in self.streams:
            pipe.close()
            raise MediaStateError(f"{self!r} closed, or stream {stream_id} arrived, while opening a pipe")
        stream = Stream(id=stream_id, transport=pipe, msid=stream_id, cname=f"salon-{stream_id[:8]}")
        for producer in pipe.producers.values():
            producer.events.add_listener(self._on_producer_event)
            stream.producers[producer.kind] = producer
            self.producers[producer.id] = producer
        self.streams[stream_id] = stream
        self._add_pipe(pipe)
        logger.info("%r: %r pipes stream %s in", self, pipe, stream_id)
        return pipe

    def _pipe_ports(self, keys: PipeKeys | None) -> tuple[int, int] | None:
        """Where a pipe binds: a pipe to or from another node (SRTP) within the transports'
        port range (the one opened between nodes); one between workers anywhere."""
        return self.transport_options.port_range if keys is not None else None

    def _add_pipe(self, pipe: PipeTransport) -> None:
        self.pipes[pipe.id] = pipe

        def closed(event: PipeClosed) -> None:
            if self.pipes.get(event.pipe.id) is event.pipe:
                del self.pipes[event.pipe.id]

        pipe.events.add_listener(closed)

    def close_pipe(self, pipe_id: str) -> None:
        """Close one end of a pipe (unknown ids are fine): a receiving end's stream closes here
        (its consumers with ``producer_closed``)."""
        pipe = self.pipes.pop(pipe_id, None)
        if pipe is not None:
            pipe.close()

    # ----------------------------------------------------------------------------------------
    # Transports

    async def _create_transport(self, options: WebRtcTransportOptions | None) -> WebRtcTransport:
        transport = await WebRtcTransport.create(
            options or self.transport_options,
            certificate=self._certificate,
            link=self._link_factory() if self._link_factory is not None else None,
        )
        if self.closed:  # closed while we were gathering
            await transport.close()
            raise MediaStateError(f"{self!r} closed while creating a transport")
        self.transports[transport.id] = transport
        transport.events.add_listener(self._on_transport_event)
        return transport

    def get_transport(self, transport_id: str) -> WebRtcTransport | None:
        return self.transports.get(transport_id)

    def _on_transport_event(self, event: TransportEvent) -> None:
        if isinstance(event, TransportClosed):
            self.transports.pop(event.transport.id, None)
            self._ssrcs.difference_update(self._ssrcs_by_transport.pop(event.transport.id, ()))

    def _on_producer_event(self, event: ProducerEvent) -> None:
        if isinstance(event, ProducerClosed):
            producer = event.producer
            self.producers.pop(producer.id, None)
            stream = self.streams.get(producer.stream_id)
            if stream is not None and stream.closed:
                del self.streams[stream.id]
                logger.info("%r: stream %s closed", self, stream.id)
                for recorder_id in [k for k, r in self.recorders.items() if r.closed]:
                    del self.recorders[recorder_id]
                self.events.emit(StreamClosed(self, stream))

    def _new_ssrc(self, transport: WebRtcTransport) -> int:
        while True:
            ssrc = secrets.randbits(32)
            if ssrc and ssrc not in self._ssrcs:
                self._ssrcs.add(ssrc)
                self._ssrcs_by_transport.setdefault(transport.id, []).append(ssrc)
                return ssrc

    def _check_open(self) -> None:
        if self.closed:
            raise MediaStateError(f"{self!r} is closed")

    # ----------------------------------------------------------------------------------------
    # Closing

    async def close(self) -> None:
        """Close every transport (reason ``router_closed``) and wait for them; idempotent."""
        if self._close_task is None:
            self.closed = True
            self._close_task = asyncio.get_running_loop().create_task(self._close(), name=f"{self!r} close")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        logger.info("%r: closing (%d transports)", self, len(self.transports))
        for recorder in self.recorders.values():
            recorder.close()
        self.recorders.clear()
        for pipe in list(self.pipes.values()):
            pipe.close()
        self.pipes.clear()
        transports = list(self.transports.values())
        await asyncio.gather(*(t.router_closed() for t in transports))
        self.transports.clear()
        self.streams.clear()
        self.producers.clear()
        self._ssrcs.clear()
        self._ssrcs_by_transport.clear()
        self.events.emit(RouterClosed(self))
        self.events.clear()

    def dump(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "closed": self.closed,
            "transports": [t.dump() for t in self.transports.values()],
            "streams": {s.id: {k: p.dump() for k, p in s.producers.items()} for s in self.streams.values()},
            "consumers": {c.id: c.dump() for t in self.transports.values() for c in t.consumers.values()},
            "recorders": {r.id: r.dump() for r in self.recorders.values()},
            "pipes": {p.id: p.dump() for p in self.pipes.values()},
        }
