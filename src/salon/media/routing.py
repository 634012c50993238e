"""Where an incoming packet goes: the routing tables of one transport, with no I/O.

A transport receives the RTP of all its producers and the RTCP about all its producers
and consumers on one bundled 5-tuple (the mediasoup "RtpListener"). :class:`RtpRoutes`
holds the tables and decides; the transport delivers:

* **RTP, known SSRC** (the hot path): ``routes.producers.get(header.ssrc)``, one dict
  lookup, done by the transport inline (the dict is public for that reason).
* **RTP, unknown SSRC** (once per new SSRC): :meth:`RtpRoutes.route_unknown` finds the sink
  from the packet's header extensions, in this order: the repaired-RID extension (RTX of a
  simulcast layer, RFC 8852 ``repaired-rtp-stream-id``), the RID extension (a simulcast
  layer, ``rtp-stream-id``), both scoped by the MID extension when present; then the MID
  extension alone (RFC 8843); then the payload type, if exactly one sink registered it (an
  offer without the mid extension). The decision is an :class:`RtpRoute`; the transport
  asks the sink to accept the SSRC and then :meth:`RtpRoutes.bind_ssrc` it.
* **RTCP**: by SSRC to producers (sender reports, BYE) and consumers (report blocks, NACK,
  PLI, FIR, REMB): :meth:`RtpRoutes.producer` / :meth:`RtpRoutes.consumer`.

Sinks are opaque here (generic ``P`` for what receives RTP, ``C`` for what receives
feedback), so routing is tested without producers, consumers or sockets. RID routes are
registered with :meth:`RtpRoutes.add_rid`, one sink per (mid, rid): a simulcast producer
registers one sink per layer (or itself for every layer).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from salon.media.rtp import RtpHeader, find_header_extension

__all__ = ["HeaderExtensionRoutes", "RouteReason", "RtpRoute", "RtpRoutes"]

P = TypeVar("P")
C = TypeVar("C")


class RouteReason(enum.Enum):
    """Why a packet went where it went."""

    SSRC = "ssrc"
    """Its SSRC was bound (announced in the offer or learnt from an earlier packet)."""
    REPAIRED_RID = "repaired-rid"
    """The repaired-RID extension: RTX of the layer with that RID."""
    RID = "rid"
    """The RID extension: the layer with that RID."""
    MID = "mid"
    """The MID extension."""
    PAYLOAD_TYPE = "payload-type"
    """The payload type, registered by exactly one sink."""


@dataclass(frozen=True, slots=True)
class RtpRoute(Generic[P]):
    """A routing decision for one RTP packet."""

    sink: P
    reason: RouteReason
    mid: str | None = None
    """The MID the packet carried, if any."""
    rid: str | None = None
    """The RID (or repaired RID) the packet carried, if any."""

    @property
    def repaired(self) -> bool:
        """Whether the packet is a retransmission (RTX) of the layer :attr:`rid`."""
        return self.reason is RouteReason.REPAIRED_RID


@dataclass(frozen=True, slots=True)
class HeaderExtensionRoutes:
    """The header-extension ids routing reads (one set per bundled transport)."""

    mid: int | None = None
    rid: int | None = None
    repaired_rid: int | None = None


def _text(value: bytes | None) -> str | None:
    return bytes(value).decode("ascii", "replace") if value else None


class RtpRoutes(Generic[P, C]):
    """The routing tables of one transport: producers' sinks (``P``) and consumers (``C``)."""

    def __init__(self) -> None:
        #: SSRC -> sink of RTP (and of RTCP sender reports / BYE about that SSRC).
        self.producers: dict[int, P] = {}
        #: SSRC (media or RTX) -> consumer, for subscriber feedback.
        self.consumers: dict[int, C] = {}
        self.extensions = HeaderExtensionRoutes()
        self._by_mid: dict[str, P] = {}
        self._by_pt: dict[int, P | None] = {}
        self._by_rid: dict[tuple[str, str], P] = {}

    # ----------------------------------------------------------------------------------------
    # Registration

    def add_producer(
        self,
        sink: P,
        *,
        mid: str | None,
        ssrcs: Iterable[int] = (),
        payload_types: Iterable[int] = (),
    ) -> None:
        """Route ``ssrcs``, ``mid`` and ``payload_types`` to ``sink``. A payload type two sinks
        register routes nowhere (it cannot tell them apart)."""
        for ssrc in ssrcs:
            self.producers[ssrc] = sink
        if mid is not None:
            self._by_mid[mid] = sink
        for pt in payload_types:
            self._by_pt[pt] = None if pt in self._by_pt else sink

    def add_rid(self, sink: P, *, mid: str, rid: str) -> None:
        """Route packets carrying ``rid`` (or repaired ``rid``) on ``mid`` to ``sink``."""
        self._by_rid[(mid, rid)] = sink

    def set_extensions(
        self, *, mid: int | None = None, rid: int | None = None, repaired_rid: int | None = None
    ) -> None:
        """Header-extension ids to route by; ``None`` keeps the current one."""
        current = self.extensions
        self.extensions = HeaderExtensionRoutes(
            mid=current.mid if mid is None else mid,
            rid=current.rid if rid is None else rid,
            repaired_rid=current.repaired_rid if repaired_rid is None else repaired_rid,
        )

    def bind_ssrc(self, ssrc: int, sink: P) -> None:
        """Route ``ssrc`` to ``sink`` from now on (after it accepted the SSRC)."""
        self.producers[ssrc] = sink

    def remove_producer(self, sink: P) -> None:
        """Forget every route to ``sink``."""
        for ssrc in [k for k, v in self.producers.items() if v is sink]:
            del self.producers[ssrc]
        for mid in [k for k, v in self._by_mid.items() if v is sink]:
            del self._by_mid[mid]
        for key in [k for k, v in self._by_rid.items() if v is sink]:
            del self._by_rid[key]
        for pt in [k for k, v in self._by_pt.items() if v is sink]:
            del self._by_pt[pt]

    def add_consumer(self, consumer: C, ssrcs: Iterable[int]) -> None:
        for ssrc in ssrcs:
            self.consumers[ssrc] = consumer

    def remove_consumer(self, consumer: C) -> None:
        for ssrc in [k for k, v in self.consumers.items() if v is consumer]:
            del self.consumers[ssrc]

    # ----------------------------------------------------------------------------------------
    # Decisions

    def producer(self, ssrc: int) -> P | None:
        return self.producers.get(ssrc)

    def consumer(self, ssrc: int) -> C | None:
        return self.consumers.get(ssrc)

    def route(self, data: bytes, header: RtpHeader) -> RtpRoute[P] | None:
        """Where RTP packet ``data`` (parsed as ``header``) goes; None: nowhere known."""
        sink = self.producers.get(header.ssrc)
        if sink is not None:
            return RtpRoute(sink, RouteReason.SSRC)
        return self.route_unknown(data, header)

    def route_unknown(self, data: bytes, header: RtpHeader) -> RtpRoute[P] | None:
        """Where a packet of an SSRC not bound yet goes, from its header extensions or its
        payload type (see the module docstring); None: nowhere. Never raises."""
        mid = rid = repaired = None
        ext = self.extensions
        if header.extension_length:
            try:
                if ext.mid is not None:
                    mid = _text(find_header_extension(data, header, ext.mid))
                if self._by_rid:
                    if ext.repaired_rid is not None:
                        repaired = _text(find_header_extension(data, header, ext.repaired_rid))
                    if ext.rid is not None and repaired is None:
                        rid = _text(find_header_extension(data, header, ext.rid))
            except ValueError:  # a truncated extension block: route by payload type only
                mid = rid = repaired = None
        if repaired is not None or rid is not None:
            wanted = repaired if repaired is not None else rid
            reason = RouteReason.REPAIRED_RID if repaired is not None else RouteReason.RID
            sink = self._rid_sink(mid, wanted)  # type: ignore[arg-type]
            if sink is not None:
                return RtpRoute(sink, reason, mid, wanted)
        if mid is not None:
            sink = self._by_mid.get(mid)
            if sink is not None:
                return RtpRoute(sink, RouteReason.MID, mid)
        sink = self._by_pt.get(header.payload_type)
        if sink is not None:
            return RtpRoute(sink, RouteReason.PAYLOAD_TYPE, mid)
        return None

    def _rid_sink(self, mid: str | None, rid: str) -> P | None:
        if mid is not None:
            return self._by_rid.get((mid, rid))
        # No MID in this packet: the RID alone, if only one m-line has it.
        found = [sink for (_, r), sink in self._by_rid.items() if r == rid]
        return found[0] if len(found) == 1 else None
