"""Media across the nodes of a cluster: node-to-node pipes, SRTP on the wire (issue 14).

Three ``salon serve`` nodes with media (one worker each) on one real Redis and one real
PostgreSQL. A Python SDK client on node 1 publishes the numbered test pattern; SDK subscribers
on nodes 2 and 3 decode its frames, in order: each of those nodes asked node 1 over Redis for a
pipe, SRTP-protected. The test sniffs the loopback (root: an ``AF_PACKET`` socket) and finds
the pipe's datagrams encrypted (only the key sent through Redis recovers the packet), and a
forged plain-RTP datagram with the sending end's own source address (a raw IP socket) dropped
as unauthenticated. The last subscriber on node 3 leaving closes that pipe's both ends;
``kill -9`` of node 3 closes node 1's sending end toward it; ``kill -9`` of node 1 ends the
stream on the others and closes node 2's receiving end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import redis
from salon.client import Publisher, Session, StreamDropped, StreamReason, Subscriber, TestPatternSource
from salon.cluster.node import list_nodes
from salon.media.pipe import PipeKeys
from salon.media.rtp import build_rtp
from tests.e2e.client.sdk_helpers import Recorder
from tests.functional.test_cluster import API_KEY, API_SECRET, auth, create_session, token
from tests.postgres import postgres_cluster_fixture, postgres_url_fixture  # noqa: F401
from tests.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.serveproc import ServeProcess, start_all

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="sniffs and forges loopback packets: needs root"),
]

LOOPBACK = ["127.0.0.1"]


@pytest.fixture
def media_nodes(tmp_path: pathlib.Path, redis_url: str, postgres_url: str) -> Iterator[list[ServeProcess]]:
    nodes = []
    for i in (1, 2, 3):
        args = ["--workers", "1", "--redis-url", redis_url, "--database-url", postgres_url]
        args += ["--node-name", f"n{i}", "--node-address", "127.0.0.1"]
        node = ServeProcess(tmp_path / f"n{i}", API_KEY, API_SECRET, args)
        node.env["SALON_DEBUG_ENDPOINTS"] = "1"
        nodes.append(node)
    with contextlib.ExitStack() as stack:
        yield start_all(stack, nodes)


async def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await asyncio.sleep(0.05)


async def pipes_of(node: ServeProcess) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=node.url, timeout=20) as http:
        r = await http.get("/debug/processes", params={"pipes": 1}, headers=auth())
        assert r.status_code == 200, r.text
        pipes: list[dict[str, Any]] = r.json()["pipes"]
        return [p for p in pipes if not p["closed"]]


async def wait_pipes(
    node: ServeProcess, what: str, check: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        pipes = await pipes_of(node)
        if check(pipes):
            return pipes
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {pipes}"
        await asyncio.sleep(0.2)


async def frames(seen: Recorder, more: int, what: str) -> None:
    before = len(seen.indices)
    await wait_for(lambda: len(seen.indices) >= before + more, what, timeout=90)
    tail = seen.indices[before:]
    assert tail == sorted(tail), f"{what}: frames out of order {tail}"


async def subscribe(session: Session, stream_id: str) -> tuple[Subscriber, Recorder]:
    await wait_for(lambda: stream_id in session.streams, f"{stream_id} to reach the subscriber")
    seen = Recorder()
    subscriber = Subscriber(session.streams[stream_id], on_video_frame=seen.on_video, audio=False)
    await session.subscribe(subscriber)
    return subscriber, seen


def sniff_udp(port: int, count: int, timeout: float) -> list[bytes]:
    """The payloads of the next ``count`` UDP datagrams to ``port`` on the loopback."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    out: list[bytes] = []
    try:
        sock.bind(("lo", 0))
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            try:
                frame, addr = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue  # the loopback shows each packet twice
            ip = frame[14:]
            if ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            udp = ip[(ip[0] & 15) * 4 :]
            if int.from_bytes(udp[2:4], "big") == port:
                out.append(bytes(udp[8:]))
    finally:
        sock.close()
    return out


