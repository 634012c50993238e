"""Signalling tells the media plane what happened, and the media plane can end streams."""

from __future__ import annotations

import asyncio
from typing import Any

from salon.signalling.schema import StreamReason
from salon.signalling.session import Stream, Subscription
from tests.conftest import RunningServer
from tests.wsclient import WsClient


class RecordingMediaPlane:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def stream_published(self, session_id: str, stream: Stream) -> None:
        self.calls.append(("stream_published", stream.stream_id))

    async def stream_unpublished(self, session_id: str, stream_id: str) -> None:
        self.calls.append(("stream_unpublished", stream_id))

    async def subscribed(self, session_id: str, subscription: Subscription) -> None:
        self.calls.append(("subscribed", subscription.stream_id))

    async def unsubscribed(self, session_id: str, subscription: Subscription) -> None:
        self.calls.append(("unsubscribed", subscription.stream_id))

    async def connection_left(self, session_id: str, connection_id: str) -> None:
        self.calls.append(("connection_left", connection_id))

    async def session_ended(self, session_id: str) -> None:
        self.calls.append(("session_ended", session_id))


async def wait_for(predicate: Any, what: str) -> None:
    for _ in range(100):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_media_plane_hears_every_stream_and_subscription_change(server: RunningServer) -> None:
    service = server.thread.server.config.app.state.signalling
    media = RecordingMediaPlane()
    service.media = media
    sid = server.session()
    pub = await WsClient.join(server.url, sid, server.token(sid))
    sub = await WsClient.join(server.url, sid, server.token(sid))
    stream_id = (await pub.request({"type": "publish"}))["stream"]["stream_id"]
    subscription = (await sub.request({"type": "subscribe", "stream_id": stream_id}))["subscription_id"]
    await sub.request({"type": "unsubscribe", "subscription_id": subscription})
    await pub.request({"type": "unpublish", "stream_id": stream_id})
    await pub.close()
    await sub.close()
    await wait_for(lambda: ("session_ended", sid) in media.calls, "session_ended")
    assert media.calls == [
        ("stream_published", stream_id),
        ("subscribed", stream_id),
        ("unsubscribed", stream_id),
        ("stream_unpublished", stream_id),
        ("connection_left", pub.connection_id),
        ("connection_left", sub.connection_id),
        ("session_ended", sid),
    ]


async def test_a_stream_the_media_plane_loses_is_destroyed_as_media_stopped(server: RunningServer) -> None:
    app = server.thread.server.config.app
    service = app.state.signalling
    media = RecordingMediaPlane()
    service.media = media
    sid = server.session()
    pub = await WsClient.join(server.url, sid, server.token(sid))
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    stream_id = (await pub.request({"type": "publish"}))["stream"]["stream_id"]
    loop = next(iter(service.links.values()))._writer.get_loop()  # the server's event loop
    future = asyncio.run_coroutine_threadsafe(
        service.stream_ended(sid, stream_id, StreamReason.MEDIA_STOPPED), loop
    )
    await asyncio.wrap_future(future)
    for client in (pub, watcher):
        event = await client.next("stream_destroyed")
        assert (event["stream_id"], event["reason"]) == (stream_id, "mediaStopped")
    assert ("stream_unpublished", stream_id) in media.calls
    await pub.close()
    await watcher.close()
