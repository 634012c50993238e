"""Media statistics of publishers and subscribers, from aiortc's ``getStats()`` plus the
SDK's own frame counters.

Round-trip time: a publisher gets it from the RTCP receiver reports the server sends back
about its media (``remote-inbound-rtp``). A subscriber has no such source: it only receives
RTP, and the RTCP sender reports it gets carry no round trip (that needs the server to time
the subscriber's own reports). So :meth:`Subscriber.get_stats
<salon.client.Subscriber.get_stats>` measures it directly, as ICE consent freshness does
(RFC 7675): one STUN binding request on the peer connection's selected candidate pair,
answered by the server's ICE agent, timed from send to reply. It is the media path's round
trip plus both ends' event-loop delay, measured at that call (not an average); None when no
reply came within a second (a lost request) or ICE is not connected.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aioice import stun

__all__ = ["PublisherStats", "RtpStats", "SubscriberStats"]


@dataclass(frozen=True, slots=True)
class RtpStats:
    """One media kind (audio or video) of one publisher or subscriber."""

    kind: str
    """``"audio"`` or ``"video"``."""
    packets: int
    """RTP packets sent (publisher) or received (subscriber)."""
    bytes: int | None
    """Bytes sent (publisher), or RTP payload bytes received (subscriber: counted by the SDK,
    aiortc reports none)."""
    bitrate: float | None
    """Bits per second since the previous ``get_stats()`` (0 on the first call); None when
    :attr:`bytes` is."""
    packets_lost: int
    """Packets lost: as reported back by the server (publisher) or seen missing (subscriber)."""
    jitter: float | None
    """Interarrival jitter in RTP timestamp units, when known."""
    round_trip_time: float | None
    """Seconds: for publishers from the server's RTCP receiver reports, for subscribers one
    STUN round trip on the media path timed during ``get_stats()`` (see the module
    docstring); None when unknown."""
    frame_rate: float | None = None
    """Video frames per second sent or decoded since the previous ``get_stats()``."""
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class PublisherStats:
    audio: RtpStats | None
    video: RtpStats | None
    bitrate: float
    """All media and RTCP sent on the peer connection, bits per second since the previous call."""


@dataclass(frozen=True, slots=True)
class SubscriberStats:
    audio: RtpStats | None
    video: RtpStats | None
    bitrate: float
    """This subscription's media payload (audio + video), bits per second since the previous
    call (all of a session's subscribers share one peer connection, whose total would mix
    them)."""


class _Rates:
    """Turns cumulative counters into per-second rates between two calls."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def rate(self, key: str, value: float) -> float:
        now = time.monotonic()
        previous = self._last.get(key)
        self._last[key] = (now, value)
        if previous is None:
            return 0.0
        elapsed = now - previous[0]
        return (value - previous[1]) / elapsed if elapsed > 0 else 0.0


def collect(
    report: Any,
    rates: _Rates,
    *,
    outbound: bool,
    frames: int,
    size: tuple[int, int] | None,
) -> dict[str, RtpStats]:
    """Build :class:`RtpStats` per kind from an aiortc stats report."""
    by_kind: dict[str, RtpStats] = {}
    remote: dict[str, Any] = {}
    for stat in report.values():
        if stat.type == "remote-inbound-rtp":
            remote[stat.kind] = stat
    for stat in report.values():
        wanted = "outbound-rtp" if outbound else "inbound-rtp"
        if stat.type != wanted:
            continue
        kind = stat.kind
        packets = stat.packetsSent if outbound else stat.packetsReceived
        nbytes = stat.bytesSent if outbound else getattr(stat, "bytesReceived", None)
        back = remote.get(kind)
        lost = (back.packetsLost if back is not None else 0) if outbound else stat.packetsLost
        rtt = back.roundTripTime if back is not None else None
        jitter = (back.jitter if back is not None else None) if outbound else stat.jitter
        video = kind == "video"
        by_kind[kind] = RtpStats(
            kind=kind,
            packets=packets,
            bytes=nbytes,
            bitrate=None if nbytes is None else rates.rate(f"{kind}-bytes", nbytes) * 8,
            packets_lost=max(0, lost),
            jitter=None if jitter is None else float(jitter),
            round_trip_time=rtt,
            frame_rate=rates.rate("frames", frames) if video else None,
            width=size[0] if video and size else None,
            height=size[1] if video and size else None,
        )
    return by_kind


async def ice_round_trip_time(pc: Any, timeout: float = 1.0) -> float | None:
    """Seconds for one STUN binding request on ``pc``'s selected ICE candidate pair to be
    answered (a consent-freshness check, RFC 7675), or None (not connected, no reply in
    ``timeout``). All media of a salon peer connection shares one (bundled) transport.

    Uses aiortc 1.16 / aioice 0.13 internals: ``RTCIceTransport._connection``,
    ``Connection._nominated``, ``build_request`` and ``StunProtocol.request``.
    """
    transceivers = pc.getTransceivers()
    if not transceivers:
        return None
    connection = transceivers[0].receiver.transport.transport._connection
    pairs = list(getattr(connection, "_nominated", {}).values())
    if not pairs or connection.remote_password is None:
        return None
    pair = pairs[0]
    request = connection.build_request(pair, nominate=False)
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await pair.protocol.request(
                request,
                pair.remote_addr,
                integrity_key=connection.remote_password.encode("utf8"),
                retransmissions=0,
            )
    except (stun.TransactionError, TimeoutError, ConnectionError, OSError):
        return None
    return time.monotonic() - start


def transport_bitrate(report: Any, rates: _Rates, *, outbound: bool) -> float:
    """Bits per second over the peer connection's transports since the previous call."""
    total = sum(
        (stat.bytesSent if outbound else stat.bytesReceived)
        for stat in report.values()
        if stat.type == "transport"
    )
    return rates.rate("transport-bytes", total) * 8
