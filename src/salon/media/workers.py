"""The main-process side of the media workers (mediasoup's ``Worker`` / ``Router`` classes).

Ownership tree, closed top-down, idempotently::

    WorkerPool                 (owned by SfuMediaPlane; N worker slots, restarts dead workers)
    └── WorkerHandle           (one per worker process: the Popen, the channel, one reader task,
        │                       the pending requests; a restarted worker is a new handle)
        └── RouterHandle       (one per session placed on that worker: a mirror of the worker's
            │                   router, with the transports / streams / consumers it reported)
            ├── RemoteTransport
            └── RemoteConsumer

**Requests.** :meth:`WorkerHandle.request` writes a typed request (:mod:`salon.media.channel`)
and awaits its one response; an error response is re-raised as the same
:class:`~salon.errors.SalonError` subclass the worker raised.

**Placement.** :meth:`WorkerPool.place` picks the live worker with the least load, then the
fewest routers. A worker's load is its consumers plus its CPU in tenths (10 per 10% of a core,
smoothed over its health checks, :func:`cpu_points`): a worker busy with a few heavy
consumers (high bitrates, simulcast, recorders, pipes) counts as loaded however few consumers
it has, and an idle worker's few percent count nothing. Among equally loaded workers it takes
turns (round-robin), so sessions that come and go one at a time do not all land on the first
worker. A session's router stays on its worker for the router's life.

**Death.** A worker is dead the moment its channel reaches EOF or its process exits (a pidfd
watched by the event loop): both happen at once when the process is killed. Then, in order:
pending requests fail with :class:`WorkerDiedError` (a
:class:`~salon.media.errors.MediaResourceError`: our fault), every router on it emits
:class:`WorkerDied` with its streams (the plane reports them ``mediaStopped``) and is
forgotten, the process is reaped, and the pool starts a replacement in the same slot, at most
``max_restarts`` per ``restart_window`` seconds per slot (later restarts wait). The main
process and the other workers carry on.

**Hangs.** The pool asks each live worker for its counters every ``ping_interval`` seconds; a
worker that does not answer within ``ping_timeout`` (stuck in a loop, stopped) is killed with
SIGKILL and so dies as above: its requests fail, its streams end and a replacement starts.

**Shutdown.** :meth:`WorkerPool.close` closes each handle: pending requests fail with
:class:`~salon.media.errors.MediaStateError`, the channel is closed (the worker sees EOF, closes
its routers and exits), the process is awaited (SIGKILL after ``shutdown_timeout``) and
reaped, the reader task is cancelled and awaited. No process or task outlives the pool.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from salon.errors import ServerError
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
    ConsumersResult,
    CreateRouterRequest,
    DumpRequest,
    ErrorResponse,
    FrameDecoder,
    PipeConnectRequest,
    PipeInRequest,
    PipeOutRequest,
    PipeResult,
    PublishRequest,
    PublishResult,
    ReadyEvent,
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
    TransportClosedEvent,
    TransportConnectedEvent,
    TransportSettings,
    UnpublishRequest,
    VideoQualityEvent,
    WorkerDump,
    WorkerEvent,
    decode_worker_message,
    encode_message,
    error_from_response,
)
from salon.media.errors import MediaResourceError, MediaStateError
from salon.media.events import EventEmitter
from salon.media.transport import WebRtcTransportOptions

__all__ = [
    "ActiveSpeaker",
    "AudioLevels",
    "RemoteConsumer",
    "RemoteTransport",
    "RouterHandle",
    "RouterHandleEvent",
    "StreamEnded",
    "StreamFlowing",
    "TransportGone",
    "VideoQualityChanged",
    "WorkerDied",
    "WorkerDiedError",
    "WorkerHandle",
    "WorkerPool",
    "cpu_points",
]

logger = logging.getLogger(__name__)


#: The weight of the newest CPU sample in a worker's smoothed utilisation.
CPU_SMOOTHING = 0.5


def cpu_points(cpu: float) -> int:
    """A worker's CPU utilisation (0 to 1 core) in consumer-equivalents for placement: 10 per
    full 10% (0-9%: 0, so the idle noise of a few percent never breaks a tie; a busy core: 100)."""
    return 10 * int(min(1.0, max(0.0, cpu)) * 10)


R = TypeVar("R", bound=Result)

_DeathCallback = Callable[["WorkerHandle"], None]
"""Called once when a worker dies on its own (not when it is closed)."""

_router_ids = itertools.count(1)

#: Bytes read from a channel at a time.
READ_SIZE = 65536


class WorkerDiedError(MediaResourceError):
    """The media worker process serving the request died (our fault: it crashed or was killed)."""

    code = "media_worker_died"


# --------------------------------------------------------------------------------------------
# Mirrors of the worker's objects


@dataclass(eq=False)
class RemoteConsumer:
    """A consumer in a worker, as last reported."""

    id: str
    kind: Literal["audio", "video"]
    paused: bool


@dataclass(eq=False)
class RemoteTransport:
    """A transport in a worker: a publish transport (``stream_id`` set) or a subscribe one."""

    id: str
    stream_id: str | None = None
    consumers: list[RemoteConsumer] = field(default_factory=list)
    connected: bool = False


@dataclass(frozen=True, slots=True)
class RouterHandleEvent:
    router: RouterHandle


@dataclass(frozen=True, slots=True)
class StreamFlowing(RouterHandleEvent):
    """A stream's media flows: the first RTP packet reached one of its producers."""

    stream_id: str


