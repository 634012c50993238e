"""Packet loss injected at a client, to test the real media worker's loss recovery.

* :func:`drop_outgoing` wraps an aiortc peer connection's SRTP send (``RTCDtlsTransport.
  _send_rtp``, aiortc 1.16) and drops a fraction of one SSRC's RTP packets before they are
  encrypted: the publisher's uplink loses them, its retransmissions (RTX, another SSRC) pass.
* :func:`drop_incoming` wraps the receive side (``_handle_rtp_data``, after SRTP) and drops a
  fraction of the packets of one payload type: the subscriber's downlink loses them.
* :func:`router_dumps` reads the worker's own counters (producer and consumer stats).

Drops are drawn from a seeded generator, so a run is repeatable for the same packets.
"""

from __future__ import annotations

import asyncio
import random
import re
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtp import is_rtcp

from salon.media.plane import SfuMediaPlane
from tests.conftest import RunningServer


@dataclass
class Dropper:
    """Drops a fraction of the matching packets while :attr:`active`."""

    rate: float
    seed: int = 1
    active: bool = True
    passed: int = 0
    dropped: list[int] = field(default_factory=list)
    """Sequence numbers dropped, in order."""
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def drops(self, packet: bytes) -> bool:
        if not self.active:
            return False
        if self._rng.random() < self.rate:
            self.dropped.append(struct.unpack_from("!H", packet, 2)[0])
            return True
        self.passed += 1
        return False


def _dtls_transport(pc: RTCPeerConnection, kind: str) -> Any:
    (transceiver,) = [t for t in pc.getTransceivers() if t.kind == kind][:1]
    return transceiver.sender.transport


def drop_outgoing(pc: RTCPeerConnection, kind: str, rate: float, seed: int = 1) -> Dropper:
    """Drop ``rate`` of the RTP packets ``pc`` sends on its ``kind`` sender's own SSRC."""
    (transceiver,) = [t for t in pc.getTransceivers() if t.kind == kind][:1]
    ssrc = transceiver.sender._ssrc
    dtls = transceiver.sender.transport
    send: Callable[[bytes], Awaitable[None]] = dtls._send_rtp
    dropper = Dropper(rate, seed)

    async def lossy_send(data: bytes) -> None:
        if not is_rtcp(data) and struct.unpack_from("!I", data, 8)[0] == ssrc and dropper.drops(data):
            return
        await send(data)

    dtls._send_rtp = lossy_send
    return dropper


def payload_type(pc: RTCPeerConnection, codec: str) -> int:
    """The payload type of ``codec`` (e.g. ``"VP8"``) in ``pc``'s remote description."""
    assert pc.remoteDescription is not None
    found = re.search(rf"a=rtpmap:(\d+) {codec}/", pc.remoteDescription.sdp)
    assert found, f"no {codec} in the remote description"
    return int(found.group(1))


def drop_incoming(pc: RTCPeerConnection, kind: str, pt: int, rate: float, seed: int = 2) -> Dropper:
    """Drop ``rate`` of the RTP packets of payload type ``pt`` that ``pc`` receives."""
    dtls = _dtls_transport(pc, kind)
    handle: Callable[..., Awaitable[None]] = dtls._handle_rtp_data
    dropper = Dropper(rate, seed)

    async def lossy_handle(data: bytes, arrival_time_ms: int) -> None:
        if data[1] & 0x7F == pt and dropper.drops(data):
            return
        await handle(data, arrival_time_ms=arrival_time_ms)

    dtls._handle_rtp_data = lossy_handle
    return dropper


async def router_dumps(server: RunningServer) -> list[dict[str, Any]]:
    """Every router's dump (transports, producers and consumers with their stats) of every
    worker of ``server``, asked on the server's own loop."""
    plane = server.thread.server.config.app.state.media
    assert isinstance(plane, SfuMediaPlane)

    async def dump() -> list[dict[str, Any]]:
        dumps = [await w.dump(routers=True) for w in plane.pool.workers.values()]
        return [router for d in dumps for router in d.router_dumps.values()]

    return await asyncio.wrap_future(server.thread.run_coroutine(dump()))


def producer_stats(routers: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    producers = [p for r in routers for stream in r["streams"].values() for p in stream.values()]
    return [p["stats"] for p in producers if p["kind"] == kind]


def consumer_stats(routers: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [c["stats"] for r in routers for c in r["consumers"].values() if c["kind"] == kind]
