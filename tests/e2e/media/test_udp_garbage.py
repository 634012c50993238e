"""The media worker's UDP ports against the internet's garbage, with a real call flowing.

The real server (one media worker process) forwards a publisher's video and audio to a
subscriber (real aiortc peers over signalling). A test socket on 127.0.0.1 then sends
datagrams to every UDP port of the worker's transports:

* one empty datagram: it used to reach aiortc's DTLS reader, which raised on ``data[0]``
  and ended the call within milliseconds as ``mediaStopped``;
* one-byte ``0x80`` datagrams: each used to log an ERROR with a traceback (``data[1]``);
* a few seconds of random, empty, truncated, oversized (to 64 KiB) and replayed datagrams
  (copies of the peers' own STUN, DTLS and SRTP datagrams, captured as they sent them).

Each time the call keeps flowing (the subscriber decodes new frames, nobody hears
``stream_destroyed``), the worker counts the drops (``datagrams_dropped`` in its dump), its
log stays quiet (no ERROR, no traceback, at most the one rate-limited report line; the
worker's stderr is captured with ``capfd``) and its memory does not grow materially.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pathlib
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from peers import Publisher, Subscriber, wait_for
from sfu_state import plane_of

from salon.media.channel import WorkerDump
from salon.server.config import ServerConfig
from salon.server.run import ServerThread
from salon.signalling.service import SignallingConfig
from tests.conftest import API_KEY, API_SECRET, RunningServer
from tests.wsclient import WsClient

pytestmark = pytest.mark.timeout(90)


@contextlib.contextmanager
def media_server(tmp_path: pathlib.Path) -> Iterator[RunningServer]:
    """The real server, started *inside* the test so that its worker process inherits the
    stderr ``capfd`` captures; the workers log at INFO (to see the rate-limited line)."""
    salon_logger = logging.getLogger("salon")
    level = salon_logger.level
    salon_logger.setLevel(logging.INFO)
    config = ServerConfig(
        port=0,
        data_dir=tmp_path,
        api_key=API_KEY,
        api_secret=API_SECRET,
        signalling=SignallingConfig(heartbeat_interval=1.0, heartbeat_timeout=15.0),
        workers=1,
    )
    try:
        with ServerThread(config) as thread:
            yield RunningServer(thread.url, API_KEY, API_SECRET, thread)
    finally:
        salon_logger.setLevel(level)


async def dump(server: RunningServer) -> WorkerDump:
    """The worker's counters with its routers' dumps, asked on the server's loop."""
    (worker,) = plane_of(server).pool.workers.values()
    return await asyncio.wrap_future(server.thread.run_coroutine(worker.dump(routers=True)))


def media_ports(worker: WorkerDump) -> list[int]:
    return [
        port
        for router in worker.router_dumps.values()
        for transport in router["transports"]
        for port in transport["ports"]
    ]


@dataclass
class Call:
    server: RunningServer
    publisher: Publisher
    subscriber: Subscriber
    watcher: WsClient
    captured: list[bytes] = field(default_factory=list)
    """Datagrams the two peers sent to the SFU (STUN, DTLS, SRTP), as they sent them."""

    def frames(self) -> int:
        return len(self.subscriber.media.indices)

    async def keeps_flowing(self, what: str, frames: int = 15) -> None:
        """The subscriber decodes ``frames`` new frames, and nobody heard stream_destroyed."""
        before = self.frames()
        await wait_for(lambda: self.frames() >= before + frames, 15, f"{frames} new frames {what}")
        destroyed = [m for m in self.watcher.messages if m["type"] == "stream_destroyed"]
        assert not destroyed, f"the stream ended {what}: {destroyed}"
        indices = self.subscriber.media.indices[before:]
        assert all(b > a for a, b in itertools.pairwise(indices)), indices


