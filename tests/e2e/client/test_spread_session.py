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


@pytest.mark.parametrize("killed", ["second", "first"])
async def test_a_session_spreads_over_two_workers_and_survives_one(
    spread_server: RunningServer, killed: str
) -> None:
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
        logs = {
            name: EventLog(s)
            for name, s in [("alice", alice), ("bob", bob), ("s1", s1), ("s2", s2), ("s3", s3)]
        }
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
        sessions = {"alice": alice, "bob": bob, "s1": s1, "s2": s2, "s3": s3}
        peers = {name: session._subscribe_peer for name, session in sessions.items()}

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

        # kill -9 of one worker: the stream published there ends; the connections whose media
        # lives on the other worker keep decoding the stream published there, on their
        # unchanged peer connections (no media_reset for them).
        if killed == "second":  # bob's stream, bob's and s2's media
            dead, lost, kept, lost_pub = second, b, a, bob_pub
            survivors, flowing = ["alice", "s1", "s3"], [(s1_a, "s1", "alice's"), (s3_a, "s3", "alice's")]
        else:  # alice's stream, alice's, s1's and s3's media
            dead, lost, kept, lost_pub = first, a, b, alice_pub
            survivors, flowing = ["bob", "s2"], [(s2_b, "s2", "bob's")]
        live = second if dead is first else first
        os.kill(dead.worker.pid, signal.SIGKILL)

        def dropped(name: str) -> list[tuple[str, StreamReason]]:
            log = logs[name].of(StreamDropped)
            return [(e.stream.stream_id, e.reason) for e in log if isinstance(e, StreamDropped)]

        await wait_for(lambda: all(dropped(n) for n in survivors), "the lost stream to end", timeout=20)
        for seen, name, whose in flowing:
            await frames(seen, 20, f"{name} to keep decoding {whose} video after the crash")
        for name in survivors:
            assert dropped(name) == [(lost, StreamReason.MEDIA_STOPPED)], (name, dropped(name))
            assert sessions[name]._subscribe_peer is peers[name], f"{name} kept its peer connection"
        kept_pub = bob_pub if lost_pub is alice_pub else alice_pub
        assert kept_pub.stream_id == kept, "the stream on the surviving worker is the same stream"
        assert plane.sessions[sid].routers == [live] and not plane.sessions[sid].pipes
        # The lost stream's publisher was told (media_reset): its SDK publishes again.
        await wait_for(lambda: lost_pub.stream_id not in (None, lost), "the SDK to publish again", timeout=40)
        for name, log in logs.items():
            assert not log.of(Error), (name, log.of(Error))
