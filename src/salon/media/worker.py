"""The media worker process: routers on their own event loop (mediasoup's worker).

Started by :class:`~salon.media.workers.WorkerPool` as ``python -m salon.media.worker --fd N``
(a fresh interpreter, like ``multiprocessing``'s *spawn*: never a fork of the main process,
which has threads and a running event loop). ``N`` is this process's end of a Unix socket
pair; the main process talks to it with the typed frames of :mod:`salon.media.channel`.

Ownership tree (all in this process)::

    Worker                         (one per process; owns the channel and the request tasks)
    └── HostedRouter               (one per session, keyed by router id)
        ├── Router                 (salon.media.router: transports → producers / consumers)
        └── ActiveSpeakerDetector  (+ one poll timer)

Lifecycle: :func:`main` installs uvloop, connects the channel, sends
:class:`~salon.media.channel.ReadyEvent`, then serves requests until the channel reaches EOF:
the main process closed it (shutdown) or died. Either way the worker closes every router
(DTLS close_notify to the peers, sockets released) and exits, so a worker never outlives its
main process. SIGINT is ignored: a Ctrl+C reaches the whole process group, and the main
process decides when workers stop.

Requests are handled in order of arrival; those that must wait (gathering candidates, closing
transports) run in owned tasks, so one slow publish does not hold up the others. Every request
gets exactly one response (see :mod:`salon.media.channel` for errors).

Events sent to the main process: transport connected (for a publish transport: on its first
media packet) / closed (with ``by_peer``), and per
router, every 250 ms at most, the audio levels that changed and active-speaker changes, from
the ``ssrc-audio-level`` extension of the producers' packets
(:attr:`~salon.media.producer.Producer.on_audio_level` →
:class:`~salon.media.audio_level.ActiveSpeakerDetector`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Sequence

from salon.errors import NotFoundError, SalonError, ServerError
from salon.media import memtrace
from salon.media.audio_level import ActiveSpeakerChanged, ActiveSpeakerDetector, AudioLevelUpdate
from salon.media.channel import (
    Ack,
    ActiveSpeakerEvent,
    AddCandidateRequest,
    AudioLevelsEvent,
    ChannelError,
    CloseConsumersRequest,
    ClosePipeRequest,
    CloseRouterRequest,
    CloseTransportsRequest,
    ConsumerInfo,
    ConsumersResult,
    CreateRouterRequest,
    DumpRequest,
    FrameDecoder,
    PipeConnectRequest,
    PipeInRequest,
    PipeOutRequest,
    PipeResult,
    ProducerInfo,
    PublishRequest,
    PublishResult,
    ReadyEvent,
    RecordedTrack,
    RecordingResult,
    Request,
    Response,
    Result,
    ResultResponse,
    SetConsumerLayerRequest,
    SetConsumersRequest,
    SetPreferencesRequest,
    SetQualityPausedRequest,
    StartRecordingRequest,
    StopRecordingRequest,
    SubscribeRequest,
    SubscribeResult,
    UnpublishRequest,
    VideoQualityEvent,
    WorkerDump,
    WorkerEvent,
    decode_main_message,
    encode_message,
    error_response,
)
from salon.media.channel import TransportClosedEvent as TransportClosedMessage
from salon.media.channel import TransportConnectedEvent as TransportConnectedMessage
from salon.media.collector import Collector
from salon.media.consumer import Consumer, ConsumerEvent, ConsumerQualityChanged, PauseReason
from salon.media.errors import MediaStateError
from salon.media.pipe import PipedProducer, PipeKeys
from salon.media.producer import Producer
from salon.media.router import Router, RouterEvent, StreamClosed
from salon.media.totals import totals
from salon.media.transport import (
    DROPPED,
    TransportClosed,
    TransportCloseReason,
    TransportConnected,
    TransportEvent,
    WebRtcTransport,
    WebRtcTransportOptions,
)
from salon.observability.lag import LoopLag
from salon.observability.logs import configure_worker as configure_worker_logging

__all__ = ["HostedRouter", "Worker", "main"]

logger = logging.getLogger(__name__)

#: Close reasons that come from a request of the main process (not the peer / network).
_REQUESTED = frozenset({TransportCloseReason.CLOSED, TransportCloseReason.ROUTER_CLOSED})
#: Seconds the worker gives its routers to close when the channel ends.
CLOSE_TIMEOUT = 5.0
READ_SIZE = 65536


class HostedRouter:
    """A :class:`~salon.media.router.Router` as the worker hosts it: reports its transports'
    events and its audio levels on the channel.

    Owned by :class:`Worker`; :meth:`close` (idempotent) closes the router and stops the
    audio-level timer.
    """

    def __init__(self, worker: Worker, router: Router) -> None:
        self.worker = worker
        self.router = router
        self.detector = ActiveSpeakerDetector()
        self._timer: asyncio.TimerHandle | None = None
        router.events.add_listener(self._on_router_event)

    def __repr__(self) -> str:
        return f"HostedRouter({self.router.id})"

    @property
    def id(self) -> str:
        return self.router.id

    def watch(self, transport: WebRtcTransport) -> None:
        """Report ``transport``'s connected / closed events to the main process.

        A publish transport is reported connected on the first media packet of one of its
        producers, not when ICE + DTLS complete: the main process announces the stream then,
        so it becomes visible only once media flows.
        """
        transport.events.add_listener(self._on_transport_event)
        producers = list(transport.producers.values())
        if not producers:
            return

        def first_packet(_producer: Producer) -> None:
            for producer in producers:
                producer.on_first_packet = None
            if not transport.closed:
                self.worker.send(TransportConnectedMessage(router_id=self.id, transport_id=transport.id))

        for producer in producers:
            producer.on_first_packet = first_packet

    def watch_audio(self, producer: Producer) -> None:
        """Feed ``producer``'s packet audio levels to the active-speaker detector."""
        self.detector.add_stream(producer.stream_id)
        producer.on_audio_level = self._on_audio_level
        if self._timer is None:
            self._schedule(time.monotonic() + 0.25)

    def _on_audio_level(self, producer: Producer, level: int, voice: bool, now: float) -> None:
        self.detector.feed(producer.stream_id, level, voice, now)

    def _schedule(self, at: float) -> None:
        loop = asyncio.get_running_loop()
        # loop.time() and time.monotonic() share CLOCK_MONOTONIC in asyncio and uvloop, but the
        # delay form does not depend on it.
        self._timer = loop.call_later(max(0.0, at - time.monotonic()), self._poll)

    def _poll(self) -> None:
        self._timer = None
        if self.router.closed:
            return
        now = time.monotonic()
        levels: dict[str, float] = {}
        for event in self.detector.poll(now):
            if isinstance(event, AudioLevelUpdate):
                levels[event.stream_id] = round(event.level, 4)
            else:
                self._send_speaker(event)
        if levels:
            self.worker.send(AudioLevelsEvent(router_id=self.id, levels=levels))
        deadline = self.detector.next_deadline()
        self._schedule(deadline if deadline is not None and deadline > now else now + 0.25)

    def _send_speaker(self, event: ActiveSpeakerChanged) -> None:
        logger.debug("%r: active speaker %s -> %s", self, event.previous, event.stream_id)
        # The allocators serve the speaker's video before the others'.
        for transport in self.router.transports.values():
            if transport.allocation is not None:
                transport.allocation.active_speaker = event.stream_id
        self.worker.send(ActiveSpeakerEvent(router_id=self.id, stream_id=event.stream_id))

    def watch_consumer(self, consumer: Consumer) -> None:
        """Report ``consumer``'s quality pauses to the main process (:class:`VideoQualityEvent`)."""
        consumer.events.add_listener(self._on_consumer_event)

    def _on_consumer_event(self, event: ConsumerEvent) -> None:
        if isinstance(event, ConsumerQualityChanged) and not self.router.closed:
            consumer = event.consumer
            self.worker.send(
                VideoQualityEvent(
                    router_id=self.id,
                    transport_id=consumer.transport.id,
                    consumer_id=consumer.id,
                    disabled=event.paused,
                )
            )

    def _on_router_event(self, event: RouterEvent) -> None:
        if isinstance(event, StreamClosed):
            change = self.detector.remove_stream(event.stream.id)
            if change is not None and not self.router.closed:
                self._send_speaker(change)

    def _on_transport_event(self, event: TransportEvent) -> None:
        if isinstance(event, TransportConnected):
            if not event.transport.producers:  # publish transports: on the first packet (watch)
                self.worker.send(
                    TransportConnectedMessage(router_id=self.id, transport_id=event.transport.id)
                )
        elif isinstance(event, TransportClosed):
            self.worker.collector.request()
            self.worker.send(
                TransportClosedMessage(
                    router_id=self.id,
                    transport_id=event.transport.id,
                    reason=event.reason.value,
                    by_peer=event.reason not in _REQUESTED,
                )
            )

    def transport(self, transport_id: str) -> WebRtcTransport:
        transport = self.router.get_transport(transport_id)
        if transport is None:
            raise MediaStateError(f"{self!r}: transport {transport_id} is closed")
        return transport

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.router.close()


