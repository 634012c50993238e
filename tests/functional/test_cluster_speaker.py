"""Audio levels and the active speaker of a session whose publishers are on different nodes
(issue 14).

Two ``salon serve`` nodes with media (one worker each) and a third without media, on one real
Redis and one real PostgreSQL. Alice publishes a tone through node 1, Bob silence through
node 2; each node measures only the streams it hosts and publishes their levels on the
session's bus, every node elects the speaker from those levels and the session's speaker node
(the first by name: node 1) announces it. A client on node 2 sees Alice's level and Alice as
the speaker; when the roles change (Alice falls silent, Bob speaks: levels measured on node 2,
the speaker elected on node 1) every client sees Bob. A client joining through node 3, which
had no client in the session, learns the current speaker right after ``connected``. When the
speaker's stream ends, every client sees no speaker; when the speaker node has no client left,
the next node by name announces the speaker.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
from collections.abc import Callable, Iterator

import pytest

from salon.client import ActiveSpeakerChanged, AudioLevels, Publisher, Session, ToneSource
from tests.functional.test_cluster import API_KEY, API_SECRET, create_session, token
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess, start_all

pytestmark = pytest.mark.timeout(300)

LOOPBACK = ["127.0.0.1"]
#: The tone's amplitude: 0.25 of full scale, about -15 dBFS (the speaker threshold is -50).
LOUD = 0.25


@pytest.fixture
def speaker_nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    nodes = []
    for i, media in ((1, True), (2, True), (3, False)):
        args = ["--workers", "1"] if media else ["--no-media"]
        args += ["--redis-url", redis_url, "--database-url", postgres_url]
        args += ["--node-name", f"n{i}", "--node-address", "127.0.0.1"]
        nodes.append(ServeProcess(tmp_path / f"n{i}", API_KEY, API_SECRET, args))
    with contextlib.ExitStack() as stack:
        yield start_all(stack, nodes)


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.05)


class Heard:
    """A client's speaker changes and the latest level of each stream."""

    def __init__(self, session: Session) -> None:
        self.speakers: list[str | None] = []
        self.levels: dict[str, float] = {}
        session.on(ActiveSpeakerChanged, lambda e: self.speakers.append(e.stream_id))
        session.on(AudioLevels, lambda e: self.levels.update(e.levels))

    @property
    def speaker(self) -> str | None:
        return self.speakers[-1] if self.speakers else None


async def test_every_client_sees_one_active_speaker_elected_over_the_streams_of_every_node(
    speaker_nodes: list[ServeProcess],
) -> None:
    n1, n2, n3 = speaker_nodes
    session_id = await create_session(n1.url)

    def client(node: ServeProcess) -> Session:
        return Session(session_id, token(session_id), node.url, ice_addresses=LOOPBACK)

    alice_tone, bob_tone = ToneSource(440.0, amplitude=LOUD), ToneSource(660.0, amplitude=0.0)
    async with client(n1) as alice, client(n2) as bob, client(n2) as watcher:
        at_alice, at_bob, at_watcher = Heard(alice), Heard(bob), Heard(watcher)
        alice_id = (await alice.publish(Publisher("alice", video=False, audio_source=alice_tone))).stream_id
        bob_publisher = Publisher("bob", video=False, audio_source=bob_tone)
        bob_id = (await bob.publish(bob_publisher)).stream_id

        # Alice (node 1) speaks: the watcher on node 2 hears her level and sees her elected,
        # and so does everyone else; Bob's silence is measured on node 2 and reaches node 1.
        await wait_for(lambda: at_watcher.speaker == alice_id, "the watcher on node 2 to see alice speak")
        await wait_for(lambda: at_alice.speaker == alice_id, "alice on node 1 to see herself speak")
        await wait_for(lambda: at_bob.speaker == alice_id, "bob on node 2 to see alice speak")
        await wait_for(
            lambda: at_watcher.levels.get(alice_id, 0.0) > 0.05 and bob_id in at_watcher.levels,
            f"levels of both streams at the watcher (has {at_watcher.levels})",
        )
        await wait_for(
            lambda: at_alice.levels.get(bob_id) == 0.0, f"bob's silence at alice (has {at_alice.levels})"
        )
        for heard in (at_alice, at_bob, at_watcher):
            assert heard.speakers == [alice_id], heard.speakers

        # A client through node 3 (no client there until now, no media) gets the speaker
        # right after `connected` (levels as they change, as from a single server).
        late = client(n3)
        at_late = Heard(late)
        async with late:
            await wait_for(
                lambda: at_late.speaker == alice_id, "the late client on node 3 to learn the speaker"
            )

            # The roles change: Alice falls silent, Bob speaks (measured on node 2, elected on
            # node 1). Every client sees Bob, once.
            alice_tone.amplitude, bob_tone.amplitude = 0.0, LOUD
            for name, heard in (
                ("alice", at_alice),
                ("bob", at_bob),
                ("watcher", at_watcher),
                ("late", at_late),
            ):
                await wait_for(lambda h=heard: h.speaker == bob_id, f"{name} to see bob speak")
            for name, heard in (("watcher", at_watcher), ("late", at_late)):
                await wait_for(
                    lambda h=heard: h.levels.get(alice_id) == 0.0 and h.levels.get(bob_id, 0.0) > 0.05,
                    f"the levels at the {name} to follow the roles (has {heard.levels})",
                )
            for heard in (at_alice, at_bob, at_watcher):
                assert heard.speakers == [alice_id, bob_id], heard.speakers
            assert at_late.speakers == [alice_id, bob_id], at_late.speakers

            # The speaker's stream ends (on node 2): nobody is the speaker any more, everywhere.
            await bob.unpublish(bob_publisher)
            for name, heard in (("alice", at_alice), ("watcher", at_watcher), ("late", at_late)):
                await wait_for(lambda h=heard: h.speakers[-1:] == [None], f"{name} to see no speaker")
                assert heard.speakers == [alice_id, bob_id, None], heard.speakers

            # Node 1, the speaker node, has no client left: node 2 announces from then on.
            alice_connection = alice.connection_id
            await alice.disconnect()
            await wait_for(lambda: alice_connection not in watcher.connections, "alice's leaving at node 2")
            again = Publisher("bob again", video=False, audio_source=ToneSource(550.0, amplitude=LOUD))
            again_id = (await bob.publish(again)).stream_id
            for name, heard in (("bob", at_bob), ("watcher", at_watcher), ("late", at_late)):
                await wait_for(lambda h=heard: h.speaker == again_id, f"{name} to see bob's new stream speak")
