"""An archive started through one node of a cluster records a stream published on another
(issue 14).

Two ``salon serve`` nodes with media (one worker each, their own archivers, local archive
storage) on one real Redis and one real PostgreSQL. Alice publishes the numbered test pattern
through node 1; a watcher is connected through node 2 (subscribed to nothing). An individual
archive started over REST on node 2 records Alice's stream through a node-to-node pipe from
node 1 (as a subscriber on node 2 would get it), and a stream Alice publishes on node 1 after
the start as well. It is listed and stopped through node 1 (which forwards the stop to node 2,
the recording node); stopping it closes the pipes. Read through either node, the archive is
``available``, and its file holds Alice's frames, decoded and checked by their numbers, and
her tone. Then, with no client left on node 2, an archive started and stopped through node 2
is recorded by node 1 (the start and the stop forwarded there).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import pathlib
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import Any

import av
import httpx
import pytest

from salon.client import Publisher, Session, TestPatternSource, ToneSource, read_test_pattern_index
from tests.functional.test_cluster import API_KEY, API_SECRET, auth, create_session, token
from tests.functional.test_cluster_media import pipes_of, wait_pipes
from tests.postgres import free_port, postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess, start_all

pytestmark = pytest.mark.timeout(300)

LOOPBACK = ["127.0.0.1"]


@pytest.fixture
def archive_nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    with contextlib.ExitStack() as stack:
        processes, urls = [], []
        for i in (1, 2):
            port = free_port()
            args = ["--workers", "1", "--redis-url", redis_url, "--database-url", postgres_url]
            args += ["--node-name", f"n{i}", "--node-address", "127.0.0.1", "--port", str(port)]
            args += ["--node-url", f"http://127.0.0.1:{port}", "--placement-margin", "0"]
            node = ServeProcess(tmp_path / f"n{i}", API_KEY, API_SECRET, args)
            node.env["SALON_DEBUG_ENDPOINTS"] = "1"
            processes.append(node)
            urls.append(f"http://127.0.0.1:{port}")
        started = start_all(stack, processes)
        assert [node.url for node in started] == urls
        yield started


async def archive_of(node: ServeProcess, archive_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
        r = await http.get(f"/v2/project/{API_KEY}/archive/{archive_id}", headers=auth())
        assert r.status_code == 200, r.text
        archive: dict[str, Any] = r.json()
        return archive


async def ended(node: ServeProcess, archive_id: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        archive = await archive_of(node, archive_id)
        if archive["status"] in ("available", "failed"):
            return archive
        assert archive["status"] in ("started", "stopped", "paused"), archive
        assert time.monotonic() < deadline, (
            f"archive {archive_id} still {archive['status']} after {timeout} s"
        )
        await asyncio.sleep(0.2)


async def download(url: str) -> bytes:
    def get() -> bytes:
        with urllib.request.urlopen(url, timeout=30) as response:
            return bytes(response.read())

    return await asyncio.to_thread(get)


async def test_an_archive_started_on_one_node_records_a_stream_published_on_another(
    archive_nodes: list[ServeProcess],
) -> None:
    n1, n2 = archive_nodes
    session_id = await create_session(n1.url)

    def client(node: ServeProcess) -> Session:
        return Session(session_id, token(session_id), node.url, ice_addresses=LOOPBACK)

    async with client(n1) as alice, client(n2) as watcher:
        publisher = Publisher(
            "alice", audio=False, video_source=TestPatternSource(width=320, height=240, frame_rate=15)
        )
        stream_id = (await alice.publish(publisher)).stream_id
        deadline = time.monotonic() + 60
        while stream_id not in watcher.streams:
            assert time.monotonic() < deadline, "alice's stream never reached node 2"
            await asyncio.sleep(0.05)
        assert await pipes_of(n2) == [], "nobody on node 2 subscribes: no pipe yet"

        async with httpx.AsyncClient(base_url=n2.url, timeout=30) as http:
            r = await http.post(
                f"/v2/project/{API_KEY}/archive",
                headers=auth(),
                json={"sessionId": session_id, "outputMode": "individual", "name": "across nodes"},
            )
            assert r.status_code == 200, r.text
            archive_id = r.json()["id"]
            started = time.monotonic()

            # Node 2 asked node 1 for a pipe of the stream, for its archiver alone; record until
            # some 150 packets (several seconds of video) came through it.
            (into_2,) = await wait_pipes(
                n2,
                "node 2's receiving end of alice's stream to carry video",
                lambda ps: len(ps) == 1 and ps[0]["stats"]["packets_received"] >= 150,
            )
            assert into_2["stream_id"] == stream_id and into_2["srtp"], into_2
            # A stream published on node 1 after the start is recorded too (node 2 hears of it
            # on the session's bus): a tone, audio only.
            tone = Publisher("alice's tone", video=False, audio_source=ToneSource(440.0))
            tone_id = (await alice.publish(tone)).stream_id
            await wait_pipes(
                n2,
                "a second pipe, of the tone, for the archive",
                lambda ps: (
                    {p["stream_id"] for p in ps if p["stats"]["packets_received"] >= 100}
                    == {stream_id, tone_id}
                ),
            )
        # Listed and stopped through node 1, which does not record it: node 2 stops it.
        async with httpx.AsyncClient(base_url=n1.url, timeout=30) as http:
            listed = await http.get(
                f"/v2/project/{API_KEY}/archive", headers=auth(), params={"sessionId": session_id}
            )
            assert [a["id"] for a in listed.json()["items"]] == [archive_id], listed.text
            r = await http.post(f"/v2/project/{API_KEY}/archive/{archive_id}/stop", headers=auth())
            assert r.status_code == 200, r.text
            assert (r.json()["id"], r.json()["status"]) == (archive_id, "stopped"), r.json()
            recorded = time.monotonic() - started
            again = await http.post(f"/v2/project/{API_KEY}/archive/{archive_id}/stop", headers=auth())
            assert again.status_code == 409, again.text
        # The recording stopped: the pipe it held closes, both ends.
        await wait_pipes(n2, "node 2's receiving end to close", lambda ps: ps == [])
        await wait_pipes(n1, "node 1's sending end to close", lambda ps: ps == [])

        # Node 2 has no client in the session any more: an archive started through it is
        # started (and recorded) on node 1, which has; stopped through node 2, node 1 stops it.
        watcher_id = watcher.connection_id
        await watcher.disconnect()
        deadline = time.monotonic() + 60
        while watcher_id in alice.connections:
            assert time.monotonic() < deadline, "the watcher's leaving never reached node 1"
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=n2.url, timeout=60) as http:
            r = await http.post(
                f"/v2/project/{API_KEY}/archive",
                headers=auth(),
                json={"sessionId": session_id, "outputMode": "individual", "name": "forwarded"},
            )
            assert r.status_code == 200, r.text
            forwarded_id = r.json()["id"]
            assert (r.json()["name"], r.json()["status"]) == ("forwarded", "started"), r.json()
            work = n1.data_dir / "archives-work" / forwarded_id
            deadline = time.monotonic() + 60
            while sum(f.stat().st_size for f in work.rglob("*.webm")) < 40_000:
                assert time.monotonic() < deadline, f"node 1 records nothing in {work}"
                await asyncio.sleep(0.2)
            assert await pipes_of(n2) == [] and await pipes_of(n1) == [], "recorded where published"
            r = await http.post(f"/v2/project/{API_KEY}/archive/{forwarded_id}/stop", headers=auth())
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "stopped", r.json()
        forwarded = await ended(n2, forwarded_id)
        assert forwarded["status"] == "available", forwarded
        # Local storage: the file is on the recording node's disk, downloaded through it, or
        # through the other node (which streams it from there).
        local = await archive_of(n1, forwarded_id)
        assert local["url"].startswith(n1.url) and (n1.data_dir / "archives" / forwarded_id).is_dir()
        assert not (n2.data_dir / "archives" / forwarded_id).exists()
        recorded_bytes = await download(local["url"])
        through_other = (await archive_of(n2, forwarded_id))["url"]
        assert through_other.startswith(n2.url), through_other
        assert await download(through_other) == recorded_bytes, "the file read through node 2 differs"
        with zipfile.ZipFile(io.BytesIO(recorded_bytes)) as archive:
            pattern = archive.read(f"{stream_id}.webm")
        with av.open(io.BytesIO(pattern)) as container:
            decoded = [
                read_test_pattern_index(f.to_ndarray(format="gray")) for f in container.decode(video=0)
            ]
        assert len(decoded) >= 15 and decoded == sorted(set(decoded)), decoded

    done = await ended(n2, archive_id)
    assert done["status"] == "available", done
    through_1 = await archive_of(n1, archive_id)
    assert (through_1["status"], through_1["size"]) == ("available", done["size"]), through_1

    # Recorded on node 2, downloaded through node 1 too (the same bytes, streamed from node 2).
    assert done["url"].startswith(n2.url) and not (n1.data_dir / "archives" / archive_id).exists()
    recorded_bytes = await download(done["url"])
    assert len(recorded_bytes) == done["size"], (len(recorded_bytes), done["size"])
    through_1_bytes = await download(through_1["url"])
    assert through_1_bytes == recorded_bytes, "the file read through node 1 differs"
    with zipfile.ZipFile(io.BytesIO(recorded_bytes)) as archive:
        manifest = json.loads(archive.read(f"{archive_id}.json"))
        assert sorted(f["streamId"] for f in manifest["files"]) == sorted([stream_id, tone_id]), manifest
        video = archive.read(f"{stream_id}.webm")
        audio = archive.read(f"{tone_id}.webm")
    with av.open(io.BytesIO(audio)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert samples >= 48_000, f"{samples} samples of the tone: not even a second"
    with av.open(io.BytesIO(video)) as container:
        frames = list(container.decode(video=0))
    indices = [read_test_pattern_index(f.to_ndarray(format="gray")) for f in frames]
    assert len(frames) >= 15, f"{len(frames)} frames in {recorded:.1f} s of recording"
    assert indices == sorted(set(indices)), f"frames out of order or repeated: {indices}"
    gaps = [b - a for a, b in itertools.pairwise(indices)]
    assert max(gaps) <= 10, f"frames missing from the archive: {indices}"

    # The recording node gone, a download through the other one is a clear JSON error.
    n2.stop()
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(through_1["url"])
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "node_unavailable", r.json()
    assert "node that recorded it" in r.json()["message"], r.json()
    assert "signature=" not in n1.output + n2.output, "a download URL was logged"
