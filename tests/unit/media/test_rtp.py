from __future__ import annotations

import fractions
import functools
import struct

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import HeaderExtensionsMap, RtcpRrPacket, RtpPacket
from aiortc.rtp import unwrap_rtx as aiortc_unwrap_rtx
from aiortc.rtp import wrap_rtx as aiortc_wrap_rtx

from salon.media.rtp import (
    KEYFRAME_DETECTORS,
    RtpHeader,
    abs_send_time,
    build_rtp,
    encode_one_byte_extensions,
    extension_value_offset,
    find_header_extension,
    is_h264_keyframe,
    is_rtcp,
    is_vp8_keyframe,
    iter_header_extensions,
    parse_audio_level,
    parse_rtp_header,
    patch_extension,
    rewrite_rtp,
    rtp_payload,
    unwrap_rtx,
    wrap_rtx,
)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"


def extensions_map(**ids: int) -> HeaderExtensionsMap:
    uris = {
        "mid": MID_URI,
        "abs_send_time": ABS_SEND_TIME_URI,
        "audio_level": AUDIO_LEVEL_URI,
        "twcc": TWCC_URI,
    }
    extensions = [RTCRtpHeaderExtensionParameters(id=ext_id, uri=uris[name]) for name, ext_id in ids.items()]
    ext_map = HeaderExtensionsMap()
    ext_map.configure(RTCRtpParameters(headerExtensions=extensions))
    return ext_map


def aiortc_packet(
    *,
    payload: bytes = b"\x01\x02\x03\x04\x05",
    marker: int = 1,
    csrc: list[int] | None = None,
    padding: int = 0,
    mid: str | None = None,
    abs_time: int | None = None,
    audio_level: tuple[bool, int] | None = None,
    twcc: int | None = None,
    ext_map: HeaderExtensionsMap | None = None,
) -> bytes:
    packet = RtpPacket(
        payload_type=96,
        marker=marker,
        sequence_number=4321,
        timestamp=0xDEADBEEF,
        ssrc=0x11223344,
        payload=payload,
    )
    packet.csrc = csrc or []
    packet.padding_size = padding
    packet.extensions.mid = mid
    packet.extensions.abs_send_time = abs_time
    packet.extensions.audio_level = audio_level
    packet.extensions.transport_sequence_number = twcc
    return packet.serialize(ext_map or extensions_map(mid=1, abs_send_time=3, audio_level=4, twcc=5))


# --- RTP/RTCP demux ----------------------------------------------------------------------------


def test_is_rtcp_recognises_rtcp_packet_types_and_not_rtp_payload_types() -> None:
    rr = bytes(RtcpRrPacket(ssrc=1))
    assert is_rtcp(rr)
    assert is_rtcp(b"\x80\xc8\x00\x06")  # SR, 200
    assert is_rtcp(b"\x80\xdf")  # 223, top of the RFC 5761 range
    assert not is_rtcp(b"\x80\xe0")  # 224: RTP PT 96 with the marker bit
    assert not is_rtcp(aiortc_packet(marker=0))
    assert not is_rtcp(aiortc_packet(marker=1))
    assert not is_rtcp(b"\x80")


# --- Header parsing ----------------------------------------------------------------------------


def test_parse_rtp_header_reads_fixed_fields_of_an_aiortc_packet_without_extensions() -> None:
    data = aiortc_packet(marker=0)
    header = parse_rtp_header(data)
    assert header == RtpHeader(False, 96, 4321, 0xDEADBEEF, 0x11223344, 12, 0, 0)
    assert data[header.payload_offset :] == b"\x01\x02\x03\x04\x05"


def test_parse_rtp_header_locates_the_extension_block_and_payload_of_an_aiortc_packet() -> None:
    data = aiortc_packet(mid="0", abs_time=0x123456, audio_level=(True, 42))
    header = parse_rtp_header(data)
    assert header.marker is True
    assert header.extension_offset == 16
    assert struct.unpack_from("!H", data, header.extension_offset - 4)[0] == 0xBEDE
    assert header.extension_length % 4 == 0
    assert header.payload_offset == header.extension_offset + header.extension_length
    assert data[header.payload_offset :] == b"\x01\x02\x03\x04\x05"
    assert dict(iter_header_extensions(data, header)) == {1: b"0", 3: b"\x12\x34\x56", 4: bytes([0x80 | 42])}


def test_parse_rtp_header_skips_csrcs() -> None:
    data = aiortc_packet(csrc=[7, 8], mid="a")
    header = parse_rtp_header(data)
    assert header.extension_offset == 12 + 8 + 4
    assert data[header.payload_offset :] == b"\x01\x02\x03\x04\x05"
    assert find_header_extension(data, header, 1) == b"a"


