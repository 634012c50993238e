"""SubscribePeer: a session's one peer connection for receiving.

Every :class:`~salon.client.Subscriber` of a session receives on this peer connection: its
``recvonly`` transceivers are added, the whole connection is offered again, and the server
answers every m-line (docs/protocol.md §13.3), so all the streams a client watches share one
ICE + DTLS-SRTP transport instead of one each. Negotiations run one at a time
(:attr:`SubscribePeer.lock`): an offer is answered before the next is made.

Unsubscribing makes the subscriber's transceivers ``inactive`` (they stay in later offers,
answered ``inactive``) and stops their receivers, so no decoder thread is left running. aiortc
1.16 has no rollback: after a refused ``subscribe`` the local offer stays pending, its new
transceivers inactive, and the next negotiation replaces it.

Each ``track`` event is routed by the transceiver's mid to the subscriber that added it, and
so is the RTP of each new SSRC (:func:`~salon.client._media.route_rtp_by_mid`): the server
forwards a new subscription before aiortc has set up its receiver.
Received payload bytes are counted per receiver (aiortc reports no ``bytesReceived``), for
per-subscriber bitrates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiortc import RTCIceServer, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from salon.client._media import (
    bound_video_holes,
    complete_rejected_mlines,
    new_peer_connection,
    restrict_ice_addresses,
    route_rtp_by_mid,
)
from salon.client.errors import MediaError

if TYPE_CHECKING:
    from salon.client.subscriber import Subscriber

__all__ = ["SubscribePeer"]

logger = logging.getLogger(__name__)


class SubscribePeer:
    """The peer connection all of one session's subscribers receive on."""

    def __init__(self, ice_servers: Sequence[RTCIceServer], ice_addresses: Sequence[str] | None) -> None:
        self.pc = new_peer_connection(ice_servers)
        if ice_addresses is not None:
            restrict_ice_addresses(self.pc, ice_addresses)
        self.lock = asyncio.Lock()
        """Held for one offer/answer round (:meth:`offer` … :meth:`answer`)."""
        self.closed = False
        self._owners: dict[str, Subscriber] = {}
        self.received_bytes: dict[int, int] = {}
        """Payload bytes received, by ``id()`` of the receiver."""
        self.pc.on("track", self._on_track)

    def __repr__(self) -> str:
        return f"SubscribePeer({len(self._owners)} m-lines in use)"

    async def offer(
        self, subscriber: Subscriber, kinds: Iterable[str]
    ) -> tuple[str, list[RTCRtpTransceiver]]:
        """Add ``recvonly`` transceivers of ``kinds`` for ``subscriber``; the new offer's SDP."""
        transceivers = [self.pc.addTransceiver(kind, direction="recvonly") for kind in sorted(kinds)]
        route_rtp_by_mid(self.pc)  # the new m-lines' media may come before their receivers
        try:
            await self.pc.setLocalDescription(await self.pc.createOffer())
        except Exception as exc:
            for transceiver in transceivers:
                transceiver.direction = "inactive"
            raise MediaError(f"{subscriber!r}: cannot create an offer: {exc}") from exc
        for transceiver in transceivers:
            assert transceiver.mid is not None  # set by setLocalDescription
            self._owners[transceiver.mid] = subscriber
        return str(self.pc.localDescription.sdp), transceivers

    async def answer(self, subscriber: Subscriber, sdp: str) -> None:
        """Apply the server's answer to the last offer."""
        try:
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=complete_rejected_mlines(sdp), type="answer")
            )
        except Exception as exc:
            raise MediaError(f"{subscriber!r}: the server's answer cannot be applied: {exc}") from exc

    async def release(self, transceivers: Sequence[RTCRtpTransceiver]) -> None:
        """The client half of an unsubscribe: the transceivers go inactive, their receivers stop."""
        for transceiver in transceivers:
            transceiver.direction = "inactive"
            if transceiver.mid is not None:
                self._owners.pop(transceiver.mid, None)
            self.received_bytes.pop(id(transceiver.receiver), None)
        if not self.closed:
            await asyncio.gather(*(t.receiver.stop() for t in transceivers))

    def _on_track(self, track: MediaStreamTrack) -> None:
        transceiver = next((t for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        owner = None if transceiver is None or transceiver.mid is None else self._owners.get(transceiver.mid)
        if transceiver is None or owner is None:
            logger.warning("%r: a %s track nobody subscribed to", self, track.kind)
            return
        self._count_bytes(transceiver.receiver)
        if track.kind == "video":
            bound_video_holes(transceiver.receiver)
        owner._on_track(track, transceiver)

    def _count_bytes(self, receiver: Any) -> None:
        """Count the payload bytes ``receiver`` gets (aiortc 1.16: ``_handle_rtp_packet``)."""
        key = id(receiver)
        self.received_bytes[key] = 0
        handle = receiver._handle_rtp_packet
        counts = self.received_bytes

        async def counting(packet: Any, arrival_time_ms: int) -> None:
            if key in counts:
                counts[key] += len(packet.payload)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = counting

    async def close(self) -> None:
        """Close the peer connection (the server closes its transport on the DTLS close_notify)."""
        if self.closed:
            return
        self.closed = True
        self._owners.clear()
        await self.pc.close()
