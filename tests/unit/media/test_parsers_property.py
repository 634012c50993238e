"""Property tests: whatever bytes or text arrive, the media plane's parsers raise nothing but
their documented parse error.

* datagram classification (RFC 7983, :mod:`salon.media.demux`) never raises, and what it
  calls STUN/DTLS/RTP/RTCP has the first byte and minimal size of that protocol; aioice's
  STUN parser, which gets the datagrams classified STUN, raises only ``ValueError``;
* RTP (:mod:`salon.media.rtp`: header, header extensions, RTX, key-frame detection) and RTCP
  (:mod:`salon.media.rtcp`) raise only ``ValueError``;
* SDP (:func:`salon.media.sdp.parse_offer` and the negotiation after it) raises only
  :class:`~salon.media.errors.MediaError`, on arbitrary text and on a real offer with lines
  replaced, cut or inserted;
* ICE candidates: the candidate policy answers for any host and port without raising.

``max_examples`` is bounded so the file runs in a few seconds.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from aioice import stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from salon.media.demux import MAX_DATAGRAM, Datagram, classify_datagram
from salon.media.errors import InvalidSdpError, MediaError
from salon.media.ice_policy import IcePolicy
from salon.media.rtcp import parse_rtcp
from salon.media.rtp import (
    find_header_extension,
    is_h264_keyframe,
    is_vp8_keyframe,
    iter_header_extensions,
    parse_audio_level,
    parse_rtp_header,
    rtp_payload,
    unwrap_rtx,
)
from salon.media.sdp import RtpCodec, negotiate_publish, negotiate_subscribe, parse_offer

OFFER = (Path(__file__).parent / "fixtures" / "chromium-offer.sdp").read_bytes().decode()
LINES = OFFER.split("\r\n")

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rtp_like(data: bytes) -> bytes:
    """``data`` with version 2 in its first byte, so the parsers get past the first check."""
    return bytes([0x80 | (data[0] & 0x3F)]) + data[1:] if data else data


def stun_like(data: bytes) -> bytes:
    """``data`` with a STUN header's type, length and magic cookie made consistent."""
    body = data[20:]
    body += b"\0" * (-len(body) % 4)
    return (
        bytes([data[0] & 0x3F if data else 0, data[1] if len(data) > 1 else 1])
        + struct.pack("!HI12s", len(body), 0x2112A442, data[8:20].ljust(12, b"\0"))[0:18]
        + body
    )


@FAST
@given(st.binary(max_size=200), st.sampled_from([0, 0, 0, MAX_DATAGRAM, MAX_DATAGRAM + 1, 65507]))
def test_classification_never_raises_and_is_consistent(head: bytes, size: int) -> None:
    data = head.ljust(size, b"\x80")
    kind = classify_datagram(data)
    assert isinstance(kind, Datagram)
    if kind is Datagram.STUN:
        assert data[0] < 4 and len(data) >= 20 and data[4:8] == b"\x21\x12\xa4\x42"
    elif kind is Datagram.DTLS:
        assert 20 <= data[0] <= 63 and len(data) >= 13
    elif kind in (Datagram.RTP, Datagram.RTCP):
        assert 128 <= data[0] <= 191 and len(data) >= 12
        assert (kind is Datagram.RTCP) == (192 <= data[1] <= 223)
    if kind.valid:
        assert 0 < len(data) <= MAX_DATAGRAM


@FAST
@given(st.binary(max_size=120))
def test_stun_parsing_of_what_is_classified_stun_raises_only_value_error(data: bytes) -> None:
    for candidate in (data, stun_like(data)):
        if classify_datagram(candidate) is not Datagram.STUN:
            continue
        try:
            stun.parse_message(candidate)
        except ValueError:
            pass


