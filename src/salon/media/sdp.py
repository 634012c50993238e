"""SDP offer/answer for the SFU: pure functions, no I/O.

The SFU never offers: every client sends an offer and the SFU answers (see the
"Media plane" section of ``docs/architecture.md``: a fresh ``RTCIceGatherer`` is
ICE-controlled, so the SFU is the DTLS client and always answers ``a=setup:active``).

Two kinds of offer exist, one per transport:

* a **publish** offer: ``sendonly`` (or ``sendrecv``) audio and/or video m-lines. For each
  m-line we pick the first codec the client offered that we can forward (Opus 48000/2, VP8,
  H.264 packetization-mode=1), its RTX codec (``apt=``) if offered, the RTCP feedback we
  implement, and the header extensions we understand, keeping the client's payload types and
  extension ids. The result is a :class:`PublishTrack` per accepted m-line, from which the
  router makes one producer each.
* a **subscribe** offer: ``recvonly`` m-lines from a client that wants one stream. Each
  m-line is paired with the stream's producer of the same kind; the consumer sends with the
  payload type the *subscriber* offered for the producer's codec (per-subscriber PT mapping)
  and with the subscriber's extension ids. For H.264 the profile must match and the answer's
  ``profile-level-id`` level follows RFC 6184 §8.2.2 as webrtc applies it (the subscriber's
  level with ``level-asymmetry-allowed=1``, else the lower of the two). If the subscriber
  cannot receive the producer's codec, :class:`~salon.media.errors.UnsupportedError` is
  raised.

Simulcast (RFC 8853): a video m-line of a publish offer with ``a=simulcast:send`` naming
``a=rid:<id> send`` lines, and the ``rtp-stream-id`` header extension, is answered with
``a=rid:<id> recv`` and ``a=simulcast:recv`` for the same RIDs (in the offer's order, which is
taken as lowest to highest quality) and the ``rtp-stream-id`` / ``repaired-rtp-stream-id``
extensions: the producer gets one :class:`EncodingParameters` per RID, whose SSRCs it learns
from the RIDs of the first packets. The legacy form (``a=ssrc-group:SIM`` listing the SSRCs,
lowest first, each with its ``FID`` group) gives encodings with known SSRCs and needs nothing
in the answer. At most :data:`MAX_SIMULCAST_ENCODINGS` encodings are accepted.

Transport-wide congestion control (the transport-wide sequence-number extension and
``a=rtcp-fb:<pt> transport-cc``) is negotiated when the client offers both. Toward subscribers the
SFU stamps every packet it sends them and estimates their downlink from the feedback
(:mod:`salon.media.bandwidth`). Toward publishers (Chromium) the SFU records when each stamped
packet arrived and sends transport-cc feedback (:class:`~salon.media.twcc.FeedbackGenerator`), so
the publisher's own congestion control measures its uplink; ``goog-remb`` is then left out of
that m-line's answer. A publisher that offers no transport-cc (aiortc) gets REMB computed from
the SFU's receive-side measurements.

What we deliberately do not negotiate: red/ulpfec/flexfec, VP9/AV1
(forwarding them is possible, key-frame detection is not written), and simulcast without the
``rtp-stream-id`` extension (answered without ``a=simulcast``, so per RFC 8853 the client
sends a single encoding).

Parsing uses ``aiortc.sdp.SessionDescription.parse`` (not exported, pinned with aiortc) and
translates its assertion/lookup failures into :class:`~salon.media.errors.InvalidSdpError`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from aiortc.rtcdtlstransport import RTCDtlsFingerprint, RTCDtlsParameters
from aiortc.rtcicetransport import RTCIceCandidate, RTCIceParameters
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
)
from aiortc.sdp import (
    GroupDescription,
    MediaDescription,
    SessionDescription,
    SsrcDescription,
    candidate_to_sdp,
)

from salon.media.errors import InvalidSdpError, UnsupportedError

__all__ = [
    "EXT_ABS_SEND_TIME",
    "EXT_AUDIO_LEVEL",
    "EXT_MID",
    "EXT_REPAIRED_RID",
    "EXT_RID",
    "EXT_TRANSPORT_CC",
    "MAX_SIMULCAST_ENCODINGS",
    "AnswerMedia",
    "ClientOffer",
    "EncodingParameters",
    "HeaderExtensionIds",
    "HostCandidate",
    "LocalTransportParameters",
    "MediaKind",
    "OfferedMedia",
    "PublishTrack",
    "RtpCodec",
    "SendingSsrcs",
    "SubscribeTrack",
    "build_answer",
    "codecs_match",
    "h264_answer_parameters",
    "h264_profile_level_id_string",
    "is_supported_codec",
    "negotiate_publish",
    "negotiate_subscribe",
    "parse_h264_profile_level_id",
    "parse_offer",
]

MediaKind = Literal["audio", "video"]

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"

#: Simulcast encodings accepted per m-line (Chromium sends up to 3; more are not answered).
MAX_SIMULCAST_ENCODINGS = 4

#: RTCP feedback the SFU implements, as (type, parameter).
SUPPORTED_RTCP_FEEDBACK: frozenset[tuple[str, str | None]] = frozenset(
    {("nack", None), ("nack", "pli"), ("ccm", "fir"), ("goog-remb", None)}
)
#: RTCP feedback answered toward subscribers only (the SFU is the sender there).
SUBSCRIBER_RTCP_FEEDBACK: frozenset[tuple[str, str | None]] = SUPPORTED_RTCP_FEEDBACK | {
    ("transport-cc", None)
}

_PROFILE = "UDP/TLS/RTP/SAVPF"


# --------------------------------------------------------------------------------------------
# Data model


@dataclass(frozen=True, slots=True)
class HeaderExtensionIds:
    """The one-byte header-extension ids negotiated on one m-line (``None``: not negotiated)."""

    mid: int | None = None
    abs_send_time: int | None = None
    audio_level: int | None = None
    rid: int | None = None
    """``rtp-stream-id`` (simulcast publish m-lines only)."""
    repaired_rid: int | None = None
    """``repaired-rtp-stream-id`` (simulcast publish m-lines only)."""
    transport_cc: int | None = None
    """The transport-wide sequence number (when transport-cc is negotiated)."""

    @classmethod
    def from_map(
        cls, kind: MediaKind, uris: Mapping[str, int], *, simulcast: bool = False, transport_cc: bool = False
    ) -> HeaderExtensionIds:
        """Keep the extensions we support out of an offered ``uri -> id`` map (the RID ones
        only for a simulcast publish m-line; the transport-wide sequence number only with
        ``transport_cc``)."""
        return cls(
            mid=uris.get(EXT_MID),
            abs_send_time=uris.get(EXT_ABS_SEND_TIME) if kind == "video" else None,
            audio_level=uris.get(EXT_AUDIO_LEVEL) if kind == "audio" else None,
            rid=uris.get(EXT_RID) if simulcast else None,
            repaired_rid=uris.get(EXT_REPAIRED_RID) if simulcast else None,
            transport_cc=uris.get(EXT_TRANSPORT_CC) if transport_cc else None,
        )

    def to_sdp(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        if self.mid is not None:
            out.append((self.mid, EXT_MID))
        if self.abs_send_time is not None:
            out.append((self.abs_send_time, EXT_ABS_SEND_TIME))
        if self.audio_level is not None:
            out.append((self.audio_level, EXT_AUDIO_LEVEL))
        if self.rid is not None:
            out.append((self.rid, EXT_RID))
        if self.repaired_rid is not None:
            out.append((self.repaired_rid, EXT_REPAIRED_RID))
        if self.transport_cc is not None:
            out.append((self.transport_cc, EXT_TRANSPORT_CC))
        return out


@dataclass(frozen=True, slots=True)
class RtpCodec:
    """One negotiated codec of one m-line, with its RTX companion if any."""

    kind: MediaKind
    mime_type: str
    """``"audio/opus"``, ``"video/VP8"``, ``"video/H264"``... as written in the offer."""
    clock_rate: int
    channels: int | None
    payload_type: int
    parameters: Mapping[str, str | int | None] = field(default_factory=dict, hash=False)
    rtcp_feedback: tuple[tuple[str, str | None], ...] = ()
    rtx_payload_type: int | None = None

    @property
    def name(self) -> str:
        """The lower-case codec name: ``opus``, ``vp8``, ``h264``, ``rtx``..."""
        return self.mime_type.split("/", 1)[1].lower()

    def supports_feedback(self, type_: str, parameter: str | None = None) -> bool:
        return (type_, parameter) in self.rtcp_feedback

    @classmethod
    def from_aiortc(cls, kind: MediaKind, codec: RTCRtpCodecParameters) -> RtpCodec:
        return cls(
            kind=kind,
            mime_type=codec.mimeType,
            clock_rate=codec.clockRate,
            channels=codec.channels,
            payload_type=int(codec.payloadType or 0),
            parameters=dict(codec.parameters),
            rtcp_feedback=tuple((fb.type, fb.parameter) for fb in codec.rtcpFeedback),
        )


@dataclass(frozen=True, slots=True)
class RemoteTransportParameters:
    """The client's ICE and DTLS parameters, from the offer's session or first m-line."""

    ice_ufrag: str
    ice_pwd: str
    ice_lite: bool
    fingerprints: tuple[tuple[str, str], ...]
    """(algorithm, value) pairs, e.g. ``("sha-256", "AB:CD:...")``."""
    candidates: tuple[str, ...]
    """``candidate:`` attribute values (without the ``a=candidate:`` prefix)."""
    candidates_complete: bool


@dataclass(frozen=True, slots=True)
class OfferedMedia:
    """One audio/video m-line of a client offer (other kinds are kept only to be rejected)."""

    index: int
    kind: str
    mid: str
    direction: str
    codecs: tuple[RtpCodec, ...]
    extensions: Mapping[str, int] = field(hash=False)
    ssrcs: tuple[int, ...]
    fid_groups: tuple[tuple[int, int], ...]
    """``a=ssrc-group:FID primary rtx`` pairs."""
    cname: str | None
    msid: str | None
    rids: tuple[str, ...]
    """``a=rid:<id> send`` ids, in offer order."""
    first_fmt: str
    simulcast: tuple[str, ...] = ()
    """The RIDs of ``a=simulcast:send`` in order (first alternative of each; ``~`` removed)."""
    sim_ssrcs: tuple[int, ...] = ()
    """``a=ssrc-group:SIM`` SSRCs (legacy simulcast), lowest encoding first."""


@dataclass(frozen=True, slots=True)
class ClientOffer:
    """A parsed client offer: transport parameters plus its m-lines in order."""

    transport: RemoteTransportParameters
    media: tuple[OfferedMedia, ...]
    bundle: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EncodingParameters:
    """One simulcast encoding of a publish track: known by RID or by SSRC (legacy SIM group)."""

    rid: str | None
    ssrc: int | None = None
    rtx_ssrc: int | None = None


@dataclass(frozen=True, slots=True)
class PublishTrack:
    """An accepted m-line of a publish offer: what one producer will receive."""

    mid: str
    kind: MediaKind
    codec: RtpCodec
    extensions: HeaderExtensionIds
    ssrc: int | None
    """The client's media SSRC if it announced one (``None``: learn from mid/PT)."""
    rtx_ssrc: int | None
    cname: str | None
    simulcast_offered: bool = False
    encodings: tuple[EncodingParameters, ...] = ()
    """Simulcast encodings, lowest first (empty: one encoding, ``ssrc`` / ``rtx_ssrc``)."""

    @property
    def simulcast_rids(self) -> tuple[str, ...]:
        """The RIDs to answer with ``a=simulcast:recv`` (empty for legacy or no simulcast)."""
        return tuple(e.rid for e in self.encodings if e.rid is not None)


