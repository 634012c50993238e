"""Signalling tells the media plane what happened, and the media plane can end streams."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from salon.protocol import AudioLevelEvent, StreamReason
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.session import Stream, Subscription
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.wsclient import WsClient

T = TypeVar("T")


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


class NegotiatingMediaPlane(RecordingMediaPlane):
    """Accepts every publish offer: the stream stays pending until ``stream_flowing``."""

    async def publish(self, session_id: str, stream: Stream, offer: str) -> str:
        self.calls.append(("publish", stream.stream_id))
        return "v=0\r\n"


def on_server_loop(service: Any, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` on the server's event loop, as the media plane calls ``MediaEvents``."""
    loop = next(iter(service.links.values()))._writer.get_loop()
    return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


async def two_streams(server: RunningServer) -> tuple[Any, str, WsClient, WsClient, str, str]:
    """A session with a publisher and a watcher; an announced stream and a pending one."""
    service = server.thread.server.config.app.state.signalling
    service.media = NegotiatingMediaPlane()
    sid = server.session()
    pub = await WsClient.join(server.url, sid, server.token(sid))
    watcher = await WsClient.join(server.url, sid, server.token(sid))
    announced = (await pub.request({"type": "publish"}))["stream"]["stream_id"]
    reply = await pub.request({"type": "publish", "sdp": "v=0\r\n"})
    assert reply["answer"] == "v=0\r\n"
    pending = reply["stream"]["stream_id"]
    await watcher.next("stream_created")
    await pub.quiet()  # pub's own events so far
    return service, sid, pub, watcher, announced, pending


async def test_audio_levels_reach_every_connection_for_announced_streams_only(
    server: RunningServer,
) -> None:
    service, sid, pub, watcher, announced, pending = await two_streams(server)
    await on_server_loop(service, service.audio_levels(sid, {announced: 0.5, pending: 0.9, "gone": 0.2}))
    for client in (pub, watcher):
        event = await client.next("audio_levels")
        assert event["levels"] == [{"stream_id": announced, "level": 0.5}]
    # Past the throttle interval, so levels wrongly sent for the pending stream would go at once
    # (ahead of quiet()'s control signal), not wait on a timer.
    await asyncio.sleep(0.3)
    await on_server_loop(service, service.audio_levels(sid, {pending: 0.9}))
    assert await watcher.quiet() == []
    await on_server_loop(service, service.stream_flowing(sid, pending))
    await on_server_loop(service, service.audio_levels(sid, {pending: 0.25}))
    assert (await watcher.next("stream_created"))["stream"]["stream_id"] == pending
    for client in (pub, watcher):
        assert (await client.next("audio_levels"))["levels"] == [{"stream_id": pending, "level": 0.25}]
    await pub.close()
    await watcher.close()


async def test_audio_levels_are_sent_at_most_four_times_a_second_and_the_latest_level_arrives(
    server: RunningServer,
) -> None:
    service, sid, pub, watcher, announced, _ = await two_streams(server)

    async def flood() -> None:  # 60 reports in about 1.2 s: 50 a second
        for i in range(60):
            await service.audio_levels(sid, {announced: i / 59})
            await asyncio.sleep(0.02)

    # When the server sends each audio_levels message, on its own loop's clock: what reaches
    # the client may bunch up on a busy machine, the sending may not.
    sent_at: list[float] = []
    broadcast = service._broadcast

    def recording(session: Any, message: Any) -> None:
        if isinstance(message, AudioLevelEvent):
            sent_at.append(asyncio.get_running_loop().time())
        broadcast(session, message)

    service._broadcast = recording
    try:
        flooding = on_server_loop(service, flood())
        arrivals: list[float] = []
        while not arrivals or arrivals[-1] != 1.0:
            event = await watcher.next("audio_levels", timeout=10)
            arrivals.append(event["levels"][0]["level"])
        await flooding
    finally:
        service._broadcast = broadcast
    assert len(sent_at) == len(arrivals), (sent_at, arrivals)
    span = sent_at[-1] - sent_at[0]
    assert 4 <= len(sent_at) <= span / 0.25 + 1.01, sent_at
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert min(gaps) >= 0.249, gaps  # at most four a second
    levels = arrivals
    assert levels == sorted(levels)  # the latest level won each time
    # Nothing waits on the throttle any more: a batch still waiting would go within its interval.
    await asyncio.sleep(0.3)
    assert await watcher.quiet() == []
    assert len([m for m in await pub.quiet() if m["type"] == "audio_levels"]) == len(arrivals)
    await pub.close()
    await watcher.close()


async def test_the_active_speaker_is_announced_when_it_changes_and_to_late_joiners(
    server: RunningServer,
) -> None:
    service, sid, pub, watcher, announced, pending = await two_streams(server)
    await on_server_loop(service, service.active_speaker(sid, pending))  # not announced: ignored
    assert await watcher.quiet() == []
    await on_server_loop(service, service.active_speaker(sid, announced))
    for client in (pub, watcher):
        assert await client.next("active_speaker") == {"type": "active_speaker", "stream_id": announced}
    await on_server_loop(service, service.active_speaker(sid, announced))  # no change: no event
    assert await watcher.quiet() == []
    late = await WsClient.join(server.url, sid, server.token(sid))
    assert await late.next() == {"type": "active_speaker", "stream_id": announced}  # first after connected
    await on_server_loop(service, service.active_speaker(sid, None))
    for client in (pub, watcher, late):
        assert await client.next("active_speaker") == {"type": "active_speaker", "stream_id": None}
    for client in (pub, watcher, late):
        await client.close()


async def test_a_level_outside_zero_to_one_is_refused_to_the_media_plane(server: RunningServer) -> None:
    service, sid, pub, watcher, announced, _ = await two_streams(server)
    with pytest.raises(ValueError, match=r"audio level of stream .* is 1\.5, not a number within 0\.\.1"):
        await on_server_loop(service, service.audio_levels(sid, {announced: 1.5}))
    assert await watcher.quiet() == []
    await pub.close()
    await watcher.close()