def capture(peer: Publisher | Subscriber, into: list[bytes]) -> None:
    """Copy every datagram ``peer`` sends (aioice's ``send_data`` and ``send_stun``)."""
    for transceiver in peer.pc.getTransceivers():
        connection = transceiver.sender.transport.transport._connection
        for protocol in connection._protocols:
            if getattr(protocol, "_captured", False):
                continue
            protocol._captured = True
            send_data, send_stun = protocol.send_data, protocol.send_stun

            async def data(payload: bytes, addr: Any, _send: Any = send_data) -> None:
                if len(into) < 2000:
                    into.append(bytes(payload))
                await _send(payload, addr)

            def stun(message: Any, addr: Any, _send: Any = send_stun) -> None:
                if len(into) < 2000:
                    into.append(bytes(message))
                _send(message, addr)

            protocol.send_data, protocol.send_stun = data, stun


@contextlib.asynccontextmanager
async def a_call(server: RunningServer) -> AsyncIterator[Call]:
    """Alice publishes video + audio, Bob subscribes; yields once Bob decodes frames."""
    sid = server.session()
    alice = await WsClient.join(server.url, sid, server.token(sid))
    bob = await WsClient.join(server.url, sid, server.token(sid))
    pub, sub = Publisher(), Subscriber()
    call = Call(server, pub, sub, bob)
    try:
        reply = await alice.request({"type": "publish", "sdp": await pub.offer()})
        assert reply["type"] == "published", reply
        capture(pub, call.captured)
        await pub.answer(reply["answer"])
        created = await bob.next("stream_created", timeout=15)
        reply = await bob.request(
            {"type": "subscribe", "stream_id": created["stream"]["stream_id"], "sdp": await sub.offer()}
        )
        assert reply["type"] == "subscribed", reply
        capture(sub, call.captured)
        await sub.answer(reply["answer"])
        await wait_for(lambda: call.frames() >= 10, 15, "the subscriber to decode 10 frames")
        yield call
    finally:
        await asyncio.gather(pub.close(), sub.close())
        await alice.close()
        await bob.close()


def worker_lines(capfd: pytest.CaptureFixture[str]) -> list[str]:
    """What the media worker wrote to stderr since the last call (its log lines and any
    traceback printed by the event loop)."""
    _out, err = capfd.readouterr()
    return [line for line in err.splitlines() if line.strip()]


def assert_quiet(lines: list[str]) -> None:
    """No error, no traceback, at most one report about dropped datagrams."""
    loud = [line for line in lines if " ERROR " in line or "Traceback" in line or " CRITICAL " in line]
    assert not loud, "the worker logged errors:\n" + "\n".join(lines[:40])
    reports = [line for line in lines if "dropped" in line and "datagrams" in line]
    assert len(reports) <= 1, reports


def sender() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    return sock


def send(sock: socket.socket, data: bytes, ports: list[int]) -> None:
    for port in ports:
        with contextlib.suppress(BlockingIOError):  # a full socket buffer: that one is lost
            sock.sendto(data, ("127.0.0.1", port))