@dataclass(frozen=True, slots=True)
class SubscribeTrack:
    """An accepted m-line of a subscribe offer: what one consumer will send."""

    mid: str
    kind: MediaKind
    source: str
    """The id of the producer this m-line receives."""
    codec: RtpCodec
    """The producer's codec with the subscriber's payload types and feedback."""
    extensions: HeaderExtensionIds


@dataclass(frozen=True, slots=True)
class SendingSsrcs:
    """SSRCs the SFU sends on an m-line of a subscribe answer."""

    ssrc: int
    rtx_ssrc: int | None
    cname: str
    msid: str
    """``"<stream id> <track id>"``."""


@dataclass(frozen=True, slots=True)
class HostCandidate:
    """A local ICE host candidate as written into an answer."""

    foundation: str
    priority: int
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class LocalTransportParameters:
    """The SFU transport's ICE and DTLS parameters, written into every answer m-line."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: tuple[tuple[str, str], ...]
    candidates: tuple[HostCandidate, ...]


@dataclass(frozen=True, slots=True)
class AnswerMedia:
    """How to answer one offered m-line. ``codec=None`` rejects it (port 0)."""

    mid: str
    direction: str
    codec: RtpCodec | None
    extensions: HeaderExtensionIds = HeaderExtensionIds()
    sending: SendingSsrcs | None = None
    simulcast_rids: tuple[str, ...] = ()
    """Answer ``a=rid:<id> recv`` + ``a=simulcast:recv`` with these RIDs."""


# --------------------------------------------------------------------------------------------
# Parsing


def parse_offer(sdp: str) -> ClientOffer:
    """Parse a client's offer; raise :class:`InvalidSdpError` if malformed or incomplete."""
    try:
        session = SessionDescription.parse(sdp)
    except (
        AssertionError,
        AttributeError,  # an attribute that needs a value given none ("a=rtpmap")
        ValueError,
        KeyError,
        IndexError,
        StopIteration,
        TypeError,
    ) as exc:
        raise InvalidSdpError(f"malformed SDP offer: {exc!r}") from exc
    if not session.media:
        raise InvalidSdpError("the SDP offer has no m-line")

    rids_by_index, simulcast_by_index = _scan_rids(sdp)
    media: list[OfferedMedia] = []
    for index, m in enumerate(session.media):
        mid = m.rtp.muxId if m.rtp.muxId is not None else str(index)
        codecs: tuple[RtpCodec, ...] = ()
        kind = m.kind
        if kind in ("audio", "video"):
            codecs = tuple(RtpCodec.from_aiortc(_kind(kind), c) for c in m.rtp.codecs)
        fid = tuple(
            (int(g.items[0]), int(g.items[1]))
            for g in m.ssrc_group
            if g.semantic == "FID" and len(g.items) == 2
        )
        sim = next((tuple(int(i) for i in g.items) for g in m.ssrc_group if g.semantic == "SIM"), ())
        cname = next((s.cname for s in m.ssrc if s.cname), None)
        media.append(
            OfferedMedia(
                index=index,
                kind=kind,
                mid=mid,
                direction=m.direction or "sendrecv",
                codecs=codecs,
                extensions={e.uri: e.id for e in m.rtp.headerExtensions},
                ssrcs=tuple(s.ssrc for s in m.ssrc),
                fid_groups=fid,
                cname=cname,
                msid=m.msid,
                rids=rids_by_index.get(index, ()),
                first_fmt=str(m.fmt[0]) if m.fmt else "0",
                simulcast=simulcast_by_index.get(index, ()),
                sim_ssrcs=sim,
            )
        )

    first = session.media[0]
    if first.ice is None or not first.ice.usernameFragment or not first.ice.password:
        raise InvalidSdpError("the SDP offer has no a=ice-ufrag / a=ice-pwd")
    if first.dtls is None or not first.dtls.fingerprints:
        raise InvalidSdpError("the SDP offer has no a=fingerprint / a=setup")
    if first.dtls.role == "client":
        raise UnsupportedError("the SDP offer has a=setup:active; the SFU is always the DTLS client")
    for m in session.media:
        if m.kind in ("audio", "video") and m.port != 0 and not m.rtcp_mux:
            raise UnsupportedError(f"m-line {m.rtp.muxId!r} lacks a=rtcp-mux, which the SFU requires")
    bundle: tuple[str, ...] = ()
    for group in session.group:
        if group.semantic == "BUNDLE":
            bundle = tuple(str(i) for i in group.items)
    if len(session.media) > 1 and not bundle:
        raise UnsupportedError("an SDP offer with several m-lines must bundle them (a=group:BUNDLE)")

    candidates: list[str] = []
    complete = False
    for m in session.media:
        for c in m.ice_candidates:
            line = _candidate_line(c)
            if line not in candidates:
                candidates.append(line)
        complete = complete or m.ice_candidates_complete
    return ClientOffer(
        transport=RemoteTransportParameters(
            ice_ufrag=first.ice.usernameFragment,
            ice_pwd=first.ice.password,
            ice_lite=bool(first.ice.iceLite),
            fingerprints=tuple((f.algorithm, f.value) for f in first.dtls.fingerprints),
            candidates=tuple(candidates),
            candidates_complete=complete,
        ),
        media=tuple(media),
        bundle=bundle,
    )


