"""The IPC channel between the main process and a media worker (mediasoup's ``Channel``).

The main process (:mod:`salon.media.workers`) controls each worker process
(:mod:`salon.media.worker`) over one Unix stream socket. Every message is one **frame**: a
4-byte big-endian length, then that many bytes of UTF-8 JSON. The JSON is a typed message with
a ``type`` discriminator, and there is one union per direction:

* main → worker, :data:`MainMessage`: requests only. Each carries an ``id`` (unique per
  channel) and gets **exactly one** response.
* worker → main, :data:`WorkerMessage`: responses (:class:`ResultResponse` with a typed
  result, or :class:`ErrorResponse`) and events, which carry no id:

  ======================== ===============================================================
  :class:`ReadyEvent`      the worker is up (first message on the channel)
  :class:`TransportConnectedEvent`  a transport's ICE + DTLS completed (for a publish
                           transport: its first media packet arrived, the stream flows)
  :class:`TransportClosedEvent`     a transport closed; ``by_peer`` tells whether the peer
                           or the network closed it (ICE/DTLS failure, timeout, disconnect)
                           rather than the main process (for a publish transport: the stream
                           ended, ``mediaStopped``)
  :class:`AudioLevelsEvent`         smoothed audio levels of a router's streams (≤ 4/s)
  :class:`ActiveSpeakerEvent`       a router's active speaker changed
  :class:`VideoQualityEvent`        a video consumer was paused for quality, or resumed
  ======================== ===============================================================

An :class:`ErrorResponse` carries the class name of the :class:`~salon.errors.SalonError`
raised in the worker, its ``code`` and message; :func:`error_from_response` rebuilds the same
class on the main side (an unknown name becomes a :class:`~salon.errors.ServerError`), so a
malformed offer still reaches the client as ``invalid_sdp`` and a full port range as
``media_resource_exhausted``. A bug in the worker (any other exception) is logged there with
its traceback and answered with a :class:`~salon.errors.ServerError`: our fault, no details.

:class:`FrameDecoder` and :func:`encode_frame` are sans-I/O: the asyncio code on both sides
feeds whatever bytes ``read()`` returned and writes whatever the encoder produced. A frame
longer than :data:`MAX_FRAME_SIZE` is a protocol violation (:class:`FrameTooLargeError`); the
reader treats the peer as broken.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from salon import errors as salon_errors
from salon.errors import SalonError, ServerError
from salon.media import errors as media_errors

__all__ = [
    "MAX_FRAME_SIZE",
    "Ack",
    "ActiveSpeakerEvent",
    "AddCandidateRequest",
    "AudioLevelsEvent",
    "ChannelError",
    "CloseConsumersRequest",
    "ClosePipeRequest",
    "CloseRouterRequest",
    "CloseTransportsRequest",
    "ConsumerInfo",
    "ConsumersResult",
    "CreateRouterRequest",
    "DumpRequest",
    "ErrorResponse",
    "FrameDecoder",
    "FrameTooLargeError",
    "MainMessage",
    "PipeConnectRequest",
    "PipeInRequest",
    "PipeOutRequest",
    "PipeResult",
    "ProducerInfo",
    "PublishRequest",
    "PublishResult",
    "ReadyEvent",
    "RecordedTrack",
    "RecordingResult",
    "Request",
    "Response",
    "Result",
    "ResultResponse",
    "SetConsumerLayerRequest",
    "SetConsumersRequest",
    "SetPreferencesRequest",
    "SetQualityPausedRequest",
    "StartRecordingRequest",
    "StopRecordingRequest",
    "SubscribeRequest",
    "SubscribeResult",
    "TransportClosedEvent",
    "TransportConnectedEvent",
    "TransportSettings",
    "UnpublishRequest",
    "VideoQualityEvent",
    "WorkerDump",
    "WorkerEvent",
    "WorkerMessage",
    "decode_main_message",
    "decode_worker_message",
    "encode_frame",
    "encode_message",
    "error_from_response",
    "error_response",
]

#: Largest frame either side accepts (an SDP is a few KiB; a dump of a busy worker ~100 KiB).
MAX_FRAME_SIZE = 4 * 1024 * 1024

_HEADER = struct.Struct("!I")


class ChannelError(Exception):
    """The peer broke the channel protocol (bad frame, bad JSON, unexpected message)."""


class FrameTooLargeError(ChannelError):
    """A frame longer than the limit was announced or asked to be sent."""


# --------------------------------------------------------------------------------------------
# Framing (sans-I/O)


def encode_frame(payload: bytes, *, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """One frame: the 4-byte big-endian length of ``payload``, then ``payload``."""
    if len(payload) > max_size:
        raise FrameTooLargeError(f"frame of {len(payload)} bytes exceeds the {max_size}-byte limit")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Split a byte stream into frames: :meth:`feed` what was read, get the complete frames.

    Keeps at most one partial frame buffered. After a :class:`FrameTooLargeError` the stream is
    out of sync and the decoder refuses further input.
    """

    __slots__ = ("_broken", "_buffer", "_max_size")

    def __init__(self, *, max_size: int = MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray()
        self._max_size = max_size
        self._broken = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every frame it completed, in order (maybe none)."""
        if self._broken:
            raise ChannelError("the frame decoder is out of sync after an oversize frame")
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        offset = 0
        while len(buffer) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, offset)
            if size > self._max_size:
                self._broken = True
                buffer.clear()
                raise FrameTooLargeError(f"peer announced a {size}-byte frame (limit {self._max_size})")
            end = offset + _HEADER.size + size
            if len(buffer) < end:
                break
            frames.append(bytes(buffer[offset + _HEADER.size : end]))
            offset = end
        if offset:
            del buffer[:offset]
        return frames


# --------------------------------------------------------------------------------------------
# Messages


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TransportSettings(_Message):
    """Where a router's transports gather (:class:`~salon.media.transport.WebRtcTransportOptions`)."""

    listen_addresses: tuple[str, ...] = ("127.0.0.1",)
    announced_address: str | None = None
    port_range: tuple[int, int] | None = None
    connect_timeout: float = 30.0
    ice_allow: tuple[str, ...] = ()
    """Networks remote candidates may be in despite the defaults (:mod:`salon.media.ice_policy`)."""
    ice_deny: tuple[str, ...] = ()
    """Networks remote candidates may not be in."""
    max_remote_candidates: int = 32
    """Remote candidates one transport accepts."""


class _Request(_Message):
    id: int
    """Unique per channel; the response carries it back."""


class CreateRouterRequest(_Request):
    """Host a new router (one per session). Result: :class:`Ack`."""

    type: Literal["create_router"] = "create_router"
    router_id: str
    transport: TransportSettings = TransportSettings()


class CloseRouterRequest(_Request):
    """Close a router and everything in it; unknown routers are fine. Result: :class:`Ack`."""

    type: Literal["close_router"] = "close_router"
    router_id: str


class PublishRequest(_Request):
    """A client's sendonly offer for a stream. Result: :class:`PublishResult`."""

    type: Literal["publish"] = "publish"
    router_id: str
    stream_id: str
    offer: str
    replace: bool = False
    """Replace the stream's publish transport, moving its consumers to the new producers
    (:meth:`salon.media.router.Router.publish`)."""
    screen: bool = False
    """The stream's video is a screen share (``videoType`` ``screen``): subscribers' allocators
    give it bandwidth before camera video."""


class SubscribeRequest(_Request):
    """A subscriber's recvonly offer for a published stream. Result: :class:`SubscribeResult`.

    ``transport_id``: the client's subscribe transport, renegotiated when the offer comes from
    the same peer connection (see :meth:`salon.media.router.Router.subscribe`)."""

    type: Literal["subscribe"] = "subscribe"
    router_id: str
    stream_id: str
    offer: str
    audio: bool = True
    video: bool = True
    transport_id: str | None = None
    max_width: int | None = None
    max_height: int | None = None
    max_frame_rate: float | None = None
    """The subscriber's preferences, given to the new video consumers (None: none)."""


class AddCandidateRequest(_Request):
    """A trickled ICE candidate (None: end of candidates). Result: :class:`Ack`."""

    type: Literal["add_candidate"] = "add_candidate"
    router_id: str
    transport_id: str
    candidate: str | None


class SetConsumersRequest(_Request):
    """Pause (False) or resume (True) some consumers of a subscribe transport (one
    subscription's), by kind (None: leave as is). Result: :class:`ConsumersResult`."""

    type: Literal["set_consumers"] = "set_consumers"
    router_id: str
    transport_id: str
    consumer_ids: list[str]
    audio: bool | None = None
    video: bool | None = None


class SetPreferencesRequest(_Request):
    """Set the subscriber's preferred maximum resolution and frame rate (None: no preference)
    on some consumers of a subscribe transport (:meth:`~salon.media.consumer.Consumer.set_preferences`;
    audio consumers ignore them). Unknown ids are fine. Result: :class:`Ack`."""

    type: Literal["set_preferences"] = "set_preferences"
    router_id: str
    transport_id: str
    consumer_ids: list[str]
    max_width: int | None = None
    max_height: int | None = None
    max_frame_rate: float | None = None


class SetQualityPausedRequest(_Request):
    """Pause (or resume) some video consumers of a subscribe transport for quality, as the
    allocator does when a link cannot carry the lowest layer
    (:meth:`~salon.media.consumer.Consumer.set_paused`): each change is reported as a
    :class:`VideoQualityEvent`. For tests and operators; audio consumers and unknown ids are
    left alone. Result: :class:`Ack`."""

    type: Literal["set_quality_paused"] = "set_quality_paused"
    router_id: str
    transport_id: str
    consumer_ids: list[str]
    paused: bool


class UnpublishRequest(_Request):
    """Close a stream's publish transport (its producers, their consumers). Result: :class:`Ack`."""

    type: Literal["unpublish"] = "unpublish"
    router_id: str
    stream_id: str


class CloseTransportsRequest(_Request):
    """Close transports (a subscription's, a connection's); unknown ids are fine. Result:
    :class:`Ack`."""

    type: Literal["close_transports"] = "close_transports"
    router_id: str
    transport_ids: list[str]


class CloseConsumersRequest(_Request):
    """Close some consumers of a transport (an unsubscribe); the transport stays. Unknown ids
    are fine. Result: :class:`Ack`."""

    type: Literal["close_consumers"] = "close_consumers"
    router_id: str
    transport_id: str
    consumer_ids: list[str]


class SetConsumerLayerRequest(_Request):
    """Set the simulcast layer some consumers of a subscribe transport forward
    (:meth:`~salon.media.consumer.Consumer.set_layer`): ``spatial`` 0 is the lowest encoding,
    None the top one; ``temporal`` None is every temporal layer. Consumers that are not
    simulcast and unknown ids are left alone. Result: :class:`Ack`."""

    type: Literal["set_consumer_layer"] = "set_consumer_layer"
    router_id: str
    transport_id: str
    consumer_ids: list[str]
    spatial: int | None = Field(default=None, ge=0, le=15)
    temporal: int | None = Field(default=None, ge=0, le=7)


class DumpRequest(_Request):
    """Counters of the worker (and the full dump of each router if ``routers``). Result:
    :class:`WorkerDump`."""

    type: Literal["dump"] = "dump"
    routers: bool = False
    tracemalloc: int = 0
    """With ``SALON_TRACEMALLOC`` tracing on: the allocation sites that grew the most since the
    first such request (:func:`salon.media.memtrace.growth`), at most this many."""
    objects: int = 0
    """The object types whose live count grew the most since the first such request
    (:func:`salon.media.memtrace.census`), at most this many."""
    media: bool = False
    """Include the cumulative media counters and the event-loop lag (for metrics)."""


class StartRecordingRequest(_Request):
    """Copy a published stream's RTP to an archiver's loopback UDP sink, each datagram
    prefixed with ``token`` (32 hex digits; :mod:`salon.media.recording`). Result:
    :class:`RecordingResult`."""

    type: Literal["start_recording"] = "start_recording"
    router_id: str
    stream_id: str
    sink_host: str
    sink_port: int = Field(ge=1, le=65535)
    token: str = Field(pattern="^[0-9a-f]{32}$")
    audio: bool = True
    video: bool = True


class StopRecordingRequest(_Request):
    """Stop a recorder; unknown ids are fine. Result: :class:`RecordingResult` (no tracks when
    it was unknown)."""

    type: Literal["stop_recording"] = "stop_recording"
    router_id: str
    recorder_id: str


class PipeOutRequest(_Request):
    """Open the sending end of a pipe of a stream published on this router
    (:mod:`salon.media.pipe`). Result: :class:`PipeResult` (its port and the producers)."""

    type: Literal["pipe_out"] = "pipe_out"
    router_id: str
    stream_id: str
    pipe_id: str
    host: str = "127.0.0.1"
    """Where the sending end listens (another node's pipe: this node's ``--node-address``)."""
    keys: tuple[str, str] | None = Field(default=None, repr=False)
    """A pipe to another node: the SRTP master keys (hex) this end sends and receives with
    (:class:`salon.media.pipe.PipeKeys`); None: plain RTP on the loopback."""


class PipeInRequest(_Request):
    """Open the receiving end of a pipe: the stream (published on another worker's router,
    whose sending end listens on ``peer_port`` on 127.0.0.1) becomes a stream of this router.
    Result: :class:`PipeResult` (its port)."""

    type: Literal["pipe_in"] = "pipe_in"
    router_id: str
    stream_id: str
    pipe_id: str
    peer_port: int = Field(ge=1, le=65535)
    producers: list[dict[str, Any]]
    """:meth:`salon.media.pipe.PipedProducer.to_dict` of each piped producer."""
    host: str = "127.0.0.1"
    peer_host: str = "127.0.0.1"
    keys: tuple[str, str] | None = Field(default=None, repr=False)
    """As :attr:`PipeOutRequest.keys`."""


class PipeConnectRequest(_Request):
    """Tell a sending end where the receiving end listens. Result: :class:`Ack`."""

    type: Literal["pipe_connect"] = "pipe_connect"
    router_id: str
    pipe_id: str
    peer_port: int = Field(ge=1, le=65535)
    peer_host: str = "127.0.0.1"


class ClosePipeRequest(_Request):
    """Close one end of a pipe; unknown ids are fine. Result: :class:`Ack`."""

    type: Literal["close_pipe"] = "close_pipe"
    router_id: str
    pipe_id: str


Request = (
    CreateRouterRequest
    | CloseRouterRequest
    | PublishRequest
    | SubscribeRequest
    | AddCandidateRequest
    | SetConsumersRequest
    | SetPreferencesRequest
    | SetQualityPausedRequest
    | UnpublishRequest
    | CloseTransportsRequest
    | CloseConsumersRequest
    | SetConsumerLayerRequest
    | DumpRequest
    | StartRecordingRequest
    | StopRecordingRequest
    | PipeOutRequest
    | PipeInRequest
    | PipeConnectRequest
    | ClosePipeRequest
)
MainMessage = Annotated[Request, Field(discriminator="type")]
"""Everything the main process sends."""


# -- results ---------------------------------------------------------------------------------


class Ack(_Message):
    type: Literal["ack"] = "ack"


class ProducerInfo(_Message):
    id: str
    kind: Literal["audio", "video"]


class ConsumerInfo(_Message):
    id: str
    kind: Literal["audio", "video"]
    paused: bool


class PublishResult(_Message):
    type: Literal["publish_result"] = "publish_result"
    transport_id: str
    answer: str
    producers: list[ProducerInfo]


class SubscribeResult(_Message):
    type: Literal["subscribe_result"] = "subscribe_result"
    transport_id: str
    answer: str
    consumers: list[ConsumerInfo]
    new_transport: bool = True
    """False when the consumers went onto the client's existing subscribe transport."""


class ConsumersResult(_Message):
    type: Literal["consumers_result"] = "consumers_result"
    consumers: list[ConsumerInfo]


class RecordedTrack(_Message):
    """One track a recorder sends: what the archiver needs to write it."""

    kind: Literal["audio", "video"]
    codec: str
    """Lower-case codec name: ``opus``, ``vp8``, ``h264``."""
    clock_rate: int
    payload_type: int
    channels: int | None = None


class RecordingResult(_Message):
    type: Literal["recording_result"] = "recording_result"
    recorder_id: str
    tracks: list[RecordedTrack] = []
    stats: dict[str, int] = {}
    """The recorder's counters (:class:`~salon.media.recording.RecorderStats`)."""


class PipeResult(_Message):
    type: Literal["pipe_result"] = "pipe_result"
    port: int
    producers: list[dict[str, Any]] = []
    """For a sending end: :meth:`salon.media.pipe.PipedProducer.to_dict` of each producer."""


class WorkerDump(_Message):
    type: Literal["worker_dump"] = "worker_dump"
    pid: int
    routers: int
    transports: int
    producers: int
    consumers: int
    cpu_time: float
    """CPU seconds used by the worker process (``time.process_time()``)."""
    rss: int
    """Resident set size of the worker process, in bytes."""
    tasks: int = 0
    """asyncio tasks alive in the worker (its own request and channel tasks included)."""
    udp_sockets: int = 0
    """UDP sockets open in the worker process (one per ICE host candidate of each transport)."""
    datagrams_dropped: dict[str, int] = {}
    """Datagrams and remote candidates the worker's transports dropped since it started, by
    kind (``empty``, ``malformed``, ``oversized``, ``unknown``, ``foreign``, ``candidate``:
    :data:`salon.media.transport.DROPPED`)."""
    router_dumps: dict[str, dict[str, Any]] = {}
    tracemalloc: list[dict[str, Any]] = []
    """The allocation sites that grew the most (:attr:`DumpRequest.tracemalloc`)."""
    objects: list[dict[str, Any]] = []
    """The object types that grew the most (:attr:`DumpRequest.objects`)."""
    heap: dict[str, int] = {}
    """The C heap: bytes in use, free inside it, mmapped (:func:`salon.media.memtrace.heap`)."""
    media: dict[str, int] = {}
    """With :attr:`DumpRequest.media`: media counters since the worker started
    (:func:`salon.media.totals.totals`)."""
    loop_lag_buckets: list[int] = []
    """With :attr:`DumpRequest.media`: the event-loop lag histogram, cumulative counts per
    bound of :data:`salon.observability.lag.LAG_BUCKETS` then +Inf."""
    loop_lag_sum: float = 0.0
    loop_lag_max: float = 0.0
    """The largest event-loop lag of the last 10 to 20 seconds."""


Result = Ack | PublishResult | SubscribeResult | ConsumersResult | RecordingResult | PipeResult | WorkerDump


class ResultResponse(_Message):
    type: Literal["result"] = "result"
    id: int
    result: Annotated[Result, Field(discriminator="type")]


class ErrorResponse(_Message):
    type: Literal["error"] = "error"
    id: int
    error: str
    """Class name of the :class:`~salon.errors.SalonError` raised in the worker."""
    code: str
    message: str


Response = ResultResponse | ErrorResponse


# -- events ----------------------------------------------------------------------------------


class ReadyEvent(_Message):
    """The worker's event loop runs and it reads requests."""

    type: Literal["ready"] = "ready"
    pid: int
    loop: str
    """The event loop implementation (``uvloop`` or ``asyncio``)."""


class TransportConnectedEvent(_Message):
    type: Literal["transport_connected"] = "transport_connected"
    router_id: str
    transport_id: str


class TransportClosedEvent(_Message):
    type: Literal["transport_closed"] = "transport_closed"
    router_id: str
    transport_id: str
    reason: str
    """A :class:`~salon.media.transport.TransportCloseReason` value."""
    by_peer: bool
    """Closed by the peer or the network (failure, timeout, disconnect), not by a request."""


class AudioLevelsEvent(_Message):
    type: Literal["audio_levels"] = "audio_levels"
    router_id: str
    levels: dict[str, float]
    """Stream id → smoothed level, 0 (silence) to 1, for the streams whose level changed."""


class ActiveSpeakerEvent(_Message):
    type: Literal["active_speaker"] = "active_speaker"
    router_id: str
    stream_id: str | None
    """The new active speaker's stream; None when the speaker's stream went away."""


class VideoQualityEvent(_Message):
    """A video consumer was paused for quality (``disabled``) or resumed from it."""

    type: Literal["video_quality"] = "video_quality"
    router_id: str
    transport_id: str
    consumer_id: str
    disabled: bool


WorkerEvent = (
    ReadyEvent
    | TransportConnectedEvent
    | TransportClosedEvent
    | AudioLevelsEvent
    | ActiveSpeakerEvent
    | VideoQualityEvent
)
WorkerMessage = Annotated[Response | WorkerEvent, Field(discriminator="type")]
"""Everything a worker sends."""

#: ``cache_strings="keys"``: pydantic's JSON parser otherwise keeps every string value under 64
#: characters in a process-wide cache of 16,384 entries, and the channel's values are mostly
#: unique IDs (routers, transports, streams, consumers), so the cache only grew, by each
#: session's IDs, up to about 1.5 MB per process (``salon bench soak``, docs/benchmarks.md).
_NO_VALUE_CACHE = ConfigDict(cache_strings="keys")
_main_messages: TypeAdapter[Request] = TypeAdapter(MainMessage, config=_NO_VALUE_CACHE)
_worker_messages: TypeAdapter[Response | WorkerEvent] = TypeAdapter(WorkerMessage, config=_NO_VALUE_CACHE)


def encode_message(message: _Message) -> bytes:
    """A message as one frame."""
    return encode_frame(message.model_dump_json().encode())


def decode_main_message(frame: bytes) -> Request:
    """Parse a frame from the main process (raises :class:`ChannelError`)."""
    try:
        return _main_messages.validate_json(frame)
    except ValidationError as exc:
        raise ChannelError(f"invalid message from the main process: {exc}") from exc


def decode_worker_message(frame: bytes) -> Response | WorkerEvent:
    """Parse a frame from a worker (raises :class:`ChannelError`)."""
    try:
        return _worker_messages.validate_json(frame)
    except ValidationError as exc:
        raise ChannelError(f"invalid message from a media worker: {exc}") from exc


# -- errors ----------------------------------------------------------------------------------


def _error_classes() -> dict[str, type[SalonError]]:
    classes: dict[str, type[SalonError]] = {}
    for module in (salon_errors, media_errors):
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, SalonError):
                classes[name] = value
    return classes


_ERRORS = _error_classes()


def error_response(request_id: int, error: SalonError) -> ErrorResponse:
    """The response carrying ``error`` (a :class:`~salon.errors.SalonError`) back."""
    name = type(error).__name__
    if _ERRORS.get(name) is not type(error):
        # A subclass we do not know by name on the other side: send its nearest known base.
        name = next(c.__name__ for c in type(error).__mro__ if _ERRORS.get(c.__name__) is c)
    return ErrorResponse(id=request_id, error=name, code=error.code, message=error.message)


def error_from_response(response: ErrorResponse) -> SalonError:
    """The exception to raise on the main side for an :class:`ErrorResponse`."""
    cls = _ERRORS.get(response.error, ServerError)
    return cls(response.message, code=response.code)
