"""SDP offer/answer for the SFU (salon.media.sdp): real aiortc offers and a Chromium offer."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.sdp import SessionDescription

from salon.errors import InvalidRequestError
from salon.media.errors import InvalidSdpError, MediaError, UnsupportedError
from salon.media.loopback import host_addresses
from salon.media.sdp import (
    EXT_TRANSPORT_CC,
    AnswerMedia,
    HeaderExtensionIds,
    HostCandidate,
    LocalTransportParameters,
    RtpCodec,
    SendingSsrcs,
    build_answer,
    codecs_match,
    h264_profile_level_id_string,
    negotiate_publish,
    negotiate_subscribe,
    parse_h264_profile_level_id,
    parse_offer,
)

CHROMIUM_OFFER = (Path(__file__).parent / "fixtures" / "chromium-offer.sdp").read_bytes().decode()

LOCAL = LocalTransportParameters(
    ice_ufrag="sfuA",
    ice_pwd="sfupasswordsfupassword",
    fingerprints=(("sha-256", ":".join(["AB"] * 32)),),
    candidates=(HostCandidate(foundation="f1", priority=2130706431, ip="127.0.0.1", port=40000),),
)


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    with host_addresses(["127.0.0.1"]):
        yield


def h264(plid: str, pm: int = 1, pt: int = 102) -> RtpCodec:
    return RtpCodec(
        kind="video",
        mime_type="video/H264",
        clock_rate=90000,
        channels=None,
        payload_type=pt,
        parameters={"packetization-mode": pm, "profile-level-id": plid, "level-asymmetry-allowed": 1},
    )


async def aiortc_offer(*, audio: str | None, video: str | None, video_codec: str | None = None) -> str:
    """An offer from a real RTCPeerConnection; ``audio``/``video`` are directions or None."""
    pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
    try:
        if audio:
            pc.addTransceiver(AudioStreamTrack() if audio == "sendonly" else "audio", direction=audio)
        if video:
            t = pc.addTransceiver(VideoStreamTrack() if video == "sendonly" else "video", direction=video)
            if video_codec:
                caps = RTCRtpSender.getCapabilities("video").codecs
                t.setCodecPreferences([c for c in caps if c.mimeType in (video_codec, "video/rtx")])
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def media_sections(sdp: str) -> list[str]:
    return ["m=" + part for part in sdp.split("\r\nm=")[1:]]


# --- codec matching -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (h264("42e01f"), h264("42e01f", pt=99), True),
        (h264("42e01f"), h264("42e034"), True),  # level differs: level-asymmetry
        (h264("42e01f"), h264("42001f"), False),  # constrained baseline vs baseline
        (h264("42e01f"), h264("640c1f"), False),  # constrained baseline vs constrained high
        (h264("640c1f"), h264("64001f"), False),  # constrained high vs high
        (h264("4d001f"), h264("4d001f"), True),
        (h264("42e01f", pm=0), h264("42e01f", pm=1), False),
    ],
)
def test_h264_codecs_match_on_profile_and_packetization_mode(a: RtpCodec, b: RtpCodec, match: bool) -> None:
    assert codecs_match(a, b) is match
    assert codecs_match(b, a) is match


# --- publish --------------------------------------------------------------------------------


async def test_aiortc_publish_offer_negotiates_opus_and_vp8_with_rtx() -> None:
    sdp = await aiortc_offer(audio="sendonly", video="sendonly")
    offer = parse_offer(sdp)
    audio, video = negotiate_publish(offer)
    assert (audio.kind, audio.codec.name, audio.codec.payload_type, audio.codec.channels) == (
        "audio",
        "opus",
        96,
        2,
    )
    assert audio.extensions == HeaderExtensionIds(mid=1, audio_level=2)
    assert (video.kind, video.codec.name, video.codec.payload_type, video.codec.rtx_payload_type) == (
        "video",
        "vp8",
        97,
        98,
    )
    assert video.extensions == HeaderExtensionIds(mid=1, abs_send_time=3)
    # The SSRCs the offer announces: audio's, then video's and its RTX in the FID group.
    (audio_ssrc,) = re.findall(r"a=ssrc:(\d+) cname", media_sections(sdp)[0])
    (fid,) = re.findall(r"a=ssrc-group:FID (\d+) (\d+)", media_sections(sdp)[1])
    assert (audio.ssrc, video.ssrc, video.rtx_ssrc) == (int(audio_ssrc), int(fid[0]), int(fid[1]))
    assert set(video.codec.rtcp_feedback) == {("nack", None), ("nack", "pli"), ("goog-remb", None)}


async def test_publish_answer_is_accepted_by_the_aiortc_offerer() -> None:
    pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = parse_offer(pc.localDescription.sdp)
        tracks = negotiate_publish(offer)
        answer = build_answer(
            offer,
            LOCAL,
            [
                AnswerMedia(mid=t.mid, direction="recvonly", codec=t.codec, extensions=t.extensions)
                for t in tracks
            ],
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert [t._codecs[0].mimeType for t in pc.getTransceivers()] == ["audio/opus", "video/VP8"]
    finally:
        await pc.close()
    assert "a=setup:active" in answer
    assert "a=group:BUNDLE 0 1" in answer
    assert answer.count("a=rtcp-mux") == 2
    assert "a=candidate:f1 1 udp 2130706431 127.0.0.1 40000 typ host" in answer
    assert "a=end-of-candidates" in answer
    assert "a=ice-ufrag:sfuA" in answer and "a=fingerprint:sha-256 AB:AB" in answer


def test_publish_transport_cc_needs_both_the_extension_and_the_feedback() -> None:
    """Half an offer of transport-cc is none: the publisher then gets REMB (goog-remb)."""
    no_feedback = re.sub(r"a=rtcp-fb:\d+ transport-cc\r\n", "", CHROMIUM_OFFER)
    no_extension = re.sub(r"a=extmap:3 [^\r]*\r\n", "", CHROMIUM_OFFER)
    for sdp in (no_feedback, no_extension):
        _, video = negotiate_publish(parse_offer(sdp))
        assert video.extensions.transport_cc is None
        assert ("transport-cc", None) not in video.codec.rtcp_feedback
        assert ("goog-remb", None) in video.codec.rtcp_feedback


async def test_aiortc_h264_publish_offer_keeps_the_first_offered_profile() -> None:
    offer = parse_offer(await aiortc_offer(audio=None, video="sendonly", video_codec="video/H264"))
    (video,) = negotiate_publish(offer)
    assert video.codec.name == "h264"
    assert video.codec.parameters["profile-level-id"] == "42001f"
    assert str(video.codec.parameters["packetization-mode"]) == "1"
    assert (video.codec.payload_type, video.codec.rtx_payload_type) == (99, 100)  # a=fmtp:100 apt=99


def test_chromium_publish_offer_keeps_supported_codecs_and_extension_ids() -> None:
    offer = parse_offer(CHROMIUM_OFFER)
    assert offer.bundle == ("0", "1")
    assert not offer.transport.candidates and not offer.transport.candidates_complete  # trickle
    audio, video = negotiate_publish(offer)
    # Chromium offers transport-cc: negotiated (extension id 3 and rtcp-fb), goog-remb left out.
    assert (audio.codec.name, audio.codec.payload_type, audio.codec.rtcp_feedback) == (
        "opus",
        111,
        (("transport-cc", None),),
    )
    assert audio.extensions == HeaderExtensionIds(mid=4, audio_level=1, transport_cc=3)
    assert (video.codec.name, video.codec.payload_type, video.codec.rtx_payload_type) == ("vp8", 96, 97)
    assert video.extensions == HeaderExtensionIds(mid=4, abs_send_time=2, transport_cc=3)
    assert ("transport-cc", None) in video.codec.rtcp_feedback
    assert ("goog-remb", None) not in video.codec.rtcp_feedback
    assert ("ccm", "fir") in video.codec.rtcp_feedback
    assert (video.ssrc, video.rtx_ssrc) == (2763917513, 3158293042)

    answer = build_answer(
        offer,
        LOCAL,
        [
            AnswerMedia(mid=t.mid, direction="recvonly", codec=t.codec, extensions=t.extensions)
            for t in (audio, video)
        ],
    )
    audio_section, video_section = media_sections(answer)
    assert audio_section.startswith("m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\n")
    assert video_section.startswith("m=video 40000 UDP/TLS/RTP/SAVPF 96 97\r\n")
    assert "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid" in video_section
    assert "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time" in video_section
    assert "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level" in audio_section
    ext = "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
    assert ext in audio_section and ext in video_section
    assert "a=rtcp-fb:111 transport-cc" in audio_section
    assert "a=rtcp-fb:96 transport-cc" in video_section
    for unwanted in ("goog-remb", "VP9", "AV1", "red/", "ulpfec", "toffset", "a=rid", "a=simulcast"):
        assert unwanted not in answer
    assert "a=fmtp:97 apt=96" in video_section
    assert "a=recvonly" in video_section
    # The answer parses back.
    parsed = SessionDescription.parse(answer)
    assert [m.rtp.muxId for m in parsed.media] == ["0", "1"]
    assert [m.dtls.role if m.dtls else None for m in parsed.media] == ["client", "client"]


def test_chromium_offer_without_vp8_chooses_h264_packetization_mode_1() -> None:
    sdp = re.sub(r"a=(rtpmap|rtcp-fb|fmtp):(96|97) [^\r]*\r\n", "", CHROMIUM_OFFER)
    (_audio, video) = negotiate_publish(parse_offer(sdp))
    assert (video.codec.name, video.codec.payload_type, video.codec.rtx_payload_type) == ("h264", 102, 103)
    assert video.codec.parameters["profile-level-id"] == "42001f"


def simulcast_offer(rid_extension: bool = True, simulcast_line: str = "a=simulcast:send q;h;f") -> str:
    """The Chromium offer as Chromium writes it with three ``sendEncodings`` (no a=ssrc)."""
    sdp = re.sub(r"a=ssrc(-group)?:[^\r]*\r\n", "", CHROMIUM_OFFER)
    if not rid_extension:
        sdp = re.sub(r"a=extmap:1[01] [^\r]*\r\n", "", sdp)
    return sdp.replace(
        "a=rtpmap:96 VP8/90000",
        f"a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n{simulcast_line}\r\na=rtpmap:96 VP8/90000",
    )


def test_chromium_simulcast_offer_is_answered_with_its_rids() -> None:
    offer = parse_offer(simulcast_offer())
    _audio, video = negotiate_publish(offer)
    assert video.simulcast_offered and video.ssrc is None and video.rtx_ssrc is None
    assert [e.rid for e in video.encodings] == ["q", "h", "f"]
    assert all(e.ssrc is None and e.rtx_ssrc is None for e in video.encodings)
    assert (video.extensions.rid, video.extensions.repaired_rid, video.extensions.mid) == (10, 11, 4)
    answer = build_answer(
        offer,
        LOCAL,
        [
            AnswerMedia(
                mid=video.mid,
                direction="recvonly",
                codec=video.codec,
                extensions=video.extensions,
                simulcast_rids=video.simulcast_rids,
            )
        ],
    )
    section = media_sections(answer)[1]
    assert "a=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f" in section
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in section
    assert "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in section
    assert media_sections(answer)[0].startswith("m=audio 0 ")  # not answered: rejected
    assert "a=group:BUNDLE 1" in answer
    # The answer still parses, with the lines in the video section only.
    reparsed = SessionDescription.parse(answer)
    assert [m.kind for m in reparsed.media] == ["audio", "video"]
    assert "a=rid" not in media_sections(answer)[0] and answer.endswith("\r\n")


def test_simulcast_paused_and_alternative_rids() -> None:
    offer = parse_offer(simulcast_offer(simulcast_line="a=simulcast:send q;~h,x;f"))
    _audio, video = negotiate_publish(offer)
    assert [e.rid for e in video.encodings] == ["q", "h", "f"]


def test_simulcast_without_the_rid_extension_gets_a_single_encoding() -> None:
    offer = parse_offer(simulcast_offer(rid_extension=False))
    _audio, video = negotiate_publish(offer)
    assert video.simulcast_offered and video.encodings == () and video.simulcast_rids == ()
    assert video.extensions.rid is None
    answer = build_answer(offer, LOCAL, [AnswerMedia(mid=video.mid, direction="recvonly", codec=video.codec)])
    assert "a=rid" not in answer and "a=simulcast" not in answer


def test_legacy_sim_group_gives_encodings_with_their_ssrcs() -> None:
    sdp = re.sub(r"a=ssrc(-group)?:[^\r]*\r\n", "", CHROMIUM_OFFER)
    lines = "a=ssrc-group:SIM 11 22 33\r\n" + "".join(
        f"a=ssrc-group:FID {m} {r}\r\n" for m, r in ((11, 111), (22, 222), (33, 333))
    )
    lines += "".join(f"a=ssrc:{s} cname:abc\r\n" for s in (11, 111, 22, 222, 33, 333))
    sdp = sdp.replace("a=rtpmap:96 VP8/90000", lines + "a=rtpmap:96 VP8/90000")
    offer = parse_offer(sdp)
    _audio, video = negotiate_publish(offer)
    assert [(e.rid, e.ssrc, e.rtx_ssrc) for e in video.encodings] == [
        (None, 11, 111),
        (None, 22, 222),
        (None, 33, 333),
    ]
    assert (video.ssrc, video.rtx_ssrc) == (11, 111) and video.simulcast_rids == ()
    assert video.extensions.rid is None


# --- subscribe ------------------------------------------------------------------------------


async def test_subscribe_answer_uses_the_subscribers_payload_types_and_our_ssrcs() -> None:
    offer = parse_offer(await aiortc_offer(audio="recvonly", video="recvonly", video_codec="video/H264"))
    producer_video = dataclasses.replace(h264("42e01f", pt=126), rtx_payload_type=127)
    producer_audio = RtpCodec(
        kind="audio", mime_type="audio/opus", clock_rate=48000, channels=2, payload_type=111
    )
    audio, video = negotiate_subscribe(offer, [("pa", producer_audio), ("pv", producer_video)])
    assert (audio.source, audio.codec.payload_type) == ("pa", 96)
    # aiortc offers 99 = H264 42001f, 101 = H264 42e01f: the constrained-baseline one must win.
    assert (video.source, video.codec.payload_type, video.codec.rtx_payload_type) == ("pv", 101, 102)
    assert video.codec.parameters["profile-level-id"] == "42e01f"

    answer = build_answer(
        offer,
        LOCAL,
        [
            AnswerMedia(
                mid=audio.mid,
                direction="sendonly",
                codec=audio.codec,
                extensions=audio.extensions,
                sending=SendingSsrcs(ssrc=1111, rtx_ssrc=None, cname="c", msid="s a"),
            ),
            AnswerMedia(
                mid=video.mid,
                direction="sendonly",
                codec=video.codec,
                extensions=video.extensions,
                sending=SendingSsrcs(ssrc=2222, rtx_ssrc=3333, cname="c", msid="s v"),
            ),
        ],
    )
    _audio_section, video_section = media_sections(answer)
    assert video_section.startswith("m=video 40000 UDP/TLS/RTP/SAVPF 101 102\r\n")
    assert "a=ssrc-group:FID 2222 3333" in video_section
    assert "a=ssrc:2222 msid:s v" in video_section and "a=msid:s v" in video_section
    assert "a=sendonly" in video_section and "a=mid:1" in video_section

    # The aiortc subscriber accepts it.
    pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sub_offer = parse_offer(pc.localDescription.sdp)
        tracks = negotiate_subscribe(sub_offer, [("pa", producer_audio), ("pv", h264("42e01f"))])
        sub_answer = build_answer(
            sub_offer,
            LOCAL,
            [
                AnswerMedia(
                    mid=t.mid,
                    direction="sendonly",
                    codec=t.codec,
                    extensions=t.extensions,
                    sending=SendingSsrcs(ssrc=10 + i, rtx_ssrc=None, cname="c", msid=f"s t{i}"),
                )
                for i, t in enumerate(tracks)
            ],
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sub_answer, type="answer"))
    finally:
        await pc.close()


async def test_subscriber_without_the_producers_h264_profile_is_refused() -> None:
    offer = parse_offer(await aiortc_offer(audio=None, video="recvonly", video_codec="video/H264"))
    with pytest.raises(UnsupportedError, match="640c1f"):
        negotiate_subscribe(offer, [("pv", h264("640c1f"))])


async def test_subscriber_offering_only_vp8_cannot_receive_h264() -> None:
    offer = parse_offer(await aiortc_offer(audio=None, video="recvonly", video_codec="video/VP8"))
    with pytest.raises(UnsupportedError) as info:
        negotiate_subscribe(offer, [("pv", h264("42e01f"))])
    assert isinstance(info.value, InvalidRequestError) and info.value.status == 400


def test_chromium_subscribe_offer_maps_to_chromium_payload_types() -> None:
    sdp = CHROMIUM_OFFER.replace("a=sendonly", "a=recvonly")
    vp8 = RtpCodec(
        kind="video",
        mime_type="video/VP8",
        clock_rate=90000,
        channels=None,
        payload_type=97,
        rtx_payload_type=98,
    )
    offer = parse_offer(sdp)
    (video,) = negotiate_subscribe(offer, [("pv", vp8)])
    assert (video.codec.payload_type, video.codec.rtx_payload_type) == (96, 97)
    # Toward a subscriber the SFU sends: transport-wide congestion control is negotiated.
    assert video.extensions == HeaderExtensionIds(mid=4, abs_send_time=2, transport_cc=3)
    assert ("transport-cc", None) in video.codec.rtcp_feedback
    answer = build_answer(
        offer,
        LOCAL,
        [AnswerMedia(mid=video.mid, direction="sendonly", codec=video.codec, extensions=video.extensions)],
    )
    (video_section,) = [m for m in media_sections(answer) if m.startswith("m=video")]
    assert f"a=extmap:3 {EXT_TRANSPORT_CC}" in video_section
    assert "a=rtcp-fb:96 transport-cc" in video_section
    # An offer without them (aiortc's) gets neither: that subscriber is estimated from REMB.
    plain = re.sub(r"a=(extmap:3|rtcp-fb:\d+ transport-cc)[^\r]*\r\n", "", sdp)
    (video,) = negotiate_subscribe(parse_offer(plain), [("pv", vp8)])
    assert video.extensions.transport_cc is None
    assert ("transport-cc", None) not in video.codec.rtcp_feedback


# --- errors ---------------------------------------------------------------------------------


def test_errors_say_the_offer_is_at_fault() -> None:
    with pytest.raises(InvalidSdpError):
        parse_offer("v=0\r\nm=video nonsense\r\n")
    with pytest.raises(InvalidSdpError, match="fingerprint"):
        parse_offer(re.sub(r"a=fingerprint:[^\r]*\r\n", "", CHROMIUM_OFFER))
    with pytest.raises(InvalidSdpError, match="ice-ufrag"):
        parse_offer(re.sub(r"a=ice-ufrag:[^\r]*\r\n", "", CHROMIUM_OFFER))
    with pytest.raises(UnsupportedError, match="rtcp-mux"):
        parse_offer(CHROMIUM_OFFER.replace("a=rtcp-mux\r\n", ""))
    pcmu_only = re.sub(r"a=(rtpmap|rtcp-fb|fmtp):(111|63) [^\r]*\r\n", "", CHROMIUM_OFFER)
    tracks = negotiate_publish(parse_offer(pcmu_only))
    assert [t.kind for t in tracks] == ["video"]  # the audio m-line is rejected, video kept
    audio_only = pcmu_only[: pcmu_only.index("m=video")].replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0")
    with pytest.raises(UnsupportedError, match="no codec we support"):
        negotiate_publish(parse_offer(audio_only))
    assert issubclass(MediaError, InvalidRequestError)


# --- H.264 profile-level-id (RFC 6184 §8.1, as webrtc reads it) ------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("42001f", ("baseline", 31)),  # the profile-level-ids of a Chromium offer
        ("42e01f", ("constrained-baseline", 31)),
        ("4d001f", ("main", 31)),
        ("64001f", ("high", 31)),
        ("640034", ("high", 52)),
        ("640c1f", ("constrained-high", 31)),
        ("f4001f", ("predictive-high-444", 31)),
        ("42c01f", ("constrained-baseline", 31)),  # constraint_set0 too: still constrained
        ("4d401f", ("main", 31)),
        ("58c01f", ("constrained-baseline", 31)),
        ("42E01F", ("constrained-baseline", 31)),
        ("42f00b", ("constrained-baseline", 0)),  # level 1b: level_idc 11 + constraint_set3
        ("42e00b", ("constrained-baseline", 11)),
        ("4d100b", ("main", 0)),
        ("640c3c", ("constrained-high", 60)),  # level 6.0
        ("640009", None),  # High "level 1b" as level_idc 9: webrtc does not know it
        ("43e01f", None),
        ("42e0ff", None),
        ("42e01", None),
        ("42e01f0", None),
        ("zze01f", None),
    ],
)
def test_h264_profile_level_id_is_parsed_like_webrtc(value: str, parsed: tuple[str, int] | None) -> None:
    assert parse_h264_profile_level_id(value) == parsed


def test_h264_profile_level_id_strings_are_webrtcs() -> None:
    assert h264_profile_level_id_string("constrained-baseline", 31) == "42e01f"
    assert h264_profile_level_id_string("high", 52) == "640034"
    assert h264_profile_level_id_string("constrained-high", 62) == "640c3e"
    assert h264_profile_level_id_string("baseline", 0) == "42100b"
    assert h264_profile_level_id_string("high", 0) is None


def test_h264_without_profile_level_id_is_constrained_baseline_as_in_webrtc() -> None:
    bare = dataclasses.replace(h264("42e01f"), parameters={"packetization-mode": "1"})
    assert codecs_match(bare, h264("42e01f")) and codecs_match(bare, h264("42e034"))
    assert not codecs_match(bare, h264("42001f"))


def chromium_h264_subscribe(offer_sdp: str, producer: RtpCodec) -> tuple[RtpCodec, str]:
    """Negotiate a subscription of ``producer`` with a Chromium recvonly offer, and the answer's
    fmtp line for the chosen payload type."""
    offer = parse_offer(offer_sdp.replace("a=sendonly", "a=recvonly"))
    (video,) = negotiate_subscribe(offer, [("pv", producer)])
    answer = build_answer(
        offer,
        LOCAL,
        [
            AnswerMedia(
                mid=video.mid,
                direction="sendonly",
                codec=video.codec,
                extensions=video.extensions,
                sending=SendingSsrcs(ssrc=2222, rtx_ssrc=None, cname="c", msid="s v"),
            )
        ],
    )
    (fmtp,) = [
        line
        for line in media_sections(answer)[1].split("\r\n")
        if line.startswith(f"a=fmtp:{video.codec.payload_type} ")
    ]
    return video.codec, fmtp


def producer_h264(fmtp: str, pt: int = 100) -> RtpCodec:
    parameters: dict[str, str | int | None] = dict(item.split("=", 1) for item in fmtp.split(";"))  # type: ignore[misc]
    return RtpCodec(
        kind="video",
        mime_type="video/H264",
        clock_rate=90000,
        channels=None,
        payload_type=pt,
        parameters=parameters,
    )


def test_chromium_publisher_to_chromium_subscriber_answers_the_matching_profile() -> None:
    sdp = re.sub(r"a=(rtpmap|rtcp-fb|fmtp):(96|97) [^\r]*\r\n", "", CHROMIUM_OFFER)
    (_audio, published) = negotiate_publish(parse_offer(sdp))
    codec, fmtp = chromium_h264_subscribe(CHROMIUM_OFFER, published.codec)
    assert codec.payload_type == 102  # Chromium's baseline 42001f, packetization-mode 1
    assert fmtp == "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"


def test_with_level_asymmetry_the_answer_carries_the_subscribers_level() -> None:
    # A hardware encoder publishing High 3.1; the Chromium subscriber offers High 5.2 first.
    codec, fmtp = chromium_h264_subscribe(
        CHROMIUM_OFFER,
        producer_h264("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
    )
    assert codec.payload_type == 39
    assert fmtp == "a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640034"
    # The publisher's level is above the subscriber's: still the subscriber's.
    codec, fmtp = chromium_h264_subscribe(
        CHROMIUM_OFFER.replace("profile-level-id=640034", "profile-level-id=64001e"),
        producer_h264("packetization-mode=1;profile-level-id=640028"),
    )
    assert fmtp.endswith("profile-level-id=64001e")


def test_without_level_asymmetry_the_answer_carries_the_lower_level() -> None:
    no_asymmetry = CHROMIUM_OFFER.replace("level-asymmetry-allowed=1;", "")
    codec, fmtp = chromium_h264_subscribe(
        no_asymmetry, producer_h264("level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f")
    )
    assert (codec.payload_type, fmtp) == (39, "a=fmtp:39 packetization-mode=1;profile-level-id=64001f")
    _codec, fmtp = chromium_h264_subscribe(
        no_asymmetry, producer_h264("packetization-mode=1;profile-level-id=42e034")
    )
    assert fmtp == "a=fmtp:106 packetization-mode=1;profile-level-id=42e01f"  # the subscriber's 3.1
    # Level 1b sits between 1 and 1.1.
    one_b = no_asymmetry.replace("profile-level-id=42e01f", "profile-level-id=42e00b")
    _codec, fmtp = chromium_h264_subscribe(
        one_b, producer_h264("packetization-mode=1;profile-level-id=42f00b")
    )
    assert fmtp.endswith("profile-level-id=42f00b")
    _codec, fmtp = chromium_h264_subscribe(
        one_b, producer_h264("packetization-mode=1;profile-level-id=42e00a")
    )
    assert fmtp.endswith("profile-level-id=42e00a")


def test_the_publishers_own_fmtp_is_not_copied_into_a_subscriber_answer() -> None:
    producer = producer_h264(
        "packetization-mode=1;profile-level-id=4d0028;max-fs=8160;sprop-parameter-sets=Z0IAH5WoFAFuQA=="
    )
    codec, fmtp = chromium_h264_subscribe(CHROMIUM_OFFER, producer)
    assert codec.payload_type == 127
    assert fmtp == "a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"


def test_an_h264_subscriber_without_profile_level_id_gets_none_when_the_producer_has_none() -> None:
    offer = CHROMIUM_OFFER.replace(";profile-level-id=42e01f", "")
    _codec, fmtp = chromium_h264_subscribe(offer, producer_h264("packetization-mode=1"))
    assert fmtp == "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1"
    _codec, fmtp = chromium_h264_subscribe(
        offer, producer_h264("packetization-mode=1;profile-level-id=42e01e")
    )
    assert fmtp.endswith("profile-level-id=42e01f")  # the default: constrained baseline 3.1