@dataclass(frozen=True, slots=True)
class StreamEnded(RouterHandleEvent):
    """A stream's publish transport was closed by the peer or the network."""

    stream_id: str
    reason: str
    """The :class:`~salon.media.transport.TransportCloseReason` value (``ice_failed``...)."""


@dataclass(frozen=True, slots=True)
class TransportGone(RouterHandleEvent):
    """A transport closed in the worker (for any reason)."""

    transport_id: str


@dataclass(frozen=True, slots=True)
class AudioLevels(RouterHandleEvent):
    levels: dict[str, float]
    """Stream id → smoothed level (0..1), for the streams whose level changed."""


@dataclass(frozen=True, slots=True)
class ActiveSpeaker(RouterHandleEvent):
    stream_id: str | None


@dataclass(frozen=True, slots=True)
class VideoQualityChanged(RouterHandleEvent):
    """A video consumer was paused for quality (``disabled``) or resumed from it."""

    transport_id: str
    consumer_id: str
    disabled: bool


@dataclass(frozen=True, slots=True)
class WorkerDied(RouterHandleEvent):
    """The router's worker died: the router and all its transports are gone."""

    streams: tuple[str, ...]
    """The streams that were published on the router."""


class RouterHandle:
    """The main-process handle of a router hosted by a worker (one per session).

    Created by :meth:`WorkerHandle.create_router`, which sends the create request at once:
    requests are served in order, so the following requests find the router. Its mirror
    (:attr:`transports`, :attr:`streams`) follows the worker's reports. :meth:`close` is
    idempotent; :meth:`worker_died` is called by the worker handle instead when the process
    died, and emits :class:`WorkerDied`. Closing operations on a closed router do nothing.
    """

    def __init__(self, worker: WorkerHandle, router_id: str, settings: TransportSettings) -> None:
        self.id = router_id
        self.worker = worker
        self.events: EventEmitter[RouterHandleEvent] = EventEmitter(self)
        self.transports: dict[str, RemoteTransport] = {}
        self.streams: dict[str, RemoteTransport] = {}
        """Stream id → its publish transport."""
        self.closed = False
        self._created = worker.send_request(
            CreateRouterRequest(id=worker.next_id(), router_id=self.id, transport=settings)
        )
        self._created.add_done_callback(self._on_created)
        self._close_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"RouterHandle({self.id} on {self.worker.name})"

    @property
    def consumer_count(self) -> int:
        return sum(len(t.consumers) for t in self.transports.values())

    def _on_created(self, future: asyncio.Future[Response]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None and isinstance(future.result(), ErrorResponse):
            logger.error("%r: the worker refused to create it: %s", self, future.result())
        elif error is not None and not isinstance(error, WorkerDiedError | MediaStateError):
            logger.error("%r: creating it failed: %s", self, error)

    async def _request(self, request: Request, result_type: type[R]) -> R:
        if self.closed:
            raise MediaStateError(f"{self!r} is closed")
        created = await self._created
        if isinstance(created, ErrorResponse):
            raise error_from_response(created)
        return await self.worker.request(request, result_type)

    async def publish(
        self, stream_id: str, offer: str, *, replace: bool = False, screen: bool = False
    ) -> PublishResult:
        """Create a stream's publish transport and producers from a sendonly offer
        (``replace``: in place of the stream's current ones, keeping its consumers; ``screen``:
        its video is a screen share, allocated before camera video)."""
        request = PublishRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            stream_id=stream_id,
            offer=offer,
            replace=replace,
            screen=screen,
        )
        result = await self._request(request, PublishResult)
        if self.closed:
            raise MediaStateError(f"{self!r} closed while publishing stream {stream_id}")
        transport = RemoteTransport(result.transport_id, stream_id=stream_id)
        self.transports[transport.id] = self.streams[stream_id] = transport
        return result

    async def subscribe(
        self,
        stream_id: str,
        offer: str,
        *,
        audio: bool,
        video: bool,
        transport_id: str | None = None,
        max_width: int | None = None,
        max_height: int | None = None,
        max_frame_rate: float | None = None,
    ) -> tuple[RemoteTransport, list[RemoteConsumer], str]:
        """Consume a stream on the client's subscribe transport ``transport_id`` (renegotiated
        when the offer comes from the same peer connection) or on a new one, its video with
        the subscriber's preferences (``max_*``, None: none); returns the transport, the new
        consumers and the SDP answer."""
        request = SubscribeRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            stream_id=stream_id,
            offer=offer,
            audio=audio,
            video=video,
            transport_id=transport_id,
            max_width=max_width,
            max_height=max_height,
            max_frame_rate=max_frame_rate,
        )
        result = await self._request(request, SubscribeResult)
        if self.closed:
            raise MediaStateError(f"{self!r} closed while subscribing to stream {stream_id}")
        consumers = [RemoteConsumer(c.id, c.kind, c.paused) for c in result.consumers]
        transport = self.transports.get(result.transport_id)
        if transport is None:
            transport = self.transports[result.transport_id] = RemoteTransport(result.transport_id)
        transport.consumers.extend(consumers)
        return transport, consumers, result.answer

    async def add_candidate(self, transport_id: str, candidate: str | None) -> None:
        request = AddCandidateRequest(
            id=self.worker.next_id(), router_id=self.id, transport_id=transport_id, candidate=candidate
        )
        await self._request(request, Ack)

    async def set_consumers(
        self,
        transport_id: str,
        consumers: Sequence[RemoteConsumer],
        *,
        audio: bool | None,
        video: bool | None,
    ) -> None:
        """Pause / resume some consumers of a subscribe transport; updates their mirrors."""
        request = SetConsumersRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            transport_id=transport_id,
            consumer_ids=[c.id for c in consumers],
            audio=audio,
            video=video,
        )
        result = await self._request(request, ConsumersResult)
        paused = {c.id: c.paused for c in result.consumers}
        for consumer in consumers:
            consumer.paused = paused.get(consumer.id, consumer.paused)

    async def set_preferences(
        self,
        transport_id: str,
        consumers: Sequence[RemoteConsumer],
        *,
        max_width: int | None,
        max_height: int | None,
        max_frame_rate: float | None,
    ) -> None:
        """Give some consumers of a subscribe transport the subscriber's preferred maximum
        resolution and frame rate (None: no preference)."""
        request = SetPreferencesRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            transport_id=transport_id,
            consumer_ids=[c.id for c in consumers],
            max_width=max_width,
            max_height=max_height,
            max_frame_rate=max_frame_rate,
        )
        await self._request(request, Ack)

    async def set_quality_paused(
        self, transport_id: str, consumers: Sequence[RemoteConsumer], *, paused: bool
    ) -> None:
        """Pause (or resume) the video ones of some consumers for quality, as the allocator
        does; each change comes back as :class:`VideoQualityChanged`. For tests and operators."""
        request = SetQualityPausedRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            transport_id=transport_id,
            consumer_ids=[c.id for c in consumers if c.kind == "video"],
            paused=paused,
        )
        await self._request(request, Ack)

    async def set_consumer_layer(
        self,
        transport_id: str,
        consumers: Sequence[RemoteConsumer],
        *,
        spatial: int | None,
        temporal: int | None = None,
    ) -> None:
        """Set the simulcast layer some consumers of a subscribe transport forward (video
        consumers of a simulcast producer; others ignore it)."""
        if self.closed or not consumers:
            return
        request = SetConsumerLayerRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            transport_id=transport_id,
            consumer_ids=[c.id for c in consumers],
            spatial=spatial,
            temporal=temporal,
        )
        await self._request(request, Ack)

    async def close_consumers(self, transport_id: str, consumers: Sequence[RemoteConsumer]) -> None:
        """Close some consumers of a transport (an unsubscribe); the transport stays."""
        if self.closed or not consumers:
            return
        transport = self.transports.get(transport_id)
        if transport is not None:
            gone = {c.id for c in consumers}
            transport.consumers = [c for c in transport.consumers if c.id not in gone]
        request = CloseConsumersRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            transport_id=transport_id,
            consumer_ids=[c.id for c in consumers],
        )
        await self._closing_request(request)

    async def unpublish(self, stream_id: str) -> None:
        """Close a stream's publish transport (and so its consumers); idempotent."""
        if self.closed:
            return
        transport = self.streams.pop(stream_id, None)
        if transport is not None:
            self.transports.pop(transport.id, None)
        request = UnpublishRequest(id=self.worker.next_id(), router_id=self.id, stream_id=stream_id)
        await self._closing_request(request)

    async def close_transports(self, transport_ids: Sequence[str]) -> None:
        """Close transports; unknown ones are fine."""
        if self.closed or not transport_ids:
            return
        for transport_id in transport_ids:
            transport = self.transports.pop(transport_id, None)
            if transport is not None and transport.stream_id is not None:
                self.streams.pop(transport.stream_id, None)
        request = CloseTransportsRequest(
            id=self.worker.next_id(), router_id=self.id, transport_ids=list(transport_ids)
        )
        await self._closing_request(request)

    async def start_recording(
        self,
        stream_id: str,
        sink: tuple[str, int],
        token: bytes,
        *,
        audio: bool = True,
        video: bool = True,
    ) -> RecordingResult:
        """Copy a stream's RTP to an archiver's loopback sink (:mod:`salon.media.recording`);
        the result names the recorder and the tracks it sends."""
        request = StartRecordingRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            stream_id=stream_id,
            sink_host=sink[0],
            sink_port=sink[1],
            token=token.hex(),
            audio=audio,
            video=video,
        )
        return await self._request(request, RecordingResult)

    async def stop_recording(self, recorder_id: str) -> dict[str, int]:
        """Stop a recorder; returns its counters ({} if it was gone already, with its router
        or worker)."""
        if self.closed:
            return {}
        request = StopRecordingRequest(id=self.worker.next_id(), router_id=self.id, recorder_id=recorder_id)
        try:
            result = await self._request(request, RecordingResult)
        except (WorkerDiedError, MediaStateError) as exc:
            logger.debug("%r: stop_recording: went with its worker (%s)", self, exc)
            return {}
        return dict(result.stats)

    # -- pipes (salon.media.pipe) -----------------------------------------------------------

    async def pipe_out(
        self, stream_id: str, pipe_id: str, *, host: str = "127.0.0.1", keys: tuple[str, str] | None = None
    ) -> PipeResult:
        """Open the sending end of a pipe of a stream published here: its port and producers
        (bound on ``host``; SRTP with ``keys``, hex (send, receive), for a pipe to another node)."""
        request = PipeOutRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            stream_id=stream_id,
            pipe_id=pipe_id,
            host=host,
            keys=keys,
        )
        return await self._request(request, PipeResult)

    async def pipe_in(
        self,
        stream_id: str,
        pipe_id: str,
        peer_port: int,
        producers: list[dict[str, Any]],
        *,
        host: str = "127.0.0.1",
        peer_host: str = "127.0.0.1",
        keys: tuple[str, str] | None = None,
    ) -> int:
        """Open the receiving end of a pipe (the sending end listens on ``peer_port``): the
        stream becomes one of this router's; returns the receiving end's port."""
        request = PipeInRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            stream_id=stream_id,
            pipe_id=pipe_id,
            peer_port=peer_port,
            producers=producers,
            host=host,
            peer_host=peer_host,
            keys=keys,
        )
        return (await self._request(request, PipeResult)).port

    async def pipe_connect(self, pipe_id: str, peer_port: int, *, peer_host: str = "127.0.0.1") -> None:
        """Tell a sending end where its receiving end listens."""
        request = PipeConnectRequest(
            id=self.worker.next_id(),
            router_id=self.id,
            pipe_id=pipe_id,
            peer_port=peer_port,
            peer_host=peer_host,
        )
        await self._request(request, Ack)

    async def close_pipe(self, pipe_id: str) -> None:
        """Close this router's end of a pipe; idempotent, and quiet when the router is gone."""
        if self.closed:
            return
        await self._closing_request(
            ClosePipeRequest(id=self.worker.next_id(), router_id=self.id, pipe_id=pipe_id)
        )

    async def _closing_request(self, request: Request) -> None:
        try:
            await self._request(request, Ack)
        except (WorkerDiedError, MediaStateError) as exc:
            # What we wanted closed went (or goes) with the worker process.
            logger.debug("%r: %s: went with its worker (%s)", self, request.type, exc)

    async def close(self) -> None:
        """Close the router in its worker and forget it; idempotent. :attr:`closed` is set at
        once; the call returns when the worker closed it."""
        if self._close_task is None:
            was_open = not self.closed
            self.closed = True
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(was_open), name=f"{self!r} close"
            )
        await asyncio.shield(self._close_task)

    async def _close(self, was_open: bool) -> None:
        if was_open:
            request = CloseRouterRequest(id=self.worker.next_id(), router_id=self.id)
            try:
                await self.worker.request(request, Ack)
            except (WorkerDiedError, MediaStateError) as exc:
                logger.debug("%r: close: went with its worker (%s)", self, exc)
        self._forget()

    def _forget(self) -> None:
        self.closed = True
        if self.worker.routers.get(self.id) is self:
            del self.worker.routers[self.id]
        self.transports.clear()
        self.streams.clear()

    def worker_closed(self) -> None:
        """The worker is shutting down (by us): forget everything, report nothing."""
        self._forget()
        self.events.clear()

    def worker_died(self) -> None:
        """The worker process died: the router is gone; emit :class:`WorkerDied`."""
        if self.closed:
            return
        streams = tuple(self.streams)
        self._forget()
        self.events.emit(WorkerDied(self, streams))
        self.events.clear()

    def on_worker_event(self, event: WorkerEvent) -> None:
        """Update the mirror from a worker event and emit the matching handle event."""
        if self.closed:
            return
        match event:
            case TransportConnectedEvent():
                transport = self.transports.get(event.transport_id)
                if transport is not None:
                    transport.connected = True
                    if transport.stream_id is not None:
                        self.events.emit(StreamFlowing(self, transport.stream_id))
            case TransportClosedEvent():
                transport = self.transports.pop(event.transport_id, None)
                if transport is None:
                    return  # closed at our request: already forgotten
                if transport.stream_id is not None:
                    if self.streams.get(transport.stream_id) is not transport:
                        # A replaced publish transport: the stream lives on on its successor.
                        self.events.emit(TransportGone(self, transport.id))
                        return
                    self.streams.pop(transport.stream_id, None)
                    if event.by_peer:
                        self.events.emit(StreamEnded(self, transport.stream_id, event.reason))
                self.events.emit(TransportGone(self, transport.id))
            case AudioLevelsEvent():
                self.events.emit(AudioLevels(self, dict(event.levels)))
            case ActiveSpeakerEvent():
                self.events.emit(ActiveSpeaker(self, event.stream_id))
            case VideoQualityEvent():
                self.events.emit(
                    VideoQualityChanged(self, event.transport_id, event.consumer_id, event.disabled)
                )
            case ReadyEvent():
                pass


