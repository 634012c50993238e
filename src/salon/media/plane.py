"""SfuMediaPlane: the in-process SFU behind signalling (:class:`~salon.signalling.media.MediaPlane`).

One :class:`~salon.media.router.Router` per session, created on the session's first publish
with an SDP offer and closed when the session ends. Each stream with media owns a publish
transport (a :class:`_Publication`), each subscription with media a subscribe transport (a
:class:`_Subscription`); both are indexed by the signalling IDs so trickled ICE candidates and
subscription toggles find their transport.

Reports to signalling (:class:`~salon.signalling.media.MediaEvents`) go through owned tasks:

* a publish transport connected → ``stream_flowing`` (signalling announces the stream);
* a publish transport closed by the peer or the network (ICE / DTLS failure, connect
  timeout, disconnect) → ``stream_ended`` with reason ``mediaStopped``.

A subscribe transport whose producer closed needs no report: signalling already sent
``stream_destroyed`` to the subscribers, and :meth:`SfuMediaPlane.stream_unpublished` closes
the stream's subscribe transports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from salon.errors import InvalidRequestError
from salon.media.consumer import Consumer
from salon.media.errors import MediaStateError
from salon.media.router import Router
from salon.media.transport import (
    TransportClosed,
    TransportCloseReason,
    TransportConnected,
    TransportEvent,
    WebRtcTransport,
    WebRtcTransportOptions,
)
from salon.signalling.media import MediaEvents
from salon.signalling.schema import StreamReason
from salon.signalling.session import Stream, Subscription

__all__ = ["SfuMediaPlane"]

logger = logging.getLogger(__name__)

#: Close reasons that are our own doing: no report to signalling.
_OURS = frozenset({TransportCloseReason.CLOSED, TransportCloseReason.ROUTER_CLOSED})


@dataclass(eq=False)
class _Publication:
    stream_id: str
    connection_id: str
    transport: WebRtcTransport


@dataclass(eq=False)
class _Subscription:
    subscription_id: str
    connection_id: str
    stream_id: str
    transport: WebRtcTransport
    consumers: list[Consumer] = field(default_factory=list)


@dataclass(eq=False)
class _SessionMedia:
    router: Router
    publications: dict[str, _Publication] = field(default_factory=dict)
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)


def _no_transport(what: str) -> InvalidRequestError:
    return InvalidRequestError(f"{what} has no media transport", code="media_unavailable")


class SfuMediaPlane:
    """The SFU media plane: one in-process router per session.

    :param transport_options: the listen / announced addresses and port range of every
        transport.
    :param events: where to report flowing and ended streams; usually set after construction
        to the :class:`~salon.signalling.service.SignallingService` that owns this plane.
    """

    def __init__(
        self,
        transport_options: WebRtcTransportOptions | None = None,
        *,
        events: MediaEvents | None = None,
    ) -> None:
        self.transport_options = transport_options or WebRtcTransportOptions()
        self.events = events
        self.sessions: dict[str, _SessionMedia] = {}
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"SfuMediaPlane({len(self.sessions)} sessions)"

    def _session(self, session_id: str) -> _SessionMedia:
        media = self.sessions.get(session_id)
        if media is None:
            if self.closed:
                raise MediaStateError("the media plane is closed")
            router = Router(f"ro-{session_id[-12:]}", transport_options=self.transport_options)
            media = self.sessions[session_id] = _SessionMedia(router)
        return media

    # -- negotiation -------------------------------------------------------------------

    async def publish(self, session_id: str, stream: Stream, offer: str) -> str:
        media = self._session(session_id)
        result = await media.router.publish(offer, stream_id=stream.stream_id)
        publication = _Publication(stream.stream_id, stream.connection_id, result.transport)
        media.publications[stream.stream_id] = publication
        result.transport.events.add_listener(
            lambda event: self._on_publish_transport(session_id, publication, event)
        )
        return result.answer_sdp

    async def subscribe(
        self, session_id: str, subscription: Subscription, offer: str, *, audio: bool, video: bool
    ) -> str:
        media = self.sessions.get(session_id)
        if media is None or subscription.stream_id not in media.publications:
            raise _no_transport(f"stream {subscription.stream_id}")
        result = await media.router.subscribe(subscription.stream_id, offer, audio=audio, video=video)
        entry = _Subscription(
            subscription.subscription_id,
            subscription.connection_id,
            subscription.stream_id,
            result.transport,
            list(result.consumers),
        )
        media.subscriptions[subscription.subscription_id] = entry
        result.transport.events.add_listener(lambda event: self._on_subscribe_transport(media, entry, event))
        return result.answer_sdp

    async def add_candidate(
        self,
        session_id: str,
        candidate: str | None,
        *,
        stream_id: str | None = None,
        subscription_id: str | None = None,
    ) -> None:
        media = self.sessions.get(session_id)
        transport: WebRtcTransport | None = None
        if media is not None and stream_id is not None:
            publication = media.publications.get(stream_id)
            transport = None if publication is None else publication.transport
        elif media is not None and subscription_id is not None:
            entry = media.subscriptions.get(subscription_id)
            transport = None if entry is None else entry.transport
        if transport is None:
            what = f"stream {stream_id}" if stream_id is not None else f"subscription {subscription_id}"
            raise _no_transport(what)
        await transport.add_remote_candidate(candidate)

    async def set_subscription(
        self, session_id: str, subscription: Subscription, *, audio: bool | None, video: bool | None
    ) -> None:
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.get(subscription.subscription_id)
        if entry is None:
            return  # a signalling-only subscription forwards nothing either way
        wanted = {"audio": audio, "video": video}
        for consumer in entry.consumers:
            on = wanted[consumer.kind]
            if on is True:
                consumer.resume()
            elif on is False:
                consumer.pause()

    # -- notifications (MediaPlane) ----------------------------------------------------

    async def stream_published(self, session_id: str, stream: Stream) -> None:
        return None  # a signalling-only stream: nothing to set up

    async def stream_unpublished(self, session_id: str, stream_id: str) -> None:
        media = self.sessions.get(session_id)
        if media is None:
            return
        subscriptions = [s for s in media.subscriptions.values() if s.stream_id == stream_id]
        for entry in subscriptions:
            media.subscriptions.pop(entry.subscription_id, None)
        media.publications.pop(stream_id, None)
        await media.router.unpublish(stream_id)
        await asyncio.gather(*(entry.transport.close() for entry in subscriptions))

    async def subscribed(self, session_id: str, subscription: Subscription) -> None:
        return None  # a signalling-only subscription: nothing to set up

    async def unsubscribed(self, session_id: str, subscription: Subscription) -> None:
        media = self.sessions.get(session_id)
        entry = None if media is None else media.subscriptions.pop(subscription.subscription_id, None)
        if entry is not None:
            await entry.transport.close()

    async def connection_left(self, session_id: str, connection_id: str) -> None:
        media = self.sessions.get(session_id)
        if media is None:
            return
        transports: list[WebRtcTransport] = []
        for sub in [s for s in media.subscriptions.values() if s.connection_id == connection_id]:
            del media.subscriptions[sub.subscription_id]
            transports.append(sub.transport)
        for pub in [p for p in media.publications.values() if p.connection_id == connection_id]:
            del media.publications[pub.stream_id]
            transports.append(pub.transport)
        await asyncio.gather(*(t.close() for t in transports))

    async def session_ended(self, session_id: str) -> None:
        media = self.sessions.pop(session_id, None)
        if media is not None:
            await media.router.close()

    async def close(self) -> None:
        """Close every router and wait for the reports in flight; idempotent."""
        self.closed = True
        sessions = list(self.sessions.values())
        self.sessions.clear()
        await asyncio.gather(*(m.router.close() for m in sessions))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- transport events --------------------------------------------------------------

    def _on_publish_transport(
        self, session_id: str, publication: _Publication, event: TransportEvent
    ) -> None:
        events = self.events
        if isinstance(event, TransportConnected):
            logger.info("stream %s: media flows on %r", publication.stream_id, event.transport)
            if events is not None:
                self._spawn(events.stream_flowing(session_id, publication.stream_id))
        elif isinstance(event, TransportClosed):
            media = self.sessions.get(session_id)
            if media is not None and media.publications.get(publication.stream_id) is publication:
                del media.publications[publication.stream_id]
            if event.reason not in _OURS and events is not None:
                self._spawn(
                    events.stream_ended(session_id, publication.stream_id, StreamReason.MEDIA_STOPPED)
                )

    def _on_subscribe_transport(
        self, media: _SessionMedia, entry: _Subscription, event: TransportEvent
    ) -> None:
        if isinstance(event, TransportClosed) and media.subscriptions.get(entry.subscription_id) is entry:
            del media.subscriptions[entry.subscription_id]

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
        return {
            session_id: {
                "router": media.router.dump(),
                "publications": {k: p.transport.id for k, p in media.publications.items()},
                "subscriptions": {k: s.transport.id for k, s in media.subscriptions.items()},
            }
            for session_id, media in self.sessions.items()
        }