def test_parse_rtp_header_accepts_padding_and_rtp_payload_strips_it() -> None:
    data = aiortc_packet(padding=7, mid="0")
    header = parse_rtp_header(data)
    assert len(data) - header.payload_offset == 5 + 7
    assert rtp_payload(data, header) == b"\x01\x02\x03\x04\x05"


def test_parse_rtp_header_gives_the_same_result_on_fast_and_general_paths() -> None:
    # 0x80 with 12..15 bytes and packets with CSRCs or padding take the general path.
    short = build_rtp(payload_type=0, sequence_number=1, timestamp=2, ssrc=3, payload=b"ab")
    assert parse_rtp_header(short) == RtpHeader(False, 0, 1, 2, 3, 12, 0, 0)
    ext = encode_one_byte_extensions([(2, b"xyz")])
    fast = build_rtp(
        payload_type=111, sequence_number=9, timestamp=8, ssrc=7, payload=b"p" * 20, extensions=ext
    )
    padded = build_rtp(
        payload_type=111, sequence_number=9, timestamp=8, ssrc=7, payload=b"p" * 20, extensions=ext, padding=4
    )
    assert parse_rtp_header(fast) == parse_rtp_header(padded) == RtpHeader(False, 111, 9, 8, 7, 20, 16, 4)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x60\x00\x01\x00\x00", "shorter than the 12-byte fixed header"),
        (b"\x40" + bytes(15), "version 1, expected 2"),
        (b"\x00" + bytes(11), "version 0, expected 2"),
        (b"\x82" + bytes(11) + b"\x00\x00\x00\x01", "2 CSRCs need 20 header bytes, packet has 16"),
        (b"\x90" + bytes(11) + b"\xbe", "extension header needs 16 bytes, packet has 13"),
        (b"\x90" + bytes(11) + b"\xbe\xde\x00\x02" + bytes(4), "8-byte header extension ends at 24"),
        (b"\xa0" + bytes(11) + b"\x01\x02\x00", "padding length 0 is invalid"),
        (b"\xa0" + bytes(11) + b"\x01\x02\x04", "padding length 4 is invalid for a 3-byte payload"),
        (b"\xb0" + bytes(11) + b"\xbe\xde\x00\x00\x09", "padding length 9 is invalid for a 1-byte payload"),
    ],
)
def test_parse_rtp_header_rejects_malformed_packets_with_a_precise_message(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rtp_header(data)


# --- Header extensions -------------------------------------------------------------------------


def test_find_header_extension_returns_the_value_or_none() -> None:
    data = aiortc_packet(mid="video", abs_time=77, twcc=0xABCD)
    header = parse_rtp_header(data)
    assert find_header_extension(data, header, 1) == b"video"
    assert find_header_extension(data, header, 5) == b"\xab\xcd"
    assert find_header_extension(data, header, 4) is None
    plain = aiortc_packet()
    assert find_header_extension(plain, parse_rtp_header(plain), 1) is None


def test_two_byte_header_extensions_from_aiortc_are_iterated_and_found() -> None:
    # aiortc switches to the two-byte form (RFC 8285 §4.3) for an ID above 14.
    ext_map = extensions_map(mid=15, abs_send_time=3)
    data = aiortc_packet(mid="a-long-mid", abs_time=0x010203, ext_map=ext_map)
    header = parse_rtp_header(data)
    assert struct.unpack_from("!H", data, header.extension_offset - 4)[0] == 0x1000
    assert list(iter_header_extensions(data, header)) == [(15, b"a-long-mid"), (3, b"\x01\x02\x03")]
    assert find_header_extension(data, header, 15) == b"a-long-mid"
    assert find_header_extension(data, header, 3) == b"\x01\x02\x03"
    assert find_header_extension(data, header, 4) is None


def test_header_extension_walk_skips_padding_and_stops_at_id_15() -> None:
    block = b"\xbe\xde\x00\x02" + b"\x00\x10\x41\x00" + b"\xf0\x20\x42\x00"
    data = build_rtp(payload_type=96, sequence_number=1, timestamp=1, ssrc=1, payload=b"x", extensions=block)
    header = parse_rtp_header(data)
    assert list(iter_header_extensions(data, header)) == [(1, b"A")]
    assert find_header_extension(data, header, 2) is None


def test_unknown_extension_profile_yields_nothing() -> None:
    block = b"\x12\x34\x00\x01" + b"\x10\x41\x00\x00"
    data = build_rtp(payload_type=96, sequence_number=1, timestamp=1, ssrc=1, payload=b"x", extensions=block)
    header = parse_rtp_header(data)
    assert list(iter_header_extensions(data, header)) == []
    assert find_header_extension(data, header, 1) is None


def test_truncated_header_extension_element_raises() -> None:
    block = b"\xbe\xde\x00\x01" + b"\x13\x41\x42\x43"  # ID 1 claims 4 bytes, 3 remain
    data = build_rtp(payload_type=96, sequence_number=1, timestamp=1, ssrc=1, payload=b"x", extensions=block)
    header = parse_rtp_header(data)
    with pytest.raises(ValueError, match="one-byte header extension 1 is truncated"):
        list(iter_header_extensions(data, header))
    with pytest.raises(ValueError, match="truncated"):
        find_header_extension(data, header, 2)
    two_byte = b"\x10\x00\x00\x01" + b"\x01\x05\x41\x42"
    data = build_rtp(
        payload_type=96, sequence_number=1, timestamp=1, ssrc=1, payload=b"x", extensions=two_byte
    )
    with pytest.raises(ValueError, match="two-byte header extension 1 is truncated"):
        list(iter_header_extensions(data, parse_rtp_header(data)))


def test_encode_one_byte_extensions_builds_a_padded_block_aiortc_can_read() -> None:
    block = encode_one_byte_extensions([(1, b"0"), (3, b"\x00\x00\x09")])
    assert block == b"\xbe\xde\x00\x02" + b"\x10" + b"0" + b"\x32\x00\x00\x09" + b"\x00\x00"
    assert encode_one_byte_extensions([]) == b""
    data = build_rtp(payload_type=96, sequence_number=5, timestamp=6, ssrc=7, payload=b"x", extensions=block)
    packet = RtpPacket.parse(data, extensions_map(mid=1, abs_send_time=3))
    assert packet.extensions.mid == "0"
    assert packet.extensions.abs_send_time == 9
    assert packet.payload == b"x"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([(0, b"a")], "ID must be 1..14, got 0"),
        ([(15, b"a")], "ID must be 1..14, got 15"),
        ([(1, b"")], "must be 1..16 bytes, got 0"),
        ([(1, bytes(17))], "must be 1..16 bytes, got 17"),
    ],
)
def test_encode_one_byte_extensions_rejects_what_the_one_byte_form_cannot_carry(
    items: list[tuple[int, bytes]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_one_byte_extensions(items)


def test_abs_send_time_is_6_18_fixed_point_seconds_wrapping_every_64_seconds() -> None:
    assert abs_send_time(0.0) == b"\x00\x00\x00"
    assert abs_send_time(1.5) == (int(1.5 * 2**18)).to_bytes(3, "big")
    assert abs_send_time(64.0 + 1.5) == abs_send_time(1.5)
    assert abs_send_time(63.999999) == b"\xff\xff\xff"


def test_patch_extension_replaces_the_abs_send_time_placeholder() -> None:
    block = encode_one_byte_extensions([(1, b"m1"), (3, b"\x00\x00\x00")])
    offset = extension_value_offset(block, 3)
    patched = patch_extension(block, offset, abs_send_time(2.0))
    assert len(patched) == len(block)
    data = build_rtp(
        payload_type=96, sequence_number=5, timestamp=6, ssrc=7, payload=b"x", extensions=patched
    )
    packet = RtpPacket.parse(data, extensions_map(mid=1, abs_send_time=3))
    assert packet.extensions.abs_send_time == 2 * 2**18
    assert packet.extensions.mid == "m1"
    with pytest.raises(KeyError):
        extension_value_offset(block, 5)


def test_parse_audio_level_reads_the_voice_flag_and_level_from_an_aiortc_packet() -> None:
    data = aiortc_packet(audio_level=(True, 30))
    value = find_header_extension(data, parse_rtp_header(data), 4)
    assert value is not None
    assert parse_audio_level(value) == (True, 30)
    assert parse_audio_level(b"\x7f") == (False, 127)
    assert parse_audio_level(memoryview(b"\x85")) == (True, 5)
    with pytest.raises(ValueError, match="empty"):
        parse_audio_level(b"")


# --- Rewriting ---------------------------------------------------------------------------------


def test_rewrite_rtp_sets_new_fields_and_extensions_and_keeps_marker_and_payload() -> None:
    original = aiortc_packet(csrc=[5, 6], mid="publisher-mid", twcc=99)
    header = parse_rtp_header(original)
    block = encode_one_byte_extensions([(1, b"7"), (3, abs_send_time(3.25))])
    out = rewrite_rtp(
        original, header, ssrc=0xCAFE, payload_type=100, sequence_number=65535, timestamp=7, extensions=block
    )
    packet = RtpPacket.parse(out, extensions_map(mid=1, abs_send_time=3, twcc=5))
    assert (packet.ssrc, packet.payload_type, packet.sequence_number, packet.timestamp) == (
        0xCAFE,
        100,
        65535,
        7,
    )
    assert packet.marker == 1
    assert packet.csrc == []
    assert packet.extensions.mid == "7"
    assert packet.extensions.abs_send_time == int(3.25 * 2**18)
    assert packet.extensions.transport_sequence_number is None
    assert packet.payload == b"\x01\x02\x03\x04\x05"


def test_rewrite_rtp_without_extensions_clears_the_x_bit_and_keeps_padding() -> None:
    original = aiortc_packet(marker=0, padding=4, mid="0")
    out = rewrite_rtp(
        original, parse_rtp_header(original), ssrc=1, payload_type=97, sequence_number=2, timestamp=3
    )
    assert out[0] == 0xA0  # V=2, P=1, X=0, CC=0
    assert out[1] == 97
    packet = RtpPacket.parse(out)
    assert packet.padding_size == 4
    assert packet.payload == b"\x01\x02\x03\x04\x05"
    assert parse_rtp_header(out) == RtpHeader(False, 97, 2, 3, 1, 12, 0, 0)


def test_build_rtp_builds_a_packet_aiortc_parses() -> None:
    data = build_rtp(
        payload_type=111, sequence_number=10, timestamp=20, ssrc=30, payload=b"abc", marker=True, padding=3
    )
    packet = RtpPacket.parse(data)
    assert (packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc) == (111, 10, 20, 30)
    assert packet.marker == 1
    assert packet.padding_size == 3
    assert packet.payload == b"abc"
    with pytest.raises(ValueError, match=r"0\.\.255"):
        build_rtp(payload_type=111, sequence_number=10, timestamp=20, ssrc=30, payload=b"", padding=256)


# --- RTX ---------------------------------------------------------------------------------------


def test_unwrap_rtx_recovers_what_aiortc_wrapped() -> None:
    original = RtpPacket(
        payload_type=96, marker=1, sequence_number=1234, timestamp=555, ssrc=1, payload=b"media"
    )
    rtx = aiortc_wrap_rtx(original, payload_type=97, sequence_number=42, ssrc=2).serialize()
    header = parse_rtp_header(rtx)
    assert (header.payload_type, header.sequence_number, header.ssrc) == (97, 42, 2)
    assert unwrap_rtx(rtx, header) == (1234, b"media")


def test_unwrap_rtx_removes_the_rtx_packets_padding() -> None:
    rtx = build_rtp(
        payload_type=97, sequence_number=1, timestamp=2, ssrc=3, payload=b"\x00\x07media", padding=5
    )
    assert unwrap_rtx(rtx, parse_rtp_header(rtx)) == (7, b"media")


def test_unwrap_rtx_rejects_padding_only_probe_packets() -> None:
    probe = build_rtp(payload_type=97, sequence_number=1, timestamp=2, ssrc=3, payload=b"", padding=200)
    with pytest.raises(ValueError, match="0 payload bytes, no original sequence number"):
        unwrap_rtx(probe, parse_rtp_header(probe))


def test_wrap_rtx_builds_a_retransmission_aiortc_unwraps() -> None:
    original = aiortc_packet(mid="0")
    header = parse_rtp_header(original)
    block = encode_one_byte_extensions([(1, b"9")])
    rtx = wrap_rtx(
        original,
        header,
        ssrc=0xBEEF,
        payload_type=97,
        sequence_number=300,
        timestamp=123456,
        original_sequence_number=65000,
        extensions=block,
    )
    rtx_packet = RtpPacket.parse(rtx, extensions_map(mid=1))
    assert (rtx_packet.ssrc, rtx_packet.payload_type, rtx_packet.sequence_number) == (0xBEEF, 97, 300)
    assert rtx_packet.timestamp == 123456
    assert rtx_packet.extensions.mid == "9"
    restored = aiortc_unwrap_rtx(rtx_packet, payload_type=96, ssrc=0x11223344)
    assert restored.sequence_number == 65000
    assert restored.payload == b"\x01\x02\x03\x04\x05"
    assert restored.marker == 1
    rtx_header = parse_rtp_header(rtx)
    assert unwrap_rtx(rtx, rtx_header) == (65000, b"\x01\x02\x03\x04\x05")


# --- Key frames --------------------------------------------------------------------------------


@functools.cache
def encoded_frames(mime: str) -> tuple[tuple[bytes, ...], ...]:
    """Three frames (a key frame, then two delta frames) from aiortc's own encoder."""
    encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96))
    frames = []
    for index in range(3):
        pixels = (np.random.RandomState(index).rand(120, 160, 3) * 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts = index * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=False)
        frames.append(tuple(payloads))
    return tuple(frames)