def _kind(kind: str) -> MediaKind:
    if kind == "audio":
        return "audio"
    if kind == "video":
        return "video"
    raise ValueError(f"not an RTP media kind: {kind!r}")


def _candidate_line(c: RTCIceCandidate) -> str:
    return str(candidate_to_sdp(c))


def _scan_rids(sdp: str) -> tuple[dict[int, tuple[str, ...]], dict[int, tuple[str, ...]]]:
    """aiortc drops ``a=rid`` and ``a=simulcast``: find them ourselves, per m-line index.

    Returns the ``send`` RIDs and the ``a=simulcast:send`` RIDs (RFC 8853 §5.1: ``;``
    separates streams, ``,`` alternatives of which we take the first, ``~`` marks a paused
    one, which is still an encoding)."""
    rids: dict[int, list[str]] = {}
    simulcast: dict[int, tuple[str, ...]] = {}
    index = -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        elif index < 0:
            continue
        elif line.startswith("a=rid:"):
            parts = line[6:].split()
            if len(parts) >= 2 and parts[1] == "send":
                rids.setdefault(index, []).append(parts[0])
        elif line.startswith("a=simulcast:"):
            parts = line[12:].split()
            for direction, streams in zip(parts[::2], parts[1::2], strict=False):
                if direction == "send":
                    simulcast[index] = tuple(
                        s.split(",", 1)[0].lstrip("~")
                        for s in streams.split(";")
                        if s.split(",", 1)[0].lstrip("~")
                    )
    return {k: tuple(v) for k, v in rids.items()}, simulcast


