"""``salon bench sfu --transport-cc``: the sinks' SDP carries the transport-wide sequence number,
so that salon (and Janus) stamp every packet they forward to them."""

from __future__ import annotations

import asyncio

from salon.bench import sfu
from salon.bench.stamping import _VP8
from salon.media.sdp import negotiate_subscribe, parse_offer


def _sink_offer() -> str:
    async def offer() -> str:
        pc = sfu._peer_connection()
        sfu._vp8_transceiver(pc, "recvonly")
        try:
            return await sfu._offer(pc)
        finally:
            await pc.close()

    return asyncio.run(offer())


def test_the_munged_offer_negotiates_transport_cc_with_salon() -> None:
    plain = _sink_offer()
    assert parse_offer(plain).media[0].extensions.get(sfu.EXT_TRANSPORT_CC) is None
    munged = sfu._with_transport_cc(plain)
    media = parse_offer(munged).media[0]
    ext_id = media.extensions.get(sfu.EXT_TRANSPORT_CC)
    others = {v for k, v in media.extensions.items() if k != sfu.EXT_TRANSPORT_CC}
    assert ext_id is not None and ext_id not in others
    vp8 = [c for c in media.codecs if c.name.lower() == "vp8"]
    assert vp8 and all(any(fb[0] == "transport-cc" for fb in c.rtcp_feedback) for c in vp8), vp8
    assert sfu._with_transport_cc(munged) == munged  # already there: unchanged
    # salon then numbers every packet it sends this sink; without the flag it does not.
    (track,) = negotiate_subscribe(parse_offer(munged), [("producer", _VP8)])
    assert track.extensions.transport_cc == ext_id
    (plain_track,) = negotiate_subscribe(parse_offer(plain), [("producer", _VP8)])
    assert plain_track.extensions.transport_cc is None


def test_the_answer_to_janus_uses_the_id_janus_offered() -> None:
    offer = sfu._with_transport_cc(_sink_offer(), 7)
    assert sfu._offered_transport_cc(offer) == 7
    assert sfu._offered_transport_cc(_sink_offer()) is None


def test_the_sink_tells_stamped_packets_from_unstamped_ones() -> None:
    from salon.media.rtp import build_rtp, encode_one_byte_extensions

    def packet(extensions: list[tuple[int, bytes]]) -> bytes:
        return build_rtp(
            payload_type=96,
            sequence_number=1,
            timestamp=2,
            ssrc=3,
            payload=bytes(100),
            extensions=encode_one_byte_extensions(extensions) if extensions else b"",
        )

    assert sfu._has_one_byte_extension(packet([(9, b"1"), (3, b"abc"), (5, b"\x00\x07")]), 5)
    assert not sfu._has_one_byte_extension(packet([(9, b"1"), (3, b"abc")]), 5)
    assert not sfu._has_one_byte_extension(packet([]), 5)