def test_classification_examples() -> None:
    assert classify_datagram(b"") is Datagram.EMPTY
    assert classify_datagram(b"\x80") is Datagram.MALFORMED
    assert classify_datagram(b"\x80" * 11) is Datagram.MALFORMED
    assert classify_datagram(b"\x80" + b"\x60" + b"\0" * 10) is Datagram.RTP
    assert classify_datagram(b"\x81\xc9" + b"\0" * 10) is Datagram.RTCP
    assert classify_datagram(b"\x16\xfe\xfd" + b"\0" * 10) is Datagram.DTLS
    assert classify_datagram(b"\x16\x03\x01" + b"\0" * 10) is Datagram.MALFORMED  # TLS, not DTLS
    binding = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    assert classify_datagram(bytes(binding)) is Datagram.STUN
    assert classify_datagram(bytes(binding)[:-1] + b"\0\0") is Datagram.MALFORMED
    assert classify_datagram(b"\x40" + b"\0" * 30) is Datagram.UNKNOWN  # a TURN channel
    assert classify_datagram(b"\xff" * 20) is Datagram.UNKNOWN
    assert classify_datagram(b"\x80" * (MAX_DATAGRAM + 1)) is Datagram.OVERSIZED


@FAST
@given(st.binary(max_size=300))
def test_rtp_parsing_raises_only_value_error(data: bytes) -> None:
    data = rtp_like(data)
    try:
        header = parse_rtp_header(data)
    except ValueError:
        return
    for step in (
        lambda: list(iter_header_extensions(data, header)),
        lambda: find_header_extension(data, header, 1),
        lambda: find_header_extension(data, header, 14),
        lambda: unwrap_rtx(data, header),
        lambda: is_vp8_keyframe(rtp_payload(data, header)),
        lambda: is_h264_keyframe(rtp_payload(data, header)),
        lambda: parse_audio_level(rtp_payload(data, header)[:1]),
    ):
        try:
            step()
        except ValueError:
            pass


@FAST
@given(st.binary(max_size=300))
def test_rtcp_parsing_raises_only_value_error(data: bytes) -> None:
    for candidate in (data, rtp_like(data)):
        try:
            packets = parse_rtcp(candidate)
        except ValueError:
            continue
        assert isinstance(packets, list)


OPUS = RtpCodec(kind="audio", mime_type="audio/opus", clock_rate=48000, channels=2, payload_type=111)


def negotiate(sdp: str) -> None:
    """Parse and negotiate ``sdp`` both ways; only :class:`MediaError` may come out."""
    try:
        offer = parse_offer(sdp)
    except MediaError:
        return
    try:
        negotiate_publish(offer)
    except MediaError:
        pass
    try:
        negotiate_subscribe(offer, [("producer", OPUS)])
    except MediaError:
        pass


@FAST
@given(st.text(max_size=400))
def test_sdp_parsing_of_any_text_raises_only_media_errors(text: str) -> None:
    negotiate(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(LINES) - 1),
    st.text(st.characters(codec="utf-8"), max_size=40)
    | st.sampled_from(["", "0", "-1", " ", ":", "a=", "x" * 9]),
    st.sampled_from(["replace", "truncate", "insert", "value"]),
)
def test_sdp_parsing_of_a_mangled_real_offer_raises_only_media_errors(
    index: int, text: str, how: str
) -> None:
    lines = list(LINES)
    if how == "replace":
        lines[index] = text
    elif how == "truncate":
        lines[index] = lines[index][: len(text)]
    elif how == "insert":
        lines.insert(index, lines[index][:2] + text)
    else:
        head, sep, _ = lines[index].partition(":")
        lines[index] = head + (sep or "=") + text
    negotiate("\r\n".join(lines))


def test_an_attribute_without_its_value_is_invalid_sdp() -> None:
    # Found by the test above: aiortc's parser raised AttributeError on "a=rtpmap" (no value),
    # which the worker logged as a failed request with a traceback.
    lines = [line if not line.startswith("a=rtpmap:") else "a=rtpmap" for line in LINES]
    with pytest.raises(InvalidSdpError):
        parse_offer("\r\n".join(lines))


@FAST
@given(st.text(max_size=60), st.integers(-(2**31), 2**31))
def test_the_candidate_policy_answers_for_any_host_and_port(host: str, port: int) -> None:
    for policy in (IcePolicy(), IcePolicy(allow=("10.0.0.0/8",), deny=("10.1.0.0/16",), allow_loopback=True)):
        refusal = policy.refusal(host, port)
        assert refusal is None or isinstance(refusal, str)