# --------------------------------------------------------------------------------------------
# Codec matching


# H.264 profile-level-id (RFC 6184 §8.1), parsed as webrtc does (api/video_codecs/h264_profile_
# level_id.cc): the profile comes from profile_idc plus the constraint flags in profile-iop, the
# level from level_idc (11 with constraint_set3 is level 1b).

#: (profile_idc, mask, value, profile): profile-iop & mask == value. webrtc's table, in order.
_H264_PROFILE_PATTERNS: tuple[tuple[int, int, int, str], ...] = (
    (0x42, 0x4F, 0x40, "constrained-baseline"),  # x1xx0000
    (0x4D, 0x8F, 0x80, "constrained-baseline"),  # 1xxx0000
    (0x58, 0xCF, 0xC0, "constrained-baseline"),  # 11xx0000
    (0x42, 0x4F, 0x00, "baseline"),  # x0xx0000
    (0x58, 0xCF, 0x80, "baseline"),  # 10xx0000
    (0x4D, 0xAF, 0x00, "main"),  # 0x0x0000
    (0x64, 0xFF, 0x00, "high"),  # 00000000
    (0x64, 0xFF, 0x0C, "constrained-high"),  # 00001100
    (0xF4, 0xFF, 0x00, "predictive-high-444"),  # 00000000
)
#: The profile-idc + profile-iop that webrtc writes for each profile.
_H264_PROFILE_PREFIX = {
    "constrained-baseline": "42e0",
    "baseline": "4200",
    "main": "4d00",
    "constrained-high": "640c",
    "high": "6400",
    "predictive-high-444": "f400",
}
_H264_LEVEL_1B = 0
"""Level 1b, between 1 (10) and 1.1 (11); written as level_idc 11 with constraint_set3."""
_H264_LEVELS = frozenset((10, 11, 12, 13, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52, 60, 61, 62))
#: What webrtc assumes when profile-level-id is absent (RFC 6184 says 42000a, but browsers
#: have always treated a missing value as constrained baseline 3.1, and so does aiortc).
_H264_DEFAULT_PROFILE_LEVEL_ID = "42e01f"