class Worker:
    """The root object of a worker process: the channel, the hosted routers, request tasks.

    :meth:`run` serves until the channel ends, then closes everything (:meth:`close`).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.routers: dict[str, HostedRouter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.collector = Collector()
        """Frees closed transports' garbage promptly (:mod:`salon.media.collector`)."""
        self.lag = LoopLag()
        """How late this worker's event loop runs (metrics)."""

    def __repr__(self) -> str:
        return f"Worker(pid={os.getpid()}, {len(self.routers)} routers)"

    def send(self, message: Response | WorkerEvent) -> None:
        """Queue one message to the main process (no backpressure: control traffic only)."""
        if self.writer.is_closing():
            logger.debug("%r: channel closed, dropping %r", self, message)
            return
        self.writer.write(encode_message(message))

    async def run(self) -> None:
        loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
        self.lag.start()
        self.send(ReadyEvent(pid=os.getpid(), loop=loop_name))
        logger.info("%r: ready (%s loop)", self, loop_name)
        decoder = FrameDecoder()
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    logger.info("%r: channel closed by the main process; exiting", self)
                    break
                for frame in decoder.feed(data):
                    self._dispatch(decode_main_message(frame))
        except ChannelError:
            logger.exception("%r: protocol error on the channel; exiting", self)
            raise
        finally:
            await self.close()

    def _dispatch(self, request: Request) -> None:
        # Tasks start in creation order and a handler's first step runs up to its first await,
        # so a router created by one request exists for the next request on the channel.
        task = asyncio.get_running_loop().create_task(self._serve(request), name=f"worker {request.type}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Request) -> None:
        try:
            result = await self._handle(request)
        except SalonError as exc:
            self.send(error_response(request.id, exc))
        except Exception:
            # A bug in the worker: keep serving the other routers, tell the main process.
            logger.exception("%r: %s request %d failed", self, request.type, request.id)
            error = ServerError(f"the media worker failed to handle {request.type}")
            self.send(error_response(request.id, error))
        else:
            self.send(ResultResponse(id=request.id, result=result))

    def _router(self, router_id: str) -> HostedRouter:
        hosted = self.routers.get(router_id)
        if hosted is None:
            raise NotFoundError(f"{self!r}: no router {router_id}")
        return hosted

    async def _handle(self, request: Request) -> Result:
        match request:
            case CreateRouterRequest():
                if self._closing:
                    raise MediaStateError(f"{self!r} is closing")
                if request.router_id not in self.routers:
                    settings = request.transport
                    options = WebRtcTransportOptions(
                        listen_addresses=settings.listen_addresses,
                        announced_address=settings.announced_address,
                        port_range=settings.port_range,
                        connect_timeout=settings.connect_timeout,
                        ice_allow=settings.ice_allow,
                        ice_deny=settings.ice_deny,
                        max_remote_candidates=settings.max_remote_candidates,
                    )
                    router = Router(request.router_id, transport_options=options)
                    self.routers[request.router_id] = HostedRouter(self, router)
                return Ack()
            case CloseRouterRequest():
                hosted = self.routers.pop(request.router_id, None)
                if hosted is not None:
                    await hosted.close()
                return Ack()
            case PublishRequest():
                hosted = self._router(request.router_id)
                published = await hosted.router.publish(
                    request.offer, stream_id=request.stream_id, replace=request.replace, screen=request.screen
                )
                hosted.watch(published.transport)
                for producer in published.producers:
                    if producer.kind == "audio" and producer.extensions.audio_level is not None:
                        hosted.watch_audio(producer)
                return PublishResult(
                    transport_id=published.transport.id,
                    answer=published.answer_sdp,
                    producers=[ProducerInfo(id=p.id, kind=p.kind) for p in published.producers],
                )
            case SubscribeRequest():
                hosted = self._router(request.router_id)
                subscribed = await hosted.router.subscribe(
                    request.stream_id,
                    request.offer,
                    audio=request.audio,
                    video=request.video,
                    transport_id=request.transport_id,
                )
                if subscribed.new_transport:
                    hosted.watch(subscribed.transport)
                for consumer in subscribed.consumers:
                    hosted.watch_consumer(consumer)
                    if consumer.kind == "video":
                        consumer.set_preferences(
                            request.max_width, request.max_height, request.max_frame_rate
                        )
                return SubscribeResult(
                    transport_id=subscribed.transport.id,
                    answer=subscribed.answer_sdp,
                    consumers=[
                        ConsumerInfo(id=c.id, kind=c.kind, paused=c.paused) for c in subscribed.consumers
                    ],
                    new_transport=subscribed.new_transport,
                )
            case AddCandidateRequest():
                transport = self._router(request.router_id).transport(request.transport_id)
                await transport.add_remote_candidate(request.candidate)
                return Ack()
            case SetConsumersRequest():
                transport = self._router(request.router_id).transport(request.transport_id)
                wanted = {"audio": request.audio, "video": request.video}
                consumers = [c for c in map(transport.consumers.get, request.consumer_ids) if c is not None]
                for consumer in consumers:
                    on = wanted[consumer.kind]
                    if on is True:
                        consumer.resume()
                    elif on is False:
                        consumer.pause()
                return ConsumersResult(
                    consumers=[ConsumerInfo(id=c.id, kind=c.kind, paused=c.paused) for c in consumers]
                )
            case SetPreferencesRequest():
                transport = self._router(request.router_id).transport(request.transport_id)
                for target in map(transport.consumers.get, request.consumer_ids):
                    if target is not None and target.kind == "video":
                        target.set_preferences(request.max_width, request.max_height, request.max_frame_rate)
                return Ack()
            case SetQualityPausedRequest():
                transport = self._router(request.router_id).transport(request.transport_id)
                for paused_consumer in map(transport.consumers.get, request.consumer_ids):
                    if paused_consumer is not None and paused_consumer.kind == "video":
                        # By hand: the allocator no longer decides this consumer.
                        paused_consumer.allocated = False
                        paused_consumer.set_paused(request.paused, PauseReason.QUALITY)
                return Ack()
            case UnpublishRequest():
                hosted = self.routers.get(request.router_id)
                if hosted is not None:
                    await hosted.router.unpublish(request.stream_id)
                return Ack()
            case CloseTransportsRequest():
                hosted = self.routers.get(request.router_id)
                if hosted is not None:
                    found = [hosted.router.get_transport(t) for t in request.transport_ids]
                    await asyncio.gather(*(t.close() for t in found if t is not None))
                return Ack()
            case CloseConsumersRequest():
                hosted = self.routers.get(request.router_id)
                if hosted is not None:
                    await hosted.router.close_consumers(request.transport_id, request.consumer_ids)
                return Ack()
            case SetConsumerLayerRequest():
                hosted = self.routers.get(request.router_id)
                if hosted is not None:
                    hosted.router.set_consumer_layer(
                        request.transport_id, request.consumer_ids, request.spatial, request.temporal
                    )
                return Ack()
            case StartRecordingRequest():
                hosted = self._router(request.router_id)
                recorder = hosted.router.start_recording(
                    request.stream_id,
                    (request.sink_host, request.sink_port),
                    bytes.fromhex(request.token),
                    audio=request.audio,
                    video=request.video,
                )
                return RecordingResult(
                    recorder_id=recorder.id,
                    tracks=[
                        RecordedTrack(
                            kind=p.kind,
                            codec=p.codec.name,
                            clock_rate=p.codec.clock_rate,
                            payload_type=p.codec.payload_type,
                            channels=p.codec.channels,
                        )
                        for p in recorder.producers.values()
                    ],
                )
            case StopRecordingRequest():
                hosted = self.routers.get(request.router_id)
                stopped = None if hosted is None else hosted.router.stop_recording(request.recorder_id)
                return RecordingResult(
                    recorder_id=request.recorder_id,
                    stats={} if stopped is None else dataclasses.asdict(stopped.stats),
                )
            case PipeOutRequest():
                pipe = await self._router(request.router_id).router.pipe_out(
                    request.stream_id,
                    request.pipe_id,
                    host=request.host,
                    keys=None if request.keys is None else PipeKeys.from_hex(*request.keys),
                )
                return PipeResult(
                    port=pipe.port,
                    producers=[PipedProducer.of(p).to_dict() for p in pipe.producers.values()],
                )
            case PipeInRequest():
                hosted = self._router(request.router_id)
                pipe = await hosted.router.pipe_in(
                    request.stream_id,
                    [PipedProducer.from_dict(p) for p in request.producers],
                    (request.peer_host, request.peer_port),
                    request.pipe_id,
                    host=request.host,
                    keys=None if request.keys is None else PipeKeys.from_hex(*request.keys),
                )
                return PipeResult(port=pipe.port)
            case PipeConnectRequest():
                hosted = self._router(request.router_id)
                open_pipe = hosted.router.pipes.get(request.pipe_id)
                if open_pipe is None:
                    raise MediaStateError(f"{hosted!r}: pipe {request.pipe_id} is closed")
                open_pipe.connect((request.peer_host, request.peer_port))
                return Ack()
            case ClosePipeRequest():
                hosted = self.routers.get(request.router_id)
                if hosted is not None:
                    hosted.router.close_pipe(request.pipe_id)
                return Ack()
            case DumpRequest():
                return self.dump(
                    routers=request.routers,
                    tracemalloc=request.tracemalloc,
                    objects=request.objects,
                    media=request.media,
                )

    def dump(
        self, *, routers: bool = False, tracemalloc: int = 0, objects: int = 0, media: bool = False
    ) -> WorkerDump:
        hosted = [h.router for h in self.routers.values()]
        transports = [t for r in hosted for t in r.transports.values()]
        return WorkerDump(
            pid=os.getpid(),
            routers=len(hosted),
            transports=len(transports),
            producers=sum(len(t.producers) for t in transports),
            consumers=sum(len(t.consumers) for t in transports),
            cpu_time=time.process_time(),
            rss=_rss(),
            tasks=len(asyncio.all_tasks()),
            udp_sockets=_udp_sockets(),
            datagrams_dropped=dict(DROPPED),
            router_dumps={r.id: r.dump() for r in hosted} if routers else {},
            tracemalloc=memtrace.growth(tracemalloc),
            objects=memtrace.census(objects),
            heap=memtrace.heap(),
            media=totals(transports, [p for r in hosted for p in r.pipes.values()]) if media else {},
            loop_lag_buckets=self.lag.buckets() if media else [],
            loop_lag_sum=self.lag.sum,
            loop_lag_max=self.lag.max,
        )

    async def close(self) -> None:
        """Close every router (bounded wait), cancel the request tasks, close the channel."""
        if self._closing:
            return
        self._closing = True
        self.collector.close()
        self.lag.stop()
        routers = list(self.routers.values())
        self.routers.clear()
        if routers:
            logger.info("%r: closing %d routers", self, len(routers))
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.gather(*(h.close() for h in routers))
            except TimeoutError:
                logger.warning("%r: routers did not close within %.0f s", self, CLOSE_TIMEOUT)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError as exc:
            logger.debug("%r: channel close: %s", self, exc)


def _rss() -> int:
    """Resident set size in bytes (``/proc/self/statm``; peak RSS where there is no /proc)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _udp_sockets() -> int:
    """How many UDP sockets this process has open (``/proc``; 0 where there is none)."""
    try:
        inodes: set[str] = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
            with open(table) as lines:
                next(lines)
                count += sum(1 for line in lines if line.split()[9] in inodes)
        return count
    except OSError:
        return 0


async def serve(fd: int) -> None:
    """Serve the channel on socket ``fd`` until it ends."""
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=READ_SIZE)
    # What start-up made (imports, mostly) lives as long as the process: out of the collector's
    # way, so that the full collections after transports close stay short.
    gc.collect()
    gc.freeze()
    # Python's next automatic full collection waits for a quarter of the long-lived objects
    # counted at the last full one: count again, without the frozen ones.
    gc.collect()
    await Worker(reader, writer).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m salon.media.worker", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="this worker's end of the channel socket")
    parser.add_argument("--name", default="worker", help="the name used in log lines")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    memtrace.start_from_env()
    configure_worker_logging(args.name, args.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(serve(args.fd))
    else:
        uvloop.run(serve(args.fd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
