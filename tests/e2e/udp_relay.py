"""A UDP relay on 127.0.0.1 between one WebRTC peer and the server that drops RTP at random.

The peer is told the relay's port instead of the server's (its answer's candidates are
rewritten); the relay forwards every datagram both ways (STUN, DTLS, SRTP) and drops a
fraction of the peer's RTP packets of one payload type on the way to the server (the RTP
header is not encrypted by SRTP). Seeded, so a run drops the same share.
"""

from __future__ import annotations

import asyncio
import random
import re
import struct
from typing import Any

__all__ = ["LossyRelay", "relay_answer"]


class _Side(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)


class LossyRelay:
    """Forwards between a peer (whoever writes to :attr:`port`) and ``target``."""

    def __init__(self, target: tuple[str, int], *, payload_type: int, rate: float, seed: int = 3) -> None:
        self.target = target
        self.payload_type = payload_type
        self.rate = rate
        self.active = True
        self.dropped: list[int] = []
        """Sequence numbers dropped (of the payload type), in order."""
        self.forwarded = 0
        self._rng = random.Random(seed)
        self._peer: Any = None
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> LossyRelay:
        loop = asyncio.get_running_loop()
        self._front, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_peer), local_addr=("127.0.0.1", 0)
        )
        self._back, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_server), local_addr=("127.0.0.1", 0)
        )
        self.port = self._front.get_extra_info("sockname")[1]
        return self

    def _from_peer(self, data: bytes, addr: Any) -> None:
        self._peer = addr
        is_rtp = len(data) >= 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223
        if is_rtp and self.active and data[1] & 0x7F == self.payload_type and self._rng.random() < self.rate:
            self.dropped.append(struct.unpack_from("!H", data, 2)[0])
            return
        self.forwarded += 1
        assert self._back is not None
        self._back.sendto(data, self.target)

    def _from_server(self, data: bytes, addr: Any) -> None:
        if self._peer is not None and self._front is not None:
            self._front.sendto(data, self._peer)

    def close(self) -> None:
        for transport in (self._front, self._back):
            if transport is not None:
                transport.close()


async def relay_answer(sdp: str, codec: str, rate: float, relays: list[LossyRelay]) -> str:
    """``sdp`` (the server's answer) with each UDP candidate on 127.0.0.1 moved to a new
    :class:`LossyRelay` (appended to ``relays``) that drops ``rate`` of ``codec``'s packets."""
    found = re.search(rf"a=rtpmap:(\d+) {codec}/", sdp)
    assert found, f"no {codec} in the answer"
    payload_type = int(found.group(1))
    ports: dict[int, int] = {}
    for port in {
        int(p) for p in re.findall(r"^a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 (\d+) typ", sdp, re.M)
    }:
        relay = await LossyRelay(("127.0.0.1", port), payload_type=payload_type, rate=rate).start()
        relays.append(relay)
        ports[port] = relay.port
    assert ports, f"no candidate on 127.0.0.1 in the answer:\n{sdp}"

    def moved(match: re.Match[str]) -> str:
        return f"{match.group(1)}{ports[int(match.group(2))]}{match.group(3)}"

    return re.sub(r"^(a=candidate:\S+ \d+ udp \d+ 127\.0\.0\.1 )(\d+)( typ)", moved, sdp, flags=re.M)