def parse_h264_profile_level_id(value: object) -> tuple[str, int] | None:
    """``(profile, level)`` of an H.264 ``profile-level-id`` (6 hex digits), ``None`` if it is
    not one webrtc recognises. ``level`` is level_idc (31 for 3.1), or 0 for level 1b."""
    text = str(value)
    if len(text) != 6:
        return None
    try:
        number = int(text, 16)
    except ValueError:
        return None
    profile_idc, profile_iop, level_idc = number >> 16, (number >> 8) & 0xFF, number & 0xFF
    if level_idc == 11 and profile_iop & 0x10:
        level = _H264_LEVEL_1B
    elif level_idc in _H264_LEVELS:
        level = level_idc
    else:
        return None
    for idc, mask, pattern, profile in _H264_PROFILE_PATTERNS:
        if idc == profile_idc and profile_iop & mask == pattern:
            return profile, level
    return None


def _h264_level_rank(level: int) -> float:
    return 10.5 if level == _H264_LEVEL_1B else level


def h264_profile_level_id_string(profile: str, level: int) -> str | None:
    """The ``profile-level-id`` webrtc writes for ``(profile, level)``; ``None`` for level 1b
    in a profile that does not have it."""
    if level == _H264_LEVEL_1B:
        return {"constrained-baseline": "42f00b", "baseline": "42100b", "main": "4d100b"}.get(profile)
    return f"{_H264_PROFILE_PREFIX[profile]}{level:02x}"


def _h264_profile_level(codec: RtpCodec) -> tuple[str, int] | None:
    return parse_h264_profile_level_id(
        codec.parameters.get("profile-level-id", _H264_DEFAULT_PROFILE_LEVEL_ID)
    )


def _level_asymmetry_allowed(codec: RtpCodec) -> bool:
    return str(codec.parameters.get("level-asymmetry-allowed", "0")) == "1"


def _h264_key(codec: RtpCodec) -> tuple[str, str] | None:
    """(packetization-mode, profile) of an H.264 codec, ``None`` if unparseable."""
    parsed = _h264_profile_level(codec)
    if parsed is None:
        return None
    return str(codec.parameters.get("packetization-mode", "0")), parsed[0]


