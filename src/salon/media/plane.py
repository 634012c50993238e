"""SfuMediaPlane: the SFU behind signalling (:class:`~salon.signalling.media.MediaPlane`).

The routers run in media worker processes (:mod:`salon.media.worker`); this object, in the
main process, owns the :class:`~salon.media.workers.WorkerPool` and the router handles
(:class:`~salon.media.workers.RouterHandle`) of each session: the first placed on the
least-loaded worker on the session's first publish with an SDP offer, all closed when the
session ends. Each connection's media lives on one router of its session, chosen at its
first negotiation; once every router of the session has ``spread_consumers`` consumers, the
next connection's media goes to a new router on a worker the session does not use yet (the
session *spreads*). A subscriber on another router than the stream's gets it through a pipe
(:mod:`salon.media.pipe`), opened by the first subscription there and closed with the last.
Each stream with media owns a publish transport (a :class:`_Publication`); each connection
receives all its subscriptions (:class:`_Subscription`: their consumers) on one subscribe
transport, renegotiated by every new subscribe offer from the same peer connection (a client
that uses a peer connection per subscription gets a transport per subscription, closed with
its last subscription). Both are indexed by the signalling IDs so trickled ICE candidates and
subscription toggles find their transport and consumers in the worker.

Reports to signalling (:class:`~salon.signalling.media.MediaEvents`) go through owned tasks:

* a stream's first RTP packet reached its producer in the worker → ``stream_flowing``
  (signalling announces the stream);
* a publish transport closed by the peer or the network (ICE / DTLS failure, connect
  timeout, disconnect) → ``stream_ended`` with reason ``mediaStopped``;
* one worker of a spread session died → ``media_reset`` to the connections whose media was
  there, with the streams published there; the pipes to and from it close; the rest flows;
* the session's worker died → ``media_reset`` with its streams (signalling tells every
  connection, then ends the streams as ``mediaStopped``); the session's router is forgotten,
  and its next publish places a new one (on a live worker, or the replacement). The ICE
  credentials of the peer connections whose subscribe transports died are remembered per
  connection: a later subscribe offer from one of them is refused with ``transport_closed``
  (a new transport could never reach that peer connection: its DTLS association is gone),
  so the client subscribes from a new peer connection instead of waiting for media that
  never comes;
* audio levels (≤ 4/s) and active-speaker changes → ``audio_levels`` / ``active_speaker``;
* a subscription's video consumer paused for quality, or resumed → ``video_quality_changed``
  (signalling tells the subscriber ``video_disabled`` / ``video_enabled``, reason ``quality``).

A subscription's preferred resolution and frame rate go to its video consumers at subscribe
time and whenever they change (:meth:`SfuMediaPlane.set_subscription_preferences`).

In a cluster (:attr:`SfuMediaPlane.nodes`), a stream published on another node reaches a
subscriber here through a **node-to-node pipe**: this node asks the publisher's node, over the
cluster's Redis (:mod:`salon.cluster.pipes`), to open the pipe's sending end toward this node's
``--node-address`` (:meth:`SfuMediaPlane.node_request` answers such requests), and opens the
receiving end on the subscriber's router, as between workers, but SRTP-protected with a fresh
master key per pipe and direction (:class:`~salon.media.pipe.PipeKeys`) sent with the request.
Both ends close with the last subscription here, or when the stream ends (its
``stream_destroyed``, also when the publisher's node dies, closes the receiving end).

A subscribe transport whose producer closed needs no report: signalling already sent
``stream_destroyed`` to the subscribers, and :meth:`SfuMediaPlane.stream_unpublished` closes
the stream's consumers (and the subscribe transports that carried nothing else).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from salon.errors import ConflictError, InvalidRequestError, NotFoundError
from salon.media.channel import RecordingResult
from salon.media.errors import MediaStateError
from salon.media.pipe import PipeKeys
from salon.media.transport import WebRtcTransportOptions
from salon.media.workers import (
    ActiveSpeaker,
    AudioLevels,
    RemoteConsumer,
    RemoteTransport,
    RouterHandle,
    RouterHandleEvent,
    StreamEnded,
    StreamFlowing,
    TransportGone,
    VideoQualityChanged,
    WorkerDied,
    WorkerPool,
    WorkerState,
)
from salon.protocol import StreamReason, VideoType
from salon.signalling.media import MediaEvents
from salon.signalling.session import Stream, Subscription

__all__ = ["NodeLink", "NodeRequestFailed", "SfuMediaPlane"]

logger = logging.getLogger(__name__)

#: Consumers on a session's router before the session spreads onto another worker: about 100
#: subscribers with audio and video, well below one worker's limit (about 300 subscriber video
#: streams per core), so a growing session spreads before its worker saturates.
DEFAULT_SPREAD_CONSUMERS = 200

_pipe_ids = itertools.count(1)


_PeerKey = tuple[str, str]
"""A client peer connection, as its offers name it: (ICE username fragment, ICE password)."""


def _peer_key(offer: str) -> _PeerKey | None:
    """The ICE credentials of an SDP offer (its first ``a=ice-ufrag`` / ``a=ice-pwd``)."""
    ufrag = pwd = None
    for line in offer.splitlines():
        if ufrag is None and line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :].strip()
        elif pwd is None and line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:") :].strip()
        if ufrag and pwd:
            return ufrag, pwd
    return None


@dataclass(eq=False)
class _Publication:
    stream_id: str
    connection_id: str
    transport_id: str
    router: RouterHandle


@dataclass(eq=False)
class _Subscription:
    subscription_id: str
    connection_id: str
    stream_id: str
    transport_id: str
    router: RouterHandle
    consumers: list[RemoteConsumer] = field(default_factory=list)


class NodeLink(Protocol):
    """This node's link to the others, for node-to-node pipes (:mod:`salon.cluster.pipes`)."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str:
        """Where this node's pipe ends listen (``--node-address``, an IP address)."""

    async def publisher_node(self, session_id: str, stream_id: str) -> str | None:
        """The node whose client publishes ``stream_id`` (None: not known)."""

    async def request(self, node: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Ask ``node`` (its :meth:`SfuMediaPlane.node_request`) and wait for the reply.

        :raises NodeRequestFailed: no reply in time, or the other node's error.
        """


class NodeRequestFailed(Exception):
    """A request to another node failed (its message says why; no reply: ``timeout``)."""

    def __init__(self, message: str, *, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class _Pipe:
    """A stream published on ``source`` piped to ``target`` (another worker's router of the
    session) for the subscribers whose media lives there (:mod:`salon.media.pipe`); or, with
    ``node`` and no ``source``, from another node of the cluster."""

    id: str
    stream_id: str
    source: RouterHandle | None
    target: RouterHandle
    ready: asyncio.Future[None]
    pending: int = 0
    """Subscribe requests in flight that will use the pipe: it stays while any is."""
    node: str | None = None
    """The node whose router sends (a node-to-node pipe)."""


@dataclass(eq=False)
class _Served:
    """The sending end of a node-to-node pipe on one of this node's routers."""

    session_id: str
    stream_id: str
    router: RouterHandle
    node: str
    """The node that asked for it (only it may connect or close it)."""


@dataclass(eq=False)
class _SessionMedia:
    router: RouterHandle
    """The session's first router (its home); :attr:`routers` has every live one."""
    routers: list[RouterHandle] = field(default_factory=list)
    homes: dict[str, RouterHandle] = field(default_factory=dict)
    """Connection ID → the router its media (publish and subscribe transports) lives on."""
    pipes: dict[tuple[str, str], _Pipe] = field(default_factory=dict)
    subscribing: dict[str, int] = field(default_factory=dict)
    """Router ID → subscribe requests in flight there: counted in its load, so that clients
    subscribing at once do not all land on a router that is about to be full."""
    """(stream ID, receiving router ID) → the pipe carrying the stream there."""
    publications: dict[str, _Publication] = field(default_factory=dict)
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    subscribe_transports: dict[str, str] = field(default_factory=dict)
    """Connection ID → the subscribe transport its next subscribe offer may renegotiate."""
    subscribe_peers: dict[str, tuple[str, _PeerKey]] = field(default_factory=dict)
    """Subscribe transport ID → its connection and the ICE credentials of the client's peer
    connection (remembered when the worker dies)."""
    piped_recordings: dict[str, tuple[str, RouterHandle]] = field(default_factory=dict)
    """Recorder ID → (stream ID, router) of a recording of a stream published on another
    node, made from a node-to-node pipe to that router: the pipe stays while it records."""


def _limits(subscription: Subscription) -> tuple[int | None, int | None, float | None]:
    """A subscription's preferences as a consumer takes them: max width, height, frame rate."""
    resolution = subscription.preferred_resolution
    width, height = (None, None) if resolution is None else resolution
    return width, height, subscription.preferred_frame_rate


def _no_transport(what: str) -> InvalidRequestError:
    return InvalidRequestError(f"{what} has no media transport", code="media_unavailable")


class SfuMediaPlane:
    """The SFU media plane: one router per session, in media worker processes.

    :param transport_options: the listen / announced addresses and port range of every
        transport.
    :param events: where to report flowing and ended streams; usually set after construction
        to the :class:`~salon.signalling.service.SignallingService` that owns this plane.
    :param workers: number of worker processes (default ``os.cpu_count()``).
    :param spread_consumers: consumers a router of a session takes before the session's next
        connections get their media on a router on another worker (piped to the first).

    :meth:`start` starts the workers (the first negotiation does it otherwise); :meth:`close`
    closes the routers' reports and stops the workers.
    """

    def __init__(
        self,
        transport_options: WebRtcTransportOptions | None = None,
        *,
        events: MediaEvents | None = None,
        workers: int | None = None,
        spread_consumers: int = DEFAULT_SPREAD_CONSUMERS,
    ) -> None:
        if spread_consumers < 1:
            raise ValueError(f"spread_consumers must be at least 1, got {spread_consumers}")
        self.spread_consumers = spread_consumers
        self.transport_options = transport_options or WebRtcTransportOptions()
        self.events = events
        self.pool = WorkerPool(workers, self.transport_options)
        self.sessions: dict[str, _SessionMedia] = {}
        self.lost_peers: dict[str, dict[str, set[_PeerKey]]] = {}
        """Session ID → connection ID → its peer connections whose subscribe transport died
        with a worker; their offers get ``transport_closed``."""
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: In a cluster: the link to the other nodes (node-to-node pipes); None: one node.
        self.nodes: NodeLink | None = None
        #: Pipe ID → the sending ends of node-to-node pipes here (asked for by other nodes).
        self.served: dict[str, _Served] = {}

    def __repr__(self) -> str:
        return f"SfuMediaPlane({len(self.sessions)} sessions, {self.pool!r})"

    async def start(self) -> None:
        """Start the worker processes; idempotent."""
        if self.closed:
            raise MediaStateError("the media plane is closed")
        await self.pool.start()

    async def _session(self, session_id: str) -> _SessionMedia:
        media = self.sessions.get(session_id)
        if media is None:
            await self.start()
            worker = await self.pool.place()
            media = self.sessions.get(session_id)  # opened by another request meanwhile?
            if media is None:
                if self.closed:
                    raise MediaStateError("the media plane is closed")
                router = self.pool.create_router(worker, name=session_id[-12:])
                media = self.sessions[session_id] = _SessionMedia(router, [router])
                self._watch(session_id, media, router)
                logger.info("%r: session %s placed on %r", self, session_id, router)
        return media

    def _watch(self, session_id: str, media: _SessionMedia, router: RouterHandle) -> None:
        router.events.add_listener(lambda event: self._on_router_event(session_id, media, event))

    def _home(self, session_id: str, media: _SessionMedia, connection_id: str) -> RouterHandle:
        """The router a connection's media lives on, chosen on its first negotiation: the
        session's least-loaded router with fewer than :attr:`spread_consumers` consumers;
        when every one has that many, a new router on a live worker the session does not use
        yet (the session spreads); when there is none, the least-loaded router."""
        router = media.homes.get(connection_id)
        if router is not None and not router.closed:
            return router
        live = [r for r in media.routers if not r.closed]

        def load(router: RouterHandle) -> int:
            return router.consumer_count + media.subscribing.get(router.id, 0)

        under = [r for r in live if load(r) < self.spread_consumers]
        if under:
            router = min(under, key=load)
        else:
            worker = self.pool.least_loaded(exclude={r.worker for r in live})
            if worker is not None:
                router = self.pool.create_router(worker, name=session_id[-12:])
                media.routers.append(router)
                self._watch(session_id, media, router)
                logger.info(
                    "%r: session %s spreads onto %r (%d routers)",
                    self,
                    session_id,
                    router,
                    len(media.routers),
                )
            else:
                router = min(live, key=load)
        media.homes[connection_id] = router
        return router

    async def _pipe(
        self,
        media: _SessionMedia,
        stream_id: str,
        target: RouterHandle,
        *,
        source: RouterHandle | None = None,
        node: str | None = None,
        session_id: str = "",
    ) -> _Pipe:
        """The pipe of a stream to ``target`` from ``source`` (a router of this node) or from
        ``node``, opened on first use (concurrent callers share it); the caller holds it
        (``pending``) until its subscription is recorded."""
        key = (stream_id, target.id)
        pipe = media.pipes.get(key)
        if pipe is not None:
            pipe.pending += 1
            try:
                await asyncio.shield(pipe.ready)
            except BaseException:
                pipe.pending -= 1
                raise
            return pipe
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if source is None:
            assert self.nodes is not None and node is not None
            pipe_id = f"npipe-{self.nodes.name}-{next(_pipe_ids)}-{secrets.token_hex(3)}"
        else:
            pipe_id = f"pipe-{next(_pipe_ids)}"
        pipe = media.pipes[key] = _Pipe(pipe_id, stream_id, source, target, future, node=node)
        pipe.pending = 1
        try:
            if source is not None:
                out = await source.pipe_out(pipe.stream_id, pipe.id)
                port = await target.pipe_in(pipe.stream_id, pipe.id, out.port, out.producers)
                await source.pipe_connect(pipe.id, port)
            else:
                await self._open_node_pipe(session_id, pipe)
        except BaseException as exc:
            if media.pipes.get(key) is pipe:
                del media.pipes[key]
            future.set_exception(exc)
            future.exception()  # retrieved: concurrent callers re-raise it, or nobody does
            await asyncio.gather(target.close_pipe(pipe.id), self._close_source(pipe))
            raise
        logger.info(
            "stream %s: piped from %s to %r (%s)", pipe.stream_id, source or f"node {node}", target, pipe.id
        )
        future.set_result(None)
        return pipe

    async def _open_node_pipe(self, session_id: str, pipe: _Pipe) -> None:
        """Open a node-to-node pipe: the sending end on ``pipe.node`` (asked over the cluster's
        Redis, with its SRTP keys), the receiving end on ``pipe.target``, then connect."""
        nodes, node = self.nodes, pipe.node
        assert nodes is not None and node is not None
        sending_keys, receiving_keys = PipeKeys.pair()
        try:
            out = await nodes.request(
                node,
                {
                    "op": "pipe_out",
                    "session_id": session_id,
                    "stream_id": pipe.stream_id,
                    "pipe_id": pipe.id,
                    "keys": list(sending_keys.to_hex()),
                },
            )
            port = await pipe.target.pipe_in(
                pipe.stream_id,
                pipe.id,
                int(out["port"]),
                list(out["producers"]),
                host=nodes.address,
                peer_host=str(out["host"]),
                keys=receiving_keys.to_hex(),
            )
            await nodes.request(
                node, {"op": "pipe_connect", "pipe_id": pipe.id, "host": nodes.address, "port": port}
            )
        except NodeRequestFailed as exc:
            logger.warning("stream %s: node %s did not open its pipe: %s", pipe.stream_id, node, exc)
            raise InvalidRequestError(
                f"stream {pipe.stream_id} is published on node {node}, which did not open a pipe "
                f"to this node ({exc})",
                code="media_unavailable",
            ) from exc

    async def _close_source(self, pipe: _Pipe) -> None:
        """Close a pipe's sending end: on this node's router, or by asking its node (quietly:
        a dead node's went with it)."""
        if pipe.source is not None:
            await pipe.source.close_pipe(pipe.id)
        elif self.nodes is not None and pipe.node is not None:
            try:
                await self.nodes.request(pipe.node, {"op": "close_pipe", "pipe_id": pipe.id}, timeout=3.0)
            except NodeRequestFailed as exc:
                logger.info("pipe %s: node %s did not confirm its close: %s", pipe.id, pipe.node, exc)

    async def node_request(self, origin: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer another node's request about a node-to-node pipe (``op``: ``pipe_out``,
        ``pipe_connect``, ``close_pipe``) of a stream published here.

        :raises NotFoundError: no such stream with media (or pipe) here.
        """
        nodes = self.nodes
        if nodes is None:
            raise MediaStateError("this server is not a node of a cluster")
        op, pipe_id = body.get("op"), str(body.get("pipe_id", ""))
        if op == "pipe_out":
            session_id, stream_id = str(body["session_id"]), str(body["stream_id"])
            send, receive = body["keys"]
            media = self.sessions.get(session_id)
            publication = None if media is None else media.publications.get(stream_id)
            if publication is None or pipe_id in self.served:
                raise NotFoundError(f"stream {stream_id} has no media on node {nodes.name}")
            router = publication.router
            self.served[pipe_id] = _Served(session_id, stream_id, router, origin)
            try:
                out = await router.pipe_out(
                    stream_id, pipe_id, host=nodes.address, keys=(str(send), str(receive))
                )
            except BaseException:
                self.served.pop(pipe_id, None)
                raise
            logger.info("stream %s: pipe %s out to node %s", stream_id, pipe_id, origin)
            return {"host": nodes.address, "port": out.port, "producers": out.producers}
        served = self.served.get(pipe_id)
        if served is None or served.node != origin:
            if op == "close_pipe":
                return {}
            raise NotFoundError(f"no pipe {pipe_id} on node {nodes.name}")
        if op == "pipe_connect":
            await served.router.pipe_connect(pipe_id, int(body["port"]), peer_host=str(body["host"]))
            return {}
        if op == "close_pipe":
            del self.served[pipe_id]
            await served.router.close_pipe(pipe_id)
            logger.info("stream %s: pipe %s to node %s closed", served.stream_id, pipe_id, origin)
            return {}
        raise InvalidRequestError(f"unknown node request {op!r}")

    def served_nodes(self) -> set[str]:
        """The nodes this one sends node-to-node pipes to."""
        return {served.node for served in self.served.values()}

    def node_gone(self, node: str) -> None:
        """Node ``node`` is gone (its registry record expired): close the pipes' sending ends
        toward it."""
        self._forget_served(lambda served: served.node == node)

    def _forget_served(self, match: Callable[[_Served], bool]) -> None:
        """Drop (and close) the node-to-node pipes' sending ends that ``match``."""
        for pipe_id, served in list(self.served.items()):
            if match(served):
                del self.served[pipe_id]
                if not served.router.closed:
                    self._spawn(served.router.close_pipe(pipe_id))

    async def _unpipe(
        self, media: _SessionMedia, stream_id: str, target: RouterHandle, *, force: bool = False
    ) -> None:
        """Close the pipe of ``stream_id`` to ``target`` once no subscription there uses it
        (``force``: at once, the stream is gone)."""
        key = (stream_id, target.id)
        pipe = media.pipes.get(key)
        if pipe is None or not pipe.ready.done():
            return
        if not force and (
            pipe.pending
            or any(s.stream_id == stream_id and s.router is target for s in media.subscriptions.values())
            or any(r == (stream_id, target) for r in media.piped_recordings.values())
        ):
            return
        del media.pipes[key]
        logger.info("stream %s: pipe %s to %r closed", stream_id, pipe.id, target)
        await asyncio.gather(pipe.target.close_pipe(pipe.id), self._close_source(pipe))

    # -- negotiation -------------------------------------------------------------------

    async def publish(self, session_id: str, stream: Stream, offer: str, *, replace: bool = False) -> str:
        media = await self._session(session_id)
        previous = media.publications.get(stream.stream_id) if replace else None
        if previous is not None and not previous.router.closed:
            router = previous.router  # its consumers move to the new producers, there
        else:
            router = self._home(session_id, media, stream.connection_id)
        result = await router.publish(
            stream.stream_id, offer, replace=replace, screen=stream.video_type == VideoType.SCREEN
        )
        media.publications[stream.stream_id] = _Publication(
            stream.stream_id, stream.connection_id, result.transport_id, router
        )
        return result.answer

    async def subscribe(
        self, session_id: str, subscription: Subscription, offer: str, *, audio: bool, video: bool
    ) -> str:
        peer = _peer_key(offer)
        lost = self.lost_peers.get(session_id, {}).get(subscription.connection_id, set())
        if peer is not None and peer in lost:
            raise ConflictError(
                "this peer connection's transport closed when its media worker failed; "
                "subscribe from a new peer connection",
                code="transport_closed",
            )
        media = self.sessions.get(session_id)
        publication = None if media is None else media.publications.get(subscription.stream_id)
        node = None
        if publication is None and self.nodes is not None:
            try:
                node = await self.nodes.publisher_node(session_id, subscription.stream_id)
            except NodeRequestFailed as exc:
                raise InvalidRequestError(
                    f"stream {subscription.stream_id}: its node is unknown ({exc})", code="media_unavailable"
                ) from exc
            if node == self.nodes.name:
                node = None  # published here, but without media (yet)
            elif node is not None:
                media = await self._session(session_id)
        if media is None or (publication is None and node is None):
            raise _no_transport(f"stream {subscription.stream_id}")
        router = self._home(session_id, media, subscription.connection_id)
        media.subscribing[router.id] = media.subscribing.get(router.id, 0) + 1
        try:
            transport, consumers, answer = await self._subscribe_on(
                session_id, media, router, publication, node, subscription, offer, audio=audio, video=video
            )
        finally:
            left = media.subscribing.pop(router.id) - 1
            if left:
                media.subscribing[router.id] = left
        media.subscribe_transports[subscription.connection_id] = transport.id
        if peer is not None:
            media.subscribe_peers[transport.id] = (subscription.connection_id, peer)
        media.subscriptions[subscription.subscription_id] = _Subscription(
            subscription.subscription_id,
            subscription.connection_id,
            subscription.stream_id,
            transport.id,
            router,
            consumers,
        )
        return answer

    async def _subscribe_on(
        self,
        session_id: str,
        media: _SessionMedia,
        router: RouterHandle,
        publication: _Publication | None,
        node: str | None,
        subscription: Subscription,
        offer: str,
        *,
        audio: bool,
        video: bool,
    ) -> tuple[RemoteTransport, list[RemoteConsumer], str]:
        """Subscribe on ``router``, through a pipe when the stream is published elsewhere
        (another router, or another ``node``)."""
        max_width, max_height, max_frame_rate = _limits(subscription)
        stream_id = subscription.stream_id
        if publication is None:
            pipe: _Pipe | None = await self._pipe(media, stream_id, router, node=node, session_id=session_id)
        elif publication.router is router:
            pipe = None
        else:
            pipe = await self._pipe(media, stream_id, router, source=publication.router)
        try:
            return await router.subscribe(
                subscription.stream_id,
                offer,
                audio=audio,
                video=video,
                transport_id=media.subscribe_transports.get(subscription.connection_id),
                max_width=max_width,
                max_height=max_height,
                max_frame_rate=max_frame_rate,
            )
        except BaseException:
            if pipe is not None:
                pipe.pending -= 1
                pipe = None
                await self._unpipe(media, stream_id, router)
            raise
        finally:
            if pipe is not None:
                pipe.pending -= 1

    async def add_candidate(
        self,
        session_id: str,
        candidate: str | None,
        *,
        stream_id: str | None = None,
        subscription_id: str | None = None,
    ) -> None:
        media = self.sessions.get(session_id)
        found: _Publication | _Subscription | None = None
        if media is not None and stream_id is not None:
            found = media.publications.get(stream_id)
        elif media is not None and subscription_id is not None:
            found = media.subscriptions.get(subscription_id)
        if found is None:
            what = f"stream {stream_id}" if stream_id is not None else f"subscription {subscription_id}"
            raise _no_transport(what)
        await found.router.add_candidate(found.transport_id, candidate)

    async def set_subscription(
        self, session_id: str, subscription: Subscription, *, audio: bool | None, video: bool | None
    ) -> None:
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.get(subscription.subscription_id)
        if media is None or entry is None:
            return  # a signalling-only subscription forwards nothing either way
        await entry.router.set_consumers(entry.transport_id, entry.consumers, audio=audio, video=video)

    async def set_subscription_preferences(self, session_id: str, subscription: Subscription) -> None:
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.get(subscription.subscription_id)
        if media is None or entry is None:
            return  # a signalling-only subscription: nothing to tell a consumer
        max_width, max_height, max_frame_rate = _limits(subscription)
        await entry.router.set_preferences(
            entry.transport_id,
            entry.consumers,
            max_width=max_width,
            max_height=max_height,
            max_frame_rate=max_frame_rate,
        )

    async def pause_for_quality(self, session_id: str, subscription_id: str, paused: bool) -> None:
        """Pause (or resume) a subscription's video for quality, as the allocator does when the
        subscriber's link cannot carry the lowest layer: the change comes back through the
        worker and signalling tells the subscriber. For tests and operators.

        :raises NotFoundError: the subscription has no media here.
        """
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.get(subscription_id)
        if media is None or entry is None:
            raise NotFoundError(f"no subscription {subscription_id} with media")
        await entry.router.set_quality_paused(entry.transport_id, entry.consumers, paused=paused)

    async def set_subscription_layer(
        self, session_id: str, subscription_id: str, *, spatial: int | None, temporal: int | None = None
    ) -> bool:
        """Forward simulcast layer ``spatial`` (0: lowest encoding, None: the top one) and VP8
        temporal layers up to ``temporal`` (None: all) to a subscription's video: the hook for
        the bandwidth allocator and the subscriber's preferred resolution / frame rate. The
        switch happens at the layer's next key frame. False if the subscription has no media
        here."""
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.get(subscription_id)
        if media is None or entry is None:
            return False
        video = [c for c in entry.consumers if c.kind == "video"]
        await entry.router.set_consumer_layer(entry.transport_id, video, spatial=spatial, temporal=temporal)
        return True

    # -- recording ---------------------------------------------------------------------

    async def start_recording(
        self,
        session_id: str,
        stream_id: str,
        sink: tuple[str, int],
        token: bytes,
        *,
        audio: bool = True,
        video: bool = True,
    ) -> RecordingResult:
        """Copy a published stream's RTP to an archiver's loopback UDP ``sink``, each datagram
        carrying ``token`` (:mod:`salon.media.recording`); the media worker asks the publisher
        for a key frame and answers the archiver's NACKs. Returns the recorder's id and the
        tracks it sends (codec, clock rate). Raises :class:`~salon.errors.NotFoundError` when
        the stream has no media here.

        In a cluster, a stream published on another node is recorded as a subscriber there
        would get it: through a node-to-node pipe to one of this node's routers of the session
        (one a subscriber's pipe of the stream already reaches, if any), which stays open
        until the recording stops."""
        media = self.sessions.get(session_id)
        publication = None if media is None else media.publications.get(stream_id)
        if publication is not None:
            return await publication.router.start_recording(stream_id, sink, token, audio=audio, video=video)
        node = None
        if self.nodes is not None:
            try:
                node = await self.nodes.publisher_node(session_id, stream_id)
            except NodeRequestFailed as exc:
                raise NotFoundError(f"stream {stream_id}: its node is unknown ({exc})") from exc
        if node is None or self.nodes is None or node == self.nodes.name:
            raise NotFoundError(f"stream {stream_id} has no media to record")
        media = await self._session(session_id)
        piped = [p.target for (sid, _), p in media.pipes.items() if sid == stream_id and not p.target.closed]
        router = piped[0] if piped else next((r for r in media.routers if not r.closed), media.router)
        pipe = await self._pipe(media, stream_id, router, node=node, session_id=session_id)
        try:
            result = await router.start_recording(stream_id, sink, token, audio=audio, video=video)
            media.piped_recordings[result.recorder_id] = (stream_id, router)
        finally:
            pipe.pending -= 1
            if not any(r == (stream_id, router) for r in media.piped_recordings.values()):
                await self._unpipe(media, stream_id, router)
        return result

    async def stop_recording(self, session_id: str, recorder_id: str) -> dict[str, int]:
        """Stop a recorder (unknown ones are fine: they went with their stream or worker);
        returns its counters."""
        media = self.sessions.get(session_id)
        if media is None:
            return {}
        found: dict[str, int] = {}
        for router in list(media.routers):
            stats = await router.stop_recording(recorder_id)
            if stats:
                found = stats
                break
        piped = media.piped_recordings.pop(recorder_id, None)
        if piped is not None:
            await self._unpipe(media, *piped)
        return found

    # -- notifications (MediaPlane) ----------------------------------------------------

    async def stream_published(self, session_id: str, stream: Stream) -> None:
        return None  # a signalling-only stream: nothing to set up

    async def stream_unpublished(self, session_id: str, stream_id: str) -> None:
        self._forget_served(lambda s: s.session_id == session_id and s.stream_id == stream_id)
        media = self.sessions.get(session_id)
        if media is None:
            return
        subscriptions = [s for s in media.subscriptions.values() if s.stream_id == stream_id]
        publication = media.publications.pop(stream_id, None)
        if publication is not None:
            await publication.router.unpublish(stream_id)  # its consumers close with its producers
        for _, target_id in [k for k in media.pipes if k[0] == stream_id]:
            pipe = media.pipes.get((stream_id, target_id))
            if pipe is not None:
                await self._unpipe(media, stream_id, pipe.target, force=True)
        await self._release(media, subscriptions)

    async def subscribed(self, session_id: str, subscription: Subscription) -> None:
        return None  # a signalling-only subscription: nothing to set up

    async def unsubscribed(self, session_id: str, subscription: Subscription) -> None:
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.get(subscription.subscription_id)
        if media is not None and entry is not None:
            await self._release(media, [entry])

    async def _release(self, media: _SessionMedia, subscriptions: list[_Subscription]) -> None:
        """End subscriptions: close their consumers; close a transport only when it carried
        nothing else and is not its connection's subscribe transport (a client keeps that one
        for its next subscriptions)."""
        for entry in subscriptions:
            media.subscriptions.pop(entry.subscription_id, None)
        closing: dict[RouterHandle, list[str]] = {}
        for entry in subscriptions:
            others = any(s.transport_id == entry.transport_id for s in media.subscriptions.values())
            current = media.subscribe_transports.get(entry.connection_id) == entry.transport_id
            if others or current:
                await entry.router.close_consumers(entry.transport_id, entry.consumers)
            elif entry.transport_id not in closing.setdefault(entry.router, []):
                closing[entry.router].append(entry.transport_id)
        for router, transport_ids in closing.items():
            await router.close_transports(transport_ids)
        for stream_id, router in {(e.stream_id, e.router) for e in subscriptions}:
            await self._unpipe(media, stream_id, router)

    async def connection_left(self, session_id: str, connection_id: str) -> None:
        lost = self.lost_peers.get(session_id)
        if lost is not None:
            lost.pop(connection_id, None)
            if not lost:
                del self.lost_peers[session_id]
        media = self.sessions.get(session_id)
        if media is None:
            return
        home = media.homes.pop(connection_id, None)
        closing: dict[RouterHandle, list[str]] = {}
        piped: set[tuple[str, RouterHandle]] = set()
        for sub in [s for s in media.subscriptions.values() if s.connection_id == connection_id]:
            del media.subscriptions[sub.subscription_id]
            closing.setdefault(sub.router, []).append(sub.transport_id)
            piped.add((sub.stream_id, sub.router))
        subscribe_transport = media.subscribe_transports.pop(connection_id, None)
        if subscribe_transport is not None and home is not None:
            closing.setdefault(home, []).append(subscribe_transport)
        for transport_id, (owner, _) in list(media.subscribe_peers.items()):
            if owner == connection_id:
                del media.subscribe_peers[transport_id]
        gone: list[str] = []
        for pub in [p for p in media.publications.values() if p.connection_id == connection_id]:
            del media.publications[pub.stream_id]
            closing.setdefault(pub.router, []).append(pub.transport_id)
            gone.append(pub.stream_id)
        for router, transport_ids in closing.items():
            await router.close_transports(list(dict.fromkeys(transport_ids)))
        for stream_id, router in piped:
            await self._unpipe(media, stream_id, router)
        for stream_id in gone:
            self._forget_served(lambda s, sid=stream_id: s.session_id == session_id and s.stream_id == sid)  # type: ignore[misc]
            for key in [k for k in media.pipes if k[0] == stream_id]:
                pipe = media.pipes.get(key)
                if pipe is not None:
                    await self._unpipe(media, stream_id, pipe.target, force=True)

    async def session_ended(self, session_id: str) -> None:
        self.lost_peers.pop(session_id, None)
        self.served = {k: v for k, v in self.served.items() if v.session_id != session_id}
        media = self.sessions.pop(session_id, None)
        if media is not None:
            await asyncio.gather(*(router.close() for router in media.routers))

    async def close(self) -> None:
        """Stop the workers (they close their routers) and wait for the reports in flight;
        idempotent."""
        self.closed = True
        self.sessions.clear()
        self.lost_peers.clear()
        await self.pool.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- router events -----------------------------------------------------------------

    def _on_router_event(self, session_id: str, media: _SessionMedia, event: RouterHandleEvent) -> None:
        events = self.events
        match event:
            case StreamFlowing():
                logger.info("stream %s: media flows on %r", event.stream_id, event.router)
                if events is not None:
                    self._spawn(events.stream_flowing(session_id, event.stream_id))
            case StreamEnded():
                logger.info(
                    "stream %s: media stopped (%s) on %r", event.stream_id, event.reason, event.router
                )
                media.publications.pop(event.stream_id, None)
                if events is not None:
                    self._spawn(events.stream_ended(session_id, event.stream_id, StreamReason.MEDIA_STOPPED))
            case TransportGone():
                unpiped: set[str] = set()
                for entry in list(media.subscriptions.values()):
                    if entry.transport_id == event.transport_id:
                        del media.subscriptions[entry.subscription_id]
                        unpiped.add(entry.stream_id)
                for stream_id in unpiped:
                    self._spawn(self._unpipe(media, stream_id, event.router))
                for connection_id, transport_id in list(media.subscribe_transports.items()):
                    if transport_id == event.transport_id:
                        del media.subscribe_transports[connection_id]
                media.subscribe_peers.pop(event.transport_id, None)
            case AudioLevels():
                if events is not None and event.levels:
                    self._spawn(events.audio_levels(session_id, event.levels))
            case ActiveSpeaker():
                if events is not None:
                    self._spawn(events.active_speaker(session_id, event.stream_id))
            case VideoQualityChanged():
                subscription_id = next(
                    (
                        entry.subscription_id
                        for entry in media.subscriptions.values()
                        if entry.transport_id == event.transport_id
                        and any(c.id == event.consumer_id for c in entry.consumers)
                    ),
                    None,
                )
                if events is not None and subscription_id is not None:
                    self._spawn(events.video_quality_changed(session_id, subscription_id, event.disabled))
            case WorkerDied() if any(r is not event.router and not r.closed for r in media.routers):
                self._router_died(session_id, media, event.router)
            case WorkerDied():
                if self.sessions.get(session_id) is media:
                    del self.sessions[session_id]
                streams = list(media.publications)
                for connection_id, peer in media.subscribe_peers.values():
                    self.lost_peers.setdefault(session_id, {}).setdefault(connection_id, set()).add(peer)
                media.publications.clear()
                media.subscriptions.clear()
                media.subscribe_transports.clear()
                logger.warning(
                    "session %s: its media worker died; %d streams end with mediaStopped, "
                    "%d receiving peer connections must be replaced",
                    session_id,
                    len(streams),
                    len(media.subscribe_peers),
                )
                media.subscribe_peers.clear()
                self.served = {k: v for k, v in self.served.items() if v.router is not event.router}
                for pipe in list(media.pipes.values()):
                    if pipe.source is None:
                        self._spawn(self._close_source(pipe))
                media.pipes.clear()
                if events is not None:
                    self._spawn(events.media_reset(session_id, streams))

    def _router_died(self, session_id: str, media: _SessionMedia, dead: RouterHandle) -> None:
        """One worker of a spread session died: only what lived on its router ends. The
        streams published there end (``mediaStopped``, after ``media_reset`` to their
        publishers), the connections whose transports were there are told (``media_reset``) and
        subscribe from a new peer connection; consumers on the other routers of streams
        published elsewhere keep flowing."""
        media.routers = [r for r in media.routers if r is not dead]
        if media.router is dead:
            media.router = media.routers[0]
        streams = [p.stream_id for p in media.publications.values() if p.router is dead]
        told = {c for c, r in media.homes.items() if r is dead}
        told.update(media.publications[s].connection_id for s in streams)
        for stream_id in streams:
            del media.publications[stream_id]
        for connection_id in [c for c, r in media.homes.items() if r is dead]:
            del media.homes[connection_id]
            media.subscribe_transports.pop(connection_id, None)
        for transport_id, (connection_id, peer) in list(media.subscribe_peers.items()):
            if connection_id in told:
                del media.subscribe_peers[transport_id]
                self.lost_peers.setdefault(session_id, {}).setdefault(connection_id, set()).add(peer)
        for entry in [s for s in media.subscriptions.values() if s.router is dead]:
            del media.subscriptions[entry.subscription_id]
        for key, pipe in list(media.pipes.items()):
            if pipe.source is dead:
                del media.pipes[key]
                self._spawn(pipe.target.close_pipe(pipe.id))
            elif pipe.target is dead:
                del media.pipes[key]
                self._spawn(self._close_source(pipe))
        self.served = {k: v for k, v in self.served.items() if v.router is not dead}
        logger.warning(
            "session %s: the media worker of %r died; %d streams end with mediaStopped, "
            "%d connections must set their media up again, %d routers go on",
            session_id,
            dead,
            len(streams),
            len(told),
            len(media.routers),
        )
        if self.events is not None:
            self._spawn(self.events.media_reset(session_id, streams, sorted(told)))

    def _spawn(self, report: Coroutine[Any, Any, None]) -> None:
        if self.closed:
            report.close()
            return
        task = asyncio.get_running_loop().create_task(report, name="salon-media-report")
        self._tasks.add(task)
        task.add_done_callback(self._report_done)

    def _report_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a media report to signalling failed", exc_info=task.exception())

    def dump(self) -> dict[str, Any]:
        """The main process's view of every session's media (see :meth:`stats` for workers')."""
        return {
            session_id: {
                "router": media.router.id,
                "worker": media.router.worker.name,
                "routers": {r.id: r.worker.name for r in media.routers},
                "homes": {c: r.id for c, r in media.homes.items()},
                "pipes": {f"{k[0]}→{k[1]}": p.id for k, p in media.pipes.items()},
                "publications": {k: p.transport_id for k, p in media.publications.items()},
                "subscriptions": {k: s.transport_id for k, s in media.subscriptions.items()},
                "subscribe_transports": dict(media.subscribe_transports),
            }
            for session_id, media in self.sessions.items()
        }

    async def pipe_dumps(self) -> list[dict[str, Any]]:
        """Every pipe end in the live workers (:meth:`salon.media.pipe.PipeTransport.dump`:
        ports, peer, SRTP or not, counters), for tests and operators."""
        dumps = await asyncio.gather(
            *(w.dump(routers=True) for w in self.pool.workers.values() if w.state is WorkerState.READY)
        )
        return [
            pipe
            for dump in dumps
            for router in dump.router_dumps.values()
            for pipe in router["pipes"].values()
        ]

    async def stats(self, *, tracemalloc: int = 0, objects: int = 0) -> list[dict[str, Any]]:
        """Per live worker: pid, routers, transports, producers, consumers, CPU time, RSS, tasks
        (and with ``tracemalloc`` / ``objects``, where its memory grew: :mod:`salon.media.memtrace`)."""
        dumps = await self.pool.dump(tracemalloc=tracemalloc, objects=objects)
        return [dump.model_dump(exclude={"type", "router_dumps"}) for dump in dumps]
