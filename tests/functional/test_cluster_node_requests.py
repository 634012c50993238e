"""Requests between nodes on a real redis-server (:mod:`salon.cluster.pipes`): a reply, the
other node's error, a timeout when a registered node does not answer, a prompt failure when
the node is not registered or dies while asked, and the watch on the nodes pipes go to."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import pytest

from salon.archive.service import ArchiveService
from salon.cluster import archives as cluster_archives
from salon.cluster.archives import ARCHIVE_FILE, ArchiveForwarding
from salon.cluster.node import ClusterNode, list_nodes
from salon.cluster.pipes import NodeMediaLink, inbox_key, pipe_address_problem
from salon.errors import NotFoundError, UnavailableError
from salon.media.plane import NodeRequestFailed
from salon.store import ArchiveRecord
from tests.postgres import free_port
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(120)

SECRET_KEY = "5e" * 30


async def test_a_request_gets_the_other_nodes_reply_its_error_or_a_timeout(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def handle(origin: str, body: dict[str, Any]) -> dict[str, Any]:
        seen.append((origin, body))
        if body["op"] == "missing":
            raise NotFoundError("no stream s1 here")
        return {"port": 4242, "echo": body["keys"]}

    async def refuse(origin: str, body: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("node b is never asked")

    a = NodeMediaLink(ClusterNode(redis_url, "a", "127.0.0.1"), handle)
    b = NodeMediaLink(ClusterNode(redis_url, "b", "127.0.0.1"), refuse)
    mute = ClusterNode(redis_url, "mute", "127.0.0.1")  # registered, reads no requests
    await a.node.start(_ignore)
    await mute.start(_ignore)
    mute_stopped = False
    await a.start()
    await b.start()
    try:
        reply = await b.request("a", {"op": "pipe_out", "keys": [SECRET_KEY, SECRET_KEY]})
        assert reply == {"port": 4242, "echo": [SECRET_KEY, SECRET_KEY]}
        assert seen == [("b", {"op": "pipe_out", "keys": [SECRET_KEY, SECRET_KEY]})]

        with pytest.raises(NodeRequestFailed) as failed:
            await b.request("a", {"op": "missing", "keys": []})
        assert failed.value.code == "not_found" and "no stream s1 here" in str(failed.value)

        started = time.monotonic()
        with pytest.raises(NodeRequestFailed) as timed_out:
            await b.request("mute", {"op": "pipe_out"}, timeout=1.0)
        assert timed_out.value.code == "timeout"
        assert time.monotonic() - started < 10, "a request nobody answers fails in bounded time"

        with pytest.raises(NodeRequestFailed) as unknown:
            await b.request("nobody", {"op": "pipe_out"}, timeout=30.0)
        assert unknown.value.code == "node_gone", "a node not in the registry is not waited for"

        # A node that dies while asked (its registry record goes): the request fails then,
        # not at its 30 s deadline.
        asked = asyncio.get_running_loop().create_task(b.request("mute", {"op": "pipe_out"}, timeout=30.0))
        deadline = time.monotonic() + 15
        while not await mute.client.xlen(inbox_key("mute")):  # the request is in its inbox
            assert time.monotonic() < deadline, "the request never reached the inbox"
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await mute.stop()
        mute_stopped = True
        with pytest.raises(NodeRequestFailed) as died:
            await asyncio.wait_for(asked, 15)
        assert died.value.code == "node_gone"
        assert time.monotonic() - started < 15
        assert b.requests_failed == 4 and a.requests_served == 2
    finally:
        await a.stop()
        await b.stop()
        await a.node.stop()
        await b.node.stop()
        if not mute_stopped:
            await mute.stop()
    assert SECRET_KEY not in caplog.text, "pipe keys are never logged"


async def _ignore(*_: object) -> None:
    """A bus entry handler for nodes that follow no session."""


async def test_a_node_closes_its_pipes_toward_a_node_without_a_registry_record(redis_url: str) -> None:
    gone: list[str] = []
    watched = {"ghost"}

    async def handle(origin: str, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    def lost(name: str) -> None:
        gone.append(name)
        watched.discard(name)

    live = ClusterNode(redis_url, "alive", "127.0.0.1")
    await live.start(lambda *_: asyncio.sleep(0))
    watched.add("alive")
    link = NodeMediaLink(
        ClusterNode(redis_url, "watcher", "127.0.0.1"), handle, watched=lambda: set(watched), gone=lost
    )
    await link.start()
    try:
        deadline = time.monotonic() + 15
        while not gone:
            assert time.monotonic() < deadline, "the gone node was not noticed"
            await asyncio.sleep(0.05)
        rounds = link.watch_rounds
        while link.watch_rounds < rounds + 2:  # two more rounds: the live node stays watched
            assert time.monotonic() < deadline + 15, "the watch stopped"
            await asyncio.sleep(0.05)
        assert gone == ["ghost"] and watched == {"alive"}
    finally:
        await link.stop()
        await link.node.stop()
        await live.stop()


def test_a_node_address_pipes_cannot_use_is_reported() -> None:
    assert pipe_address_problem("10.0.0.11") is None and pipe_address_problem("::1") is None
    assert "not an IP address" in (pipe_address_problem("node-a.example") or "")
    assert "unspecified" in (pipe_address_problem("0.0.0.0") or "")


async def test_an_archive_file_on_a_node_that_cannot_be_read_is_a_503(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download of an archive whose file is on another node (local storage): that node's
    URL not answering, or no node answering that it has the file, is a 503 naming the node;
    the signed URL passed between the nodes is never logged."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(cluster_archives, "FILE_TIMEOUT", 1.0)
    signature = "ab" * 32
    signed = f"http://127.0.0.1:{free_port()}/v2/archive-download/a1?expires=1&signature={signature}"

    async def has_it(origin: str, body: dict[str, Any]) -> dict[str, Any]:
        assert body == {"op": ARCHIVE_FILE, "archive_id": "a1"}
        return {"url": signed}

    async def not_here(origin: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotFoundError("archive not found")

    holder = NodeMediaLink(ClusterNode(redis_url, "holder", "127.0.0.1"), has_it)
    other = NodeMediaLink(ClusterNode(redis_url, "other", "127.0.0.1"), not_here)
    asker = NodeMediaLink(ClusterNode(redis_url, "asker", "127.0.0.1"), not_here)
    mute = ClusterNode(redis_url, "mute", "127.0.0.1")  # registered, reads no requests
    links = [holder, other, asker]
    for link in links:
        await link.node.start(_ignore)
        await link.start()
    forwarding = ArchiveForwarding(asker, cast(ArchiveService, None))
    try:
        with pytest.raises(UnavailableError) as unreachable:
            await forwarding.file_elsewhere(_archive("a1"))
        assert unreachable.value.status == 503 and unreachable.value.code == "node_unavailable"
        assert "on node holder, which cannot be reached over HTTP" in unreachable.value.message

        await holder.stop()
        await holder.node.stop()
        links.remove(holder)
        await mute.start(_ignore)
        with pytest.raises(UnavailableError) as unanswered:
            await forwarding.file_elsewhere(_archive("a1"))
        message = unanswered.value.message
        assert "on the disk of the node that recorded it, which cannot be reached" in message, message
        assert "node mute did not answer" in message and "other" not in message, message
    finally:
        for link in links:
            await link.stop()
            await link.node.stop()
        await mute.stop()
    assert signature not in caplog.text, "a signed download URL was logged"


def _archive(archive_id: str) -> ArchiveRecord:
    return ArchiveRecord(
        archive_id=archive_id,
        api_key="k",
        session_id="s",
        name=None,
        status="available",
        reason="",
        created_at=0,
        updated_at=0,
        stopped_at=0,
        duration=1,
        size=100,
        output_mode="composed",
        stream_mode="auto",
        has_audio=True,
        has_video=True,
        resolution=None,
        layout="{}",
        streams="[]",
        multi_archive_tag=None,
        location=f"{archive_id}/archive.mp4",
    )


async def test_a_node_publishes_the_load_its_measure_samples(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``measure`` runs once a heartbeat in its own task (a failure is logged and the next one
    runs), and the record carries the load figure as of the last sample."""
    samples: list[float] = []

    async def measure() -> None:
        samples.append(time.monotonic())
        if len(samples) == 1:
            raise OSError("the first sample fails")

    node = ClusterNode(
        redis_url, "measured", "127.0.0.1", load=lambda: 10 * len(samples), measure=measure, timeout=1.0
    )
    await node.start(_ignore)
    try:
        deadline = time.monotonic() + 15
        while True:
            loads = {name: r.load for name, r in await list_nodes(redis_url) if r is not None}
            if loads.get("measured", 0) >= 30:
                break
            assert time.monotonic() < deadline, f"the measured load is not published: {loads}"
            await asyncio.sleep(0.05)
    finally:
        await node.stop()
    assert "measuring this node's load failed" in caplog.text and "the first sample fails" in caplog.text