def send_spoofed(source: tuple[str, int], target: tuple[str, int], payload: bytes) -> None:
    """One UDP datagram to ``target`` claiming to come from ``source`` (a raw IP socket)."""
    udp = struct.pack("!HHHH", source[1], target[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source[0]),
        socket.inet_aton(target[0]),
    )
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        raw.sendto(header + udp, (target[0], 0))
    finally:
        raw.close()


def pipe_keys_from_redis(redis_url: str, node: str, pipe_id: str) -> PipeKeys:
    """The receiving end's keys of ``pipe_id``, as its request to ``node`` carried them."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: list[tuple[str, dict[str, str]]] = client.xrange(f"salon:n:{node}:inbox")  # type: ignore[assignment]
        for _, fields in entries:
            body = json.loads(fields["request"])["body"]
            if body.get("op") == "pipe_out" and body.get("pipe_id") == pipe_id:
                send, receive = body["keys"]
                return PipeKeys.from_hex(receive, send)  # the sending end's, mirrored
    finally:
        client.close()
    raise AssertionError(f"no pipe_out request for {pipe_id} in {node}'s inbox")


async def test_a_stream_published_on_one_node_is_decoded_on_the_others_through_srtp_pipes(
    media_nodes: list[ServeProcess], redis_url: str
) -> None:
    n1, n2, n3 = media_nodes
    session_id = await create_session(n1.url)

    def client(node: ServeProcess) -> Session:
        return Session(session_id, token(session_id), node.url, ice_addresses=LOOPBACK)

    async with client(n1) as alice, client(n2) as bob, client(n3) as carol:
        publisher = Publisher(
            "alice", audio=False, video_source=TestPatternSource(width=320, height=240, frame_rate=15)
        )
        stream_id = (await alice.publish(publisher)).stream_id
        _, bob_seen = await subscribe(bob, stream_id)
        carol_sub, carol_seen = await subscribe(carol, stream_id)
        await frames(bob_seen, 10, "bob (node 2) to decode alice's frames (node 1)")
        await frames(carol_seen, 10, "carol (node 3) to decode alice's frames (node 1)")
        # A node's published load counts its media work: bob's node and carol's have one
        # connection and one consumer each (and their workers' CPU), so 2 points or more.
        deadline = time.monotonic() + 10
        while True:
            loads = {name: r.load for name, r in await list_nodes(redis_url) if r is not None}
            if loads.get("n2", 0) >= 2 and loads.get("n3", 0) >= 2:
                break
            assert time.monotonic() < deadline, f"the consumers are not in the nodes' loads: {loads}"
            await asyncio.sleep(0.1)

        # One sending end per receiving node on node 1, one receiving end on each; all SRTP.
        out = await wait_pipes(n1, "2 sending ends on node 1", lambda ps: len(ps) == 2)
        assert all(p["sending"] and p["srtp"] and p["stats"]["packets_sent"] > 0 for p in out), out
        # Feedback comes back through each, authenticated: the subscribing side's key-frame
        # request (its consumer's first), its RR + REMB.
        await wait_pipes(
            n1,
            "a key-frame request and a REMB back through both pipes",
            lambda ps: all(
                p["stats"]["key_frame_requests"] >= 1
                and p["stats"]["remb_bitrate"] > 0
                and p["stats"]["auth_failed"] == 0
                for p in ps
            ),
        )
        (into_2,) = await pipes_of(n2)
        (into_3,) = await pipes_of(n3)
        for end in (into_2, into_3):
            assert not end["sending"] and end["srtp"] and end["stream_id"] == stream_id
            assert end["stats"]["packets_received"] > 0 and end["stats"]["auth_failed"] == 0
        assert {p["id"] for p in out} == {into_2["id"], into_3["id"]}

        # On the wire: SRTP. The payload is only readable with the key sent through Redis.
        wire = await asyncio.to_thread(sniff_udp, into_2["port"], 20, 30.0)
        media = [d for d in wire if not 192 <= d[1] <= 223]
        assert media, f"no RTP to node 2's pipe end among {len(wire)} datagrams"
        keys = pipe_keys_from_redis(redis_url, "n1", into_2["id"])
        wrong = PipeKeys(PipeKeys.generate(), PipeKeys.generate()).contexts()
        for datagram in media:
            clear = keys.contexts().unprotect(datagram)
            assert clear is not None, "a pipe datagram that the pipe's key does not authenticate"
            assert len(datagram) == len(clear) + 16, "SRTP (AES-GCM) adds its 16-byte tag"
            assert datagram[12:] != clear[12:] + datagram[len(clear) :], "the payload is encrypted"
            assert wrong.unprotect(datagram) is None

        # A plain RTP datagram from the sending end's own address is dropped (not authentic);
        # one from any other address too (foreign).
        forged = build_rtp(payload_type=96, sequence_number=1, timestamp=0, ssrc=0x1234, payload=b"\x90" * 40)
        sender = (into_2["peer"][0], int(into_2["peer"][1]))
        await asyncio.to_thread(send_spoofed, sender, ("127.0.0.1", into_2["port"]), forged)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            stranger.sendto(forged, ("127.0.0.1", into_2["port"]))
        finally:
            stranger.close()
        await wait_pipes(
            n2,
            "the forged datagrams to be dropped",
            lambda ps: (
                len(ps) == 1 and ps[0]["stats"]["auth_failed"] >= 1 and ps[0]["stats"]["foreign_dropped"] >= 1
            ),
        )
        await frames(bob_seen, 10, "bob to keep decoding")
        async with httpx.AsyncClient(timeout=20) as http:
            metrics = (await http.get(n2.metrics_url)).text
        assert any(
            line.startswith("salon_media_datagrams_dropped_total{")
            and 'kind="pipe_unauthenticated"' in line
            and float(line.rsplit(" ", 1)[1]) >= 1
            for line in metrics.splitlines()
        ), "node 2's metrics count the unauthenticated datagram"

        # The last subscriber on node 3 leaves: that pipe closes, both ends.
        await carol.unsubscribe(carol_sub)
        await wait_pipes(n3, "node 3's receiving end to close", lambda ps: ps == [])
        await wait_pipes(
            n1, "node 1's end toward node 3 to close", lambda ps: [p["id"] for p in ps] == [into_2["id"]]
        )
        await frames(bob_seen, 10, "bob to keep decoding after carol left")

        # Carol subscribes again (a new pipe), then node 3 dies: node 1 notices through the
        # registry and closes its sending end toward node 3; bob's pipe is untouched.
        _, carol_again = await subscribe(carol, stream_id)
        await frames(carol_again, 5, "carol to decode through a new pipe")
        toward_3 = await wait_pipes(n1, "a new end toward node 3", lambda ps: len(ps) == 2)
        assert into_3["id"] not in {p["id"] for p in toward_3}
        os.kill(n3.pid, signal.SIGKILL)
        await wait_pipes(
            n1,
            "node 1's end toward the dead node 3 to close",
            lambda ps: [p["id"] for p in ps] == [into_2["id"]],
        )
        await frames(bob_seen, 10, "bob to keep decoding after node 3 died")

        # Node 1 dies: the stream ends for the others (through the cluster's death handling)
        # and node 2's receiving end closes.
        dropped: list[StreamDropped] = []
        bob.on(StreamDropped, dropped.append)
        os.kill(n1.pid, signal.SIGKILL)
        await wait_for(lambda: dropped, "bob to learn the stream ended", timeout=60)
        assert [(e.stream.stream_id, e.reason) for e in dropped] == [
            (stream_id, StreamReason.NETWORK_DISCONNECTED)
        ]
        await wait_pipes(n2, "node 2's receiving end to close", lambda ps: ps == [])
