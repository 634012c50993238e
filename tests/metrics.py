"""Scraping a node's Prometheus metrics, and checking that they follow a real call.

Reusable against any number of nodes: :func:`check_call_moves_metrics` takes the node the
publisher connects to and the node the subscriber connects to, which may be the same node
(tests/functional/test_metrics.py) or two nodes of a cluster, each scraped on its own metrics
address. Each check names the node and the metric that did not move.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from salon.client import Publisher, Session, StreamReceived, Subscriber, TestPatternSource, ToneSource

LOOPBACK = ["127.0.0.1"]


@dataclass(frozen=True)
class Scrape:
    """One scrape's samples: (name, labels, value)."""

    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def has(self, name: str, **labels: str) -> bool:
        return any(
            sample == name and all(sample_labels.get(k) == v for k, v in labels.items())
            for sample, sample_labels, _ in self.samples
        )


def parse(text: str) -> Scrape:
    return Scrape(
        [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
    )


@dataclass(frozen=True)
class Node:
    """A running node as a test reaches it."""

    url: str
    """The main HTTP server (REST, signalling)."""
    metrics_url: str
    """Its metrics address (``salon metrics on …``)."""
    name: str
    """Its ``--node-name``: the ``node`` label of its series."""
    token: str | None = None
    """The metrics token, when ``metrics_url`` is ``/metrics`` on the main port."""

    def scrape(self) -> Scrape:
        headers = {} if self.token is None else {"Authorization": f"Bearer {self.token}"}
        response = httpx.get(self.metrics_url, headers=headers, timeout=15)
        assert response.status_code == 200, (self.name, response.status_code, response.text[:500])
        scrape = parse(response.text)
        assert scrape.value("salon_scrape_complete", node=self.name) == 1, f"{self.name}: scrape incomplete"
        return scrape

    async def wait_for(self, what: str, check: Callable[[Scrape], bool], timeout: float = 60.0) -> Scrape:
        """Scrape until ``check`` holds (every 0.5 s); fail naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            scrape = await asyncio.to_thread(self.scrape)
            if check(scrape):
                return scrape
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {what} not seen within {timeout:g} s")
            await asyncio.sleep(0.5)


FORWARDED = "salon_media_packets_forwarded_total"
RECEIVED = "salon_media_packets_received_total"


async def check_call_moves_metrics(
    publisher_node: Node, subscriber_node: Node, session_id: str, token: Callable[[], str]
) -> None:
    """A publisher (test pattern and tone) on ``publisher_node`` and a subscriber on
    ``subscriber_node`` in ``session_id`` (``token()`` mints a publisher token): the nodes'
    metrics follow the call. Connections, streams and consumers appear, the publisher's node
    receives packets, the subscriber's node forwards them, its counter keeps growing between
    two scrapes while media flows; after the call, the gauges are back and no counter went
    down."""
    nodes = {publisher_node.name: publisher_node, subscriber_node.name: subscriber_node}
    before = {name: await asyncio.to_thread(node.scrape) for name, node in nodes.items()}
    frames = 0

    def on_frame(_frame: object) -> None:
        nonlocal frames
        frames += 1

    async with (
        Session(session_id, token(), publisher_node.url, ice_addresses=LOOPBACK) as publishing,
        Session(session_id, token(), subscriber_node.url, ice_addresses=LOOPBACK) as subscribing,
    ):

        async def subscribe(event: StreamReceived) -> None:
            await subscribing.subscribe(Subscriber(event.stream, on_video_frame=on_frame))

        subscribing.on(StreamReceived, subscribe)
        await publishing.publish(
            Publisher("metrics", video_source=TestPatternSource(), audio_source=ToneSource(440.0))
        )
        pub, sub = publisher_node, subscriber_node
        same = pub is sub or pub.name == sub.name
        await pub.wait_for(
            "the publisher's connection and stream",
            lambda s: (
                s.value("salon_connections", node=pub.name) >= (2 if same else 1)
                and s.value("salon_streams", node=pub.name) >= 1
            ),
        )
        first = await sub.wait_for(
            "the subscriber's connection, two consumers and forwarded packets",
            lambda s: (
                s.value("salon_connections", node=sub.name) >= (2 if same else 1)
                and s.value("salon_consumers", node=sub.name) >= 2
                and s.value(FORWARDED, node=sub.name) > before[sub.name].value(FORWARDED, node=sub.name)
            ),
        )
        await pub.wait_for(
            "packets received from the publisher",
            lambda s: s.value(RECEIVED, node=pub.name) > before[pub.name].value(RECEIVED, node=pub.name) + 50,
        )
        # While media flows, the counters keep moving: a second scrape finds more.
        forwarded = first.value(FORWARDED, node=sub.name)
        second = await sub.wait_for(
            "forwarded packets growing between two scrapes",
            lambda s: (
                s.value(FORWARDED, node=sub.name) > forwarded + 100
                and s.value("salon_media_bytes_forwarded_total", node=sub.name)
                > first.value("salon_media_bytes_forwarded_total", node=sub.name)
            ),
        )
        assert frames > 0, "the subscriber decoded no frame"
        expected = {pub.name: {"connect", "publish"}}
        expected.setdefault(sub.name, set()).update({"connect", "subscribe"})
        for name, types in expected.items():
            now = second if name == sub.name else await asyncio.to_thread(nodes[name].scrape)
            for kind in types:
                counted = now.value("salon_signalling_messages_received_total", node=name, type=kind)
                earlier = before[name].value("salon_signalling_messages_received_total", node=name, type=kind)
                assert counted > earlier, f"{name}: the {kind} message was not counted"
            assert now.value("salon_signalling_messages_sent_total", node=name, type="connected") > before[
                name
            ].value("salon_signalling_messages_sent_total", node=name, type="connected")
    # The call ended: nobody is connected, nothing is consumed; the counters did not go down.
    after: dict[str, Scrape] = {}
    for name, node in nodes.items():
        after[name] = await node.wait_for(
            "the call's connections and consumers gone",
            lambda s, n=name: (
                s.value("salon_connections", node=n) == 0
                and s.value("salon_consumers", node=n) == 0
                and s.value("salon_sessions", node=n) == 0
            ),
        )
        for counter in (FORWARDED, RECEIVED, "salon_media_bytes_forwarded_total"):
            assert after[name].value(counter, node=name) >= before[name].value(counter, node=name), counter
    assert after[sub.name].value(FORWARDED, node=sub.name) >= second.value(FORWARDED, node=sub.name), (
        "a closed consumer's packets must stay counted"
    )
