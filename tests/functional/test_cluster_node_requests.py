"""Requests between nodes on a real redis-server (:mod:`salon.cluster.pipes`): a reply, the
other node's error, a timeout when nobody answers, and the watch on the nodes pipes go to."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from salon.cluster.node import ClusterNode
from salon.cluster.pipes import NodeMediaLink, pipe_address_problem
from salon.errors import NotFoundError
from salon.media.plane import NodeRequestFailed
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
            await b.request("nobody", {"op": "pipe_out"}, timeout=1.0)
        assert timed_out.value.code == "timeout"
        assert time.monotonic() - started < 10, "a request to a dead node fails in bounded time"
        assert b.requests_failed == 2 and a.requests_served == 2
    finally:
        await a.stop()
        await b.stop()
        await a.node.stop()
        await b.node.stop()
    assert SECRET_KEY not in caplog.text, "pipe keys are never logged"


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
