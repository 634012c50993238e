from __future__ import annotations

import struct
import time

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    pack_remb_fci,
)

from salon.media.rtcp import (
    Bye,
    Fir,
    FirEntry,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    SdesChunk,
    SenderReport,
    SourceDescription,
    build_bye,
    build_fir,
    build_nack,
    build_pli,
    build_receiver_report,
    build_remb,
    build_sdes,
    build_sender_report,
    compact_ntp,
    ntp_from_unix,
    ntp_now,
    parse_rtcp,
)
from salon.media.twcc import TransportFeedback

BLOCK = ReportBlock(
    ssrc=0x01020304,
    fraction_lost=25,
    packets_lost=-3,
    highest_sequence=0x1FFFF,
    jitter=120,
    lsr=0xAABBCCDD,
    dlsr=65536,
)


def header(count: int, packet_type: int, payload: bytes, padding: bool = False) -> bytes:
    return (
        struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | count, packet_type, len(payload) // 4) + payload
    )


# --- Builders round-trip through the parser ----------------------------------------------------


def test_pli_round_trips() -> None:
    assert parse_rtcp(build_pli(1, 2)) == [Pli(sender_ssrc=1, media_ssrc=2)]


def test_fir_round_trips_with_the_target_in_its_fci_entry() -> None:
    data = build_fir(10, 0xDEADBEEF, 300)
    assert parse_rtcp(data) == [
        Fir(sender_ssrc=10, media_ssrc=0, entries=(FirEntry(ssrc=0xDEADBEEF, seq_nr=44),))
    ]


def test_nack_round_trips_into_one_pid_blp_entry_when_seqs_are_close() -> None:
    data = build_nack(1, 2, [100, 101, 116])
    assert len(data) == 16  # header, two SSRCs, a single PID/BLP
    assert struct.unpack_from("!HH", data, 12) == (100, 0b1000000000000001)
    assert parse_rtcp(data) == [Nack(sender_ssrc=1, media_ssrc=2, seqs=(100, 101, 116))]


def test_nack_splits_seqs_more_than_16_apart_into_several_entries() -> None:
    data = build_nack(1, 2, [5, 117, 22, 5])  # unordered, with a duplicate
    assert parse_rtcp(data) == [Nack(sender_ssrc=1, media_ssrc=2, seqs=(5, 22, 117))]
    assert len(data) == 12 + 3 * 4


def test_nack_packs_across_sequence_number_wrap_around() -> None:
    data = build_nack(1, 2, [1, 65534, 0, 65535])
    assert struct.unpack_from("!HH", data, 12) == (65534, 0b111)
    assert len(data) == 16
    assert parse_rtcp(data)[0] == Nack(1, 2, (65534, 65535, 0, 1))


def test_nack_without_seqs_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one sequence number"):
        build_nack(1, 2, [])


def test_receiver_report_round_trips_with_a_negative_cumulative_loss() -> None:
    data = build_receiver_report(7, [BLOCK, ReportBlock(9, 0, 12, 5, 0, 0, 0)])
    assert parse_rtcp(data) == [ReceiverReport(ssrc=7, reports=(BLOCK, ReportBlock(9, 0, 12, 5, 0, 0, 0)))]
    assert parse_rtcp(build_receiver_report(7)) == [ReceiverReport(ssrc=7)]


def test_receiver_report_clamps_packets_lost_to_24_bits() -> None:
    data = build_receiver_report(
        7, [ReportBlock(1, 0, 1 << 30, 0, 0, 0, 0), ReportBlock(2, 0, -(1 << 30), 0, 0, 0, 0)]
    )
    (report,) = parse_rtcp(data)
    assert isinstance(report, ReceiverReport)
    assert [b.packets_lost for b in report.reports] == [0x7FFFFF, -0x800000]


def test_receiver_report_refuses_more_than_31_blocks() -> None:
    with pytest.raises(ValueError, match="at most 31 report blocks"):
        build_receiver_report(1, [BLOCK] * 32)


def test_sender_report_round_trips() -> None:
    ntp = ntp_from_unix(1_700_000_000.25)
    data = build_sender_report(5, ntp, 0xFFFFFFF0, 1000, 1_200_000, [BLOCK])
    assert parse_rtcp(data) == [SenderReport(5, ntp, 0xFFFFFFF0, 1000, 1_200_000, (BLOCK,))]


def test_remb_round_trips_with_its_bitrate_rounded_to_18_significant_bits() -> None:
    (remb,) = parse_rtcp(build_remb(3, 1_500_000, [10, 20]))
    assert isinstance(remb, Remb)
    assert remb.sender_ssrc == 3
    assert remb.ssrcs == (10, 20)
    assert 1_500_000 - 8 < remb.bitrate <= 1_500_000
    assert parse_rtcp(build_remb(3, 100_000, [10])) == [Remb(3, 100_000, (10,))]


