"""SfuMediaPlane: the SFU behind signalling (:class:`~salon.signalling.media.MediaPlane`).

The routers run in media worker processes (:mod:`salon.media.worker`); this object, in the
main process, owns the :class:`~salon.media.workers.WorkerPool` and one
:class:`~salon.media.workers.RouterHandle` per session, placed on the least-loaded worker on the
session's first publish with an SDP offer and closed when the session ends. Each stream with
media owns a publish transport (a :class:`_Publication`); each connection receives all its
subscriptions (:class:`_Subscription`: their consumers) on one subscribe transport,
renegotiated by every new subscribe offer from the same peer connection (a client that uses a
peer connection per subscription gets a transport per subscription, closed with its last
subscription). Both are indexed by the signalling IDs so trickled ICE candidates and
subscription toggles find their transport and consumers in the worker.

Reports to signalling (:class:`~salon.signalling.media.MediaEvents`) go through owned tasks:

* a stream's first RTP packet reached its producer in the worker → ``stream_flowing``
  (signalling announces the stream);
* a publish transport closed by the peer or the network (ICE / DTLS failure, connect
  timeout, disconnect) → ``stream_ended`` with reason ``mediaStopped``;
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

A subscribe transport whose producer closed needs no report: signalling already sent
``stream_destroyed`` to the subscribers, and :meth:`SfuMediaPlane.stream_unpublished` closes
the stream's consumers (and the subscribe transports that carried nothing else).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from salon.errors import ConflictError, InvalidRequestError, NotFoundError
from salon.media.channel import RecordingResult
from salon.media.errors import MediaStateError
from salon.media.transport import WebRtcTransportOptions
from salon.media.workers import (
    ActiveSpeaker,
    AudioLevels,
    RemoteConsumer,
    RouterHandle,
    RouterHandleEvent,
    StreamEnded,
    StreamFlowing,
    TransportGone,
    VideoQualityChanged,
    WorkerDied,
    WorkerPool,
)
from salon.protocol import StreamReason
from salon.signalling.media import MediaEvents
from salon.signalling.session import Stream, Subscription

__all__ = ["SfuMediaPlane"]

logger = logging.getLogger(__name__)


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


@dataclass(eq=False)
class _Subscription:
    subscription_id: str
    connection_id: str
    stream_id: str
    transport_id: str
    consumers: list[RemoteConsumer] = field(default_factory=list)


@dataclass(eq=False)
class _SessionMedia:
    router: RouterHandle
    publications: dict[str, _Publication] = field(default_factory=dict)
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    subscribe_transports: dict[str, str] = field(default_factory=dict)
    """Connection ID → the subscribe transport its next subscribe offer may renegotiate."""
    subscribe_peers: dict[str, tuple[str, _PeerKey]] = field(default_factory=dict)
    """Subscribe transport ID → its connection and the ICE credentials of the client's peer
    connection (remembered when the worker dies)."""


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

    :meth:`start` starts the workers (the first negotiation does it otherwise); :meth:`close`
    closes the routers' reports and stops the workers.
    """

    def __init__(
        self,
        transport_options: WebRtcTransportOptions | None = None,
        *,
        events: MediaEvents | None = None,
        workers: int | None = None,
    ) -> None:
        self.transport_options = transport_options or WebRtcTransportOptions()
        self.events = events
        self.pool = WorkerPool(workers, self.transport_options)
        self.sessions: dict[str, _SessionMedia] = {}
        self.lost_peers: dict[str, dict[str, set[_PeerKey]]] = {}
        """Session ID → connection ID → its peer connections whose subscribe transport died
        with a worker; their offers get ``transport_closed``."""
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

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
                media = self.sessions[session_id] = _SessionMedia(router)
                router.events.add_listener(lambda event: self._on_router_event(session_id, media, event))
                logger.info("%r: session %s placed on %r", self, session_id, router)
        return media

    # -- negotiation -------------------------------------------------------------------

    async def publish(self, session_id: str, stream: Stream, offer: str, *, replace: bool = False) -> str:
        media = await self._session(session_id)
        result = await media.router.publish(stream.stream_id, offer, replace=replace)
        media.publications[stream.stream_id] = _Publication(
            stream.stream_id, stream.connection_id, result.transport_id
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
        if media is None or subscription.stream_id not in media.publications:
            raise _no_transport(f"stream {subscription.stream_id}")
        max_width, max_height, max_frame_rate = _limits(subscription)
        transport, consumers, answer = await media.router.subscribe(
            subscription.stream_id,
            offer,
            audio=audio,
            video=video,
            transport_id=media.subscribe_transports.get(subscription.connection_id),
            max_width=max_width,
            max_height=max_height,
            max_frame_rate=max_frame_rate,
        )
        media.subscribe_transports[subscription.connection_id] = transport.id
        if peer is not None:
            media.subscribe_peers[transport.id] = (subscription.connection_id, peer)
        media.subscriptions[subscription.subscription_id] = _Subscription(
            subscription.subscription_id,
            subscription.connection_id,
            subscription.stream_id,
            transport.id,
            consumers,
        )
        return answer

    async def add_candidate(
        self,
        session_id: str,
        candidate: str | None,
        *,
        stream_id: str | None = None,
        subscription_id: str | None = None,
    ) -> None:
        media = self.sessions.get(session_id)
        transport_id: str | None = None
        if media is not None and stream_id is not None:
            publication = media.publications.get(stream_id)
            transport_id = None if publication is None else publication.transport_id
        elif media is not None and subscription_id is not None:
            entry = media.subscriptions.get(subscription_id)
            transport_id = None if entry is None else entry.transport_id
        if media is None or transport_id is None:
            what = f"stream {stream_id}" if stream_id is not None else f"subscription {subscription_id}"
            raise _no_transport(what)
        await media.router.add_candidate(transport_id, candidate)

    async def set_subscription(
        self, session_id: str, subscription: Subscription, *, audio: bool | None, video: bool | None
    ) -> None:
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.get(subscription.subscription_id)
        if media is None or entry is None:
            return  # a signalling-only subscription forwards nothing either way
        await media.router.set_consumers(entry.transport_id, entry.consumers, audio=audio, video=video)

    async def set_subscription_preferences(self, session_id: str, subscription: Subscription) -> None:
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.get(subscription.subscription_id)
        if media is None or entry is None:
            return  # a signalling-only subscription: nothing to tell a consumer
        max_width, max_height, max_frame_rate = _limits(subscription)
        await media.router.set_preferences(
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
        await media.router.set_quality_paused(entry.transport_id, entry.consumers, paused=paused)

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
        await media.router.set_consumer_layer(entry.transport_id, video, spatial=spatial, temporal=temporal)
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
        the stream has no media here."""
        media = self.sessions.get(session_id)
        if media is None or stream_id not in media.publications:
            raise NotFoundError(f"stream {stream_id} has no media to record")
        return await media.router.start_recording(stream_id, sink, token, audio=audio, video=video)

    async def stop_recording(self, session_id: str, recorder_id: str) -> dict[str, int]:
        """Stop a recorder (unknown ones are fine: they went with their stream or worker);
        returns its counters."""
        media = self.sessions.get(session_id)
        if media is None:
            return {}
        return await media.router.stop_recording(recorder_id)

    # -- notifications (MediaPlane) ----------------------------------------------------

    async def stream_published(self, session_id: str, stream: Stream) -> None:
        return None  # a signalling-only stream: nothing to set up

    async def stream_unpublished(self, session_id: str, stream_id: str) -> None:
        media = self.sessions.get(session_id)
        if media is None:
            return
        subscriptions = [s for s in media.subscriptions.values() if s.stream_id == stream_id]
        if media.publications.pop(stream_id, None) is not None:
            await media.router.unpublish(stream_id)  # its consumers close with its producers
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
        closing: list[str] = []
        for entry in subscriptions:
            others = any(s.transport_id == entry.transport_id for s in media.subscriptions.values())
            current = media.subscribe_transports.get(entry.connection_id) == entry.transport_id
            if others or current:
                await media.router.close_consumers(entry.transport_id, entry.consumers)
            elif entry.transport_id not in closing:
                closing.append(entry.transport_id)
        await media.router.close_transports(closing)

    async def connection_left(self, session_id: str, connection_id: str) -> None:
        lost = self.lost_peers.get(session_id)
        if lost is not None:
            lost.pop(connection_id, None)
            if not lost:
                del self.lost_peers[session_id]
        media = self.sessions.get(session_id)
        if media is None:
            return
        transport_ids: list[str] = []
        for sub in [s for s in media.subscriptions.values() if s.connection_id == connection_id]:
            del media.subscriptions[sub.subscription_id]
            transport_ids.append(sub.transport_id)
        subscribe_transport = media.subscribe_transports.pop(connection_id, None)
        if subscribe_transport is not None:
            transport_ids.append(subscribe_transport)
        for transport_id, (owner, _) in list(media.subscribe_peers.items()):
            if owner == connection_id:
                del media.subscribe_peers[transport_id]
        transport_ids = list(dict.fromkeys(transport_ids))
        for pub in [p for p in media.publications.values() if p.connection_id == connection_id]:
            del media.publications[pub.stream_id]
            transport_ids.append(pub.transport_id)
        await media.router.close_transports(transport_ids)

    async def session_ended(self, session_id: str) -> None:
        self.lost_peers.pop(session_id, None)
        media = self.sessions.pop(session_id, None)
        if media is not None:
            await media.router.close()

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
                for entry in list(media.subscriptions.values()):
                    if entry.transport_id == event.transport_id:
                        del media.subscriptions[entry.subscription_id]
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
                if events is not None:
                    self._spawn(events.media_reset(session_id, streams))

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
                "publications": {k: p.transport_id for k, p in media.publications.items()},
                "subscriptions": {k: s.transport_id for k, s in media.subscriptions.items()},
                "subscribe_transports": dict(media.subscribe_transports),
            }
            for session_id, media in self.sessions.items()
        }

    async def stats(self, *, tracemalloc: int = 0, objects: int = 0) -> list[dict[str, Any]]:
        """Per live worker: pid, routers, transports, producers, consumers, CPU time, RSS, tasks
        (and with ``tracemalloc`` / ``objects``, where its memory grew: :mod:`salon.media.memtrace`)."""
        dumps = await self.pool.dump(tracemalloc=tracemalloc, objects=objects)
        return [dump.model_dump(exclude={"type", "router_dumps"}) for dump in dumps]
