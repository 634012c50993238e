"""A media worker killed with SIGKILL under two SDK clients: the SDKs recover on their own.

The server (one worker, which the pool replaces) tells every connection ``media_reset``; the
publisher's SDK publishes again (a new stream ID, :class:`StreamPublished`), the subscriber's
SDK drops its receiving peer connection (its transport died with the worker), and the
subscriber's application, which subscribes in its :class:`StreamReceived` handler as OpenTok
applications do, decodes the new stream's numbered frames with no recovery code of its own.
"""

from __future__ import annotations

import os
import signal

import pytest
from sdk_helpers import EventLog, Recorder, auto_subscribe, session_for, wait_for

from salon.client import (
    Error,
    Publisher,
    StreamDropped,
    StreamPublished,
    StreamReason,
    StreamReceived,
    TestPatternSource,
    ToneSource,
)
from salon.media.plane import SfuMediaPlane
from tests.conftest import RunningServer

pytestmark = pytest.mark.timeout(150)


def kill_the_worker(server: RunningServer) -> int:
    """SIGKILL the server's only media worker process; returns its pid."""
    plane = server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)
    (worker,) = plane.pool.workers.values()
    os.kill(worker.pid, signal.SIGKILL)
    return worker.pid


def worker_pids(server: RunningServer) -> set[int]:
    plane = server.thread.server.config.app.state.media
    return {w.pid for w in plane.pool.workers.values()}


async def test_after_a_worker_crash_the_sdks_republish_and_resubscribe_on_their_own(
    media_server: RunningServer,
) -> None:
    server = media_server
    sid = server.session()
    seen = Recorder()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        alice_log, bob_log = EventLog(alice), EventLog(bob)
        subscribers = auto_subscribe(bob, seen)  # the application's only media code
        publisher = Publisher("alice", video_source=TestPatternSource(), audio_source=ToneSource(440.0))
        first = await alice.publish(publisher)
        await wait_for(lambda: len(seen.indices) >= 10, "bob to decode alice's video", timeout=30)
        old_peer = bob._subscribe_peer
        assert old_peer is not None

        killed = kill_the_worker(server)

        # Both sides see the stream end as mediaStopped ...
        def dropped_at_bob() -> list[StreamDropped]:
            return [e for e in bob_log.of(StreamDropped) if isinstance(e, StreamDropped)]

        await wait_for(lambda: dropped_at_bob(), "bob to see alice's stream end", timeout=15)
        assert [(e.stream.stream_id, e.reason) for e in dropped_at_bob()] == [
            (first.stream_id, StreamReason.MEDIA_STOPPED)
        ]
        # ... alice's SDK publishes again on its own (a new stream, reported as after a
        # reconnection), and the pool has replaced the worker.
        await wait_for(
            lambda: publisher.stream_id is not None and publisher.stream_id != first.stream_id,
            "alice's SDK to publish again",
            timeout=40,
        )
        assert publisher in alice.publishers and publisher.session is alice
        published = [e for e in alice_log.of(StreamPublished) if isinstance(e, StreamPublished)]
        assert [e.stream.stream_id for e in published] == [first.stream_id, publisher.stream_id]
        assert killed not in worker_pids(server) and len(worker_pids(server)) == 1

        # Bob's application subscribes to the new stream in its handler; its SDK does that on
        # a new receiving peer connection, and the numbered frames come again.
        new_stream = publisher.stream_id
        await wait_for(
            lambda: any(s.stream.stream_id == new_stream for s in subscribers),
            "bob's application to subscribe to the new stream",
            timeout=30,
        )
        before = len(seen.indices)
        await wait_for(
            lambda: len(seen.indices) >= before + 15, "bob to decode alice's video again", timeout=40
        )
        assert bob._subscribe_peer is not None and bob._subscribe_peer is not old_peer
        assert [s.stream.stream_id for s in bob.subscribers] == [new_stream]
        received = [e.stream.stream_id for e in bob_log.of(StreamReceived) if isinstance(e, StreamReceived)]
        assert received == [first.stream_id, new_stream]
        assert not alice_log.of(Error) and not bob_log.of(Error), (alice_log.of(Error), bob_log.of(Error))
    # The test pattern kept counting through the crash: the new frames are alice's, in order.
    tail = seen.indices[before:]
    assert tail == sorted(tail) and tail[0] > seen.indices[0], tail


async def test_an_sdk_that_missed_media_reset_replaces_its_peer_connection_when_refused(
    media_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bob's SDK does not act on ``media_reset`` (as if it had not heard it): it offers the
    new subscription from its old receiving peer connection, the server refuses that with
    ``transport_closed``, and the SDK subscribes again from a new one, unseen by the app."""
    server = media_server
    sid = server.session()
    seen = Recorder()
    async with session_for(server, sid) as alice, session_for(server, sid, role="subscriber") as bob:
        monkeypatch.setattr(bob, "_media_reset", lambda stream_ids: None)
        bob_log = EventLog(bob)
        subscribers = auto_subscribe(bob, seen)
        publisher = Publisher("alice", audio=False)
        first = await alice.publish(publisher)
        await wait_for(lambda: len(seen.indices) >= 10, "bob to decode alice's video", timeout=30)
        old_peer = bob._subscribe_peer

        kill_the_worker(server)
        await wait_for(
            lambda: publisher.stream_id not in (None, first.stream_id), "alice to publish again", timeout=40
        )
        await wait_for(
            lambda: len(subscribers) == 2 and subscribers[1].subscription_id is not None,
            "bob's application to subscribe to the new stream",
            timeout=40,
        )
        assert bob._subscribe_peer is not old_peer and old_peer is not None and old_peer.closed
        before = len(seen.indices)
        await wait_for(
            lambda: len(seen.indices) >= before + 15, "bob to decode alice's video again", timeout=40
        )
        assert not bob_log.of(Error), bob_log.of(Error)
    tail = seen.indices[before:]
    assert tail == sorted(tail), tail