def test_remb_is_byte_identical_to_aiortcs() -> None:
    ours = build_remb(3, 2_345_678, [10, 20])
    theirs = bytes(RtcpPsfbPacket(fmt=15, ssrc=3, media_ssrc=0, fci=pack_remb_fci(2_345_678, [10, 20])))
    assert ours == theirs


def test_remb_refuses_negative_bitrates() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        build_remb(1, -1, [1])


def test_sdes_round_trips_its_cname() -> None:
    for cname in ("", "abc", "abcd", "a-much-longer-cname-0123456789"):
        (sdes,) = parse_rtcp(build_sdes(42, cname))
        assert isinstance(sdes, SourceDescription)
        assert sdes.chunks == (SdesChunk(42, ((1, cname.encode()),)),)
        assert sdes.chunks[0].cname == cname


def test_bye_round_trips_with_and_without_reason() -> None:
    assert parse_rtcp(build_bye([1, 2])) == [Bye((1, 2))]
    assert parse_rtcp(build_bye([1], b"left")) == [Bye((1,), b"left")]


def test_compound_packet_of_our_builders_parses_in_order() -> None:
    data = (
        build_receiver_report(1, [BLOCK]) + build_remb(1, 500_000, [2]) + build_sdes(1, "x") + build_pli(1, 2)
    )
    assert [type(p) for p in parse_rtcp(data)] == [ReceiverReport, Remb, SourceDescription, Pli]


# --- Interop with aiortc -----------------------------------------------------------------------


def aiortc_block() -> RtcpReceiverInfo:
    return RtcpReceiverInfo(
        ssrc=0x01020304,
        fraction_lost=25,
        packets_lost=-3,
        highest_sequence=0x1FFFF,
        jitter=120,
        lsr=0xAABBCCDD,
        dlsr=65536,
    )


def test_parses_aiortc_sender_report_sdes_and_bye_compound() -> None:
    sr = RtcpSrPacket(
        ssrc=5,
        sender_info=RtcpSenderInfo(
            ntp_timestamp=0x0102030405060708, rtp_timestamp=9, packet_count=10, octet_count=11
        ),
        reports=[aiortc_block()],
    )
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=5, items=[(1, b"{cname}")])])
    bye = RtcpByePacket(sources=[5, 6])
    packets = parse_rtcp(bytes(sr) + bytes(sdes) + bytes(bye))
    assert packets == [
        SenderReport(5, 0x0102030405060708, 9, 10, 11, (BLOCK,)),
        SourceDescription((SdesChunk(5, ((1, b"{cname}"),)),)),
        Bye((5, 6)),
    ]


def test_parses_aiortc_receiver_report() -> None:
    rr = RtcpRrPacket(ssrc=7, reports=[aiortc_block()])
    assert parse_rtcp(bytes(rr)) == [ReceiverReport(7, (BLOCK,))]


def test_parses_aiortc_nack_and_pli() -> None:
    nack = RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=[10, 12, 40])
    pli = RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2)
    assert parse_rtcp(bytes(nack) + bytes(pli)) == [Nack(1, 2, (10, 12, 40)), Pli(1, 2)]


def test_parses_aiortc_remb() -> None:
    remb = RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=0, fci=pack_remb_fci(1_000_000, [0x11, 0x22]))
    (parsed,) = parse_rtcp(bytes(remb))
    assert isinstance(parsed, Remb)
    assert parsed.ssrcs == (0x11, 0x22)
    assert abs(parsed.bitrate - 1_000_000) < 4


def test_aiortc_parses_what_we_build() -> None:
    ntp = ntp_from_unix(1_700_000_000.5)
    data = (
        build_sender_report(5, ntp, 77, 3, 4, [BLOCK])
        + build_receiver_report(6, [BLOCK])
        + build_nack(1, 2, [65535, 0, 3])
        + build_pli(1, 2)
        + build_sdes(5, "me")
        + build_bye([5])
    )
    sr, rr, nack, pli, sdes, bye = RtcpPacket.parse(data)
    assert (
        isinstance(sr, RtcpSrPacket)
        and sr.sender_info.ntp_timestamp == ntp
        and sr.sender_info.rtp_timestamp == 77
    )
    assert sr.reports[0] == aiortc_block()
    assert isinstance(rr, RtcpRrPacket) and rr.reports == [aiortc_block()]
    assert isinstance(nack, RtcpRtpfbPacket) and [s & 0xFFFF for s in nack.lost] == [65535, 0, 3]
    assert isinstance(pli, RtcpPsfbPacket) and (pli.fmt, pli.ssrc, pli.media_ssrc) == (1, 1, 2)
    assert isinstance(sdes, RtcpSdesPacket) and sdes.chunks[0].items == [(1, b"me")]
    assert isinstance(bye, RtcpByePacket) and bye.sources == [5]


