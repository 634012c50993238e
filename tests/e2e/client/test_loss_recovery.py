"""Loss recovery through the real media worker process, with aiortc peers (the Python SDK).

5 % of the publisher's outgoing video RTP is dropped before it leaves the client (its
retransmissions pass), and 5 % of the video the subscriber receives is dropped on arrival.
The worker's own counters (its dump) show the recovery: upstream NACKs for the uplink gaps
and the lost packets arriving again (RTX), subscriber NACKs answered from the producer's
retransmission cache; the subscriber decodes the test pattern in order without a lasting gap.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from prometheus_client import generate_latest
from sdk_helpers import Recorder, auto_subscribe, session_for, wait_for

from salon.client import Publisher
from tests.conftest import RunningServer
from tests.e2e.lossy import (
    consumer_stats,
    drop_incoming,
    drop_outgoing,
    payload_type,
    producer_stats,
    router_dumps,
)
from tests.metrics import parse

pytestmark = pytest.mark.timeout(60)

LOSS = 0.05


async def test_lost_packets_both_ways_are_recovered_by_the_worker(media_server: RunningServer) -> None:
    server = media_server
    sid = server.session()
    seen = Recorder()
    async with session_for(server, sid) as alice, session_for(server, sid) as bob:
        auto_subscribe(bob, seen)
        publisher = Publisher("alice", audio=False)
        await alice.publish(publisher)
        await wait_for(lambda: len(seen.indices) >= 10, "alice's video at bob", timeout=20)
        assert publisher._pc is not None and bob._subscribe_peer is not None
        receiving = bob._subscribe_peer.pc

        uplink = drop_outgoing(publisher._pc, "video", LOSS)
        downlink = drop_incoming(receiving, "video", payload_type(receiving, "VP8"), LOSS)
        start = len(seen.indices)
        deadline = time.monotonic() + 35
        while len(uplink.dropped) < 12 or len(downlink.dropped) < 12 or len(seen.indices) < start + 100:
            assert time.monotonic() < deadline, (
                f"in 35 s: {len(uplink.dropped)} dropped up, {len(downlink.dropped)} down, "
                f"{len(seen.indices) - start} frames decoded"
            )
            await asyncio.sleep(0.1)
        uplink.active = downlink.active = False
        during = len(seen.indices)
        await wait_for(lambda: len(seen.indices) >= during + 30, "30 frames after the loss", timeout=15)
        await asyncio.sleep(1.0)  # the last NACKs and retransmissions settle
        routers = await router_dumps(server)

    (producer,) = producer_stats(routers, "video")
    (consumer,) = consumer_stats(routers, "video")
    lost_up, lost_down = len(uplink.dropped), len(downlink.dropped)
    summary = f"uplink lost {lost_up}, downlink lost {lost_down}; producer {producer}; consumer {consumer}"
    # Uplink: each gap NACKed upstream, and most lost packets arrived again (as RTX).
    assert producer["nacked_sequence_numbers"] >= lost_up, summary
    assert producer["rtx_received"] >= 0.8 * lost_up and producer["recovered"] >= 0.8 * lost_up, summary
    # Downlink: the subscriber's NACKs were answered from the cache.
    assert consumer["nacks_received"] > 0, summary
    assert consumer["retransmitted_from_cache"] >= 0.8 * lost_down, summary

    # The node's Prometheus metrics say the same, also once the call's consumers and
    # producers closed (their counts stay in the worker's totals).
    registry = server.thread.server.config.app.state.metrics_registry
    scrape = parse((await asyncio.to_thread(generate_latest, registry)).decode())
    assert scrape.value("salon_media_packets_lost_total") >= lost_up, summary
    assert scrape.value("salon_media_packets_recovered_total") >= 0.8 * lost_up, summary
    assert scrape.value("salon_media_nacks_received_total") >= consumer["nacks_received"] > 0, summary
    assert scrape.value("salon_media_packets_retransmitted_total") >= 0.8 * lost_down, summary
    assert scrape.value("salon_media_packets_forwarded_total") >= consumer["packets_sent"], summary

    # The subscriber decoded the pattern in order, without a lasting gap.
    frames = seen.indices[start:]
    assert frames == sorted(frames), f"frames out of order: {frames}"
    gaps = [b - a for a, b in itertools.pairwise(frames)]
    assert max(gaps) <= 20, f"a gap of {max(gaps)} frames while recovering ({summary})"
