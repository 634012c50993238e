"""The routing unit: which sink an incoming RTP packet goes to (SSRC, repaired RID, RID, MID,
payload type), from bytes alone."""

from __future__ import annotations

from salon.media.routing import RouteReason, RtpRoute, RtpRoutes
from salon.media.rtp import RtpHeader, build_rtp, encode_one_byte_extensions, parse_rtp_header

MID_ID, RID_ID, RRID_ID = 4, 10, 11


def packet(ssrc: int, pt: int = 96, **ext: bytes) -> tuple[bytes, RtpHeader]:
    ids = {"mid": MID_ID, "rid": RID_ID, "rrid": RRID_ID}
    block = encode_one_byte_extensions([(ids[k], v) for k, v in ext.items()]) if ext else b""
    data = build_rtp(
        payload_type=pt, sequence_number=1, timestamp=0, ssrc=ssrc, payload=b"x", extensions=block
    )
    return data, parse_rtp_header(data)


def route(routes: RtpRoutes[str, str], ssrc: int, pt: int = 96, **ext: bytes) -> RtpRoute[str] | None:
    data, header = packet(ssrc, pt, **ext)
    return routes.route(data, header)


def two_tracks() -> RtpRoutes[str, str]:
    routes: RtpRoutes[str, str] = RtpRoutes()
    routes.add_producer("audio", mid="0", ssrcs=[1000], payload_types=[111])
    routes.add_producer("video", mid="1", payload_types=[96, 97])
    routes.set_extensions(mid=MID_ID, rid=RID_ID, repaired_rid=RRID_ID)
    return routes


def test_a_bound_ssrc_routes_by_ssrc_whatever_the_packet_carries() -> None:
    routes = two_tracks()
    assert route(routes, 1000, mid=b"1") == RtpRoute("audio", RouteReason.SSRC)
    assert routes.producers.get(1000) == "audio"  # the hot path's lookup


def test_an_unknown_ssrc_routes_by_mid_then_by_a_unique_payload_type() -> None:
    routes = two_tracks()
    assert route(routes, 5, mid=b"1") == RtpRoute("video", RouteReason.MID, mid="1")
    assert route(routes, 5, pt=97) == RtpRoute("video", RouteReason.PAYLOAD_TYPE)
    assert route(routes, 5, pt=111, mid=b"9") == RtpRoute("audio", RouteReason.PAYLOAD_TYPE, mid="9")
    assert route(routes, 5, pt=100) is None


def test_a_payload_type_two_sinks_registered_routes_nowhere() -> None:
    routes = two_tracks()
    routes.add_producer("screen", mid="2", payload_types=[96])
    assert route(routes, 5, pt=96) is None
    assert route(routes, 5, pt=97) == RtpRoute("video", RouteReason.PAYLOAD_TYPE)
    assert route(routes, 5, pt=96, mid=b"2") == RtpRoute("screen", RouteReason.MID, mid="2")


def test_bind_ssrc_makes_later_packets_take_the_ssrc_route() -> None:
    routes = two_tracks()
    decision = route(routes, 77, mid=b"1")
    assert decision is not None
    routes.bind_ssrc(77, decision.sink)
    assert route(routes, 77) == RtpRoute("video", RouteReason.SSRC)


def test_rid_and_repaired_rid_route_to_the_layer_of_their_mid() -> None:
    routes = two_tracks()
    for rid in ("q", "h", "f"):
        routes.add_rid(f"video-{rid}", mid="1", rid=rid)
    assert route(routes, 5, mid=b"1", rid=b"h") == RtpRoute("video-h", RouteReason.RID, mid="1", rid="h")
    rtx = route(routes, 6, pt=97, mid=b"1", rrid=b"f")
    assert rtx == RtpRoute("video-f", RouteReason.REPAIRED_RID, mid="1", rid="f")
    assert rtx.repaired
    # The repaired RID wins over a RID on the same packet; an unknown RID falls back to the MID.
    assert route(routes, 6, mid=b"1", rid=b"q", rrid=b"f") == rtx
    assert route(routes, 7, mid=b"1", rid=b"x") == RtpRoute("video", RouteReason.MID, mid="1")


def test_a_rid_without_a_mid_routes_only_when_one_mline_has_it() -> None:
    routes = two_tracks()
    routes.add_rid("cam-h", mid="1", rid="h")
    routes.add_rid("cam-f", mid="1", rid="f")
    assert route(routes, 5, pt=100, rid=b"h") == RtpRoute("cam-h", RouteReason.RID, rid="h")
    routes.add_rid("screen-h", mid="2", rid="h")
    assert route(routes, 5, pt=100, rid=b"h") is None
    assert route(routes, 5, pt=100, rid=b"f") == RtpRoute("cam-f", RouteReason.RID, rid="f")


def test_rid_extensions_are_ignored_until_their_ids_are_known() -> None:
    routes: RtpRoutes[str, str] = RtpRoutes()
    routes.add_producer("video", mid="1")
    routes.add_rid("video-h", mid="1", rid="h")
    routes.set_extensions(mid=MID_ID)
    assert route(routes, 5, mid=b"1", rid=b"h") == RtpRoute("video", RouteReason.MID, mid="1")
    routes.set_extensions(rid=RID_ID)
    assert routes.extensions.mid == MID_ID
    assert route(routes, 5, mid=b"1", rid=b"h") == RtpRoute("video-h", RouteReason.RID, mid="1", rid="h")


def test_a_truncated_extension_block_never_raises_and_routes_by_payload_type() -> None:
    routes = two_tracks()
    # One-byte extension id 4 claiming 16 bytes in a 4-byte block.
    block = b"\xbe\xde\x00\x01" + bytes([(MID_ID << 4) | 15, 0x31, 0, 0])
    data = build_rtp(payload_type=97, sequence_number=1, timestamp=0, ssrc=9, payload=b"x", extensions=block)
    header = parse_rtp_header(data)
    assert routes.route_unknown(data, header) == RtpRoute("video", RouteReason.PAYLOAD_TYPE)


def test_remove_producer_forgets_every_route_to_it() -> None:
    routes = two_tracks()
    routes.add_rid("video", mid="1", rid="h")
    routes.bind_ssrc(77, "video")
    routes.remove_producer("video")
    assert route(routes, 77, pt=96, mid=b"1", rid=b"h") is None
    assert route(routes, 1000) == RtpRoute("audio", RouteReason.SSRC)


def test_consumers_are_routed_by_their_media_and_rtx_ssrcs() -> None:
    routes: RtpRoutes[str, str] = RtpRoutes()
    routes.add_consumer("c1", [10, 11])
    routes.add_consumer("c2", [20])
    assert (routes.consumer(10), routes.consumer(11), routes.consumer(20), routes.consumer(30)) == (
        "c1",
        "c1",
        "c2",
        None,
    )
    routes.remove_consumer("c1")
    assert routes.consumer(10) is None and routes.consumer(11) is None and routes.consumer(20) == "c2"