def h264_answer_parameters(offered: RtpCodec, producer: RtpCodec) -> dict[str, str | int | None]:
    """The fmtp of the SFU's answer to a subscriber offering H.264 ``offered`` for a producer
    sending ``producer`` (same profile and packetization mode, see :func:`codecs_match`).

    RFC 6184 §8.2.2 as webrtc applies it (``H264GenerateProfileLevelIdForAnswer``), the SFU
    being the answerer that accepts any level: the subscriber's parameters, with the profile
    and a level that is the subscriber's own when it allows level asymmetry
    (``level-asymmetry-allowed=1``, the SFU always does) and otherwise the lower of the
    subscriber's and the producer's (an answer may not raise the offered level). With no
    profile-level-id on either side, none is written (both mean the default).
    """
    parameters = dict(offered.parameters)
    if "profile-level-id" not in offered.parameters and "profile-level-id" not in producer.parameters:
        return parameters
    ours, theirs = _h264_profile_level(offered), _h264_profile_level(producer)
    if ours is None or theirs is None or ours[0] != theirs[0]:
        raise ValueError(f"H.264 profiles differ: {ours} offered, {theirs} produced")
    profile, level = ours
    if not _level_asymmetry_allowed(offered):
        level = min(level, theirs[1], key=_h264_level_rank)
    answer = h264_profile_level_id_string(profile, level)
    if answer is None:
        raise ValueError(f"H.264 {profile} has no level 1b")
    parameters["profile-level-id"] = answer
    return parameters


def is_supported_codec(codec: RtpCodec) -> bool:
    """Whether the SFU can forward this (non-RTX) codec."""
    name = codec.name
    if codec.kind == "audio":
        return name == "opus" and codec.clock_rate == 48000 and (codec.channels or 1) == 2
    if name == "vp8":
        return codec.clock_rate == 90000
    if name == "h264":
        key = _h264_key(codec)
        return codec.clock_rate == 90000 and key is not None and key[0] == "1"
    return False


def codecs_match(a: RtpCodec, b: RtpCodec) -> bool:
    """Same codec for forwarding purposes: name, clock rate, channels; for H.264 also the same
    packetization mode and profile, as webrtc matches them (the level may differ: the answer's
    level comes from :func:`h264_answer_parameters`)."""
    if a.kind != b.kind or a.name != b.name or a.clock_rate != b.clock_rate:
        return False
    if a.kind == "audio" and (a.channels or 1) != (b.channels or 1):
        return False
    if a.name == "h264":
        ka, kb = _h264_key(a), _h264_key(b)
        return ka is not None and ka == kb
    return True


def _rtx_for(media: OfferedMedia, payload_type: int) -> int | None:
    for c in media.codecs:
        if c.name == "rtx" and str(c.parameters.get("apt")) == str(payload_type):
            return c.payload_type
    return None


def _supported_feedback(
    codec: RtpCodec, supported: frozenset[tuple[str, str | None]] = SUPPORTED_RTCP_FEEDBACK
) -> tuple[tuple[str, str | None], ...]:
    return tuple(fb for fb in codec.rtcp_feedback if fb in supported)


# --------------------------------------------------------------------------------------------
# Negotiation


def negotiate_publish(offer: ClientOffer) -> list[PublishTrack]:
    """The producers a publish offer asks for, one per acceptable m-line.

    m-lines that do not send (``recvonly``/``inactive``), that are not audio/video, or that
    have no codec we can forward are left out (the answer rejects them). Raise
    :class:`UnsupportedError` if nothing is left.
    """
    tracks: list[PublishTrack] = []
    reasons: list[str] = []
    for m in offer.media:
        if m.kind not in ("audio", "video"):
            reasons.append(f"m-line {m.mid!r} is {m.kind}")
            continue
        if m.direction not in ("sendonly", "sendrecv"):
            reasons.append(f"m-line {m.mid!r} is {m.direction}, a publish offer must send")
            continue
        chosen = next((c for c in m.codecs if is_supported_codec(c)), None)
        if chosen is None:
            offered = ", ".join(sorted({c.mime_type for c in m.codecs})) or "none"
            reasons.append(f"m-line {m.mid!r} offers no codec we support ({offered})")
            continue
        rtx_pt = _rtx_for(m, chosen.payload_type) if m.kind == "video" else None
        # Transport-cc when the publisher offers both halves: its own congestion control then
        # runs on our feedback, and REMB is left out (libwebrtc would cap its estimate by it).
        transport_cc = EXT_TRANSPORT_CC in m.extensions and chosen.supports_feedback("transport-cc")
        feedback = (
            tuple(fb for fb in _supported_feedback(chosen, SUBSCRIBER_RTCP_FEEDBACK) if fb[0] != "goog-remb")
            if transport_cc
            else _supported_feedback(chosen)
        )
        codec = replace(chosen, rtcp_feedback=feedback, rtx_payload_type=rtx_pt)
        ssrc, rtx_ssrc = _publish_ssrcs(m)
        encodings = _simulcast_encodings(m, rtx_pt is not None) if m.kind == "video" else ()
        by_rid = bool(encodings) and encodings[0].rid is not None
        if encodings:
            ssrc, rtx_ssrc = encodings[0].ssrc, encodings[0].rtx_ssrc
        tracks.append(
            PublishTrack(
                mid=m.mid,
                kind=_kind(m.kind),
                codec=codec,
                extensions=HeaderExtensionIds.from_map(
                    _kind(m.kind), m.extensions, simulcast=by_rid, transport_cc=transport_cc
                ),
                ssrc=ssrc,
                rtx_ssrc=rtx_ssrc if rtx_pt is not None else None,
                cname=m.cname,
                simulcast_offered=bool(m.rids or m.simulcast or m.sim_ssrcs),
                encodings=encodings,
            )
        )
    if not tracks:
        raise UnsupportedError("the publish offer has no usable m-line: " + "; ".join(reasons))
    return tracks