# --------------------------------------------------------------------------------------------
# One worker process


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    CLOSING = "closing"
    DEAD = "dead"
    CLOSED = "closed"


def _spawn_process(name: str, log_level: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start ``python -m salon.media.worker`` with one end of a fresh socket pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "salon.media.worker",
                "--fd",
                str(theirs.fileno()),
                "--name",
                name,
                "--log-level",
                log_level,
            ],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


class WorkerHandle:
    """One media worker process and its channel. Start with :meth:`start`.

    Owns the :class:`subprocess.Popen`, the channel socket, the reader task, the pidfd watch
    and the pending request futures. States: ``starting`` → ``ready`` → ``closing`` →
    ``closed``, or → ``dead`` when the process dies on its own (then :meth:`close` reaps it).
    """

    def __init__(self, name: str, process: subprocess.Popen[bytes], *, on_death: _DeathCallback) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid
        self.state = WorkerState.STARTING
        self.routers: dict[str, RouterHandle] = {}
        self.started_at = time.monotonic()
        self._on_death = on_death
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._ready: asyncio.Future[ReadyEvent] = asyncio.get_running_loop().create_future()
        self._exited = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pidfd: int | None = None
        self._close_task: asyncio.Task[None] | None = None
        #: Smoothed CPU utilisation (0 to 1 core) from the CPU time in each dump (the health
        #: checks): :attr:`cpu`.
        self.cpu = 0.0
        self._cpu_sample: tuple[float, float] | None = None  # (monotonic time, CPU seconds)

    def __repr__(self) -> str:
        return f"WorkerHandle({self.name} pid={self.pid} {self.state.value})"

    @classmethod
    async def start(
        cls, name: str, *, log_level: str, start_timeout: float, on_death: _DeathCallback
    ) -> WorkerHandle:
        """Spawn the process and wait until it reports ready (raises
        :class:`~salon.media.errors.MediaResourceError` if it does not)."""
        process, sock = _spawn_process(name, log_level)
        handle = cls(name, process, on_death=on_death)
        try:
            await handle._connect(sock)
            async with asyncio.timeout(start_timeout):
                ready = await asyncio.shield(handle._ready)
        except BaseException as exc:
            await handle.close()
            if isinstance(exc, TimeoutError):
                raise MediaResourceError(f"media {name} did not start within {start_timeout:.0f} s") from exc
            raise
        handle.state = WorkerState.READY
        logger.info("%r: started (%s loop)", handle, ready.loop)
        return handle

    async def _connect(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            reader, self._writer = await asyncio.open_unix_connection(sock=sock, limit=READ_SIZE)
        except BaseException:
            sock.close()
            raise
        self._reader_task = loop.create_task(self._read(reader), name=f"salon-{self.name}-reader")
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError) as exc:  # no pidfd (old kernel, not Linux): EOF suffices
            logger.debug("%r: no pidfd (%s); death is detected by channel EOF", self, exc)
        else:
            loop.add_reader(self._pidfd, self._on_process_exit)

    @property
    def alive(self) -> bool:
        return self.state in (WorkerState.STARTING, WorkerState.READY)

    def load(self) -> tuple[int, int]:
        """(consumers + :func:`cpu_points`, routers): what placement minimises."""
        consumers = sum(r.consumer_count for r in self.routers.values())
        return consumers + cpu_points(self.cpu), len(self.routers)

    # -- requests --------------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def send_request(self, request: Request) -> asyncio.Future[Response]:
        """Write ``request``; the future resolves with its response (or fails if the worker
        dies or closes first)."""
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        if not self.alive or self._writer is None:
            future.set_exception(self._gone_error())
            return future
        self._pending[request.id] = future
        future.add_done_callback(lambda _: self._pending.pop(request.id, None))
        self._writer.write(encode_message(request))
        return future

    async def request(self, request: Request, result_type: type[R]) -> R:
        """Send ``request`` and return its result; an error response is raised as the
        :class:`~salon.errors.SalonError` the worker raised."""
        response = await self.send_request(request)
        if isinstance(response, ErrorResponse):
            raise error_from_response(response)
        if not isinstance(response.result, result_type):
            raise ServerError(
                f"{self!r}: {request.type} answered with {response.result.type}, not {result_type.__name__}"
            )
        return response.result

    def create_router(self, settings: TransportSettings, *, name: str = "") -> RouterHandle:
        """Host a new router on this worker (the request is sent at once)."""
        router = RouterHandle(self, f"ro-{next(_router_ids)}{'-' + name if name else ''}", settings)
        self.routers[router.id] = router
        return router

    async def dump(self, *, routers: bool = False, tracemalloc: int = 0, objects: int = 0) -> WorkerDump:
        request = DumpRequest(id=self.next_id(), routers=routers, tracemalloc=tracemalloc, objects=objects)
        dump = await self.request(request, WorkerDump)
        self.account_cpu(time.monotonic(), dump.cpu_time)
        return dump

    def account_cpu(self, now: float, cpu_time: float) -> None:
        """The worker's CPU seconds (from a dump) at monotonic time ``now``: smoothed into
        :attr:`cpu` from the second sample on (an exponential moving average, the newest
        sample weighing :data:`CPU_SMOOTHING`, as a cluster node's load does)."""
        last, self._cpu_sample = self._cpu_sample, (now, cpu_time)
        if last is not None and now > last[0]:
            used = min(1.0, max(0.0, cpu_time - last[1]) / (now - last[0]))
            self.cpu += CPU_SMOOTHING * (used - self.cpu)

    def _gone_error(self) -> Exception:
        if self.state is WorkerState.DEAD:
            return WorkerDiedError(f"media {self.name} (pid {self.pid}) died")
        return MediaStateError(f"media {self.name} is closed")

    # -- reading ---------------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder()
        why = "its channel closed"
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                for frame in decoder.feed(data):
                    self._on_message(decode_worker_message(frame))
        except ChannelError as exc:
            logger.error("%r: broke the channel protocol: %s", self, exc)
            why = "it broke the channel protocol"
        except ConnectionError as exc:
            why = f"its channel failed ({exc})"
        self._lost(why)

    def _on_message(self, message: Response | WorkerEvent) -> None:
        match message:
            case ResultResponse() | ErrorResponse():
                future = self._pending.pop(message.id, None)
                if future is None or future.done():
                    logger.debug("%r: response to request %d nobody awaits", self, message.id)
                else:
                    future.set_result(message)
            case ReadyEvent():
                if not self._ready.done():
                    self._ready.set_result(message)
            case _:
                router = self.routers.get(message.router_id)
                if router is None:
                    logger.debug("%r: %s for forgotten router %s", self, message.type, message.router_id)
                else:
                    router.on_worker_event(message)

    def _on_process_exit(self) -> None:
        loop = asyncio.get_running_loop()
        if self._pidfd is not None:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        code = self.process.poll()
        self._exited.set()
        self._lost(f"the process exited with code {code}")

    def _lost(self, why: str) -> None:
        """The channel ended or the process exited: if we did not ask for it, the worker died."""
        if not self.alive:
            return
        self.state = WorkerState.DEAD
        routers = list(self.routers.values())
        streams = sum(len(r.streams) for r in routers)
        logger.error(
            "%r: media worker died (%s); %d routers and %d streams lost, their streams end with mediaStopped",
            self,
            why,
            len(routers),
            streams,
        )
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)  # a worker without its channel is useless
        self._fail_pending()
        for router in routers:
            router.worker_died()
        self.routers.clear()
        self._on_death(self)

    def kill(self, why: str) -> None:
        """Kill the process (SIGKILL) and treat it as dead, saying ``why``; for a worker that
        stopped answering. Does nothing once it is dead or closing."""
        self._lost(why)

    def _fail_pending(self) -> None:
        pending = list(self._pending.values())
        self._pending.clear()
        for future in pending:
            if not future.done():
                future.set_exception(self._gone_error())
        if not self._ready.done():
            self._ready.set_exception(self._gone_error())
            self._ready.exception()  # retrieved: start() awaits it, or nobody does

    # -- closing ---------------------------------------------------------------------------

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (EOF on its channel, then SIGKILL after ``timeout``) and reap it;
        idempotent. For a dead worker, only reaps and releases."""
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(timeout), name=f"salon-{self.name}-close"
            )
        await asyncio.shield(self._close_task)

    async def _close(self, timeout: float) -> None:
        if self.alive:
            self.state = WorkerState.CLOSING
            self._fail_pending()
            for router in list(self.routers.values()):
                router.worker_closed()
            self.routers.clear()
        if self._writer is not None:
            self._writer.close()  # EOF: the worker closes its routers and exits
        if not await self._wait_exit(timeout):
            logger.warning("%r: did not exit within %.0f s; killing it", self, timeout)
            self.process.kill()
            await self._wait_exit(timeout)
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.wait([self._reader_task])
        if self._writer is not None:
            try:
                await self._writer.wait_closed()
            except ConnectionError as exc:
                logger.debug("%r: channel close: %s", self, exc)
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self.state is not WorkerState.DEAD:
            self.state = WorkerState.CLOSED
        logger.info("%r: exited with code %s", self, self.process.returncode)

    async def _wait_exit(self, timeout: float) -> bool:
        """Wait until the process exited and is reaped; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if self._pidfd is not None:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await self._exited.wait()
                except TimeoutError:
                    return False
                continue  # the pidfd fired: poll() reaps it
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True


