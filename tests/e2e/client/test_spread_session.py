"""One session spread over two media workers, piped, and one of them killed.

A real server with 2 workers and a spread threshold of one consumer per router: the session's
connections get their media on both workers, streams published on one reach subscribers on the
other through pipes (:mod:`salon.media.pipe`), and every subscriber decodes the test pattern's
numbered frames. Then ``kill -9`` of one worker ends only the stream published on it; the
subscribers on the surviving worker keep decoding the stream published there, unaware.
"""

from __future__ import annotations

import os
import pathlib
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from sdk_helpers import EventLog, Recorder, session_for, wait_for

from salon.client import (
    Error,
    Publisher,
    Session,
    StreamDropped,
    StreamReason,
    Subscriber,
    TestPatternSource,
)
from salon.media.plane import SfuMediaPlane
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET, RunningServer

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def spread_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    config = ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0, reconnect_grace=0),
        workers=2,
        router_spread_consumers=1,
        demo_rate_burst=1000,
    )
    with ServerThread(config) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


def plane_of(server: RunningServer) -> SfuMediaPlane:
    plane = server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)
    return plane


def small_publisher(name: str) -> Publisher:
    return Publisher(name, audio=False, video_source=TestPatternSource(width=320, height=240, frame_rate=15))


async def subscribe(session: Session, stream_id: str) -> Recorder:
    """Subscribe ``session`` to ``stream_id`` (once it knows it); the frames go to a recorder."""
    await wait_for(lambda: stream_id in session.streams, f"{stream_id} to reach the subscriber", timeout=20)
    seen = Recorder()
    await session.subscribe(Subscriber(session.streams[stream_id], on_video_frame=seen.on_video, audio=False))
    return seen


async def frames(seen: Recorder, more: int, what: str) -> None:
    before = len(seen.indices)
    await wait_for(lambda: len(seen.indices) >= before + more, what, timeout=60)
    tail = seen.indices[before:]
    assert tail == sorted(tail), f"{what}: frames out of order {tail}"


async def test_a_session_spreads_over_two_workers_and_survives_one(spread_server: RunningServer) -> None:
    server = spread_server
    plane = plane_of(server)
    sid = server.session()
    async with (
        session_for(server, sid) as alice,
        session_for(server, sid) as bob,
        session_for(server, sid, role="subscriber") as s1,
        session_for(server, sid, role="subscriber") as s2,
        session_for(server, sid, role="subscriber") as s3,
    ):
        logs = {name: EventLog(s) for name, s in [("alice", alice), ("s1", s1), ("s3", s3)]}
        alice_pub, bob_pub = small_publisher("alice"), small_publisher("bob")
        a = (await alice.publish(alice_pub)).stream_id
        s1_a = await subscribe(s1, a)  # the first router's one consumer
        await frames(s1_a, 10, "s1 to decode alice's video")
        b = (await bob.publish(bob_pub)).stream_id  # the first router is full: a second worker
        media = plane.sessions[sid]
        assert len(media.routers) == 2 and media.routers[0].worker is not media.routers[1].worker
        first, second = media.routers
        assert media.publications[a].router is first and media.publications[b].router is second
        # s2 lives on the second worker: alice's stream is piped there; s3 on the first (the
        # least loaded once both are full): bob's stream is piped there.
        s2_a, s2_b = await subscribe(s2, a), await subscribe(s2, b)
        s3_a, s3_b = await subscribe(s3, a), await subscribe(s3, b)
        assert media.homes[s2.connection_id] is second and media.homes[s3.connection_id] is first
        assert set(media.pipes) == {(a, second.id), (b, first.id)}
        for seen, what in [
            (s2_a, "s2 to decode alice's video through the pipe"),
            (s2_b, "s2 to decode bob's video"),
            (s3_a, "s3 to decode alice's video"),
            (s3_b, "s3 to decode bob's video through the pipe"),
        ]:
            await frames(seen, 10, what)
        s1_peer, s3_peer = s1._subscribe_peer, s3._subscribe_peer

        # The last subscriber of alice's stream on the second worker leaves: its pipe closes,
        # both ends; bob's stream stays piped to the first worker for s3.
        (s2_sub_a,) = [s for s in s2.subscribers if s.stream.stream_id == a]
        await s2.unsubscribe(s2_sub_a)
        await wait_for(lambda: set(media.pipes) == {(b, first.id)}, "alice's pipe to close", timeout=20)

        async def pipes_in_workers() -> list[dict[str, Any]]:
            dumps = [await r.worker.dump(routers=True) for r in (first, second)]
            return [d.router_dumps[r.id]["pipes"] for d, r in zip(dumps, (first, second), strict=True)]

        in_first, in_second = await pipes_in_workers()
        assert [p["stream_id"] for p in in_first.values()] == [b]
        assert [p["stream_id"] for p in in_second.values()] == [b]
        await frames(s3_b, 10, "s3 to keep decoding bob's video through the pipe")

        os.kill(second.worker.pid, signal.SIGKILL)  # bob's stream and s2's subscriptions live there

        def dropped(name: str) -> list[tuple[str, StreamReason]]:
            return [
                (e.stream.stream_id, e.reason)
                for e in logs[name].of(StreamDropped)
                if isinstance(e, StreamDropped)
            ]

        await wait_for(lambda: dropped("s3") and dropped("s1"), "bob's stream to end", timeout=20)
        # Only bob's stream ended; alice's keeps flowing to both subscribers on the first
        # worker, on their unchanged peer connections (no media_reset for them).
        await frames(s1_a, 20, "s1 to keep decoding alice's video after the crash")
        await frames(s3_a, 20, "s3 to keep decoding alice's video after the crash")
        for name in ("alice", "s1", "s3"):
            assert dropped(name) == [(b, StreamReason.MEDIA_STOPPED)], (name, dropped(name))
        assert s1._subscribe_peer is s1_peer and s3._subscribe_peer is s3_peer
        assert alice_pub.stream_id == a, "alice's stream lives on the surviving worker"
        assert plane.sessions[sid].routers == [first] and not plane.sessions[sid].pipes
        # bob's SDK was told (media_reset) and publishes again, on a live worker.
        await wait_for(lambda: bob_pub.stream_id not in (None, b), "bob's SDK to publish again", timeout=40)
        for name, log in logs.items():
            assert not log.of(Error), (name, log.of(Error))