async def test_an_empty_datagram_does_not_end_the_call(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with media_server(tmp_path) as server:
        async with a_call(server) as call:
            ports = media_ports(await dump(server))
            assert len(ports) == 2, ports  # the publish and the subscribe transport
            with sender() as sock:
                send(sock, b"", ports)
                await call.keeps_flowing("after an empty datagram to each media port")
            worker = await dump(server)
            assert worker.transports == 2 and worker.producers == 2 and worker.consumers == 2
            assert worker.datagrams_dropped.get("empty", 0) >= 2, worker.datagrams_dropped
            stats = [t["stats"] for r in worker.router_dumps.values() for t in r["transports"]]
            assert all(s["garbage_dropped"] >= 1 for s in stats), stats
        assert_quiet(worker_lines(capfd))


async def test_short_datagrams_are_counted_not_logged(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with media_server(tmp_path) as server:
        async with a_call(server) as call:
            ports = media_ports(await dump(server))
            setup = worker_lines(capfd)  # what the set-up logged
            with sender() as sock:
                for first in (0x80, 0xBF, 0x16, 0x00, 0x01, 0x40, 0xFF):
                    for _ in range(20):
                        send(sock, bytes([first]), ports)
                    await asyncio.sleep(0.01)
                await call.keeps_flowing("after 140 one-byte datagrams to each media port", frames=5)
            worker = await dump(server)
            lines = setup + worker_lines(capfd)
            assert_quiet(lines)
            # 280+ drops, one report (the first drop reports at once, the next a minute later).
            reports = [line for line in lines if "dropped" in line and "datagrams" in line]
            assert len(reports) == 1 and "INFO" in reports[0], lines
            dropped = worker.datagrams_dropped
            # Loopback does not lose datagrams here, but the socket buffers might: most counted.
            assert dropped.get("malformed", 0) + dropped.get("unknown", 0) >= 0.9 * 140 * len(ports), dropped
            assert dropped.get("unknown", 0) >= 0.9 * 40 * len(ports), dropped  # 0x40, 0xFF


RATE = 400
"""Garbage datagrams per second, over all the media ports."""


def garbage(rng: random.Random, captured: list[bytes]) -> bytes:
    """One datagram of network garbage: random, empty, truncated, oversized or replayed."""
    kind = rng.randrange(6)
    if kind == 0:  # random bytes, with a first byte of each RFC 7983 range
        first = rng.choice([0, 1, 3, 17, 20, 22, 63, 64, 79, 127, 128, 144, 191, 200, 255])
        return bytes([first]) + rng.randbytes(rng.randrange(0, 1400))
    if kind == 1:
        return b""
    if kind == 2:  # a real datagram cut short (inside its header, or anywhere)
        real = rng.choice(captured)
        return real[: rng.choice([1, 2, 11, 12, 13, 19, max(1, len(real) // 2)])]
    if kind == 3:  # oversized, to the largest UDP datagram over IPv4
        return bytes([rng.choice([0, 22, 128, 144])]) + rng.randbytes(rng.randrange(1500, 65507))
    return rng.choice(captured)  # replayed verbatim (twice as often as the others)


async def test_garbage_to_every_media_port_leaves_the_call_the_log_and_memory_alone(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """4 s at 400 datagrams per second over the worker's media ports, while a call flows."""
    rng = random.Random(7)
    with media_server(tmp_path) as server:
        async with a_call(server) as call:
            await call.keeps_flowing("before the garbage (warm-up)")
            before = await dump(server)
            ports = media_ports(before)
            assert len(ports) == 2 and len(call.captured) > 50, (ports, len(call.captured))
            kinds = {datagram[0] for datagram in call.captured if datagram}
            assert kinds & {0, 1} and kinds & set(range(128, 192)), f"captured first bytes: {kinds}"
            worker_lines(capfd)
            sent = 0
            started = time.monotonic()
            with sender() as sock:
                while (elapsed := time.monotonic() - started) < 4:
                    while sent < elapsed * RATE:  # catch up with the rate after each sleep
                        port = ports[sent % len(ports)]
                        send(sock, garbage(rng, call.captured), [port])
                        sent += 1
                    await asyncio.sleep(0.01)
                await call.keeps_flowing("after the garbage")
            after = await dump(server)
            lines = worker_lines(capfd)
        assert_quiet(lines)
        assert sent >= 3.5 * RATE, sent
        dropped = {
            k: after.datagrams_dropped.get(k, 0) - before.datagrams_dropped.get(k, 0)
            for k in after.datagrams_dropped
        }
        # Replayed DTLS and SRTP come from an address ICE never validated: "foreign".
        # Everything but a few replayed STUN requests (which aioice answers) is dropped.
        assert sum(dropped.values()) >= 0.9 * sent, (sent, dropped)
        assert dropped.get("empty", 0) > 50 and dropped.get("foreign", 0) > 100, dropped
        assert dropped.get("oversized", 0) > 50 and dropped.get("malformed", 0) > 50, dropped
        assert after.transports == 2 and after.consumers == 2
        growth = after.rss - before.rss
        assert growth < 8 * 1024 * 1024, f"the worker's RSS grew by {growth / 1e6:.1f} MB"