def test_is_vp8_keyframe_is_true_only_for_the_first_packet_of_a_real_vp8_key_frame() -> None:
    key, *deltas = encoded_frames("video/VP8")
    assert len(key) > 1
    assert is_vp8_keyframe(key[0])
    assert not any(is_vp8_keyframe(payload) for payload in key[1:])
    for delta in deltas:
        assert not any(is_vp8_keyframe(payload) for payload in delta)


def test_is_vp8_keyframe_accepts_a_memoryview_slice_of_a_packet() -> None:
    key = encoded_frames("video/VP8")[0][0]
    data = build_rtp(payload_type=96, sequence_number=1, timestamp=1, ssrc=1, payload=key)
    assert is_vp8_keyframe(memoryview(data)[parse_rtp_header(data).payload_offset :])


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x10\x00", True),  # no X; S=1, PID=0, then P=0
        (b"\x10\x01", False),  # P=1: inter frame
        (b"\x00\x00", False),  # S=0: continuation
        (b"\x11\x00", False),  # PID=1: not the first partition
        (b"\x90\x80\x05\x00", True),  # X, I, 7-bit PictureID
        (b"\x90\x80\x05\x01", False),
        (b"\x90\x80\x85\x05\x00", True),  # X, I, 15-bit PictureID (M bit)
        (b"\x90\x80\x85\x05\x01", False),
        (b"\x90\xc0\x05\x07\x00", True),  # X, I, L (TL0PICIDX)
        (b"\x90\xe0\x05\x07\x40\x00", True),  # X, I, L, T (TID/Y/KEYIDX)
        (b"\x90\x10\x40\x00", True),  # X, K only
        (b"\x90\x10\x40\x01", False),
        (b"\x90\x80\x85", False),  # truncated PictureID
        (b"\x90", False),  # truncated extension byte
        (b"\x10", False),  # no payload header
        (b"", False),
    ],
)
def test_is_vp8_keyframe_handles_every_payload_descriptor_extension(payload: bytes, expected: bool) -> None:
    assert is_vp8_keyframe(payload) is expected