def _simulcast_encodings(m: OfferedMedia, rtx: bool) -> tuple[EncodingParameters, ...]:
    """The simulcast encodings of a publish m-line, lowest first; () for one encoding."""
    send_rids = set(m.rids)
    rids = [r for r in m.simulcast if r in send_rids]
    if len(rids) >= 2 and EXT_RID in m.extensions:
        return tuple(EncodingParameters(rid=r) for r in rids[:MAX_SIMULCAST_ENCODINGS])
    if len(m.sim_ssrcs) >= 2:
        fid = dict(m.fid_groups)
        return tuple(
            EncodingParameters(rid=None, ssrc=s, rtx_ssrc=fid.get(s) if rtx else None)
            for s in m.sim_ssrcs[:MAX_SIMULCAST_ENCODINGS]
        )
    return ()


def _publish_ssrcs(m: OfferedMedia) -> tuple[int | None, int | None]:
    if m.fid_groups:
        return m.fid_groups[0]
    if m.ssrcs:
        return m.ssrcs[0], None
    return None, None


def negotiate_subscribe(offer: ClientOffer, sources: Sequence[tuple[str, RtpCodec]]) -> list[SubscribeTrack]:
    """Pair the subscriber's receiving m-lines with producers of the same kind.

    ``sources`` are ``(producer_id, producer codec)`` pairs, at most one per kind. The first
    receiving m-line of each kind gets the producer of that kind; other m-lines are rejected.
    A producer whose kind the subscriber did not offer is simply not consumed. Raise
    :class:`UnsupportedError` when the subscriber cannot decode a producer's codec or when
    no m-line could be paired.
    """
    by_kind = {codec.kind: (pid, codec) for pid, codec in sources}
    tracks: list[SubscribeTrack] = []
    taken: set[str] = set()
    for m in offer.media:
        if m.kind not in by_kind or m.kind in taken:
            continue
        if m.direction not in ("recvonly", "sendrecv"):
            continue
        pid, source = by_kind[m.kind]
        match = next((c for c in m.codecs if c.name != "rtx" and codecs_match(c, source)), None)
        if match is None:
            offered = ", ".join(sorted({c.mime_type for c in m.codecs if c.name != "rtx"})) or "none"
            raise UnsupportedError(
                f"the subscriber cannot receive {source.mime_type} "
                f"{_describe_params(source)}on m-line {m.mid!r} (it offers {offered})"
            )
        rtx_pt = _rtx_for(m, match.payload_type) if source.rtx_payload_type is not None else None
        codec = replace(
            source,
            payload_type=match.payload_type,
            parameters=h264_answer_parameters(match, source) if source.name == "h264" else source.parameters,
            rtx_payload_type=rtx_pt,
            rtcp_feedback=_supported_feedback(match, SUBSCRIBER_RTCP_FEEDBACK),
        )
        taken.add(m.kind)
        tracks.append(
            SubscribeTrack(
                mid=m.mid,
                kind=_kind(m.kind),
                source=pid,
                codec=codec,
                extensions=HeaderExtensionIds.from_map(_kind(m.kind), m.extensions, transport_cc=True),
            )
        )
    if not tracks:
        kinds = ", ".join(sorted(by_kind)) or "nothing"
        raise UnsupportedError(f"the subscribe offer has no receiving m-line for the stream ({kinds})")
    return tracks


def _describe_params(codec: RtpCodec) -> str:
    if codec.name == "h264":
        return (
            f"(profile-level-id={codec.parameters.get('profile-level-id')}, "
            f"packetization-mode={codec.parameters.get('packetization-mode', 0)}) "
        )
    return ""


# --------------------------------------------------------------------------------------------
# Answer