# --- Skipping what we do not handle ------------------------------------------------------------


def test_transport_cc_feedback_is_parsed_not_misparsed_as_nack() -> None:
    # RTPFB FMT 15: base seq 100, status count 3, reference time, fb count, one run-length chunk.
    fci = struct.pack("!HHI", 100, 3, (1 << 8) | 7) + struct.pack("!H", 0x2003) + b"\x04\x04\x04" + bytes(3)
    twcc = header(15, 205, struct.pack("!II", 1, 2) + fci)
    # aiortc would read this as a NACK of garbage sequence numbers:
    assert isinstance(RtcpPacket.parse(twcc)[0], RtcpRtpfbPacket)
    feedback = TransportFeedback(1, 2, 100, 1, 7, (4, 4, 4))
    assert parse_rtcp(twcc) == [feedback]
    assert parse_rtcp(twcc + build_pli(1, 2)) == [feedback, Pli(1, 2)]


def test_unknown_packet_types_and_feedback_formats_are_skipped() -> None:
    xr = header(0, 207, struct.pack("!I", 1) + struct.pack("!BBHQ", 4, 0, 2, 0))
    app = header(1, 204, struct.pack("!I", 1) + b"NAME" + b"data")
    sli = header(2, 206, struct.pack("!III", 1, 2, 0))
    non_remb_afb = header(15, 206, struct.pack("!II", 1, 0) + b"ABCD" + bytes(4))
    data = xr + app + sli + non_remb_afb + build_pli(3, 4)
    assert parse_rtcp(data) == [Pli(3, 4)]


def test_padded_packets_are_parsed_without_their_padding() -> None:
    payload = struct.pack("!I", 9) + b"\x00\x00\x00\x04"  # RR with no blocks + 4 padding bytes
    assert parse_rtcp(header(0, 201, payload, padding=True)) == [ReceiverReport(9)]


# --- Malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc9\x00", "has 3 bytes, less than a 4-byte header"),
        (build_pli(1, 2) + b"\x81", "offset 12 has 1 bytes"),
        (b"\x40\xc9\x00\x01" + bytes(4), "version 1, expected 2"),
        (b"\x80\xc9\x00\x02" + bytes(4), "declares 12 bytes, only 8 remain"),
        (b"\xa0\xc9\x00\x01" + b"\x00\x00\x00\x00", "invalid padding"),
        (b"\xa0\xc9\x00\x01" + b"\x00\x00\x00\x05", "invalid padding"),
        (header(1, 200, bytes(24)), "sender report with 1 report blocks needs 48 bytes, has 24"),
        (header(2, 201, bytes(28)), "receiver report with 2 report blocks needs 52 bytes, has 28"),
        (header(1, 205, bytes(8)), "generic NACK payload is 8 bytes"),
        (header(1, 206, bytes(4)), "PLI payload is 4 bytes, needs 8"),
        (header(4, 206, bytes(12)), "FIR payload is 12 bytes"),
        (header(15, 206, bytes(8) + b"REMB"), "REMB payload is 12 bytes, needs at least 16"),
        (
            header(15, 206, bytes(8) + b"REMB" + b"\x02\x00\x00\x00" + bytes(4)),
            "REMB with 2 SSRCs needs 24 bytes",
        ),
        (header(2, 203, bytes(4)), "BYE with 2 SSRCs needs 8 bytes, has 4"),
        (header(1, 203, bytes(4) + b"\x09abc"), "BYE reason of 9 bytes"),
        (header(2, 202, struct.pack("!I", 1) + bytes(4)), "SDES chunk at offset 12 is truncated"),
        (header(1, 202, struct.pack("!I", 1) + b"\x01\x09ab"), "SDES item type 1 for SSRC 1 is truncated"),
        (header(1, 202, struct.pack("!I", 1) + b"\x01\x02ab"), "no terminating null item"),
    ],
)
def test_malformed_rtcp_raises_a_precise_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rtcp(data)


def test_sender_report_with_a_profile_extension_is_accepted() -> None:
    data = build_sender_report(5, 1, 2, 3, 4)
    extended = header(0, 200, data[4:] + b"EXT!")
    assert parse_rtcp(extended) == [SenderReport(5, 1, 2, 3, 4)]


# --- NTP time ----------------------------------------------------------------------------------


def test_ntp_from_unix_counts_seconds_since_1900_in_32_32_fixed_point() -> None:
    assert ntp_from_unix(0.0) == 2208988800 << 32
    assert ntp_from_unix(1.5) == ((2208988800 + 1) << 32) | 0x80000000


def test_ntp_now_is_the_current_time() -> None:
    seconds = (ntp_now() >> 32) - 2208988800
    assert abs(seconds - time.time()) < 5


def test_compact_ntp_is_the_middle_32_bits() -> None:
    assert compact_ntp(0x1122334455667788) == 0x33445566