def test_is_h264_keyframe_detects_real_h264_idr_frames_from_aiortcs_encoder() -> None:
    key, *deltas = encoded_frames("video/H264")
    assert is_h264_keyframe(key[0])  # STAP-A with SPS/PPS from aiortc's packetiser
    for delta in deltas:
        assert not any(is_h264_keyframe(payload) for payload in delta)
    # The IDR's own FU-A start fragment is a key-frame start too; its continuations are not.
    fu_a_starts = [p for p in key if p[0] & 0x1F == 28 and p[1] & 0x80]
    assert fu_a_starts and all(is_h264_keyframe(p) for p in fu_a_starts)
    continuations = [p for p in key if p[0] & 0x1F == 28 and not p[1] & 0x80]
    assert continuations and not any(is_h264_keyframe(p) for p in continuations)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x65\x88", True),  # single NAL, IDR (5)
        (b"\x67\x42", True),  # single NAL, SPS (7)
        (b"\x68\xce", False),  # PPS (8)
        (b"\x41\x9a", False),  # non-IDR slice (1)
        (b"\x7c\x85\x00", True),  # FU-A start of IDR
        (b"\x7c\x05\x00", False),  # FU-A continuation of IDR
        (b"\x7c\x81\x00", False),  # FU-A start of non-IDR
        (b"\x7c", False),  # truncated FU-A
        (b"\x78\x00\x02\x68\xce\x00\x02\x65\x88", True),  # STAP-A: PPS then IDR
        (b"\x78\x00\x02\x68\xce\x00\x02\x41\x9a", False),  # STAP-A: PPS then non-IDR
        (b"\x78\x00\x00\x65", False),  # STAP-A with a zero-size unit
        (b"", False),
    ],
)
def test_is_h264_keyframe_handles_single_nal_stap_a_and_fu_a(payload: bytes, expected: bool) -> None:
    assert is_h264_keyframe(payload) is expected


def test_keyframe_detectors_are_keyed_by_lower_case_codec_name() -> None:
    assert KEYFRAME_DETECTORS == {"vp8": is_vp8_keyframe, "h264": is_h264_keyframe}