# --------------------------------------------------------------------------------------------
# The pool


class WorkerPool:
    """N media worker processes: placement of routers, death detection and restarts.

    :param count: number of workers (default ``os.cpu_count()``).
    :param transport_options: the listen / announced addresses and port range of every
        transport, in every worker.
    :param log_level: the workers' log level (default: the ``salon`` logger's).
    :param start_timeout: seconds a worker has to report ready.
    :param max_restarts: restarts of one slot allowed per ``restart_window`` seconds; further
        restarts wait until the window allows them.
    :param shutdown_timeout: seconds a worker has to exit on :meth:`close` before SIGKILL.
    :param ping_interval: seconds between two health checks (a ``dump`` request) of a worker.
    :param ping_timeout: seconds a worker has to answer a health check before it is killed
        (and replaced) as hung.

    Owns its :class:`WorkerHandle`\\s and the restart tasks; :meth:`close` is idempotent.
    """

    def __init__(
        self,
        count: int | None = None,
        transport_options: WebRtcTransportOptions | None = None,
        *,
        log_level: str | None = None,
        start_timeout: float = 60.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        shutdown_timeout: float = 5.0,
        ping_interval: float = 5.0,
        ping_timeout: float = 20.0,
    ) -> None:
        count = count if count is not None else (os.cpu_count() or 1)
        if count < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {count}")
        self.count = count
        options = transport_options or WebRtcTransportOptions()
        self.settings = TransportSettings(
            listen_addresses=tuple(options.listen_addresses),
            announced_address=options.announced_address,
            port_range=options.port_range,
            connect_timeout=options.connect_timeout,
            ice_allow=tuple(options.ice_allow),
            ice_deny=tuple(options.ice_deny),
            max_remote_candidates=options.max_remote_candidates,
        )
        self.log_level = log_level or logging.getLevelName(logging.getLogger("salon").getEffectiveLevel())
        self.start_timeout = start_timeout
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.shutdown_timeout = shutdown_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.workers: dict[int, WorkerHandle] = {}
        """Slot → its current live worker (a dead worker's slot is empty until restarted)."""
        self.closed = False
        self.restarts = 0
        self._restart_times: dict[int, collections.deque[float]] = {}
        self._available = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._start_task: asyncio.Task[None] | None = None
        self._turn = 0
        """Counts placements: which of several equally loaded workers is next."""

    def __repr__(self) -> str:
        return f"WorkerPool({len(self.workers)}/{self.count} workers)"

    async def start(self) -> None:
        """Start every worker (concurrently); idempotent. Raises if one does not start."""
        if self._start_task is None:
            self._start_task = asyncio.get_running_loop().create_task(
                self._start(), name="salon-workers-start"
            )
        await asyncio.shield(self._start_task)

    async def _start(self) -> None:
        results = await asyncio.gather(
            *(self._start_slot(slot) for slot in range(self.count)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise errors[0]
        logger.info("%r: started (pids %s)", self, ", ".join(str(w.pid) for w in self.workers.values()))

    async def _start_slot(self, slot: int) -> None:
        handle = await WorkerHandle.start(
            f"worker-{slot}",
            log_level=self.log_level,
            start_timeout=self.start_timeout,
            on_death=self._on_death,
        )
        if self.closed:
            await handle.close(self.shutdown_timeout)
            raise MediaStateError("the worker pool closed while a worker started")
        self.workers[slot] = handle
        self._available.set()
        self._spawn(self._watch(handle), f"salon-{handle.name}-watchdog")

    async def _watch(self, handle: WorkerHandle) -> None:
        """Health-check ``handle`` until it dies or closes; kill it if it stops answering."""
        while True:
            await asyncio.sleep(self.ping_interval)
            if not handle.alive:
                return
            try:
                async with asyncio.timeout(self.ping_timeout):
                    await handle.dump()
            except TimeoutError:
                logger.error("%r: %r did not answer for %.0f s; killing it", self, handle, self.ping_timeout)
                handle.kill(f"it did not answer a health check for {self.ping_timeout:.0f} s")
                return
            except (WorkerDiedError, MediaStateError):
                return  # died or closed meanwhile: the death path or close() handles it

    # -- placement -------------------------------------------------------------------------

    def least_loaded(self, exclude: Collection[WorkerHandle] = ()) -> WorkerHandle | None:
        """The live worker with the fewest consumers, then routers (not one of ``exclude``);
        None if none is live. Ties go round-robin (in slot order), one step per call."""
        live = [
            w for _, w in sorted(self.workers.items()) if w.state is WorkerState.READY and w not in exclude
        ]
        if not live:
            return None
        lowest = min(w.load() for w in live)
        tied = [w for w in live if w.load() == lowest]
        self._turn += 1
        return tied[(self._turn - 1) % len(tied)]

    async def place(self, timeout: float | None = None) -> WorkerHandle:
        """The worker for a new router; waits for a restart if no worker is live."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while True:
            if self.closed:
                raise MediaStateError("the media worker pool is closed")
            worker = self.least_loaded()
            if worker is not None:
                return worker
            self._available.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._available.wait()
            except TimeoutError:
                raise MediaResourceError("no media worker is running") from None

    def create_router(self, worker: WorkerHandle, *, name: str = "") -> RouterHandle:
        return worker.create_router(self.settings, name=name)

    async def dump(self, *, tracemalloc: int = 0, objects: int = 0) -> list[WorkerDump]:
        """Counters of every live worker (CPU time, RSS, routers, transports...)."""
        workers = [w for w in self.workers.values() if w.state is WorkerState.READY]
        return list(
            await asyncio.gather(*(w.dump(tracemalloc=tracemalloc, objects=objects) for w in workers))
        )

    # -- death and restarts ----------------------------------------------------------------

    def _on_death(self, handle: WorkerHandle) -> None:
        slot = next((s for s, w in self.workers.items() if w is handle), None)
        if slot is None:
            return  # died while starting: WorkerHandle.start raises to its caller
        del self.workers[slot]
        self._spawn(self._replace(slot, handle), f"salon-worker-{slot}-restart")

    async def _replace(self, slot: int, dead: WorkerHandle) -> None:
        await dead.close(self.shutdown_timeout)  # reap it
        times = self._restart_times.setdefault(slot, collections.deque())
        while not self.closed:
            now = time.monotonic()
            while times and now - times[0] > self.restart_window:
                times.popleft()
            if len(times) >= self.max_restarts:
                delay = times[0] + self.restart_window - now
                logger.warning("%r: worker-%d restarts too often; next try in %.0f s", self, slot, delay)
                await asyncio.sleep(delay)
                continue
            times.append(now)
            try:
                await self._start_slot(slot)
            except MediaStateError:
                return  # the pool closed meanwhile
            except MediaResourceError as exc:
                logger.error("%r: restarting worker-%d failed: %s", self, slot, exc)
                continue
            self.restarts += 1
            logger.warning("%r: worker-%d replaced by pid %d", self, slot, self.workers[slot].pid)
            return

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%r: %s failed", self, task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        """Stop restarts, then stop every worker and reap it; idempotent."""
        self.closed = True
        self._available.set()  # wake place() waiters: they raise
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        workers = list(self.workers.values())
        self.workers.clear()
        await asyncio.gather(*(w.close(self.shutdown_timeout) for w in workers))
