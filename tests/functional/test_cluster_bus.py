"""The cluster's session bus on a real redis-server: a node cut off from Redis for a while
loses and reorders nothing, in either direction (it reads on from the last entry it saw, and
its own batches wait in its queue until Redis takes them)."""

from __future__ import annotations

import asyncio

import pytest

from salon.cluster.core import decode_batch, encode_batch
from salon.cluster.node import ClusterNode
from salon.protocol import SignalEvent
from salon.signalling.session import Deliver
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(120)


class Collector:
    def __init__(self) -> None:
        self.data: list[str] = []
        self.arrived = asyncio.Event()

    async def __call__(self, session_id: str, entry_id: str, fields: dict[str, str]) -> None:
        for action, _text in decode_batch(fields).actions:
            assert isinstance(action, Deliver) and isinstance(action.message, SignalEvent)
            self.data.append(action.message.data)
        self.arrived.set()

    async def until(self, count: int, within: float = 30.0) -> None:
        async def wait() -> None:
            while len(self.data) < count:
                self.arrived.clear()
                await self.arrived.wait()

        try:
            await asyncio.wait_for(wait(), within)
        except TimeoutError:
            raise AssertionError(f"{len(self.data)} of {count} entries after {within} s") from None


def publish(node: ClusterNode, session_id: str, data: str) -> None:
    event = SignalEvent(signal_type="seq", data=data, from_connection_id=None)
    fields, presence = encode_batch(node.name, None, [Deliver(event)])
    node.publish(session_id, fields, presence)


async def test_a_node_cut_off_from_redis_loses_and_reorders_nothing(redis_url: str) -> None:
    async with TcpProxy(redis_url) as proxy:
        port = proxy.url.rsplit(":", 1)[1]
        a = ClusterNode(redis_url, "a", "127.0.0.1")
        b = ClusterNode(f"redis://127.0.0.1:{port}/0", "b", "127.0.0.1")  # through the proxy
        seen_by_a, seen_by_b = Collector(), Collector()
        await a.start(seen_by_a)
        await b.start(seen_by_b)
        try:
            await a.follow("s1")
            await b.follow("s1")
            for i in range(20):
                publish(a, "s1", f"a{i}")
            await seen_by_b.until(20)

            proxy.freeze()  # b can neither read nor write
            for i in range(20, 50):
                publish(a, "s1", f"a{i}")
            for i in range(10):
                publish(b, "s1", f"b{i}")  # queued in b until Redis is back
            await seen_by_a.until(50)
            assert seen_by_a.data == [f"a{i}" for i in range(50)], "b's batches wait for Redis"
            proxy.thaw()

            await seen_by_b.until(60)
            await seen_by_a.until(60)
            expected = [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(10)]
            assert seen_by_a.data == expected
            assert seen_by_b.data == expected, "b read on from its last entry, in order"
        finally:
            await b.stop(flush_timeout=1.0)
            await a.stop(flush_timeout=1.0)
