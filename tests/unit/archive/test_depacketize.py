"""RTP depacketisers (RFC 7741 VP8, RFC 6184 H.264, RFC 7587 Opus) and frame assembly."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salon.archive.depacketize import (
    DepacketizeError,
    FrameAssembler,
    H264Depacketizer,
    OpusDepacketizer,
    Vp8Depacketizer,
    avcc_record,
    depacketizer_for,
    h264_dimensions,
    parse_rtp,
    vp8_dimensions,
)
from salon.media.rtp import build_rtp
from tests.unit.archive.media_helpers import encode_video, rtp_video, split_annexb


def rtp(seq: int, ts: int, payload: bytes, *, marker: bool = False) -> bytes:
    return build_rtp(
        payload_type=96, sequence_number=seq, timestamp=ts, ssrc=1, payload=payload, marker=marker
    )


# -- VP8 ----------------------------------------------------------------------------------------


def test_vp8_descriptor_forms() -> None:
    vp8 = Vp8Depacketizer()
    # Minimal descriptor: S=1, PID=0; VP8 payload header with P=0 (key frame).
    part = vp8.parse(b"\x10\x00\xab")
    assert (part.data, part.frame_start, part.key_frame) == (b"\x00\xab", True, True)
    # X + I with a 15-bit PictureID, L, T/K: 1 + 1 + 2 + 1 + 1 descriptor bytes.
    part = vp8.parse(bytes([0x90, 0xF0, 0x80 | 0x12, 0x34, 0x05, 0x20]) + b"\x01xyz")
    assert (part.data, part.frame_start, part.key_frame) == (b"\x01xyz", True, False)
    # 7-bit PictureID, continuation packet (S=0).
    part = vp8.parse(bytes([0x80, 0x80, 0x12]) + b"data")
    assert (part.data, part.frame_start, part.key_frame) == (b"data", False, False)
    # S=1 but PID=1: not the start of a frame.
    assert not vp8.parse(b"\x11\x00").frame_start


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x10",
        bytes([0x90, 0x80]),
        bytes([0x90, 0x80, 0x80, 0x01]),
        bytes([0x90, 0xF0, 0x01, 0x02, 0x03]),
    ],
)
def test_vp8_truncated_descriptors_are_clear_errors(payload: bytes) -> None:
    with pytest.raises(DepacketizeError, match="VP8"):
        Vp8Depacketizer().parse(payload)


def test_vp8_frames_from_an_encoder_round_trip() -> None:
    frames = encode_video("vp8", 12, (200, 30, 30))
    packets = rtp_video("vp8", frames, seq=65530)  # sequence numbers wrap
    assembler = FrameAssembler("vp8")
    out = [f for p in packets for f in assembler.push(parse_rtp(p))] + assembler.flush()
    assert [f.data for f in out] == [d for d, _, _ in frames]
    assert [f.timestamp for f in out] == [t for _, t, _ in frames]
    assert [f.key_frame for f in out] == [k for _, _, k in frames]
    assert all(f.complete for f in out)
    assert vp8_dimensions(out[0].data) == (320, 240)
    assert vp8_dimensions(out[1].data) is None


def test_vp8_frame_with_a_lost_packet_is_incomplete() -> None:
    assembler = FrameAssembler("vp8")
    # A 3-packet frame whose middle packet was given up, then a whole 1-packet frame.
    assert assembler.push(parse_rtp(rtp(1, 100, b"\x10\x00aa"))) == []
    frames = assembler.push(parse_rtp(rtp(3, 100, b"\x00cc", marker=True)), lost_before=1)
    assert len(frames) == 1 and not frames[0].complete
    frames = assembler.push(parse_rtp(rtp(4, 200, b"\x10\x01dd", marker=True)))
    assert frames[0].complete and frames[0].data == b"\x01dd" and not frames[0].key_frame


def test_vp8_frame_without_its_first_packet_is_incomplete() -> None:
    assembler = FrameAssembler("vp8")
    frames = assembler.push(parse_rtp(rtp(2, 100, b"\x00bb", marker=True)))
    assert len(frames) == 1 and not frames[0].complete


def test_frame_cut_by_a_timestamp_change_is_incomplete() -> None:
    assembler = FrameAssembler("vp8")
    assembler.push(parse_rtp(rtp(1, 100, b"\x10\x00aa")))  # its marker packet never comes
    frames = assembler.push(parse_rtp(rtp(2, 200, b"\x10\x01bb", marker=True)))
    assert [(f.timestamp, f.complete) for f in frames] == [(100, False), (200, True)]


# -- H.264 --------------------------------------------------------------------------------------


def avc(*units: bytes) -> bytes:
    return b"".join(struct.pack("!I", len(u)) + u for u in units)


def test_h264_single_stap_a_and_fu_a() -> None:
    sps, pps, idr = b"\x67\x42\xc0\x1e\xaa", b"\x68\xce\x3c\x80", b"\x65" + bytes(range(200))
    stap = b"\x18" + struct.pack("!H", len(sps)) + sps + struct.pack("!H", len(pps)) + pps
    fu_start = bytes([0x7C, 0x85]) + idr[1:80]
    fu_middle = bytes([0x7C, 0x05]) + idr[80:150]
    fu_end = bytes([0x7C, 0x45]) + idr[150:]
    assembler = FrameAssembler("h264")
    out = []
    for seq, (payload, marker) in enumerate(
        [(stap, False), (fu_start, False), (fu_middle, False), (fu_end, True)]
    ):
        out += assembler.push(parse_rtp(rtp(seq, 9000, payload, marker=marker)))
    assert len(out) == 1
    frame = out[0]
    assert frame.complete and frame.key_frame
    assert frame.data == avc(sps, pps, idr)
    assert frame.parameter_sets == (sps, pps)
    record = avcc_record(frame.parameter_sets)
    assert record is not None and record[:4] == b"\x01\x42\xc0\x1e" and sps in record and pps in record
    # A non-IDR single NAL unit frame.
    single = assembler.push(parse_rtp(rtp(4, 12000, b"\x41\x9a\x01", marker=True)))
    assert single[0].complete and not single[0].key_frame and single[0].data == avc(b"\x41\x9a\x01")


def test_h264_fu_a_missing_its_end_is_incomplete() -> None:
    assembler = FrameAssembler("h264")
    assembler.push(parse_rtp(rtp(1, 100, bytes([0x7C, 0x85, 1, 2]))))
    frames = assembler.push(parse_rtp(rtp(2, 100, bytes([0x7C, 0x05, 3, 4]), marker=True)))
    assert len(frames) == 1 and not frames[0].complete


def test_h264_frames_from_an_encoder_round_trip() -> None:
    frames = encode_video("h264", 8, (20, 200, 20))
    assembler = FrameAssembler("h264")
    out = [f for p in rtp_video("h264", frames) for f in assembler.push(parse_rtp(p))] + assembler.flush()
    assert len(out) == len(frames) and all(f.complete for f in out)
    assert [f.data for f in out] == [avc(*split_annexb(d)) for d, _, _ in frames]
    assert out[0].key_frame and not out[1].key_frame
    assert avcc_record(out[0].parameter_sets) is not None


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty"),
        (b"\x18\x00", "STAP-A"),
        (b"\x18\x00\x09\x67", "STAP-A"),
        (b"\x1c\x85", "FU-A"),
        (b"\x1e\x00", "type 30"),
        (b"\x00", "type 0"),
    ],
)
def test_h264_malformed_payloads_are_clear_errors(payload: bytes, message: str) -> None:
    with pytest.raises(DepacketizeError, match=message):
        H264Depacketizer().parse(payload)


# -- Opus, RTP, codecs ----------------------------------------------------------------------------


def test_opus_packet_is_a_frame() -> None:
    assembler = FrameAssembler("opus")
    frames = assembler.push(parse_rtp(rtp(1, 960, b"\xfc\x01\x02")))
    assert [(f.timestamp, f.data, f.complete) for f in frames] == [(960, b"\xfc\x01\x02", True)]
    with pytest.raises(DepacketizeError, match="Opus"):
        OpusDepacketizer().parse(b"")


def test_parse_rtp_strips_csrcs_extensions_and_padding() -> None:
    packet = (
        bytes([0xB1, 0xE0])
        + struct.pack("!HII", 7, 90, 3)
        + b"\x00\x00\x00\x09"  # P, X, 1 CSRC, M
        + b"\xbe\xde\x00\x01\x10\xff\x00\x00"
        + b"payload"
        + b"\x00\x00\x03"
    )
    parsed = parse_rtp(packet)
    assert (parsed.sequence_number, parsed.timestamp, parsed.marker, parsed.payload_type) == (7, 90, True, 96)
    assert parsed.payload == b"payload"
    for bad, message in [
        (b"\x80" * 5, "shorter"),
        (b"\x40" + b"\x00" * 11, "version"),
        (b"\x81" + b"\x00" * 11, "past"),
    ]:
        with pytest.raises(DepacketizeError, match=message):
            parse_rtp(bad)


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(DepacketizeError, match="VP9"):
        depacketizer_for("VP9")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codec=st.sampled_from(["vp8", "h264", "opus"]), payloads=st.lists(st.binary(max_size=64), max_size=12))
def test_garbage_payloads_raise_nothing_but_depacketize_error(codec: str, payloads: list[bytes]) -> None:
    depacketizer = depacketizer_for(codec)
    for payload in payloads:
        try:
            depacketizer.parse(payload)
        except DepacketizeError:
            pass
    # The assembler never raises: malformed packets are counted and make their frame incomplete.
    assembler = FrameAssembler(codec)
    for seq, payload in enumerate(payloads):
        for frame in assembler.push(parse_rtp(rtp(seq, seq // 3, payload, marker=seq % 3 == 2))):
            assert frame.complete or frame.data == b""
    assembler.flush()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80))
def test_garbage_rtp_raises_nothing_but_depacketize_error(data: bytes) -> None:
    try:
        parse_rtp(data)
    except DepacketizeError:
        pass


@pytest.mark.parametrize(
    ("size", "profile"), [((320, 240), "baseline"), ((642, 362), "high"), ((1280, 720), "main")]
)
def test_h264_sps_dimensions(size: tuple[int, int], profile: str) -> None:
    import fractions

    import av

    from tests.unit.archive.media_helpers import colour_frames

    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = size
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, 90000)
    encoder.profile = profile
    encoder.options = {"preset": "ultrafast"}
    frame = next(colour_frames(1, (0, 0, 0), width=size[0], height=size[1]))
    data = b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])
    (sps,) = [u for u in split_annexb(data) if u[0] & 0x1F == 7]
    assert h264_dimensions(sps) == size


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40))
def test_garbage_sps_raises_nothing_but_depacketize_error(data: bytes) -> None:
    try:
        h264_dimensions(b"\x67" + data)
    except DepacketizeError:
        pass
