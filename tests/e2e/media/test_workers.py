"""Media worker processes: routers live in ``python -m salon.media.worker`` processes.

* the pool on its own: a router in a worker, its counters (``dump``), no process left after
  ``close()``; sessions that come one at a time spread over equally loaded workers;
* the real server with two workers: two sessions land on two workers; a worker killed with
  SIGKILL is detected at once (the streams on it end with ``mediaStopped``), a replacement
  starts, the session publishes and decodes again, and the other worker's session keeps
  flowing; closing the server leaves no worker process.

(Media through signalling with the routers in a worker: ``test_signalling_media.py``.)
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import time
from collections.abc import Iterator

import pytest
from peers import Publisher, Subscriber, wait_for
from sfu_state import plane_of

from salon.media.errors import MediaStateError
from salon.media.workers import WorkerHandle, WorkerPool
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(60)


def process_exists(pid: int) -> bool:
    """Whether ``pid`` is a process (a zombie included: it must have been reaped)."""
    return os.path.exists(f"/proc/{pid}")


@pytest.fixture
def two_worker_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    config = ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0),
        workers=2,
    )
    with ServerThread(config) as thread:
        yield RunningServer(thread.url, API_KEY, API_SECRET, thread)


async def test_a_worker_hosts_routers_reports_counters_and_leaves_no_process() -> None:
    pool = WorkerPool(1)
    await pool.start()
    try:
        (worker,) = pool.workers.values()
        assert worker.pid != os.getpid() and process_exists(worker.pid)
        router = pool.create_router(await pool.place(), name="test")
        await router.close_transports(["tr-unknown"])  # waits for the router to exist
        dump = await worker.dump(routers=True)
        assert (dump.pid, dump.routers, dump.transports, dump.consumers) == (worker.pid, 1, 0, 0)
        assert dump.cpu_time > 0 and dump.rss > 10_000_000
        assert dump.router_dumps[router.id]["id"] == router.id
        await router.close()
        assert router.closed and not worker.routers
        assert (await worker.dump()).routers == 0
    finally:
        await pool.close()
    assert not process_exists(worker.pid) and worker.process.returncode == 0
    with pytest.raises(MediaStateError):
        await pool.place()


async def test_a_real_pool_spreads_sessions_that_come_one_at_a_time() -> None:
    """Two worker processes; a session opens and closes, then the next one: the second
    session goes to the other (idle) worker, not back to the first."""
    pool = WorkerPool(2)
    await pool.start()
    try:
        used: list[WorkerHandle] = []
        for name in ("first", "second"):
            worker = await pool.place()
            router = pool.create_router(worker, name=name)
            await router.close_transports(["tr-unknown"])  # waits for the router to exist
            assert (await worker.dump()).routers == 1
            await router.close()
            used.append(worker)
        assert used[0] is not used[1], "the second session landed on the worker of the first"
    finally:
        await pool.close()


async def publish(client: WsClient, publisher: Publisher) -> str:
    reply = await client.request({"type": "publish", "sdp": await publisher.offer()})
    assert reply["type"] == "published", reply
    await publisher.answer(reply["answer"])
    return str(reply["stream"]["stream_id"])


async def subscribe(client: WsClient, stream_id: str, subscriber: Subscriber) -> None:
    await client.next(lambda m: m["type"] == "stream_created" and m["stream"]["stream_id"] == stream_id)
    reply = await client.request(
        {"type": "subscribe", "stream_id": stream_id, "sdp": await subscriber.offer()}
    )
    assert reply["type"] == "subscribed", reply
    await subscriber.answer(reply["answer"])


async def test_a_killed_worker_ends_its_streams_and_is_replaced(two_worker_server: RunningServer) -> None:
    server = two_worker_server
    plane = plane_of(server)
    pids = {w.pid for w in plane.pool.workers.values()}
    assert len(pids) == 2 and os.getpid() not in pids

    # Session A: video + audio; session B (audio only, to spare the test's CPU).
    sid_a, sid_b = server.session(), server.session()
    alice = await WsClient.join(server.url, sid_a, server.token(sid_a))
    bob = await WsClient.join(server.url, sid_a, server.token(sid_a))
    carol = await WsClient.join(server.url, sid_b, server.token(sid_b))
    dave = await WsClient.join(server.url, sid_b, server.token(sid_b))
    pub_a, sub_a = Publisher(), Subscriber()
    pub_b, sub_b = Publisher(video=False), Subscriber(video=False)
    pub_a2, sub_a2 = Publisher(), Subscriber()
    try:
        stream_a = await publish(alice, pub_a)
        await subscribe(bob, stream_a, sub_a)
        stream_b = await publish(carol, pub_b)
        await subscribe(dave, stream_b, sub_b)

        worker_a = plane.sessions[sid_a].router.worker
        worker_b = plane.sessions[sid_b].router.worker
        assert worker_a is not worker_b, "two sessions should land on two workers"
        await wait_for(lambda: len(sub_a.media.indices) >= 5, 10, "frames in session A")
        await wait_for(lambda: sub_b.media.audio_frames >= 25, 10, "audio in session B")
        # The worker measures the publishers' audio levels: the tone makes B's the speaker.
        levels = await dave.next("audio_levels", timeout=5)
        assert {e["stream_id"] for e in levels["levels"]} == {stream_b}, levels
        assert all(0 < e["level"] <= 1 for e in levels["levels"]), levels
        speaker = await dave.next("active_speaker", timeout=5)
        assert speaker["stream_id"] == stream_b, speaker

        os.kill(worker_a.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        destroyed = await bob.next("stream_destroyed", timeout=5)
        assert destroyed["stream_id"] == stream_a and destroyed["reason"] == "mediaStopped", destroyed
        assert time.monotonic() - killed_at < 3, "the death should be detected at once"
        assert sid_a not in plane.sessions and worker_a not in plane.pool.workers.values()
        await wait_for(lambda: not process_exists(worker_a.pid), 5, "the killed worker to be reaped")
        assert worker_a.process.returncode == -signal.SIGKILL

        # A replacement starts; the other worker and its session carry on.
        await wait_for(
            lambda: (
                len(plane.pool.workers) == 2
                and worker_a.pid not in {w.pid for w in plane.pool.workers.values()}
            ),
            20,
            "a replacement worker",
        )
        assert worker_b in plane.pool.workers.values()
        heard = sub_b.media.audio_frames
        await wait_for(
            lambda: sub_b.media.audio_frames >= heard + 25, 10, "session B's audio to keep flowing"
        )
        assert not [m for m in dave.messages if m["type"] == "stream_destroyed"]

        # Session A publishes and decodes again.
        await pub_a.close()
        stream_a2 = await publish(alice, pub_a2)
        await subscribe(bob, stream_a2, sub_a2)
        await wait_for(lambda: len(sub_a2.media.indices) >= 10, 15, "frames after the restart")
        assert sid_a in plane.sessions and plane.sessions[sid_a].router.worker.alive
    finally:
        await asyncio.gather(*(p.close() for p in (pub_a, sub_a, pub_b, sub_b, pub_a2, sub_a2)))
        for client in (alice, bob, carol, dave):
            await client.close()
    workers = list(plane.pool.workers.values())
    server.thread.__exit__(None, None, None)
    for worker in [*workers, worker_a]:
        assert not process_exists(worker.pid), f"{worker!r} outlived the server"


def test_closing_the_server_leaves_no_worker_process(two_worker_server: RunningServer) -> None:
    plane = plane_of(two_worker_server)
    pids = [w.pid for w in plane.pool.workers.values()]
    assert len(pids) == 2 and all(process_exists(pid) for pid in pids)
    two_worker_server.thread.__exit__(None, None, None)
    assert not any(process_exists(pid) for pid in pids)
    assert not plane.pool.workers and plane.pool.closed
