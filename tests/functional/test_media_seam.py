"""Signalling tells the media plane what happened, and the media plane can end streams."""

from __future__ import annotations

import asyncio
import pathlib
from typing import Any

from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.schema import StreamReason
from salon.signalling.session import Stream, Subscription
from tests.conftest import API_KEY, API_SECRET, RunningServer
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


async def test_a_server_without_media_refuses_offers_and_keeps_signalling_only_streams(
    tmp_path: pathlib.Path,
) -> None:
    config = ServerConfig(port=0, data_dir=tmp_path, api_key=API_KEY, api_secret=API_SECRET, media=False)
    with ServerThread(config) as thread:
        server = RunningServer(thread.url, API_KEY, API_SECRET, thread)
        assert thread.server.config.app.state.media is None
        sid = server.session()
        pub = await WsClient.join(server.url, sid, server.token(sid))
        sub = await WsClient.join(server.url, sid, server.token(sid))
        reply = await pub.request({"type": "publish", "sdp": "v=0\r\n"})
        assert (reply["type"], reply["code"]) == ("error", "media_unavailable")
        assert await sub.quiet() == []
        stream_id = (await pub.request({"type": "publish"}))["stream"]["stream_id"]
        assert (await sub.next("stream_created"))["stream"]["stream_id"] == stream_id
        reply = await sub.request({"type": "subscribe", "stream_id": stream_id, "sdp": "v=0\r\n"})
        assert (reply["type"], reply["code"]) == ("error", "media_unavailable")
        reply = await pub.request({"type": "ice_candidate", "stream_id": stream_id, "candidate": None})
        assert (reply["type"], reply["code"]) == ("error", "media_unavailable")
        subscription = (await sub.request({"type": "subscribe", "stream_id": stream_id}))["subscription_id"]
        reply = await sub.request(
            {"type": "set_subscription", "subscription_id": subscription, "audio": False}
        )
        assert reply["type"] == "ack"
        await pub.close()
        await sub.close()