def build_answer(offer: ClientOffer, local: LocalTransportParameters, media: Sequence[AnswerMedia]) -> str:
    """Write the SFU's answer: one m-line per offered m-line, in offer order.

    Offered m-lines without an entry in ``media`` (matched by mid) are rejected with port 0.
    Every accepted m-line carries the transport's ICE/DTLS parameters and host candidates
    (no server-side trickle, so ``a=end-of-candidates``), ``a=setup:active`` and rtcp-mux.
    """
    answers = {a.mid: a for a in media}
    session = SessionDescription()
    sess_id = secrets.randbelow(1 << 62)
    session.origin = f"- {sess_id} {sess_id} IN IP4 0.0.0.0"
    session.msid_semantic.append(GroupDescription(semantic="WMS", items=["*"]))
    ice = RTCIceParameters(usernameFragment=local.ice_ufrag, password=local.ice_pwd)
    dtls = RTCDtlsParameters(
        fingerprints=[RTCDtlsFingerprint(algorithm=a, value=v) for a, v in local.fingerprints],
        role="client",
    )
    default = local.candidates[0] if local.candidates else None
    accepted: list[str] = []
    for m in offer.media:
        answer = answers.get(m.mid)
        if answer is None or answer.codec is None:
            desc = MediaDescription(kind=m.kind, port=0, profile=_PROFILE, fmt=[m.first_fmt])
            desc.host = "0.0.0.0"
            desc.direction = "inactive"
            desc.rtp.muxId = m.mid
            desc.ice = ice
            session.media.append(desc)
            continue
        codec = answer.codec
        fmt: list[int] = [codec.payload_type]
        if codec.rtx_payload_type is not None:
            fmt.append(codec.rtx_payload_type)
        desc = MediaDescription(kind=m.kind, port=default.port if default else 9, profile=_PROFILE, fmt=fmt)
        desc.host = default.ip if default else "0.0.0.0"
        desc.direction = answer.direction
        desc.rtp.muxId = m.mid
        desc.rtcp_port = 9
        desc.rtcp_host = "0.0.0.0"
        desc.rtcp_mux = True
        desc.rtp.headerExtensions = [
            RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in answer.extensions.to_sdp()
        ]
        desc.rtp.codecs = [
            RTCRtpCodecParameters(
                mimeType=codec.mime_type,
                clockRate=codec.clock_rate,
                channels=codec.channels,
                payloadType=codec.payload_type,
                rtcpFeedback=[RTCRtcpFeedback(type=t, parameter=p) for t, p in codec.rtcp_feedback],
                parameters=dict(codec.parameters),
            )
        ]
        if codec.rtx_payload_type is not None:
            desc.rtp.codecs.append(
                RTCRtpCodecParameters(
                    mimeType=f"{codec.kind}/rtx",
                    clockRate=codec.clock_rate,
                    payloadType=codec.rtx_payload_type,
                    parameters={"apt": codec.payload_type},
                )
            )
        if answer.sending is not None:
            s = answer.sending
            desc.msid = s.msid
            desc.ssrc.append(SsrcDescription(ssrc=s.ssrc, cname=s.cname, msid=s.msid))
            if s.rtx_ssrc is not None and codec.rtx_payload_type is not None:
                desc.ssrc_group.append(GroupDescription(semantic="FID", items=[s.ssrc, s.rtx_ssrc]))
                desc.ssrc.append(SsrcDescription(ssrc=s.rtx_ssrc, cname=s.cname, msid=s.msid))
        desc.ice = ice
        desc.ice_candidates = [
            RTCIceCandidate(
                component=1,
                foundation=c.foundation,
                ip=c.ip,
                port=c.port,
                priority=c.priority,
                protocol="udp",
                type="host",
            )
            for c in local.candidates
        ]
        desc.ice_candidates_complete = True
        desc.dtls = dtls
        session.media.append(desc)
        accepted.append(m.mid)
    if accepted:
        session.group.append(GroupDescription(semantic="BUNDLE", items=list(accepted)))
    return _add_simulcast(str(session), {a.mid: a.simulcast_rids for a in media if a.simulcast_rids})


def _add_simulcast(sdp: str, rids_by_mid: Mapping[str, tuple[str, ...]]) -> str:
    """aiortc cannot write ``a=rid`` / ``a=simulcast``: append them to the m-sections that
    receive simulcast (RFC 8853 §5.3: the answer mirrors the offer's RIDs as ``recv``)."""
    if not rids_by_mid:
        return sdp
    sections = sdp.split("\r\nm=")
    out: list[str] = []
    for section in sections:
        mid = next((line[6:] for line in section.split("\r\n") if line.startswith("a=mid:")), None)
        rids = rids_by_mid.get(mid) if mid is not None else None
        if rids:
            extra = "".join(f"a=rid:{r} recv\r\n" for r in rids) + f"a=simulcast:recv {';'.join(rids)}\r\n"
            section = section + extra if section.endswith("\r\n") else section + "\r\n" + extra.rstrip("\r\n")
        out.append(section)
    return "\r\nm=".join(out)
